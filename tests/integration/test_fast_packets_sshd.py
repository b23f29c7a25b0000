"""The tunnel's fast packet layer against a real sshd: whole data through key re-exchanges.

A re-key swaps the keys under the fast path while data flows both ways; these tests
make it happen dozens of times in one transfer, asked for by either side, and check
every byte.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlctl.hosts import fast_packets
from mlctl.hosts.ssh import SSHConnector, connect
from mlctl.hosts.target import SshTarget
from mlctl.sandbox.sshd import SandboxSshd, start_sshd
from mlctl.tunnel import Tunnel

TOTAL = 12 * 1000 * 1000


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))

    def loop() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def _target(sshd: SandboxSshd, **extra: Any) -> SshTarget:
    return SshTarget(
        host=sshd.host,
        port=sshd.port,
        user=sshd.user,
        identity_files=(str(sshd.key_path),),
        **extra,
    )


def _count_rekeys(transport: Any) -> list[int]:
    """Count the times new inbound keys are switched on (each key exchange, once)."""
    count = [0]
    real = transport._activate_inbound

    def counting() -> None:
        count[0] += 1
        real()

    transport._activate_inbound = counting
    return count


def _round_trip(port: int, total: int = TOTAL) -> None:
    """Send ``total`` random-sized bytes through the tunnel while reading the echo back."""
    rng = __import__("random").Random(3)
    sent = hashlib.sha256()
    got = hashlib.sha256()
    received = [0]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:

        def read() -> None:
            while received[0] < total:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    return
                got.update(chunk)
                received[0] += len(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        left = total
        while left:
            block = os.urandom(min(left, rng.choice([1, 100, 1400, 16384, 70000, 300000])))
            sent.update(block)
            sock.sendall(block)
            left -= len(block)
        reader.join(60)
    assert received[0] == total
    assert got.hexdigest() == sent.hexdigest()


def _transport(conn: Any) -> Any:
    assert isinstance(conn, SSHConnector)
    return conn._transport


def test_the_tunnel_uses_it_and_routes_replies(sshd: SandboxSshd, echo_port: int) -> None:
    conn = connect(_target(sshd))
    try:
        with Tunnel(conn, echo_port) as tunnel:
            with socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=10) as sock:
                for k in range(200):
                    line = b"%d\n" % k
                    sock.sendall(line)
                    assert sock.recv(100) == line
                packetizer = _transport(conn).packetizer
                assert isinstance(packetizer, fast_packets.FastPacketizer)
                assert len(packetizer._fp_routes) == 1  # this connection's channel
                # the client's socket is read by paramiko's thread (request_loop)
                assert packetizer._fp_loop is not None
                assert len(packetizer._fp_loop._adopted) == 1
            _round_trip(tunnel.local_port, 2_000_000)
    finally:
        conn.close()


def test_turned_off_the_connection_keeps_paramikos_packetizer(
    sshd: SandboxSshd, echo_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLCTL_TUNNEL_DIRECT", "0")
    conn = connect(_target(sshd))
    try:
        with Tunnel(conn, echo_port) as tunnel:
            _round_trip(tunnel.local_port, 1_000_000)
            assert not isinstance(_transport(conn).packetizer, fast_packets.FastPacketizer)
    finally:
        conn.close()


def test_re_keys_asked_for_by_mlctl_keep_every_byte(sshd: SandboxSshd, echo_port: int) -> None:
    conn = connect(_target(sshd))
    try:
        transport = _transport(conn)
        with Tunnel(conn, echo_port) as tunnel:
            _round_trip(tunnel.local_port, 10_000)  # the fast packetizer is in place now
            packetizer = transport.packetizer
            assert isinstance(packetizer, fast_packets.FastPacketizer)
            rekeys = _count_rekeys(transport)
            packetizer.REKEY_BYTES = 256 * 1024  # type: ignore[misc]
            _round_trip(tunnel.local_port)
            loop = packetizer._fp_loop
        assert rekeys[0] >= 10
        # paramiko's thread read the client, handed it back to the pump thread while
        # the keys changed (or the window ran short), and took it again
        assert loop is not None and loop.served > 100 and loop.handed_back >= 1
        assert transport.is_active()
    finally:
        conn.close()


def test_re_keys_asked_for_by_the_server_keep_every_byte(
    tmp_path: Path, sshd_required: None, echo_port: int
) -> None:
    server = start_sshd(tmp_path / "sshd", extra_config=["RekeyLimit 256K"])
    try:
        conn = connect(_target(server))
        try:
            transport = _transport(conn)
            rekeys = _count_rekeys(transport)
            with Tunnel(conn, echo_port) as tunnel:
                _round_trip(tunnel.local_port)
                assert isinstance(transport.packetizer, fast_packets.FastPacketizer)
            assert rekeys[0] >= 10
            assert transport.is_active()
        finally:
            conn.close()
    finally:
        server.stop()


def test_a_tunnel_through_a_jump_host_keeps_paramikos_packetizer(
    sshd: SandboxSshd, echo_port: int
) -> None:
    # The last hop's transport runs over a channel of the first: no socket to read fast.
    conn = connect(_target(sshd, proxy_jump=f"{sshd.user}@127.0.0.1:{sshd.port}"))
    try:
        with Tunnel(conn, echo_port) as tunnel:
            _round_trip(tunnel.local_port, 1_000_000)
            assert not isinstance(_transport(conn).packetizer, fast_packets.FastPacketizer)
    finally:
        conn.close()


def test_many_connections_at_once_each_get_their_own_bytes(
    sshd: SandboxSshd, echo_port: int
) -> None:
    conn = connect(_target(sshd))
    errors: list[BaseException] = []

    def one(port: int) -> None:
        try:
            _round_trip(port, 1_500_000)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    try:
        with Tunnel(conn, echo_port) as tunnel:
            run: Callable[[], None] = lambda: one(tunnel.local_port)  # noqa: E731
            threads = [threading.Thread(target=run) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
    finally:
        conn.close()
    assert errors == []
