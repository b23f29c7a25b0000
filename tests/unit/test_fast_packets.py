"""FastPacketizer against paramiko's own Packetizer, over socketpairs (no SSH server).

Every test compares with what paramiko itself reads, writes and records, so a
difference in the wire format, the sequence numbers, the IVs or the re-key
counters shows up here first.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import paramiko
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from paramiko.message import Message
from paramiko.packet import NeedRekeyException, Packetizer

from mlctl.hosts import fast_packets
from mlctl.hosts.fast_packets import FastPacketizer

KEY = bytes(range(16))
IV = bytes(range(100, 112))
P = "_Packetizer__"


class FakeTransport:
    """The attributes of paramiko.Transport that the fast path reads."""

    def __init__(self, packetizer: Packetizer) -> None:
        self.packetizer: Any = packetizer
        self._expected_packet: tuple[int, ...] = ()
        self.clear_to_send = threading.Event()
        self.clear_to_send.set()
        self.clear_to_send_lock = threading.Lock()
        self.active = True
        self.user_messages: list[bytes] = []

    def _send_user_message(self, m: Any) -> None:
        self.user_messages.append(m.asbytes())


def _gcm_out(p: Packetizer, iv: bytes = IV) -> None:
    p.set_outbound_cipher(AESGCM(KEY), 16, None, 16, b"", aead=True, iv_out=iv)  # type: ignore[arg-type]


def _gcm_in(p: Packetizer, iv: bytes = IV) -> None:
    p.set_inbound_cipher(AESGCM(KEY), 16, None, 16, b"", aead=True, iv_in=iv)  # type: ignore[arg-type]


def _ctr(direction: str, p: Packetizer) -> None:
    """aes128-ctr + hmac-sha2-256 (not AEAD): paramiko's own path must take over."""
    cipher = Cipher(algorithms.AES(KEY), modes.CTR(bytes(16)))
    import hashlib

    if direction == "out":
        p.set_outbound_cipher(cipher.encryptor(), 16, hashlib.sha256, 32, b"m" * 32, sdctr=True)  # type: ignore[arg-type]
    else:
        p.set_inbound_cipher(cipher.decryptor(), 16, hashlib.sha256, 32, b"m" * 32)  # type: ignore[arg-type]


def _ready(sock: socket.socket) -> Packetizer:
    sock.settimeout(0.1)  # as paramiko's Transport does
    p = Packetizer(sock)
    p._initial_kex_done = True  # type: ignore[attr-defined]
    p.start_handshake(60)
    p.complete_handshake()
    return p


def _gcm_pair(a: socket.socket, b: socket.socket) -> tuple[Packetizer, Packetizer]:
    """paramiko's writer on ``a`` and reader on ``b``, both under AES-GCM with one key."""
    writer, reader = _ready(a), _ready(b)
    _gcm_out(writer)
    _gcm_in(reader)
    return writer, reader


def _fast(p: Packetizer) -> tuple[FastPacketizer, FakeTransport]:
    transport = FakeTransport(p)
    fast = fast_packets.install(transport)
    assert fast is p and isinstance(p, FastPacketizer)
    return fast, transport


@pytest.fixture
def link() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def spare() -> Iterator[Callable[[], socket.socket]]:
    """More socket ends for Packetizers that only need one (their peers are drained)."""
    opened: list[socket.socket] = []

    def drain(sock: socket.socket) -> None:
        try:
            while sock.recv(1 << 20):
                pass
        except OSError:
            pass

    def make() -> socket.socket:
        a, b = socket.socketpair()
        opened.extend((a, b))
        threading.Thread(target=drain, args=(b,), daemon=True).start()
        return a

    yield make
    for sock in opened:
        sock.close()


def _message(ptype: int, body: bytes) -> Message:
    m = Message()
    m.add_byte(bytes([ptype]))
    m.add_bytes(body)
    return m


def _books_in(p: Packetizer) -> tuple[Any, ...]:
    names = ("sequence_number_in", "iv_in", "received_bytes", "received_packets")
    return tuple(getattr(p, P + n) for n in names)


def _books_out(p: Packetizer) -> tuple[Any, ...]:
    names = ("sequence_number_out", "iv_out", "sent_bytes", "sent_packets")
    return tuple(getattr(p, P + n) for n in names)


SIZES = [0, 1, 3, 11, 12, 15, 16, 17, 100, 1000, 4095, 16384, 32768, 35000]


def _wire(messages: list[Message]) -> bytes:
    """What paramiko's own writer puts on the wire for ``messages`` under AES-GCM."""
    a, b = socket.socketpair()
    with a, b:
        writer = _ready(a)
        _gcm_out(writer)
        out = bytearray()
        for m in messages:
            writer.send_message(m)
            b.settimeout(1)
            while True:
                b.setblocking(False)
                try:
                    out += b.recv(1 << 20)
                except BlockingIOError:
                    break
        return bytes(out)


def _dribble(sock: socket.socket, data: bytes, seed: int) -> threading.Thread:
    """Write ``data`` in random pieces (1 byte to 64 KiB) with short pauses."""
    rng = random.Random(seed)

    def run() -> None:
        pos = 0
        while pos < len(data):
            n = rng.choice([1, 2, 5, 17, 100, 4096, 65536])
            sock.sendall(data[pos : pos + n])
            pos += n
            if rng.random() < 0.05:
                time.sleep(0.002)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_reads_what_paramiko_writes_and_keeps_the_same_books() -> None:
    rng = random.Random(5)
    messages = [_message(rng.choice([94, 95, 96, 98, 80]), os.urandom(n)) for n in SIZES * 3]
    wire = _wire(messages)
    results = []
    for make_fast in (False, True):
        a, b = socket.socketpair()
        with a, b:
            reader = _ready(b)
            _gcm_in(reader)
            if make_fast:
                _fast(reader)
            writing = _dribble(a, wire, seed=7)
            got = [reader.read_message() for _ in messages]
            writing.join(10)
            results.append(([(t, m.asbytes()) for t, m in got], _books_in(reader)))
    (plain, plain_books), (fast, fast_books) = results
    assert fast == plain
    assert [t for t, _ in fast] == [m.asbytes()[0] for m in messages]
    assert fast_books == plain_books and fast_books[3] == len(messages)


def test_paramiko_reads_what_it_writes_and_the_books_match(
    link: tuple[socket.socket, socket.socket], spare: Callable[[], socket.socket]
) -> None:
    a, b = link
    writer, reader = _gcm_pair(a, b)
    _fast(writer)
    reference = _ready(spare())  # paramiko's writer, for its books only
    _gcm_out(reference)
    for n in SIZES:
        body = os.urandom(n)
        got: list[tuple[int, Message]] = []
        thread = threading.Thread(target=lambda out=got: out.append(reader.read_message()))
        thread.start()
        writer.send_message(_message(94, body))
        thread.join(5)
        assert got and got[0][0] == 94 and got[0][1].asbytes() == body
        reference.send_message(_message(94, body))
    assert _books_out(writer) == _books_out(reference)


def _data(chanid: int, body: bytes) -> Message:
    m = Message()
    m.add_byte(bytes([94]))
    m.add_int(chanid)
    m.add_string(body)
    return m


def test_channel_data_for_a_routed_channel_goes_to_its_receiver(
    link: tuple[socket.socket, socket.socket],
) -> None:
    a, b = link
    writer, reader = _gcm_pair(a, b)
    fast, transport = _fast(reader)
    delivered: list[bytes] = []
    assert fast_packets.route(transport, 7, delivered.append)

    writer.send_message(_data(7, b"to seven"))
    assert reader.read_message()[0] == 2  # MSG_IGNORE: Transport.run just loops
    assert delivered == [b"to seven"]
    writer.send_message(_data(8, b"to eight"))  # not routed: paramiko dispatches it
    ptype, m = reader.read_message()
    assert (ptype, m.get_int(), m.get_binary()) == (94, 8, b"to eight")
    transport._expected_packet = (20,)  # a key exchange waits for KEXINIT: paramiko sees all
    writer.send_message(_data(7, b"during kex"))
    ptype, m = reader.read_message()
    assert (ptype, m.get_int(), m.get_binary()) == (94, 7, b"during kex")
    transport._expected_packet = ()
    fast_packets.unroute(transport, 7)
    writer.send_message(_data(7, b"after"))
    assert reader.read_message()[0] == 94
    assert delivered == [b"to seven"]
    assert reader.get_mac_size_in() == 16 and _books_in(reader)[3] == 4


def test_packets_that_arrive_together_reach_the_receiver_in_one_piece(
    link: tuple[socket.socket, socket.socket],
) -> None:
    a, b = link
    writer, reader = _gcm_pair(a, b)
    _, transport = _fast(reader)
    seven: list[bytes] = []
    eight: list[bytes] = []
    fast_packets.route(transport, 7, seven.append)
    fast_packets.route(transport, 8, eight.append)
    for m in (_data(7, b"HTTP/1.1 200 OK\r\n\r\n"), _data(7, b"pong"), _data(8, b"other")):
        writer.send_message(m)
    eof = Message()
    eof.add_byte(bytes([96]))  # CHANNEL_EOF for 7, after its data
    eof.add_int(7)
    writer.send_message(eof)
    writer.send_message(_data(7, b"late"))
    time.sleep(0.05)  # all of it waits in the socket: one read takes it
    ptype, m = reader.read_message()  # the EOF is paramiko's: what came before is delivered
    assert (ptype, m.get_int()) == (96, 7)
    # one piece for the headers and the body; the other channel's data on its own
    assert seven == [b"HTTP/1.1 200 OK\r\n\r\npong"] and eight == [b"other"]
    assert reader.read_message()[0] == 2 and seven == [seven[0], b"late"]
    assert _books_in(reader)[3] == 5


def test_other_ciphers_are_left_to_paramiko(link: tuple[socket.socket, socket.socket]) -> None:
    a, b = link
    writer, reader = _ready(a), _ready(b)
    _ctr("out", writer)
    _ctr("in", reader)
    _fast(writer)
    _fast(reader)
    for n in SIZES:
        body = os.urandom(n)
        writer.send_message(_message(94, body))
        ptype, m = reader.read_message()
        assert (ptype, m.asbytes()) == (94, body)


def test_bytes_read_ahead_reach_paramiko_when_the_cipher_changes(
    link: tuple[socket.socket, socket.socket],
) -> None:
    a, b = link
    writer, reader = _gcm_pair(a, b)
    _fast(reader)
    first = [os.urandom(n) for n in (10, 200, 3000)]
    then = [os.urandom(n) for n in (5, 700)]
    for body in first:
        writer.send_message(_message(94, body))
    _ctr("out", writer)  # as after NEWKEYS: the next packets use the new keys
    for body in then:
        writer.send_message(_message(94, body))
    time.sleep(0.05)  # all of it is waiting: the first read takes it all into the buffer
    assert [reader.read_message()[1].asbytes() for _ in first] == first
    assert len(reader._fp_buf) - reader._fp_pos > 0  # type: ignore[attr-defined]
    _ctr("in", reader)
    assert [reader.read_message()[1].asbytes() for _ in then] == then


def test_re_key_counters_ask_for_a_new_key_as_paramiko_does() -> None:
    flags: dict[bool, list[tuple[bool, bool]]] = {}
    for make_fast in (False, True):
        a, b = socket.socketpair()
        with a, b:
            writer, reader = _gcm_pair(a, b)
            if make_fast:
                _fast(writer)
                _fast(reader)
            writer.REKEY_PACKETS = 3  # type: ignore[misc]
            reader.REKEY_BYTES = 200  # type: ignore[misc]
            flags[make_fast] = []
            for _ in range(5):
                writer.send_message(_message(94, b"x" * 40))
                reader.read_message()
                flags[make_fast].append((writer.need_rekey(), reader.need_rekey()))
    assert flags[True] == flags[False]
    assert [w for w, _ in flags[True]] == [False, False, True, True, True]
    assert True in [r for _, r in flags[True]] and not flags[True][0][1]


def test_idle_with_a_re_key_wanted_raises_need_rekey(
    link: tuple[socket.socket, socket.socket],
) -> None:
    _, b = link
    reader = _ready(b)
    _gcm_in(reader)
    _fast(reader)
    reader._trigger_rekey()  # type: ignore[attr-defined]
    with pytest.raises(NeedRekeyException):
        reader.read_message()


def test_end_of_stream_and_close_are_eof(link: tuple[socket.socket, socket.socket]) -> None:
    a, b = link
    reader = _ready(b)
    _gcm_in(reader)
    _fast(reader)
    a.close()
    with pytest.raises(EOFError):
        reader.read_message()
    c, d = socket.socketpair()
    with c, d:
        reader = _ready(d)
        _gcm_in(reader)
        _fast(reader)
        threading.Timer(0.2, reader.close).start()
        with pytest.raises(EOFError):  # noticed at the next 0.1 s timeout
            reader.read_message()
        with pytest.raises(EOFError):  # and at once when already closed (no fd to wait on)
            reader.read_message()


def test_corrupt_or_oversized_packets_are_refused(
    link: tuple[socket.socket, socket.socket],
) -> None:
    a, b = link
    reader = _ready(b)
    _gcm_in(reader)
    _fast(reader)
    wire = bytearray(_wire([_message(94, b"hello")]))
    wire[10] ^= 1
    a.sendall(wire)
    with pytest.raises(InvalidTag):
        reader.read_message()
    c, d = socket.socketpair()
    with c, d:
        reader = _ready(d)
        _gcm_in(reader)
        _fast(reader)
        c.sendall((1 << 30).to_bytes(4, "big") + b"\0" * 16)
        with pytest.raises(paramiko.SSHException, match="Invalid packet length"):
            reader.read_message()


def test_writes_go_whole_when_the_socket_takes_them_in_parts(
    link: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = link
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    writer, reader = _gcm_pair(a, b)
    _fast(writer)
    assert writer._fp_write_fd  # type: ignore[attr-defined]
    bodies = [os.urandom(30000) for _ in range(20)]
    got: list[bytes] = []

    def read_all() -> None:
        got.extend(reader.read_message()[1].asbytes() for _ in bodies)

    thread = threading.Thread(target=read_all)
    thread.start()
    for body in bodies:
        writer.send_message(_message(94, body))
    thread.join(10)
    assert got == bodies


def test_without_sigpipe_ignored_writes_use_paramikos_send(
    monkeypatch: pytest.MonkeyPatch, link: tuple[socket.socket, socket.socket]
) -> None:
    real = signal.getsignal
    monkeypatch.setattr(
        signal, "getsignal", lambda s: signal.SIG_DFL if s == signal.SIGPIPE else real(s)
    )
    a, b = link
    writer, reader = _gcm_pair(a, b)
    _fast(writer)
    assert not writer._fp_write_fd  # type: ignore[attr-defined]
    monkeypatch.setattr(fast_packets.os, "write", lambda *_: pytest.fail("os.write used"))
    writer.send_message(_message(94, b"via write_all"))
    assert reader.read_message()[1].asbytes() == b"via write_all"


def test_install_declines_what_it_cannot_handle(
    link: tuple[socket.socket, socket.socket],
    monkeypatch: pytest.MonkeyPatch,
    spare: Callable[[], socket.socket],
) -> None:
    a, b = link

    class NotASocket:
        def settimeout(self, _: float) -> None:
            pass

    # a ProxyJump hop: the transport runs over a paramiko channel, not a socket
    assert fast_packets.install(FakeTransport(_ready(NotASocket()))) is None  # type: ignore[arg-type]
    unfinished = Packetizer(a)
    assert fast_packets.install(FakeTransport(unfinished)) is None
    missing = _ready(b)
    delattr(missing, P + "iv_in")
    assert fast_packets.install(FakeTransport(missing)) is None
    no_kex_state = FakeTransport(_ready(spare()))
    del no_kex_state._expected_packet
    assert fast_packets.install(no_kex_state) is None
    monkeypatch.setattr(paramiko, "__version__", "6.0.0")
    assert fast_packets.install(FakeTransport(_ready(spare()))) is None
    assert not fast_packets.route(FakeTransport(unfinished), 1, print)


def test_install_is_once_and_drops_the_handshake_timer(
    link: tuple[socket.socket, socket.socket],
) -> None:
    p = _ready(link[0])
    assert getattr(p, P + "timer") is not None  # paramiko keeps cancelling it after each packet
    transport = FakeTransport(p)
    first = fast_packets.install(transport)
    assert first is p and fast_packets.install(transport) is first
    assert getattr(p, P + "timer") is None and not p.handshake_timed_out()


class FakeChannel:
    def __init__(self, transport: FakeTransport, window: int) -> None:
        self.transport = transport
        self.lock = threading.Lock()
        self.closed = False
        self.remote_chanid = 42
        self.window = window
        self.sent_plainly: list[bytes] = []

    def _wait_for_send_window(self, size: int) -> int:
        size = min(size, self.window)
        self.window -= size
        return size

    def sendall(self, data: bytes) -> None:
        self.sent_plainly.append(data)


def test_sender_sends_channel_data_with_window_and_key_exchange_rules(
    link: tuple[socket.socket, socket.socket], spare: Callable[[], socket.socket]
) -> None:
    a, b = link
    writer, reader = _gcm_pair(a, b)
    fast, transport = _fast(writer)
    channel = FakeChannel(transport, window=10)
    send = fast_packets.sender(channel)
    send(b"0123456789")
    ptype, m = reader.read_message()
    assert (ptype, m.get_int(), m.get_binary()) == (94, 42, b"0123456789")
    with pytest.raises(OSError, match="closed"):  # no window left: paramiko's send says 0
        send(b"more")
    channel.window = 100
    transport.clear_to_send.clear()  # a key exchange is on: paramiko's queue, not ours
    send(b"held")
    assert transport.user_messages == [bytes([94]) + (42).to_bytes(4, "big") + b"\0\0\0\x04held"]
    channel.closed = True
    with pytest.raises(OSError, match="closed"):
        send(b"x")
    plain = FakeChannel(FakeTransport(_ready(spare())), window=5)
    assert fast_packets.sender(plain) == plain.sendall  # no FastPacketizer: paramiko's
    assert fast is writer
