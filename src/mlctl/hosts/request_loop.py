"""Clients' requests read and sent by paramiko's own thread: one loop, as OpenSSH has.

Measured on a 2-core VM (see ``benchmarks/tunnel.py``), a forwarder with one thread
per direction answers a small request 10 to 30 µs later than one thread that waits
on both directions at once, in Python as in C. A tunnel connection is two threads
already: paramiko's transport thread reads the SSH socket (and, with
``tunnel_pipe``, sends replies to the client), and a pump thread reads the client.
:class:`RequestLoop` lets the transport thread also wait on the clients' sockets,
so a request and its reply are handled by the same thread.

The tunnel's pump thread *adopts* its client socket into the loop
(:meth:`RequestLoop.adopt`) and then waits. Paramiko's thread, in
:meth:`RequestLoop.wait` (called by ``FastPacketizer`` instead of a plain blocking
read), polls the SSH socket, a wake-up pipe and every adopted socket, and sends
what a client wrote as CHANNEL_DATA at once. It never blocks on a client's
behalf: when it can't send without waiting (a key exchange is on, the channel's
window is short, the channel is closing) or the client is done (end of stream,
an error), it hands the socket back to its pump thread with whatever it read
(:class:`Adopted`), and the pump thread carries on as before and may adopt it
again later.

Only on POSIX with ``poll`` and ``readv``; elsewhere FastPacketizer reads as
before and no socket is adopted.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import weakref
from collections.abc import Callable
from typing import Any

READY, TIMEOUT, OTHER = 1, 0, 2
_READ = 64 * 1024  # at most this much of a client's data per wake-up
_DATA_HEAD = struct.Struct(">BII")  # CHANNEL_DATA, recipient channel, data length
_MSG_CHANNEL_DATA = 94
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_POLL_IN = getattr(select, "POLLIN", 1)


def supported() -> bool:
    return (
        os.name == "posix" and hasattr(select, "poll") and hasattr(os, "readv") and bool(_DONTWAIT)
    )


class Adopted:
    """A client socket in the loop, and what the loop hands back with it."""

    def __init__(self, loop: RequestLoop, sock: socket.socket, channel: Any) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.channel = channel
        self.data = b""  # read from the client, not sent: the pump thread sends it
        self.eof = False  # the client closed its side
        self.error: BaseException | None = None
        self._back = threading.Event()
        # (under the loop's lock) paramiko's thread is reading or sending for it; and a
        # release was asked for meanwhile
        self.busy = False
        self.release_asked = False

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the socket is handed back (True) or ``timeout`` passes (False)."""
        return self._back.wait(timeout)

    def release(self) -> None:
        """Take the socket back now (the link is closing); safe to call more than once."""
        self.loop._release(self)

    @property
    def handed_back(self) -> bool:
        return self._back.is_set()


class RequestLoop:
    """The clients' side of paramiko's transport thread; see the module docstring."""

    def __init__(self, transport: Any, send_payload: Callable[[bytes], None]) -> None:
        self._transport = transport
        self._send_payload = send_payload
        self._lock = threading.Lock()
        self._adopted: dict[int, Adopted] = {}
        self._changed = True
        self._poller: Any = None
        self._ssh_fd = -1
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        weakref.finalize(self, _close_fds, self._wake_r, self._wake_w)
        self._closed = False
        # True once paramiko's thread waits here (and so sees adoptions at once)
        self.live = False
        self.handed_back = 0  # how many times a socket went back to its pump thread
        self.served = 0  # how many client reads this loop sent

    # ---------------------------------------------------------------- the pump's side

    def adopt(self, sock: socket.socket, channel: Any) -> Adopted | None:
        """Put ``sock`` in the loop, or None when the loop can't take it now."""
        if not self.live or sock.gettimeout() is not None:
            return None
        if not self._can_send_now(channel):
            return None
        entry = Adopted(self, sock, channel)
        with self._lock:
            if self._closed or entry.fd in self._adopted:
                return None
            self._adopted[entry.fd] = entry
            self._changed = True
        self._wake()
        return entry

    def _release(self, entry: Adopted) -> None:
        with self._lock:
            if self._adopted.get(entry.fd) is entry:
                if entry.busy:  # paramiko's thread is sending for it: handed back after
                    entry.release_asked = True
                else:
                    self._hand_back(entry)

    def close(self) -> None:
        """Hand every socket back and adopt no more (the connection is going away).

        The wake-up pipe stays open until the loop is garbage: paramiko's thread may
        still be polling it, and a closed descriptor's number can be reused at once.
        """
        with self._lock:
            self._closed = True
            for entry in list(self._adopted.values()):
                if entry.busy:
                    entry.release_asked = True
                else:
                    self._hand_back(entry)
        self._wake()

    # ---------------------------------------------------------------- paramiko's side

    def wait(self, ssh_fd: int, timeout_ms: int) -> int:
        """Wait for the SSH socket, serving clients meanwhile: READY, TIMEOUT or OTHER."""
        self.live = True
        if self._poller is None or self._changed or ssh_fd != self._ssh_fd:
            self._rebuild(ssh_fd)
        try:
            events = self._poller.poll(timeout_ms)
        except InterruptedError:
            return OTHER
        if not events:
            return TIMEOUT
        ready = False
        for fd, _ in events:
            if fd == ssh_fd:
                ready = True
            elif fd == self._wake_r:
                self._drain_wake()
            else:
                self._serve(fd)
        return READY if ready else OTHER

    def _rebuild(self, ssh_fd: int) -> None:
        with self._lock:
            fds = list(self._adopted)
            self._changed = False
        poller = select.poll()
        poller.register(ssh_fd, _POLL_IN)
        poller.register(self._wake_r, _POLL_IN)
        for fd in fds:
            poller.register(fd, _POLL_IN)
        self._poller = poller
        self._ssh_fd = ssh_fd

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except OSError:  # full (a wake-up is pending anyway) or closed
            pass

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except OSError:
            pass

    def _can_send_now(self, channel: Any) -> bool:
        transport = self._transport
        return bool(
            transport.clear_to_send.is_set()
            and transport.active
            and not channel.closed
            and not channel.eof_sent
            and channel.out_window_size >= _READ
        )

    def _hand_back(
        self,
        entry: Adopted,
        data: bytes = b"",
        eof: bool = False,
        error: BaseException | None = None,
    ) -> None:
        # (holding self._lock)
        del self._adopted[entry.fd]
        self._changed = True
        self.handed_back += 1
        entry.data, entry.eof, entry.error = data, eof, error
        entry._back.set()

    def _serve(self, fd: int) -> None:
        """Send what the client on ``fd`` wrote, or hand its socket back.

        The loop's lock is not held while reading or sending: a send can wait on a
        full SSH socket (a connection gone silent), and ``release`` (from the
        tunnel's watch thread, which then closes that connection) must not wait for
        it. A release asked for meanwhile takes effect when this serve ends, so the
        pump thread never reads the client while bytes read here are unsent.
        """
        with self._lock:
            entry = self._adopted.get(fd)
            if entry is None or entry.busy:  # handed back since the poll (rebuilt next)
                return
            channel = entry.channel
            if not self._can_send_now(channel):
                self._hand_back(entry)
                return
            entry.busy = True
        back = False
        data, eof = b"", False
        error: BaseException | None = None
        try:
            try:
                got = entry.sock.recv(_READ, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                back, error = True, exc
                return
            if not got:
                back, eof = True, True
                return
            gate = self._transport.clear_to_send_lock
            if not gate.acquire(blocking=False):  # a key exchange is starting
                back, data = True, got
                return
            try:
                data = self._send(channel, got)
                back = bool(data)
                if not back:
                    self.served += 1
            finally:
                gate.release()
        except BaseException as exc:  # the SSH connection broke: paramiko's thread ends
            back, error = True, exc
            raise
        finally:
            with self._lock:
                entry.busy = False
                if (back or entry.release_asked) and self._adopted.get(fd) is entry:
                    self._hand_back(entry, data=data, eof=eof, error=error)

    def _send(self, channel: Any, data: bytes) -> bytes:
        """Send ``data`` by Channel.send's rules, never waiting; return what is left.

        (Holding clear_to_send_lock.) The window was checked before reading, and
        nothing else sends on this channel while its client is adopted.
        """
        if not (self._transport.clear_to_send.is_set() and self._transport.active):
            return data
        while data:
            with channel.lock:
                if channel.closed or channel.eof_sent or channel.out_window_size <= 0:
                    return data
                size = channel._wait_for_send_window(len(data))
            if size == 0:
                return data
            head = _DATA_HEAD.pack(_MSG_CHANNEL_DATA, channel.remote_chanid, size)
            self._send_payload(head + data[:size])
            data = data[size:]
        return b""


def _close_fds(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def read_ready(fd: int, view: memoryview) -> int:
    """One non-blocking read of the SSH socket after ``wait`` said READY (-1: nothing yet)."""
    try:
        return os.readv(fd, [view])
    except (BlockingIOError, InterruptedError):
        return -1
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return -1
        raise
