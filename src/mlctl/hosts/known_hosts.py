"""Host key policy: pin on first use, refuse a changed key, never accept silently.

mlctl pins keys in its own ``known_hosts`` under the state directory and also
honours ``~/.ssh/known_hosts`` (read only). Entries use OpenSSH's format,
``[host]:port`` for ports other than 22, and hashed names (``|1|salt|hash``)
are understood. Marker lines (``@cert-authority``, ``@revoked``) are skipped.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mlctl import paths
from mlctl.errors import ConnectError

HostKeyPolicy = Literal["accept-new", "strict"]
POLICIES: tuple[HostKeyPolicy, ...] = ("accept-new", "strict")
Verdict = Literal["known", "unknown", "changed"]


@dataclass(frozen=True)
class KnownKey:
    """One key line of a known_hosts file that names a host."""

    key_type: str
    key_b64: str
    source: Path
    line_no: int


@dataclass(frozen=True)
class HostKeyCheck:
    """The verdict for a presented key, and the pinned key it contradicts if changed."""

    verdict: Verdict
    conflicting: KnownKey | None = None


def host_entry(host: str, port: int) -> str:
    """Return the known_hosts name of a host: ``host`` for port 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key_b64: str) -> str:
    """Return OpenSSH's ``SHA256:…`` fingerprint of a base64 public key blob.

    Raises ValueError when ``key_b64`` is not base64.
    """
    try:
        blob = base64.b64decode(key_b64, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not a base64 key: {key_b64[:20]}...") from exc
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def _wildcard_match(pattern: str, name: str) -> bool:
    regex = "".join(
        ".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower()
    )
    return re.fullmatch(regex, name.lower()) is not None


def _hashed_match(field: str, name: str) -> bool:
    parts = field.split("|")
    if len(parts) != 4 or parts[1] != "1":
        return False
    try:
        salt = base64.b64decode(parts[2])
        want = base64.b64decode(parts[3])
    except binascii.Error:
        return False
    got = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return hmac.compare_digest(got, want)


def names_match(field: str, name: str) -> bool:
    """Return True when a known_hosts host field (patterns, negations, hashes) covers ``name``."""
    if field.startswith("|"):
        return _hashed_match(field, name)
    matched = False
    for pattern in field.split(","):
        if pattern.startswith("!"):
            if _wildcard_match(pattern[1:], name):
                return False
        elif _wildcard_match(pattern, name):
            matched = True
    return matched


def keys_in_text(text: str, name: str, source: Path) -> list[KnownKey]:
    """Return the keys a known_hosts text lists for ``name`` (an entry from host_entry)."""
    found: list[KnownKey] = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if len(fields) < 3 or fields[0].startswith("#") or fields[0].startswith("@"):
            continue
        if names_match(fields[0], name):
            found.append(KnownKey(fields[1], fields[2], source, line_no))
    return found


def check_key(known: Sequence[KnownKey], key_type: str, key_b64: str) -> HostKeyCheck:
    """Compare a presented key with the pinned ones for its host.

    ``known`` when one pinned key equals it, ``unknown`` when nothing is
    pinned, ``changed`` (with the contradicted key, preferring one of the same
    type) otherwise.
    """
    if not known:
        return HostKeyCheck("unknown")
    for entry in known:
        if entry.key_type == key_type and entry.key_b64 == key_b64:
            return HostKeyCheck("known")
    same_type = [k for k in known if k.key_type == key_type]
    return HostKeyCheck("changed", (same_type or list(known))[0])


def mlctl_known_hosts_path() -> Path:
    """Return mlctl's own known_hosts file (under the state directory)."""
    return paths.state_dir() / "known_hosts"


def user_known_hosts_path() -> Path:
    """Return ``~/.ssh/known_hosts`` (following $HOME); read, never written."""
    return Path.home() / ".ssh" / "known_hosts"


def known_keys(host: str, port: int, files: Iterable[Path] | None = None) -> list[KnownKey]:
    """Return every key pinned for ``host:port`` in ``files`` (default: mlctl's, then ~/.ssh's).

    Unreadable or missing files count as empty.
    """
    name = host_entry(host, port)
    chosen = (
        list(files)
        if files is not None
        else [
            mlctl_known_hosts_path(),
            user_known_hosts_path(),
        ]
    )
    found: list[KnownKey] = []
    for path in chosen:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        found.extend(keys_in_text(text, name, path))
    return found


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def pin(host: str, port: int, key_type: str, key_b64: str) -> None:
    """Append the key for ``host:port`` to mlctl's known_hosts (0600, created if missing)."""
    path = mlctl_known_hosts_path()
    try:
        old = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        old = ""
    if old and not old.endswith("\n"):
        old += "\n"
    _write_atomic(path, f"{old}{host_entry(host, port)} {key_type} {key_b64}\n")


def forget(host: str, port: int) -> int:
    """Remove every key mlctl pinned for ``host:port``; return how many lines went.

    Only mlctl's own file is edited; ``~/.ssh/known_hosts`` is left alone.
    """
    path = mlctl_known_hosts_path()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return 0
    name = host_entry(host, port)
    kept = [
        line
        for line in lines
        if not (
            len(line.split()) >= 3
            and names_match(line.split()[0], name)
            and not line.startswith("@")
        )
    ]
    removed = len(lines) - len(kept)
    if removed:
        _write_atomic(path, "".join(f"{line}\n" for line in kept))
    return removed


def _forget_hint(host: str, port: int, conflicting: KnownKey) -> str:
    spec = host if port == 22 else f"{host}:{port}"
    if conflicting.source == mlctl_known_hosts_path():
        return (
            f"if the box was re-rented or reinstalled, run: mlctl hosts forget-key {spec} "
            "- otherwise someone may be intercepting the connection, do not go on"
        )
    return (
        f"the old key is in {conflicting.source} line {conflicting.line_no}; if the box was "
        f"re-rented or reinstalled, run: ssh-keygen -R '{host_entry(host, port)}'"
    )


def verify(host: str, port: int, key_type: str, key_b64: str, policy: HostKeyPolicy) -> None:
    """Accept, pin, or refuse the key ``host:port`` presented, by ``policy``.

    A known key passes. An unknown key is pinned under ``accept-new`` and
    refused under ``strict``. A changed key is always refused. Raises
    ConnectError naming the fingerprints and the fix.
    """
    result = check_key(known_keys(host, port), key_type, key_b64)
    name = host_entry(host, port)
    new_fp = fingerprint(key_b64)
    if result.verdict == "known":
        return
    if result.verdict == "changed":
        old = result.conflicting
        assert old is not None
        raise ConnectError(
            f"host key for {name} has CHANGED: the server now shows {key_type} {new_fp}, "
            f"but {old.key_type} {fingerprint(old.key_b64)} was pinned "
            f"({old.source} line {old.line_no})",
            _forget_hint(host, port, old),
        )
    if policy == "strict":
        raise ConnectError(
            f"host key for {name} is not known ({key_type} {new_fp}) and the policy is strict",
            "check the fingerprint with the provider, then connect once with "
            "--host-key-policy accept-new to pin it",
        )
    pin(host, port, key_type, key_b64)


def preferred_key_types(known: Sequence[KnownKey]) -> list[str]:
    """Return the key types already pinned, so the handshake asks for one of them first."""
    return list(dict.fromkeys(k.key_type for k in known))
