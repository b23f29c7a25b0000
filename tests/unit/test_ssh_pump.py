"""SSHConnector._pump against a scripted channel: output that arrives after the exit status.

sshd sends exit-status as soon as the command exits and may still be reading its last
output from the pipe; CI once saw `run` return a 4 MB stdout cut short that way.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Iterator

import pytest

from mlctl.hosts import ssh
from mlctl.hosts.ssh import SSHConnector
from mlctl.hosts.target import SshTarget


class ScriptedChannel:
    """The part of paramiko.Channel that _pump uses; readable through a socketpair."""

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self.out: deque[bytes] = deque()
        self.status = False
        self.eof_received = False
        self.closed = False

    def arrive(self, data: bytes = b"", *, status: bool = False, eof: bool = False) -> None:
        if data:
            self.out.append(data)
        self.status = self.status or status
        self.eof_received = self.eof_received or eof
        self._w.send(b"!")  # like paramiko's channel pipe: readable on news

    def fileno(self) -> int:
        return self._r.fileno()

    def recv_ready(self) -> bool:
        return bool(self.out)

    def recv(self, n: int) -> bytes:
        return self.out.popleft()

    def recv_stderr_ready(self) -> bool:
        return False

    def exit_status_ready(self) -> bool:
        return self.status

    def recv_exit_status(self) -> int:
        return 0

    def close(self) -> None:
        self._r.close()
        self._w.close()


class ActiveTransport:
    def is_active(self) -> bool:
        return True


@pytest.fixture
def connector() -> Iterator[SSHConnector]:
    yield SSHConnector(ActiveTransport(), SshTarget(host="gpu1"))  # type: ignore[arg-type]


def _pump(connector: SSHConnector, chan: ScriptedChannel) -> bytes:
    out: list[bytes] = []
    connector._pump(chan, "cat", 10, out.append, out.append)  # type: ignore[arg-type]
    return b"".join(out)


def test_output_after_the_exit_status_is_not_lost(connector: SSHConnector) -> None:
    chan = ScriptedChannel()
    chan.arrive(b"first ")
    chan.arrive(status=True)  # the status first, the rest of the output later

    def rest() -> None:
        time.sleep(0.2)
        chan.arrive(b"last")
        chan.arrive(eof=True)

    threading.Thread(target=rest).start()
    assert _pump(connector, chan) == b"first last"


def test_a_pipe_held_open_after_exit_ends_after_the_grace_period(
    connector: SSHConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssh, "_EOF_GRACE", 0.2)
    chan = ScriptedChannel()
    chan.arrive(b"all there is", status=True)  # no EOF: a background child holds stdout
    start = time.monotonic()
    assert _pump(connector, chan) == b"all there is"
    assert 0.2 <= time.monotonic() - start < 3
