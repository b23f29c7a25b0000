"""Saved hosts: named SSH targets in ``hosts.json`` under the config directory.

The file is ``{"version": 1, "hosts": {NAME: {host, port, user, ...}}}``,
written atomically (tmp + os.replace) with mode 0600.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from mlctl import paths
from mlctl.errors import StateError, UsageError
from mlctl.hosts.target import SshTarget, parse_target

_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def hosts_path() -> Path:
    """Return the saved-hosts file path."""
    return paths.config_dir() / "hosts.json"


def _load() -> dict[str, SshTarget]:
    path = hosts_path()
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StateError(
            f"cannot read saved hosts from {path}: {exc}",
            "fix or remove the file, then add the hosts again",
        ) from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("hosts"), dict):
        raise StateError(f"{path} is not a saved-hosts file", "fix or remove the file")
    try:
        return {str(n): SshTarget.from_dict(d) for n, d in raw["hosts"].items()}
    except UsageError as exc:
        raise StateError(f"{path}: {exc.message}", "fix or remove the file") from exc


def _store(hosts: dict[str, SshTarget]) -> None:
    path = hosts_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {"version": _VERSION, "hosts": {n: t.to_dict() for n, t in sorted(hosts.items())}}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    os.replace(tmp, path)


def check_name(name: str) -> str:
    """Return ``name`` when it can name a saved host; UsageError otherwise."""
    if not _NAME_RE.match(name):
        raise UsageError(
            f"invalid host name {name!r}",
            "use letters, digits, '.', '_' and '-' (up to 64), starting with a letter or digit",
        )
    return name


def add(name: str, target: SshTarget, *, replace: bool = False) -> None:
    """Save ``target`` as ``name``; UsageError when it exists and ``replace`` is False.

    Raises StateError when the file is unreadable.
    """
    hosts = _load()
    if check_name(name) in hosts and not replace:
        raise UsageError(
            f"a host named {name!r} is already saved",
            f"remove it first (mlctl hosts remove {name}) or pick another name",
        )
    hosts[name] = target
    _store(hosts)


def get(name: str) -> SshTarget | None:
    """Return the saved host ``name``, or None. Raises StateError when unreadable."""
    return _load().get(name)


def list_hosts() -> dict[str, SshTarget]:
    """Return all saved hosts by name, sorted. Raises StateError when unreadable."""
    return dict(sorted(_load().items()))


def remove(name: str) -> bool:
    """Delete the saved host ``name``; return False when there was none."""
    hosts = _load()
    if hosts.pop(name, None) is None:
        return False
    _store(hosts)
    return True


def resolve(spec: str, *, ssh_config_path: Path | None = None) -> SshTarget:
    """Resolve what a user typed after ``--host``: a saved name first, then a host string.

    See :func:`mlctl.hosts.target.parse_target`. Raises UsageError for a
    malformed string, StateError for an unreadable saved-hosts file.
    """
    return parse_target(spec, saved=_load(), ssh_config_path=ssh_config_path)
