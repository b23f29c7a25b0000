"""DirectPipe without SSH: a socketpair for the client, a fake channel for paramiko."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from paramiko.buffered_pipe import BufferedPipe

from mlctl import tunnel_pipe
from mlctl.tunnel_pipe import DIRECT_MAX, DirectPipe


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def _send_user_message(self, m: Any) -> None:
        self.sent.append(m.asbytes())


class FakeChannel:
    """What DirectPipe and install use of paramiko.Channel."""

    def __init__(self, threshold: int = 1 << 30) -> None:
        self.in_buffer: Any = BufferedPipe()
        self.lock = threading.Lock()
        self.transport = FakeTransport()
        self.remote_chanid = 7
        self.eof_received = False
        self.threshold = threshold
        self.sofar = 0
        self.windows: list[int] = []
        self.pipe: DirectPipe | None = None

    def _check_add_window(self, n: int) -> int:
        # DirectPipe must not hold its own lock here (Channel.close takes them the other way)
        if self.pipe is not None:
            assert not self.pipe._lock.locked()
        self.windows.append(n)
        self.sofar += n
        if self.sofar <= self.threshold:
            return 0
        out, self.sofar = self.sofar, 0
        return out


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    b.settimeout(5)
    yield a, b
    a.close()
    b.close()


def _pipe(client: socket.socket, channel: FakeChannel) -> DirectPipe:
    pipe = tunnel_pipe.install(channel, client)
    assert pipe is not None
    channel.pipe = pipe
    return pipe


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "closed early"
        out += chunk
    return out


def test_small_packets_go_straight_to_the_client(pair: tuple[socket.socket, ...]) -> None:
    client, reader = pair
    channel = FakeChannel()
    pipe = _pipe(client, channel)
    pipe.feed(b"HTTP/1.1 200 OK\r\n\r\n")
    pipe.feed(b"pong")
    assert _recv_exactly(reader, 23) == b"HTTP/1.1 200 OK\r\n\r\npong"
    assert pipe.direct_bytes == 23 and len(pipe) == 0
    # the window for what went out directly is counted in batches, not per packet
    assert channel.windows == []
    chunk = b"z" * 8200
    for _ in range(4):
        pipe.feed(chunk)
        assert _recv_exactly(reader, len(chunk)) == chunk
    assert channel.windows == [23 + 4 * 8200]  # counted once the batch reached 32 KiB
    pipe.feed(b"more")
    assert _recv_exactly(reader, 4) == b"more" and channel.windows == [32823]


def test_big_packets_are_queued_for_the_pump(pair: tuple[socket.socket, ...]) -> None:
    client, _ = pair
    pipe = _pipe(client, FakeChannel())
    big = b"x" * (DIRECT_MAX + 1)
    pipe.feed(big)
    pipe.feed(b"after")  # queued behind it, never ahead of it
    assert pipe.direct_bytes == 0
    data, credit, finished = pipe.take(1 << 20)
    assert (data, credit, finished) == (big + b"after", 0, False)


def test_what_the_socket_cannot_take_is_queued_in_order(pair: tuple[socket.socket, ...]) -> None:
    client, reader = pair
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    pipe = _pipe(client, FakeChannel())
    sent: list[bytes] = []
    k = 0
    while len(pipe) == 0:  # until the socket buffer is full
        packet = bytes([65 + k % 26]) * 1000
        pipe.feed(packet)
        sent.append(packet)
        k += 1
        assert k < 10_000
    for k in range(5):  # these must wait behind the queue
        packet = bytes([97 + k]) * 100
        pipe.feed(packet)
        sent.append(packet)
    expected = b"".join(sent)
    assert 0 < pipe.direct_bytes < len(expected)

    got = bytearray()

    def drain() -> None:
        while len(got) < len(expected):
            got.extend(reader.recv(65536))

    t = threading.Thread(target=drain)
    t.start()
    while len(pipe):
        data, _, _ = pipe.take(1 << 20)
        client.sendall(data)
        pipe.sent()
    t.join(5)
    assert bytes(got) == expected


def test_nothing_goes_direct_while_the_pump_is_sending(pair: tuple[socket.socket, ...]) -> None:
    client, _ = pair
    pipe = _pipe(client, FakeChannel())
    pipe.feed(b"y" * (DIRECT_MAX + 1))
    data, _, _ = pipe.take(1 << 20)  # the pump holds it, not yet sent
    pipe.feed(b"small")
    assert pipe.direct_bytes == 0 and len(pipe) == 5
    pipe.sent()
    pipe.feed(b"next")  # still behind "small"
    assert pipe.direct_bytes == 0


def test_window_credit_for_direct_bytes_reaches_the_pump(pair: tuple[socket.socket, ...]) -> None:
    client, reader = pair
    channel = FakeChannel(threshold=10)
    pipe = _pipe(client, channel)
    for _ in range(3):  # 36 000 bytes: over one credit batch, so counted (and > 10)
        pipe.feed(b"0123456789AB" * 1000)
        assert _recv_exactly(reader, 12000) == b"0123456789AB" * 1000
    assert pipe.take(100) == (b"", 36000, False)  # the pump sends it (next test)


def test_pump_sends_window_adjust_and_ends_at_eof(pair: tuple[socket.socket, ...]) -> None:
    client, reader = pair
    channel = FakeChannel(threshold=10)
    pipe = _pipe(client, channel)
    for _ in range(3):
        pipe.feed(b"0123456789AB" * 1000)
    channel.eof_received = True
    pipe.close()
    got = bytearray()
    reading = threading.Thread(target=lambda: got.extend(_recv_exactly(reader, 36000)))
    reading.start()
    assert tunnel_pipe.pump(pipe, channel, client, 1 << 20) is True
    reading.join(5)
    assert bytes(got) == b"0123456789AB" * 3000
    assert reader.recv(10) == b""  # half-closed after the far end's EOF
    # SSH_MSG_CHANNEL_WINDOW_ADJUST (93), recipient channel 7, 36 000 bytes
    adjust = bytes([93]) + (7).to_bytes(4, "big") + (36000).to_bytes(4, "big")
    assert channel.transport.sent == [adjust]


def test_pump_reports_a_lost_connection(pair: tuple[socket.socket, ...]) -> None:
    client, _ = pair
    channel = FakeChannel()
    pipe = _pipe(client, channel)
    pipe.close()  # closed without EOF from the far end: the transport died
    assert tunnel_pipe.pump(pipe, channel, client, 1 << 20) is False


def test_a_broken_client_drops_later_data(pair: tuple[socket.socket, ...]) -> None:
    client, reader = pair
    channel = FakeChannel()
    pipe = _pipe(client, channel)
    pipe.feed(b"z" * (DIRECT_MAX + 1))
    reader.close()
    client.close()
    assert tunnel_pipe.pump(pipe, channel, client, 1 << 20) is False
    pipe.feed(b"more")  # paramiko's thread keeps feeding: never raises, keeps nothing
    assert len(pipe) == 0


def test_feed_never_raises_on_a_closed_client(pair: tuple[socket.socket, ...]) -> None:
    client, _ = pair
    pipe = _pipe(client, FakeChannel())
    client.close()
    pipe.feed(b"late")
    assert len(pipe) == 4  # left for the pump, which finds the error


def test_install_moves_early_bytes_and_forwards_late_ones(pair: tuple[socket.socket, ...]) -> None:
    client, reader = pair
    channel = FakeChannel()
    old = channel.in_buffer
    old.feed(b"early ")  # arrived before install
    pipe = _pipe(client, channel)
    assert channel.in_buffer is pipe
    old.feed(b"late ")  # paramiko's thread held the old buffer at the switch
    pipe.feed(b"new")
    data, _, _ = pipe.take(100)
    assert data == b"early late new"
    assert pipe.direct_bytes == 0  # queued bytes keep everything behind them


def test_channel_recv_still_works_on_the_pipe(pair: tuple[socket.socket, ...]) -> None:
    client, _ = pair
    pipe = _pipe(client, FakeChannel())
    pipe.feed(b"q" * (DIRECT_MAX + 1))
    assert pipe.read_ready()
    assert pipe.read(3) == b"qqq"
    event = threading.Event()
    pipe.set_event(event)
    assert event.is_set()
    assert len(pipe.empty()) == DIRECT_MAX - 2
    with pytest.raises(TimeoutError):
        pipe.read(1, timeout=0.01)
    pipe.close()
    assert pipe.read(1) == b""


def test_install_declines(pair: tuple[socket.socket, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = pair
    assert tunnel_pipe.install(object(), client) is None  # not a paramiko channel
    channel = FakeChannel()
    channel.in_buffer = object()  # a buffer of some other shape
    assert tunnel_pipe.install(channel, client) is None
    client.settimeout(1.0)  # a send on it could wait: never on paramiko's thread
    assert tunnel_pipe.install(FakeChannel(), client) is None
    client.settimeout(None)
    monkeypatch.setenv("MLCTL_TUNNEL_DIRECT", "0")
    channel = FakeChannel()
    assert tunnel_pipe.install(channel, client) is None
    assert isinstance(channel.in_buffer, BufferedPipe)
