"""A faster packet layer for a paramiko transport that carries a tunnel.

paramiko spends about 7 µs of Python per SSH packet on a small packet's way in or
out (``Packetizer.read_message`` reads each packet with two socket calls, then
``Transport.run`` builds a ``Message``, parses it, looks the channel up under a
lock and cancels the handshake timer again; ``Channel.send`` builds a
``Message`` and passes three layers of locks). A small request through the
tunnel is three packets, so that Python is most of what mlctl's tunnel adds to
a round trip compared with OpenSSH (``benchmarks/tunnel.py``).

:class:`FastPacketizer` does the same work with less, for the AES-GCM ciphers
mlctl prefers:

- it reads everything the socket has in one call and takes packets from that
  buffer, so a burst of packets costs one wake-up and one read;
- a ``CHANNEL_DATA`` packet for a channel registered with :func:`route` goes
  straight to that channel's receiver (the tunnel's ``DirectPipe``), without a
  ``Message``; ``Transport.run`` then sees an ``IGNORE`` packet and loops, so it
  still checks for a re-key and for ``active`` after each packet;
- consecutive routed packets that arrived together reach the receiver in one
  piece (a reply's headers and body: one write to the client, as OpenSSH does);
- :func:`sender` sends a channel's data as one prebuilt payload, with the same
  window, re-key (``clear_to_send``) and packet accounting as ``Channel.send``;
  writes skip the ``poll`` that a socket with a timeout does before each send;
- when it waits for the SSH socket it also serves the tunnel's adopted client
  sockets (:mod:`mlctl.hosts.request_loop`, :func:`adopt`).

Everything else is paramiko's own code: any other cipher, compression or packet
dumping makes each call fall back to ``Packetizer.read_message`` /
``send_message`` (bytes already buffered are handed to paramiko first), and the
key exchange and every other message type are paramiko's as before. Sequence
numbers, IVs and the re-key counters live in paramiko's own (private)
attributes, so both paths always agree on them.

This relies on paramiko internals (the ``Packetizer`` attributes in
``_PACKETIZER_ATTRS``, ``Transport._expected_packet``, ``clear_to_send`` and
``clear_to_send_lock``). :func:`install` checks for every one, and for a
paramiko major version this was written against, and otherwise leaves the
transport alone. It also declines a transport that is not on a real socket (a
ProxyJump hop's channel). ``MLCTL_TUNNEL_DIRECT=0`` turns this off together
with the tunnel's direct replies (``mlctl.tunnel_pipe``).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import paramiko
from paramiko.message import Message
from paramiko.packet import NeedRekeyException, Packetizer

from mlctl.hosts import request_loop
from mlctl.hosts.request_loop import Adopted, RequestLoop

_LEN = struct.Struct(">I")
_HEAD = struct.Struct(">IB")  # packet length, padding length
_DATA_HEAD = struct.Struct(">BII")  # CHANNEL_DATA, recipient channel, data length
_MSG_IGNORE = 2
_MSG_CHANNEL_DATA = 94
_IV_COUNTER = 0xFFFFFFFFFFFFFFFF
_SEQ = 0xFFFFFFFF
# OpenSSH refuses packets over 256 KiB (PACKET_MAX_SIZE); paramiko checks nothing, so a
# corrupt length would make it wait for gigabytes that never come.
_MAX_PACKET = 256 * 1024
_READ_BUFFER = 256 * 1024
_RANDOM_POOL = 4096  # padding bytes drawn from os.urandom at a time
_TIMEOUT_MS = 100  # as paramiko's socket timeout: how often a wait checks close/re-key
_SUPPORTED_MAJOR = (3, 4, 5)  # paramiko versions whose Packetizer this mirrors

_PACKETIZER_ATTRS = (
    "_Packetizer__socket",
    "_Packetizer__closed",
    "_Packetizer__remainder",
    "_Packetizer__need_rekey",
    "_Packetizer__dump_packets",
    "_Packetizer__aead_in",
    "_Packetizer__aead_out",
    "_Packetizer__iv_in",
    "_Packetizer__iv_out",
    "_Packetizer__block_engine_in",
    "_Packetizer__block_engine_out",
    "_Packetizer__block_size_out",
    "_Packetizer__mac_size_in",
    "_Packetizer__compress_engine_in",
    "_Packetizer__compress_engine_out",
    "_Packetizer__sequence_number_in",
    "_Packetizer__sequence_number_out",
    "_Packetizer__received_bytes",
    "_Packetizer__received_packets",
    "_Packetizer__received_bytes_overflow",
    "_Packetizer__received_packets_overflow",
    "_Packetizer__sent_bytes",
    "_Packetizer__sent_packets",
    "_Packetizer__write_lock",
    "_Packetizer__keepalive_last",
    "_Packetizer__timer",
    "_Packetizer__handshake_complete",
    "_initial_kex_done",
    "_check_keepalive",
    "_trigger_rekey",
    "write_all",
)
_TRANSPORT_ATTRS = ("_expected_packet", "clear_to_send", "clear_to_send_lock", "active")
_CHANNEL_ATTRS = ("lock", "closed", "remote_chanid", "_wait_for_send_window")
_LOOP_CHANNEL_ATTRS = (*_CHANNEL_ATTRS, "eof_sent", "out_window_size")

_EMPTY = Message(b"")
_install_lock = threading.Lock()


class _Payload(bytes):
    """An encoded message body: what ``Packetizer.send_message`` wants from a Message."""

    def asbytes(self) -> bytes:
        return self


def _next_iv(iv: bytes) -> bytes:
    # RFC 5647 7.1: the last 8 bytes of the 12-byte nonce are a counter (as paramiko does).
    return iv[:4] + ((int.from_bytes(iv[4:], "big") + 1) & _IV_COUNTER).to_bytes(8, "big")


class FastPacketizer(Packetizer):
    """paramiko's Packetizer with a lean AES-GCM path; see the module docstring.

    An existing Packetizer becomes one through :func:`install` (its class is swapped,
    so all of paramiko's state stays where paramiko keeps it).
    """

    # paramiko's private state, named as Python stores it (declared for the type checker).
    _Packetizer__socket: socket.socket
    _Packetizer__closed: bool
    _Packetizer__remainder: bytes
    _Packetizer__need_rekey: bool
    _Packetizer__dump_packets: bool
    _Packetizer__aead_in: bool
    _Packetizer__aead_out: bool
    _Packetizer__iv_in: bytes
    _Packetizer__iv_out: bytes
    _Packetizer__block_engine_in: Any
    _Packetizer__block_engine_out: Any
    _Packetizer__block_size_out: int
    _Packetizer__mac_size_in: int
    _Packetizer__compress_engine_in: Any
    _Packetizer__compress_engine_out: Any
    _Packetizer__sequence_number_in: int
    _Packetizer__sequence_number_out: int
    _Packetizer__received_bytes: int
    _Packetizer__received_packets: int
    _Packetizer__received_bytes_overflow: int
    _Packetizer__received_packets_overflow: int
    _Packetizer__sent_bytes: int
    _Packetizer__sent_packets: int
    _Packetizer__write_lock: threading.RLock
    _initial_kex_done: bool
    _check_keepalive: Callable[[], None]
    _trigger_rekey: Callable[[], None]

    # ours, set by _setup() before the class is swapped
    _fp_buf: bytes
    _fp_pos: int
    _fp_view: memoryview
    _fp_routes: dict[int, Callable[[bytes], None]]
    _fp_transport: Any
    _fp_write_fd: bool
    _fp_random: bytes
    _fp_random_pos: int
    _fp_loop: RequestLoop | None
    _Packetizer__keepalive_last: float

    def _setup(self, transport: Any) -> None:
        self._fp_write_fd = _can_write_fd()
        self._fp_random = os.urandom(_RANDOM_POOL)
        self._fp_random_pos = 0
        self._fp_buf = b""
        self._fp_pos = 0
        self._fp_view = memoryview(bytearray(_READ_BUFFER))
        self._fp_routes = {}
        self._fp_transport = transport
        self._fp_loop = None  # started by install() once this is a FastPacketizer

    # ---------------------------------------------------------------- reading

    def _fast_in(self) -> bool:
        return (
            self._Packetizer__aead_in
            and self._Packetizer__compress_engine_in is None
            and not self._Packetizer__dump_packets
        )

    def _fill(self, need: int, check_rekey: bool) -> bytes:
        """Read until the buffer (from the current position) holds ``need`` bytes.

        The same rules as ``Packetizer.read_all``: a timeout checks for a closed
        packetizer, a wanted re-key (only before any byte of a packet) and keepalive.
        """
        buf = self._fp_buf[self._fp_pos :]
        self._fp_pos = 0
        sock = self._Packetizer__socket
        view = self._fp_view
        loop = self._fp_loop
        while len(buf) < need:
            try:
                if loop is None:
                    n = sock.recv_into(view)
                else:
                    # wait on the SSH socket and the tunnel's clients (request_loop)
                    fd = sock.fileno()
                    if fd < 0:  # closed under us (Transport.close): as paramiko, EOF
                        raise EOFError()
                    state = loop.wait(fd, _TIMEOUT_MS)
                    if state == request_loop.TIMEOUT:
                        raise TimeoutError()
                    if state != request_loop.READY:  # served a client: the SSH socket waits
                        if check_rekey and not buf and self._Packetizer__need_rekey:
                            self._fp_buf = buf
                            raise NeedRekeyException()  # Transport.run starts the exchange
                        continue
                    n = request_loop.read_ready(sock.fileno(), view)
                    if n < 0:
                        continue
            except TimeoutError:  # socket.timeout: the socket's 0.1 s poll
                if self._Packetizer__closed:
                    raise EOFError() from None
                if check_rekey and not buf and self._Packetizer__need_rekey:
                    self._fp_buf = buf
                    raise NeedRekeyException() from None
                self._check_keepalive()
                continue
            except OSError as exc:
                if exc.errno == errno.EAGAIN:  # as paramiko: some kernels say EAGAIN
                    continue
                if self._Packetizer__closed:
                    raise EOFError() from exc
                raise
            if n == 0:
                raise EOFError()
            buf += view[:n]
        self._fp_buf = buf
        return buf

    def _spill(self) -> None:
        """Hand buffered bytes to paramiko's own reader (it reads its remainder first)."""
        rest = self._fp_buf[self._fp_pos :]
        self._fp_buf = b""
        self._fp_pos = 0
        if rest:
            self._Packetizer__remainder = rest + self._Packetizer__remainder

    def read_message(self) -> tuple[int, Message]:
        if not self._fast_in():
            self._spill()
            if self._fp_loop is not None:  # paramiko's reader won't wait on the clients
                self._fp_loop.close()
                self._fp_loop = None
            return Packetizer.read_message(self)
        if self._Packetizer__remainder:  # left over from the banner: ours to read now
            self._fp_buf = self._Packetizer__remainder + self._fp_buf[self._fp_pos :]
            self._fp_pos = 0
            self._Packetizer__remainder = b""
        mac = self._Packetizer__mac_size_in
        # Routed data not yet delivered, all for one receiver: consecutive packets that
        # arrived together (a reply's headers and body) go to the client in one send.
        held: list[bytes] = []
        holder: Callable[[bytes], None] | None = None
        while True:
            buf, pos = self._fp_buf, self._fp_pos
            if len(buf) - pos < 4:
                buf, pos = self._fill(4, True), 0
            size = _LEN.unpack_from(buf, pos)[0]
            if size > _MAX_PACKET:
                raise paramiko.SSHException(f"Invalid packet length {size} (corrupt or not SSH)")
            end = pos + 4 + size + mac
            if end > len(buf):
                buf, pos = self._fill(4 + size + mac, False), 0
                end = 4 + size + mac
            # The length is the associated data under AES-GCM (RFC 5647 7.3); the rest
            # is the ciphertext and its tag.
            view = memoryview(buf)
            iv = self._Packetizer__iv_in
            engine = self._Packetizer__block_engine_in
            plain = engine.decrypt(iv, view[pos + 4 : end], view[pos : pos + 4])
            self._Packetizer__iv_in = _next_iv(iv)
            if end == len(buf):
                self._fp_buf, self._fp_pos = b"", 0
            else:
                self._fp_pos = end
            seqno = self._count_in(size + mac + 4)
            ptype = plain[1]
            route = None
            # (while the key exchange expects particular packets, paramiko sees them all)
            if ptype == _MSG_CHANNEL_DATA and self._fp_routes:
                if not self._fp_transport._expected_packet:
                    route = self._fp_routes.get(_LEN.unpack_from(plain, 2)[0])
            if route is None:
                if holder is not None:  # in order: what came first goes first
                    holder(b"".join(held))
                msg = Message(plain[2 : size - plain[0]])
                msg.seqno = seqno
                return ptype, msg
            if holder is not None and holder is not route:
                holder(b"".join(held))
                held = []
            holder = route
            held.append(plain[10 : 10 + _LEN.unpack_from(plain, 6)[0]])
            # Is the next packet here already, whole? Then take it too before sending.
            rest = len(self._fp_buf) - self._fp_pos
            if (
                rest < 4
                or rest < 4 + _LEN.unpack_from(self._fp_buf, self._fp_pos)[0] + mac
                or self._Packetizer__need_rekey
            ):
                route(held[0] if len(held) == 1 else b"".join(held))
                return _MSG_IGNORE, _EMPTY  # Transport.run loops: re-key and liveness checks

    def _count_in(self, raw_size: int) -> int:
        """Sequence number and re-key accounting of one packet read (as paramiko does)."""
        seqno = self._Packetizer__sequence_number_in
        following = (seqno + 1) & _SEQ
        if following == 0 and not self._initial_kex_done:
            raise paramiko.SSHException("Sequence number rolled over during initial kex!")
        self._Packetizer__sequence_number_in = following
        self._Packetizer__received_bytes += raw_size
        self._Packetizer__received_packets += 1
        if self._Packetizer__need_rekey:
            self._Packetizer__received_bytes_overflow += raw_size
            self._Packetizer__received_packets_overflow += 1
            if (
                self._Packetizer__received_packets_overflow >= self.REKEY_PACKETS_OVERFLOW_MAX
                or self._Packetizer__received_bytes_overflow >= self.REKEY_BYTES_OVERFLOW_MAX
            ):
                raise paramiko.SSHException("Remote transport is ignoring rekey requests")
        elif (
            self._Packetizer__received_packets >= self.REKEY_PACKETS
            or self._Packetizer__received_bytes >= self.REKEY_BYTES
        ):
            self._Packetizer__received_bytes_overflow = 0
            self._Packetizer__received_packets_overflow = 0
            self._trigger_rekey()
        return seqno

    def close(self) -> None:
        super().close()
        if self._fp_loop is not None:
            self._fp_loop.close()  # adopted clients go back to their pump threads

    # ---------------------------------------------------------------- writing

    def _write(self, out: bytes) -> None:
        """``write_all``, one system call shorter where it can be.

        The socket has a timeout, so each ``send`` of paramiko's first waits in
        ``poll`` for room. Its descriptor is non-blocking, so a plain ``write`` sends
        what fits at once (where SIGPIPE is ignored, as Python sets it, so a closed
        peer is an error rather than the end of the process); ``write_all`` sends the
        rest, or raises paramiko's EOFError for a broken connection.
        """
        sent = 0
        if self._fp_write_fd:
            self._Packetizer__keepalive_last = time.time()
            try:
                sent = os.write(self._Packetizer__socket.fileno(), out)
            except OSError:  # full (EAGAIN), or broken: write_all decides
                sent = 0
            if sent == len(out):
                return
        self.write_all(out[sent:] if sent else out)

    def _random(self, n: int) -> bytes:
        """``n`` random bytes for padding, from a pool (one getrandom call per 4 KiB)."""
        pos = self._fp_random_pos
        if pos + n > len(self._fp_random):
            self._fp_random, pos = os.urandom(_RANDOM_POOL), 0
        self._fp_random_pos = pos + n
        return self._fp_random[pos : pos + n]

    def send_message(self, data: Message) -> None:
        self.send_payload(data.asbytes())

    def send_payload(self, payload: bytes) -> None:
        """Encrypt and send one message body (its type byte first)."""
        with self._Packetizer__write_lock:
            if (
                not self._Packetizer__aead_out
                or self._Packetizer__compress_engine_out is not None
                or self._Packetizer__dump_packets
            ):
                Packetizer.send_message(self, _Payload(payload))  # type: ignore[arg-type]
                return
            block = self._Packetizer__block_size_out
            # at least 4 bytes of padding, to a multiple of the block size (the length
            # field, being associated data, does not count: RFC 5647 7.2)
            padding = 3 + block - ((len(payload) + 4) % block)
            head = _HEAD.pack(len(payload) + padding + 1, padding)
            length = head[:4]
            iv = self._Packetizer__iv_out
            sealed = self._Packetizer__block_engine_out.encrypt(
                iv, head[4:] + payload + self._random(padding), length
            )
            self._Packetizer__iv_out = _next_iv(iv)
            following = (self._Packetizer__sequence_number_out + 1) & _SEQ
            if following == 0 and not self._initial_kex_done:
                raise paramiko.SSHException("Sequence number rolled over during initial kex!")
            self._Packetizer__sequence_number_out = following
            out = length + sealed
            self._write(out)
            self._Packetizer__sent_bytes += len(out)
            self._Packetizer__sent_packets += 1
            if (
                self._Packetizer__sent_packets >= self.REKEY_PACKETS
                or self._Packetizer__sent_bytes >= self.REKEY_BYTES
            ) and not self._Packetizer__need_rekey:
                self._Packetizer__received_bytes_overflow = 0
                self._Packetizer__received_packets_overflow = 0
                self._trigger_rekey()


# ---------------------------------------------------------------- installing


def _can_write_fd() -> bool:
    """A socket's descriptor takes os.write (POSIX) and a broken peer can't kill us."""
    sigpipe = getattr(signal, "SIGPIPE", None)
    if os.name != "posix" or sigpipe is None:
        return False
    return signal.getsignal(sigpipe) == signal.SIG_IGN


def _supported_paramiko() -> bool:
    try:
        major = int(paramiko.__version__.split(".")[0])
    except (AttributeError, ValueError):
        return False
    return major in _SUPPORTED_MAJOR


def install(transport: Any) -> FastPacketizer | None:
    """Make ``transport``'s packetizer a FastPacketizer (once); None where it can't be."""
    packetizer: Any = getattr(transport, "packetizer", None)
    if isinstance(packetizer, FastPacketizer):
        return packetizer
    if (
        type(packetizer) is not Packetizer
        or not _supported_paramiko()
        or not all(hasattr(packetizer, name) for name in _PACKETIZER_ATTRS)
        or not all(hasattr(transport, name) for name in _TRANSPORT_ATTRS)
        or not isinstance(getattr(packetizer, "_Packetizer__socket"), socket.socket)  # noqa: B009
        or not getattr(packetizer, "_Packetizer__handshake_complete")  # noqa: B009
    ):
        return None
    with _install_lock:
        if isinstance(transport.packetizer, FastPacketizer):
            return transport.packetizer
        target: Any = packetizer  # (the checks above narrowed its type to Packetizer)
        FastPacketizer._setup(target, transport)
        # The handshake timer is done with, but paramiko cancels it again after every
        # packet (Timer.cancel sets an Event: a lock and a notify each time).
        target._Packetizer__timer = None
        target.__class__ = FastPacketizer
        if target._fp_write_fd and request_loop.supported():
            target._fp_loop = RequestLoop(transport, target.send_payload)
    return cast(FastPacketizer, target)


def route(transport: Any, chanid: int, receive: Callable[[bytes], None]) -> bool:
    """Deliver CHANNEL_DATA for local channel ``chanid`` to ``receive`` (on paramiko's thread).

    ``receive`` must do what the channel's ``in_buffer.feed`` does. False when the
    transport has no FastPacketizer.
    """
    packetizer = getattr(transport, "packetizer", None)
    if not isinstance(packetizer, FastPacketizer):
        return False
    packetizer._fp_routes[chanid] = receive
    return True


def unroute(transport: Any, chanid: int) -> None:
    packetizer = getattr(transport, "packetizer", None)
    if isinstance(packetizer, FastPacketizer):
        packetizer._fp_routes.pop(chanid, None)


def adopt(channel: Any, client: socket.socket) -> Adopted | None:
    """Let paramiko's thread read ``client`` and send to ``channel`` (request_loop).

    None when it can't now (no FastPacketizer, not supported here, or not yet
    waiting in the loop; a key exchange is on; the window is short): the caller
    reads the client itself and may try again later.
    """
    packetizer = getattr(channel.transport, "packetizer", None)
    if not isinstance(packetizer, FastPacketizer) or packetizer._fp_loop is None:
        return None
    if not all(hasattr(channel, name) for name in _LOOP_CHANNEL_ATTRS):
        return None
    return packetizer._fp_loop.adopt(client, channel)


def sender(channel: Any) -> Callable[[bytes], None]:
    """A ``sendall`` for ``channel``: the lean one on a FastPacketizer, else paramiko's."""
    transport = channel.transport
    packetizer = getattr(transport, "packetizer", None)
    if not isinstance(packetizer, FastPacketizer) or not all(
        hasattr(channel, name) for name in _CHANNEL_ATTRS
    ):
        return channel.sendall  # type: ignore[no-any-return]

    # Bound once: this runs for every request that goes through the tunnel.
    lock = channel.lock
    reserve = channel._wait_for_send_window
    head = _DATA_HEAD.pack
    chanid = channel.remote_chanid  # fixed once the channel is open
    ready = transport.clear_to_send.is_set
    gate = transport.clear_to_send_lock
    send_payload = packetizer.send_payload

    def sendall(data: bytes) -> None:
        # Channel.sendall -> send -> _send, and Transport._send_user_message, in one.
        while data:
            with lock:
                if channel.closed:
                    raise OSError("Socket is closed")
                size = reserve(len(data))
            if size == 0:  # closed or EOF sent while waiting for window
                raise OSError("Socket is closed")
            payload = head(_MSG_CHANNEL_DATA, chanid, size) + data[:size]
            sent = False
            if ready():
                with gate:
                    # a key exchange clears clear_to_send under this lock
                    if ready() and transport.active:
                        send_payload(payload)
                        sent = True
            if not sent:  # a key exchange is on (or the transport is gone): paramiko waits
                transport._send_user_message(_Payload(payload))
            data = data[size:]

    return sendall
