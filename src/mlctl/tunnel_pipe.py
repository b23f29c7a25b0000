"""Deliver a forwarded channel's data to the client from paramiko's own thread.

Without this, every packet coming back through the tunnel crosses two threads:
paramiko's transport thread decrypts it into the channel's buffer and wakes ours,
which copies it to the client socket. That wake-up (a futex, a context switch, the
GIL changing hands) is the largest single cost of a small request through the
tunnel on a busy machine (`benchmarks/tunnel.py`).

:class:`DirectPipe` takes the place of the channel's receive buffer
(``Channel.in_buffer``). When nothing is queued and the pump thread is not in the
middle of a send, a packet goes straight to the client socket with a non-blocking
``send``; whatever the socket does not take at once is queued and the pump thread
(:func:`pump`) sends it, in order, with the usual back-pressure. The SSH window for
bytes sent directly is counted on the spot; the WINDOW_ADJUST message itself is sent
by the pump thread, because the transport thread must never wait on a key
re-exchange it is itself running.

Where the connection has a :class:`~mlctl.hosts.fast_packets.FastPacketizer`, the
pipe is also registered with it (:func:`~mlctl.hosts.fast_packets.route`), so the
packet reaches :meth:`DirectPipe.feed` without paramiko building and dispatching a
``Message`` for it; the window for direct sends is then counted in batches of
``_CREDIT_BATCH`` bytes rather than one call (and lock) per packet.

This relies on paramiko internals: ``Channel.in_buffer``, its lock and
``_buffer_frombytes``, ``Channel._check_add_window``, ``Channel.remote_chanid`` and
``Transport._send_user_message``. :func:`install` checks for them and returns None
when one is missing (a future paramiko), and the tunnel then uses the plain path.
``MLCTL_TUNNEL_DIRECT=0`` turns it off.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlctl.hosts.request_loop import Adopted

log = logging.getLogger(__name__)

_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
# Packets up to this size go out directly (replies, streamed tokens); bigger ones are
# bulk transfer, where the pump thread sending while paramiko's thread decrypts the
# next packet is faster (two cores at work instead of one).
DIRECT_MAX = 16 * 1024
# Bytes sent directly are acknowledged to the channel's window in batches this size:
# paramiko itself only sends a WINDOW_ADJUST once a tenth of the window (about 200 KiB)
# is used, so holding back 32 KiB more cannot stall the far end.
_CREDIT_BATCH = 32 * 1024
_REQUIRED_CHANNEL = ("in_buffer", "_check_add_window", "remote_chanid", "transport", "lock")


def enabled() -> bool:
    """True unless MLCTL_TUNNEL_DIRECT=0 (or the platform has no non-blocking send flag)."""
    return bool(_DONTWAIT) and os.environ.get("MLCTL_TUNNEL_DIRECT", "1") != "0"


class DirectPipe:
    """A paramiko channel receive buffer that sends to ``client`` when it can at once.

    It implements what paramiko.Channel calls on its buffer (feed, read, read_ready,
    set_event, empty, close, len) plus :meth:`take` and :meth:`sent` for the pump.
    """

    def __init__(self, client: socket.socket, channel: Any) -> None:
        self._client = client
        self._channel = channel
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._queue = bytearray()
        self._closed = False
        self._broken = False  # the client side failed: drop what still arrives
        self._sending = False  # the pump holds bytes taken from the queue, not yet sent
        self._credit = 0  # window to acknowledge for bytes sent directly
        self._event: Any = None
        self._uncounted = 0  # bytes sent directly, not yet counted against the window
        self._route: tuple[Any, int] | None = None  # (transport, chanid) when routed
        self.direct_bytes = 0  # how many bytes went out from the transport thread

    # ---------------------------------------------------------------- paramiko's side

    def feed(self, data: bytes) -> None:
        """Called by paramiko's transport thread with each packet's data. Never raises."""
        sent = 0
        with self._lock:
            if self._broken:
                return
            if (
                len(data) <= DIRECT_MAX
                and not self._queue
                and not self._sending
                and not self._closed
            ):
                try:
                    sent = self._client.send(data, _DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:  # the client went away; the pump sees it when it sends
                    sent = 0
                self.direct_bytes += sent
            rest = data[sent:] if sent else data
            if rest:
                self._queue += rest
                if self._event is not None:
                    self._event.set()
                self._cv.notify_all()
        if sent:
            self._uncounted += sent  # only paramiko's thread feeds: no lock needed
            if self._uncounted < _CREDIT_BATCH:
                return
            sent, self._uncounted = self._uncounted, 0
            # Outside our lock: Channel.close() holds the channel's lock while it closes
            # this pipe, so taking them in the other order here could deadlock.
            try:
                ack = int(self._channel._check_add_window(sent))
            except Exception:  # a closed channel: nothing to acknowledge
                ack = 0
            if ack > 0:
                with self._lock:
                    self._credit += ack
                    self._cv.notify_all()

    def read(self, nbytes: int, timeout: float | None = None) -> bytes:
        """BufferedPipe.read: queued bytes (b"" once closed and empty)."""
        with self._lock:
            if not self._queue and not self._closed:
                if timeout is not None and timeout <= 0:
                    raise TimeoutError()
                if not self._cv.wait_for(lambda: bool(self._queue) or self._closed, timeout):
                    raise TimeoutError()
            out = bytes(self._queue[:nbytes])
            del self._queue[:nbytes]
            if self._event is not None and not self._queue and not self._closed:
                self._event.clear()
            return out

    def read_ready(self) -> bool:
        with self._lock:
            return bool(self._queue)

    def set_event(self, event: Any) -> None:
        with self._lock:
            self._event = event
            if self._closed or self._queue:
                event.set()
            else:
                event.clear()

    def empty(self) -> bytes:
        with self._lock:
            out = bytes(self._queue)
            self._queue.clear()
            return out

    def close(self) -> None:
        route, self._route = self._route, None
        if route is not None:
            from mlctl.hosts import fast_packets

            fast_packets.unroute(*route)
        with self._lock:
            self._closed = True
            if self._event is not None:
                self._event.set()
            self._cv.notify_all()

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)

    # ---------------------------------------------------------------- the pump's side

    def take(self, nbytes: int) -> tuple[bytes, int, bool]:
        """Wait for queued bytes, window to acknowledge, or the end.

        Returns (data, credit, finished); with data, the pump must call :meth:`sent`
        after sending it (until then nothing goes out directly, which keeps the order).
        """
        with self._lock:
            self._cv.wait_for(lambda: bool(self._queue) or self._credit > 0 or self._closed)
            data = bytes(self._queue[:nbytes])
            del self._queue[:nbytes]
            credit, self._credit = self._credit, 0
            self._sending = bool(data)
            return data, credit, self._closed and not self._queue and not data

    def sent(self) -> None:
        with self._lock:
            self._sending = False

    def broken(self) -> None:
        """The client side failed: stop sending to it and drop what still arrives."""
        with self._lock:
            self._broken = True
            self._sending = False
            self._queue.clear()
            self._cv.notify_all()


def install(channel: Any, client: socket.socket) -> DirectPipe | None:
    """Put a DirectPipe in place of ``channel``'s receive buffer, or return None.

    Bytes that reached the old buffer before this are moved over first, and any that
    reach it later (a packet paramiko's thread was handing over at this very moment)
    are forwarded, so nothing is lost or reordered.
    """
    if not enabled() or not all(hasattr(channel, name) for name in _REQUIRED_CHANNEL):
        return None
    if client.gettimeout() is not None:
        # A socket with a timeout waits for room before even a MSG_DONTWAIT send: that
        # wait would be on paramiko's thread, stalling every channel of the connection.
        return None
    old = channel.in_buffer
    if not all(hasattr(old, name) for name in ("_lock", "_buffer_frombytes", "empty")):
        return None
    try:
        channel.transport._send_user_message  # noqa: B018 - checked here, used in pump
        from paramiko.common import cMSG_CHANNEL_WINDOW_ADJUST  # noqa: F401
        from paramiko.message import Message  # noqa: F401
    except (AttributeError, ImportError):
        return None
    pipe = DirectPipe(client, channel)
    with old._lock:
        # BufferedPipe.feed appends under this lock with _buffer_frombytes: a feed that
        # already holds the old buffer lands in the new pipe, after what is queued here.
        early = old._buffer_tobytes() if hasattr(old, "_buffer_tobytes") else b""
        if early:
            del old._buffer[:]
            pipe._queue += early
        old._buffer_frombytes = pipe.feed
        channel.in_buffer = pipe
    _route(pipe, channel)
    return pipe


def _route(pipe: DirectPipe, channel: Any) -> None:
    """Have the connection's packet reader feed ``pipe`` itself, where it can."""
    from mlctl.hosts import fast_packets

    transport = channel.transport
    chanid = getattr(channel, "chanid", None)
    if not isinstance(chanid, int) or fast_packets.install(transport) is None:
        return
    with channel.lock:  # Channel._set_closed (which closes the pipe) runs under it
        if channel.closed:
            return
        pipe._route = (transport, chanid)
        fast_packets.route(transport, chanid, pipe.feed)


def adopt(channel: Any, client: socket.socket) -> Adopted | None:
    """Offer ``client`` to paramiko's thread to read (fast_packets.adopt), or None."""
    from mlctl.hosts import fast_packets

    return fast_packets.adopt(channel, client)


def sender(channel: Any) -> Callable[[bytes], None]:
    """``channel``'s sendall: the lean one of fast_packets where its connection has it."""
    from mlctl.hosts import fast_packets

    return fast_packets.sender(channel)


def _window_adjust(channel: Any, amount: int) -> None:
    from paramiko.common import cMSG_CHANNEL_WINDOW_ADJUST
    from paramiko.message import Message

    m = Message()
    m.add_byte(cMSG_CHANNEL_WINDOW_ADJUST)
    m.add_int(channel.remote_chanid)
    m.add_int(amount)
    channel.transport._send_user_message(m)


def pump(pipe: DirectPipe, channel: Any, client: socket.socket, chunk: int) -> bool:
    """Send what the pipe queues to ``client`` until the channel ends.

    True at the far end's EOF (the client is then half-closed), False when the client
    or the connection failed.
    """
    try:
        while True:
            data, credit, finished = pipe.take(chunk)
            if credit:
                _window_adjust(channel, credit)
            if data:
                try:
                    client.sendall(data)
                finally:
                    pipe.sent()
                ack = int(channel._check_add_window(len(data)))
                if ack > 0:
                    _window_adjust(channel, ack)
            if finished:
                break
    except Exception as exc:  # socket, EOF or paramiko errors end this link
        log.debug("tunnel pump stopped: %s", exc)
        pipe.broken()
        return False
    if not getattr(channel, "eof_received", True):
        # The pipe also closes when the transport died: that is not the far end's EOF.
        return False
    try:
        client.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    return True
