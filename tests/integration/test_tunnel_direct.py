"""Replies sent from paramiko's thread (tunnel_pipe) through a real sshd: intact and in order."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from mlctl import tunnel_pipe
from mlctl.hosts.ssh import connect
from mlctl.hosts.target import SshTarget
from mlctl.sandbox.sshd import SandboxSshd
from mlctl.tunnel import Tunnel

BIG = 24 * 1000 * 1000  # many times paramiko's 2 MB receive window


def _serve(handler: object) -> tuple[socket.socket, threading.Thread]:
    server = socket.create_server(("127.0.0.1", 0))

    def loop() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=handler, args=(conn,), daemon=True).start()  # type: ignore[arg-type]

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return server, thread


def _greet_then_echo(conn: socket.socket) -> None:
    """Speaks first (so bytes may reach the channel before the pipe is installed)."""
    with conn:
        conn.sendall(b"hello\n")
        while data := conn.recv(65536):
            if data.startswith(b"BIG"):
                block = bytes(range(256)) * 4096
                left = BIG
                while left:
                    conn.sendall(block[: min(left, len(block))])
                    left -= min(left, len(block))
                return
            conn.sendall(data)


@pytest.fixture
def pipes(monkeypatch: pytest.MonkeyPatch) -> list[tunnel_pipe.DirectPipe]:
    installed: list[tunnel_pipe.DirectPipe] = []
    real = tunnel_pipe.install

    def spy(channel: object, client: socket.socket) -> tunnel_pipe.DirectPipe | None:
        pipe = real(channel, client)
        if pipe is not None:
            installed.append(pipe)
        return pipe

    monkeypatch.setattr(tunnel_pipe, "install", spy)
    return installed


@pytest.fixture
def tunnel(sshd: SandboxSshd) -> Iterator[Tunnel]:
    server, _ = _serve(_greet_then_echo)
    target = SshTarget(
        host=sshd.host, port=sshd.port, user=sshd.user, identity_files=(str(sshd.key_path),)
    )
    conn = connect(target)
    with Tunnel(conn, server.getsockname()[1]) as t:
        yield t
    conn.close()
    server.close()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(min(1 << 20, n - len(out)))
        assert chunk, f"closed after {len(out)} of {n} bytes"
        out += chunk
    return bytes(out)


def test_small_replies_go_direct_and_arrive_in_order(
    tunnel: Tunnel, pipes: list[tunnel_pipe.DirectPipe]
) -> None:
    with socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=10) as sock:
        assert _recv_exactly(sock, 6) == b"hello\n"
        # 700 x 4000 bytes: more than the 2 MB window, so the window credit for bytes
        # sent from paramiko's thread must reach the host, or this stalls
        for k in range(700):
            line = (b"%d " % k) * 1000
            line = line[:3999] + b"\n"
            sock.sendall(line)
            assert _recv_exactly(sock, len(line)) == line
    assert len(pipes) == 1 and pipes[0].direct_bytes > 2_500_000


def test_a_body_many_windows_long_arrives_whole(
    tunnel: Tunnel, pipes: list[tunnel_pipe.DirectPipe]
) -> None:
    expected = hashlib.sha256((bytes(range(256)) * 4096 * 24)[:BIG]).hexdigest()
    with socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=20) as sock:
        assert _recv_exactly(sock, 6) == b"hello\n"
        sock.sendall(b"BIG")
        assert hashlib.sha256(_recv_exactly(sock, BIG)).hexdigest() == expected
        assert sock.recv(1) == b""  # the far end closed: EOF passed on
    assert len(pipes) == 1


def test_a_slow_reader_gets_everything_and_does_not_stall_others(
    tunnel: Tunnel, pipes: list[tunnel_pipe.DirectPipe]
) -> None:
    slow = socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=20)
    assert _recv_exactly(slow, 6) == b"hello\n"
    slow.sendall(b"BIG")
    time.sleep(0.5)  # its reply fills every buffer on the way: the pump is blocked on it
    # While the slow reader does not read its 24 MB, another client is served at once.
    with socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=5) as fast:
        assert _recv_exactly(fast, 6) == b"hello\n"
        fast.sendall(b"ping\n")
        assert _recv_exactly(fast, 5) == b"ping\n"
    got = 0
    digest = hashlib.sha256()
    while got < BIG:
        chunk = slow.recv(65536)
        assert chunk
        digest.update(chunk)
        got += len(chunk)
    slow.close()
    assert digest.hexdigest() == hashlib.sha256((bytes(range(256)) * 4096 * 24)[:BIG]).hexdigest()


def test_turned_off_it_uses_paramikos_buffer(
    tunnel: Tunnel, pipes: list[tunnel_pipe.DirectPipe], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLCTL_TUNNEL_DIRECT", "0")
    with socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=10) as sock:
        assert _recv_exactly(sock, 6) == b"hello\n"
        sock.sendall(b"BIG")
        assert len(_recv_exactly(sock, BIG)) == BIG
    assert pipes == []
