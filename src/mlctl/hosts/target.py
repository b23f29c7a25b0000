"""Where to connect: host strings, ssh_config aliases and pasted ``ssh`` command lines.

Pure except for reading an ssh_config file; paramiko's config parser is imported
only when such a file exists.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mlctl.errors import UsageError

DEFAULT_PORT = 22

_HOST_RE = re.compile(r"^[A-Za-z0-9_.%:\-]+$")
_USER_RE = re.compile(r"^[^\s:/\[\]]+$")


@dataclass(frozen=True)
class SshTarget:
    """A resolved SSH destination. ``user`` None means the local user name."""

    host: str
    port: int = DEFAULT_PORT
    user: str | None = None
    identity_files: tuple[str, ...] = ()
    proxy_jump: str | None = None
    alias: str | None = None

    def display(self) -> str:
        """Return ``user@host:port`` (IPv6 in brackets), for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        return f"{user}{host}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (the saved-host format)."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "identity_files": list(self.identity_files),
            "proxy_jump": self.proxy_jump,
            "alias": self.alias,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SshTarget:
        """Build from :meth:`to_dict` output; UsageError when a field is malformed."""
        try:
            return cls(
                host=_check_host(str(data["host"])),
                port=_check_port(data.get("port", DEFAULT_PORT)),
                user=None if data.get("user") is None else str(data["user"]),
                identity_files=tuple(str(p) for p in data.get("identity_files") or ()),
                proxy_jump=None if data.get("proxy_jump") is None else str(data["proxy_jump"]),
                alias=None if data.get("alias") is None else str(data["alias"]),
            )
        except (KeyError, TypeError) as exc:
            raise UsageError(f"malformed host record: {exc}") from exc


def _garbage(spec: str, why: str) -> UsageError:
    return UsageError(
        f"cannot read {spec!r} as an SSH host: {why}",
        "use user@host, user@host:port, ssh://user@host:port, [::1]:22, "
        "an alias from ~/.ssh/config, or a saved host name (mlctl hosts list)",
    )


def _check_port(value: object) -> int:
    try:
        port = int(str(value))
    except ValueError:
        raise UsageError(f"invalid port {value!r}", "a port is a number from 1 to 65535") from None
    if not 1 <= port <= 65535:
        raise UsageError(f"invalid port {value!r}", "a port is a number from 1 to 65535")
    return port


def _check_host(host: str) -> str:
    if not host or host.startswith("-") or not _HOST_RE.match(host):
        raise UsageError(f"invalid host name {host!r}", "a host is a DNS name or an IP address")
    return host


def split_host_string(spec: str) -> tuple[str | None, str, int | None]:
    """Split ``[ssh://][user@]host[:port]`` into (user, host, port) without any lookup.

    IPv6 addresses take brackets when a port follows (``[::1]:22``); a bare
    address with several colons is read as IPv6 without a port. Raises
    UsageError for anything else.
    """
    text = spec.strip()
    if not text or any(c.isspace() for c in text):
        raise _garbage(spec, "empty or contains spaces")
    if text.startswith("ssh://"):
        text = text[len("ssh://") :].rstrip("/")
        if "/" in text:
            raise _garbage(spec, "an ssh:// URL takes no path")
    elif "://" in text:
        raise _garbage(spec, "only ssh:// URLs are understood")
    user: str | None = None
    if "@" in text:
        user, _, text = text.rpartition("@")
        if not user or not _USER_RE.match(user):
            raise _garbage(spec, "the user name is empty or malformed")
    port: int | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise _garbage(spec, "unclosed '['")
        if rest:
            if not rest.startswith(":"):
                raise _garbage(spec, "expected ':port' after ']'")
            port = _check_port(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _check_port(port_text)
    else:
        host = text
    if not host or host.startswith("-") or not _HOST_RE.match(host):
        raise _garbage(spec, f"invalid host name {host!r}")
    return user, host, port


def default_ssh_config_path() -> Path:
    """Return ``~/.ssh/config`` (following $HOME)."""
    return Path.home() / ".ssh" / "config"


def _ssh_config_lookup(name: str, path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    from paramiko.config import SSHConfig

    try:
        config = SSHConfig.from_path(str(path))
        found: dict[str, Any] = dict(config.lookup(name))
    except Exception as exc:  # paramiko raises several kinds for a bad file
        raise UsageError(
            f"cannot read {path}: {exc}", "fix the ssh_config file or point elsewhere"
        ) from exc
    return found


def parse_target(
    spec: str,
    *,
    saved: Mapping[str, SshTarget] | None = None,
    ssh_config_path: Path | None = None,
) -> SshTarget:
    """Resolve a host string to an SshTarget.

    Order: a saved host name (from ``saved``) first, then the host part is
    looked up in ssh_config (HostName, User, Port, IdentityFile, ProxyJump);
    user and port written in ``spec`` win over the config. Raises UsageError
    for a malformed string or an unreadable config.
    """
    if saved and spec in saved:
        return saved[spec]
    user, host, port = split_host_string(spec)
    path = ssh_config_path if ssh_config_path is not None else default_ssh_config_path()
    found = _ssh_config_lookup(host, path)
    hostname = str(found.get("hostname", host))
    identity = tuple(str(p) for p in found.get("identityfile", ()))
    proxy = found.get("proxyjump")
    proxy_jump = None if proxy in (None, "none") else str(proxy)
    from_config = hostname != host or any(
        k in found for k in ("user", "port", "identityfile", "proxyjump")
    )
    return SshTarget(
        host=_check_host(hostname),
        port=port if port is not None else _check_port(found.get("port", DEFAULT_PORT)),
        user=user if user is not None else found.get("user"),
        identity_files=identity,
        proxy_jump=proxy_jump,
        alias=host if from_config else None,
    )


# ssh(1) options: the ones taking an argument, and the plain flags.
_WITH_ARG = set("BbcDEeFIiJLlmOoPpQRSWw")
_FLAGS = set("46AaCfGgKkMNnqsTtVvXxYy")
_REFUSED = {
    "F": "an alternate ssh_config (-F)",
    "W": "stdio forwarding (-W)",
    "O": "a control command (-O)",
    "G": "printing the config (-G)",
    "Q": "a query (-Q)",
    "V": "printing the version (-V)",
}


def _split_o(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep:
        key, _, val = value.strip().partition(" ")
    return key.strip().lower(), val.strip().strip('"')


def parse_ssh_command(argv: Sequence[str] | str) -> SshTarget:
    """Read the ``ssh ...`` line a provider shows into an SshTarget.

    Honours ``-p``, ``-l``, ``-i`` (repeatable), ``-J`` and ``-o`` Port / User /
    IdentityFile / ProxyJump / HostName; ignores forwards (-L/-R/-D), verbosity,
    tty and other harmless flags, unknown ``-o`` keywords and a trailing remote
    command. As in ssh, the first value given for an option wins over later
    ones and over the user/port in the destination. Raises UsageError when
    there is no destination, an option is unknown or lacks its argument, or
    the line asks for something mlctl cannot honour (ProxyCommand, -F, -W).
    """
    args = shlex.split(argv) if isinstance(argv, str) else list(argv)
    if args and os.path.basename(args[0]) in ("ssh", "ssh.exe"):
        args = args[1:]
    port: int | None = None
    user: str | None = None
    hostname: str | None = None
    jump: str | None = None
    identities: list[str] = []
    destination: str | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            if i < len(args):
                destination = args[i]
            break
        if not arg.startswith("-") or arg == "-":
            destination = arg
            break
        letters = arg[1:]
        while letters:
            letter, letters = letters[0], letters[1:]
            if letter in _REFUSED:
                raise UsageError(
                    f"the ssh command uses {_REFUSED[letter]}, which mlctl cannot honour",
                    "paste the plain 'ssh [-p PORT] [-i KEY] [-J JUMP] user@host' line",
                )
            if letter in _FLAGS:
                continue
            if letter not in _WITH_ARG:
                raise UsageError(
                    f"unknown ssh option -{letter} in {arg!r}",
                    "paste the ssh command exactly as the provider shows it",
                )
            if letters:
                value, letters = letters, ""
            elif i < len(args):
                value = args[i]
                i += 1
            else:
                raise UsageError(f"ssh option -{letter} needs a value", "check the pasted line")
            if letter == "p" and port is None:
                port = _check_port(value)
            elif letter == "l" and user is None:
                user = value
            elif letter == "i":
                identities.append(value)
            elif letter == "J" and jump is None:
                jump = value
            elif letter == "o":
                key, val = _split_o(value)
                if key == "proxycommand" and val.lower() != "none":
                    raise UsageError(
                        "the ssh command uses ProxyCommand, which mlctl cannot honour",
                        "use ProxyJump (-J user@jumphost) instead",
                    )
                if key == "port" and port is None:
                    port = _check_port(val)
                elif key == "user" and user is None:
                    user = val
                elif key == "identityfile":
                    identities.append(val)
                elif key == "proxyjump" and jump is None:
                    jump = val
                elif key == "hostname" and hostname is None:
                    hostname = val
            # forwards (-L/-R/-D) and the other options with values are ignored
    if destination is None:
        raise UsageError(
            "no destination (user@host) in the ssh command",
            "paste the whole line, e.g. ssh -p 40022 root@ssh4.vast.ai",
        )
    dest_user, dest_host, dest_port = split_host_string(destination)
    final_user = user if user is not None else dest_user
    final_port = port if port is not None else dest_port
    return SshTarget(
        host=_check_host(hostname or dest_host),
        port=final_port if final_port is not None else DEFAULT_PORT,
        user=final_user,
        identity_files=tuple(identities),
        proxy_jump=None if jump in (None, "none") else jump,
        alias=None,
    )


def with_identity_files(target: SshTarget, files: Sequence[str]) -> SshTarget:
    """Return ``target`` with ``files`` added after its own identity files."""
    merged = tuple(dict.fromkeys([*target.identity_files, *files]))
    return replace(target, identity_files=merged)


def openssh_forward_argv(
    target: SshTarget, local_port: int, remote_port: int, known_hosts: Sequence[str] = ()
) -> list[str]:
    """The OpenSSH command equivalent to ``mlctl tunnel`` (for ``--print-ssh``).

    ``-tt`` with a remote ``sleep``, not ``-N``: a session with a terminal makes sshd
    switch off Nagle's algorithm on its side (without it small requests stall ~40 ms).
    ``known_hosts`` (mlctl's pinned keys first) lets ssh trust what mlctl already
    verified; ``ExitOnForwardFailure`` and ``ServerAliveInterval`` make a busy port or a
    dead connection end the command instead of leaving a tunnel that forwards nothing.
    """
    argv = ["ssh", "-tt", "-L", f"127.0.0.1:{local_port}:127.0.0.1:{remote_port}"]
    if target.port != DEFAULT_PORT:
        argv += ["-p", str(target.port)]
    for key in target.identity_files:
        argv += ["-i", key]
    if target.proxy_jump:
        argv += ["-J", target.proxy_jump]
    if known_hosts:
        # ssh splits this option's value on spaces; a path with one goes in double quotes
        files = " ".join(f'"{f}"' if " " in f else f for f in known_hosts)
        argv += ["-o", f"UserKnownHostsFile={files}"]
    argv += ["-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=15"]
    argv.append(f"{target.user}@{target.host}" if target.user else target.host)
    argv.append("sleep 2147483647")
    return argv
