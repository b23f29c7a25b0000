"""The ``Connector`` protocol: what mlctl needs from a host, SSH or local.

A command is either a shell string the caller built from quoted parts, or an
argv list that is quoted and joined here. File writes go through ``exec`` +
stdin so hosts without SFTP work, and the mode is set before the file appears
under its final name.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mlctl import shell
from mlctl.errors import RemoteError

Command = str | Sequence[str]


@dataclass(frozen=True)
class RunResult:
    """What a finished command left: its exit status and decoded output."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.exit_code == 0


class StreamChannel(Protocol):
    """A bidirectional byte stream: a socket, or a paramiko forwarded channel."""

    def recv(self, nbytes: int, /) -> bytes: ...

    def sendall(self, data: bytes, /) -> None: ...

    def shutdown(self, how: int, /) -> None: ...

    def settimeout(self, timeout: float | None, /) -> None: ...

    def fileno(self) -> int: ...

    def close(self) -> None: ...


class Connector(Protocol):
    """One open connection to a host; reuse it for every step of a command."""

    @property
    def description(self) -> str:
        """Say which host this is, for messages (``root@1.2.3.4:40022``, ``local``)."""
        ...

    def run(
        self,
        cmd: Command,
        *,
        stdin: bytes | None = None,
        timeout: float | None = None,
        check: bool = False,
    ) -> RunResult:
        """Run a command to completion; RemoteError on timeout or (with check) non-zero exit."""
        ...

    def run_stream(
        self, cmd: Command, on_line: Callable[[str], None], timeout: float | None = None
    ) -> int:
        """Run a command, calling ``on_line`` per line of stdout+stderr; return its exit code."""
        ...

    def put_text(self, path: str, text: str, mode: int = 0o600) -> None:
        """Write ``text`` to ``path`` atomically with ``mode``; RemoteError on failure."""
        ...

    def read_text(self, path: str) -> str:
        """Return the content of ``path``; RemoteError when it cannot be read."""
        ...

    def open_forward(self, remote_host: str, remote_port: int) -> StreamChannel:
        """Open a stream to ``remote_host:remote_port`` as seen from the host."""
        ...

    def close(self) -> None:
        """Close the connection; further calls fail."""
        ...


def command_string(cmd: Command) -> str:
    """Return the shell string for ``cmd``: a str as is, an argv quoted and joined."""
    if isinstance(cmd, str):
        return cmd
    argv = list(cmd)
    if not argv:
        raise ValueError("empty command")
    return shell.join(argv)


def put_text_command(path: str, mode: int) -> str:
    """Return the shell command that writes stdin to ``path`` atomically with ``mode``.

    The data lands in a temporary file beside ``path`` (umask 077, so it is
    never readable by others), gets its mode, then is renamed over ``path``.
    Raises ValueError for a mode outside 0..0o7777 or an empty path.
    """
    if not path:
        raise ValueError("empty path")
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"invalid file mode {mode:o}")
    tmp = shell.quote(f"{path}.mlctl-tmp-{secrets.token_hex(6)}")
    final = shell.quote(path)
    write = shell.and_then(f"cat > {tmp}", f"chmod {mode:04o} {tmp}", f"mv -f {tmp} {final}")
    return f"umask 077 && {{ {write}; }} || {{ rm -f {tmp}; exit 1; }}"


def read_text_command(path: str) -> str:
    """Return the shell command that prints the file at ``path``."""
    return f"cat -- {shell.quote(path)}"


def decode(data: bytes) -> str:
    """Decode command output as UTF-8, replacing what is not."""
    return data.decode("utf-8", errors="replace")


def check_result(result: RunResult, cmd: str, where: str) -> RunResult:
    """Return ``result`` when it succeeded; raise RemoteError naming the command otherwise."""
    if result.ok:
        return result
    shown = cmd if len(cmd) <= 200 else cmd[:197] + "..."
    tail = "\n".join(result.stderr.strip().splitlines()[-5:])
    hint = f"stderr: {tail}" if tail else "the command printed nothing on stderr"
    raise RemoteError(f"command failed with exit code {result.exit_code} on {where}: {shown}", hint)


def timeout_error(cmd: str, timeout: float, where: str) -> RemoteError:
    """Return the RemoteError for a command that ran past its timeout."""
    shown = cmd if len(cmd) <= 200 else cmd[:197] + "..."
    return RemoteError(
        f"command timed out after {timeout:g}s on {where}: {shown}",
        "raise the timeout, or check on the host whether the command is stuck",
    )


class LineSplitter:
    """Turn a stream of byte chunks into complete decoded lines."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self._on_line = on_line
        self._pending = b""

    def feed(self, chunk: bytes) -> None:
        """Add bytes; call ``on_line`` for each line they complete."""
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            self._on_line(decode(line).rstrip("\r"))

    def finish(self) -> None:
        """Flush a last line that had no newline."""
        if self._pending:
            self._on_line(decode(self._pending).rstrip("\r"))
            self._pending = b""
