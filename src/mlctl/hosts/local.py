"""``LocalConnector``: the Connector protocol on this machine, for mlctl on the GPU box itself.

Commands run under ``/bin/sh -c`` in their own process group, so a timeout
kills the whole group, children included.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Callable

from mlctl.errors import ConnectError
from mlctl.hosts.base import (
    Command,
    LineSplitter,
    RunResult,
    StreamChannel,
    check_result,
    command_string,
    decode,
    put_text_command,
    read_text_command,
    timeout_error,
)

_SHELL = "/bin/sh"


class LocalConnector:
    """Run commands and move files on this machine."""

    description = "local"

    def run(
        self,
        cmd: Command,
        *,
        stdin: bytes | None = None,
        timeout: float | None = None,
        check: bool = False,
    ) -> RunResult:
        """Run ``cmd`` to completion and return its RunResult.

        Raises RemoteError when it runs past ``timeout`` (the process group is
        killed) or, with ``check``, when it exits non-zero.
        """
        line = command_string(cmd)
        proc = self._spawn(line, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(stdin or b"", timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise timeout_error(line, timeout or 0.0, self.description) from None
        result = RunResult(proc.returncode, decode(out), decode(err))
        return check_result(result, line, self.description) if check else result

    def run_stream(
        self, cmd: Command, on_line: Callable[[str], None], timeout: float | None = None
    ) -> int:
        """Run ``cmd``, calling ``on_line`` for each line of stdout and stderr.

        Returns the exit code; raises RemoteError when it runs past ``timeout``.
        """
        line = command_string(cmd)
        proc = self._spawn(line, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        splitter = LineSplitter(on_line)
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    _kill_group(proc)
                    raise timeout_error(line, timeout or 0.0, self.description)
                if not sel.select(wait):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                splitter.feed(chunk)
        splitter.finish()
        proc.stdout.close()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return proc.wait(remaining)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise timeout_error(line, timeout or 0.0, self.description) from None

    def put_text(self, path: str, text: str, mode: int = 0o600) -> None:
        """Write ``text`` to ``path`` atomically with ``mode``; RemoteError on failure."""
        self.run(put_text_command(path, mode), stdin=text.encode("utf-8"), check=True)

    def read_text(self, path: str) -> str:
        """Return the content of ``path``; RemoteError when it cannot be read."""
        return self.run(read_text_command(path), check=True).stdout

    def open_forward(self, remote_host: str, remote_port: int) -> StreamChannel:
        """Return a TCP socket to ``remote_host:remote_port``; ConnectError when refused."""
        try:
            sock = socket.create_connection((remote_host, remote_port), timeout=10)
        except OSError as exc:
            raise ConnectError(
                f"cannot open {remote_host}:{remote_port} on this machine: {exc}",
                "is the server running and listening on that address and port?",
            ) from exc
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def close(self) -> None:
        """Nothing to close for the local machine."""

    def _spawn(self, line: str, *, stderr: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [_SHELL, "-c", line],
            stdin=subprocess.PIPE if stderr == subprocess.PIPE else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()
