"""A local port forwarder over a ``Connector``: 127.0.0.1:PORT → host's ``remote_host:port``.

One accept thread; per accepted client a channel from ``conn.open_forward`` and
two pump threads, one per direction, so a slow client only ever stalls its own
connection. End-of-stream is forwarded as a half-close (like OpenSSH), and a
connection is closed once both directions are done or either fails (with a
reset, so a cut-off response never looks complete). The listener binds
127.0.0.1 and nothing else.

On an SSH connection with AES-GCM (the usual case) the pump threads mostly wait:
paramiko's own thread reads the client's requests (``hosts/request_loop``) and
writes the replies (``tunnel_pipe``) over a leaner packet layer
(``hosts/fast_packets``), so one thread handles a request and its reply, as in
OpenSSH. The pumps take over whenever that thread could not go on without
waiting (a key exchange, a full socket, a short window).

TCP_NODELAY is set on each accepted local socket here and on the SSH socket by
the connector; the pty-holding session that makes sshd disable Nagle on its
side, and the liveness checks, are in ``tunnel_session``. A watch thread per
tunnel notices a dead connection, resets the connections that were on it, and
reconnects with backoff through the caller's ``reconnect`` function while the
listener keeps listening.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from mlctl import tunnel_pipe
from mlctl.errors import ConnectError, UsageError
from mlctl.hosts.base import Connector, StreamChannel
from mlctl.tunnel_session import Backoff, HostSession, refusal

if TYPE_CHECKING:
    from mlctl.hosts.request_loop import Adopted

LOCALHOST = "127.0.0.1"
_CHUNK = 65536
# paramiko's channel buffer drops what recv() returns by moving the rest to the front:
# reading all of it (at most one 2 MiB window) at once avoids that copy per read.
_CHANNEL_CHUNK = 4 << 20
_JOIN_TIMEOUT = 2.0
_ADOPTED_CHECK = 0.5  # how often a pump whose client paramiko's thread reads checks the link
_WATCH_INTERVAL = 0.25  # how often the watch thread looks at the connection
_BACKOFF_FIRST = 0.2  # first wait before reconnecting, doubled after each failure...
_BACKOFF_MOST = 5.0  # ...up to this
_REFUSED_RETRY = 30.0  # a refused reconnect (changed host key) is tried again this rarely
_WAIT_FOR_HOST = 10.0  # a new client waits this long for a reconnect before it is closed

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- ports


def _listener_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if sys.platform == "win32":
        # On Windows SO_REUSEADDR lets a second socket steal a port in use.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
    else:
        # Lets a restarted tunnel rebind while old connections sit in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def _bind(port: int, host: str = LOCALHOST) -> socket.socket:
    """Return a socket bound (not yet listening) to ``host:port``; OSError when not possible."""
    sock = _listener_socket()
    try:
        sock.bind((host, port))
        if sys.platform != "linux" and port and _accepts_connections(host, port):
            # BSD/macOS let a specific address shadow a wildcard listener; refuse that.
            raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
    except BaseException:
        sock.close()
        raise
    return sock


def _accepts_connections(host: str, port: int) -> bool:
    # Called while our socket is bound but not listening: whoever accepts is someone else.
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    """Return True when a listener could bind ``host:port`` now (same options as the tunnel's)."""
    try:
        _bind(port, host).close()
    except OSError:
        return False
    return True


def find_free_port(start: int, host: str = LOCALHOST, tries: int = 50) -> int:
    """Return the first port from ``start`` up (at most ``tries`` ports) that is free on ``host``.

    Raises UsageError when none of them is free.
    """
    last = min(start + tries, 65536)
    for port in range(start, last):
        if port_is_free(port, host):
            return port
    raise UsageError(
        f"no free local port on {host} between {start} and {last - 1}",
        "pass another --local-port, or stop what holds these ports",
    )


def port_holder(port: int) -> str | None:
    """Say what listens on TCP ``port`` on this machine, best effort (Linux /proc only).

    Returns ``"pid 123 (python3 -m http.server)"``, ``"a process of uid 1001"``
    when the socket belongs to a process we cannot inspect, or None when it
    cannot tell.
    """
    inodes: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A: LISTEN
                continue
            try:
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes[fields[9]] = int(fields[7])
            except ValueError:
                continue
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        pids = []
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") in wanted:
                    return f"pid {pid} ({_command_line(pid)})"
            except OSError:
                continue
    uid = next(iter(inodes.values()))
    return f"a process of uid {uid}"


def _command_line(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
        text = " ".join(a.decode("utf-8", "replace") for a in argv if a)
    except OSError:
        text = ""
    if not text:
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as fh:
                text = fh.read().strip()
        except OSError:
            text = "?"
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------- one forwarded connection


def _wake(stream: StreamChannel | socket.socket) -> None:
    """Unblock any thread reading or writing ``stream`` without freeing its descriptor."""
    try:
        stream.shutdown(socket.SHUT_RDWR)
    except Exception:  # already closed, or the transport is gone
        pass
    if not isinstance(stream, socket.socket):
        # A paramiko channel's recv() wakes only on close(); it owns no descriptor to reuse.
        _close(stream)


def _close(stream: StreamChannel | socket.socket) -> None:
    try:
        stream.close()
    except Exception:  # closing must never raise out of a pump
        pass


def _reset_on_close(sock: socket.socket) -> None:
    # An aborted connection ends with a reset, so the client sees a failure and never
    # mistakes a cut-off response for a complete one.
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


class _Link:
    """One client socket, its forwarded channel, and the host session that channel is on."""

    def __init__(self, client: socket.socket, peer: str) -> None:
        self.client = client
        self.peer = peer
        self.channel: StreamChannel | None = None
        self.session: HostSession | None = None
        self.lock = threading.Lock()
        self.aborted = False
        self.adopted: Adopted | None = None  # the client socket, while paramiko's thread reads it

    def abort(self) -> None:
        with self.lock:
            self.aborted = True
            channel = self.channel
            adopted = self.adopted
        if adopted is not None:
            adopted.release()  # back to the pump thread, which then sees the abort
        _reset_on_close(self.client)
        _wake(self.client)
        if channel is not None:
            _wake(channel)

    def close(self) -> None:
        _close(self.client)
        if self.channel is not None:
            _close(self.channel)


def _pump(src: StreamChannel | socket.socket, dst: StreamChannel | socket.socket) -> bool:
    """Copy ``src`` to ``dst`` until EOF (then half-close ``dst``): True, or an error: False."""
    try:
        size = _CHUNK if isinstance(src, socket.socket) else _CHANNEL_CHUNK
        while True:
            data = src.recv(size)
            if not data:
                break
            dst.sendall(data)
    except Exception as exc:  # socket, EOF or paramiko errors end this link
        log.debug("tunnel pump stopped: %s", exc)
        return False
    if not getattr(src, "eof_received", True):
        # A paramiko channel also reads b"" when its transport died: not the far end's EOF.
        return False
    return _half_close(dst)


def _half_close(dst: StreamChannel | socket.socket) -> bool:
    """Pass an end of stream on to ``dst``; True (a peer already gone is no failure)."""
    try:
        dst.shutdown(socket.SHUT_WR)
    except Exception:  # peer already gone
        pass
    return True


def _send_requests(link: _Link, channel: StreamChannel, send: Callable[[bytes], None]) -> bool:
    """Client to channel, like ``_pump``, with paramiko's thread reading where it can.

    The client socket is offered to the connection's request loop
    (``mlctl.hosts.request_loop``): while it is there, paramiko's thread sends what
    the client writes, and this thread waits. Whenever the loop hands it back (a key
    exchange, a short window, the client's end or an error) this thread goes on
    reading, and offers it again after each chunk it sends itself.
    """
    client = link.client
    try:
        while True:
            adopted = tunnel_pipe.adopt(channel, client)
            if adopted is not None:
                _wait_while_adopted(link, channel, adopted)
                if adopted.error is not None:
                    log.debug("tunnel pump stopped: %s", adopted.error)
                    return False
                if adopted.data:
                    send(adopted.data)
                if adopted.eof:
                    break
                if link.aborted:
                    return False
            data = client.recv(_CHUNK)
            if not data:
                break
            send(data)
    except Exception as exc:  # socket, EOF or paramiko errors end this link
        log.debug("tunnel pump stopped: %s", exc)
        return False
    return _half_close(channel)


def _wait_while_adopted(link: _Link, channel: StreamChannel, adopted: Adopted) -> None:
    """Wait until the request loop hands ``link``'s client back (at once when it ends)."""
    with link.lock:
        link.adopted = adopted  # Link.abort releases it from now on
        aborted = link.aborted
    if aborted:
        adopted.release()
    while not adopted.wait(_ADOPTED_CHECK):
        if getattr(channel, "closed", False) or link.aborted:
            adopted.release()
    with link.lock:
        link.adopted = None


def _pump_back(link: _Link, channel: StreamChannel, pipe: tunnel_pipe.DirectPipe | None) -> None:
    # A failing channel (transport lost) must also end the client's side, or it would hang.
    if pipe is not None:
        ok = tunnel_pipe.pump(pipe, channel, link.client, _CHANNEL_CHUNK)
    else:
        ok = _pump(channel, link.client)
    if not ok:
        link.abort()


# ---------------------------------------------------------------- the tunnel


StateCallback = Callable[[str, str], None]


class Tunnel:
    """Forward ``127.0.0.1:local_port`` to ``remote_host:remote_port`` as the host sees it.

    ``local_port=0`` picks a free port. When the requested port is busy the
    tunnel takes the next free one up from it and records ``moved_from`` (and
    ``holder``, what held it, when that can be told), or raises UsageError with
    ``strict_port``. Use as a context manager, or call ``start`` and ``stop``.

    Over SSH the tunnel holds a pty session on the connection for low latency
    (see ``tunnel_session``) and watches the connection. When it dies the
    listener keeps listening, in-flight connections are reset, and with
    ``reconnect`` (a function returning a fresh connector, host key policy
    included) the tunnel reconnects with backoff and serves again; new clients
    wait up to ``_WAIT_FOR_HOST`` seconds for it. A refused reconnect (changed
    host key...) is never retried into acceptance: it is reported as ``refused``
    and retried every ``_REFUSED_RETRY`` seconds, so that once the user has
    dealt with it (``mlctl hosts forget-key``) the tunnel comes back by itself.
    Every change is logged on ``mlctl.tunnel`` and passed to ``on_state`` as
    (state, message), state one of ``connected``, ``lost``, ``retrying``,
    ``refused``, ``reconnected`` (called from the tunnel's watch thread; it may
    be set after ``start``). A connection found dead is closed, the one passed
    in included; connections the tunnel opened itself are closed by ``stop``.
    """

    def __init__(
        self,
        conn: Connector,
        remote_port: int,
        *,
        remote_host: str = LOCALHOST,
        local_port: int = 0,
        strict_port: bool = False,
        reconnect: Callable[[], Connector] | None = None,
        on_state: StateCallback | None = None,
        keepalive_interval: float = 5.0,
        keepalive_timeout: float = 15.0,
    ) -> None:
        if not 0 <= local_port <= 65535:
            raise UsageError(f"invalid local port {local_port}", "use a port from 1024 to 65535")
        self.remote_host = remote_host
        self.remote_port = remote_port
        self.local_port = local_port
        self.strict_port = strict_port
        self.reconnect = reconnect
        self.on_state = on_state
        self.keepalive_interval = keepalive_interval
        self.keepalive_timeout = keepalive_timeout
        self.moved_from: int | None = None
        self.holder: str | None = None
        self._session = self._new_session(conn, owned=False)
        self._state = "idle"
        self._up = threading.Condition()  # guards _session and _state
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._stopping = threading.Event()
        self._check_now = threading.Event()
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._threads: set[threading.Thread] = set()
        self._accept_thread: threading.Thread | None = None
        self._watch_thread: threading.Thread | None = None

    # -- public

    @property
    def conn(self) -> Connector:
        """Return the connector in use now (a new one after each reconnect)."""
        return self._session.conn

    @property
    def state(self) -> str:
        """Return ``idle``, ``connected``, ``lost`` (reconnecting), ``refused`` or ``stopped``."""
        return self._state

    @property
    def holds_pty(self) -> bool:
        """True when a pty session is held on the SSH connection (False over a local one)."""
        return self._session.holds_pty

    @property
    def url(self) -> str:
        """Return ``http://127.0.0.1:PORT`` for the local end."""
        return f"http://{LOCALHOST}:{self.local_port}"

    @property
    def address(self) -> tuple[str, int]:
        """Return the (address, port) the listener is bound to; RuntimeError when not started."""
        if self._listener is None:
            raise RuntimeError("tunnel not started")
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def active_connections(self) -> int:
        """Return how many client connections are being forwarded now."""
        with self._lock:
            return len(self._links)

    def start(self) -> int:
        """Bind 127.0.0.1, hold the pty session, start accepting, and return the local port.

        Raises UsageError when the port is busy and ``strict_port`` is set, when
        no free port is found near it, or when it cannot be bound at all
        (a privileged port, for instance). RuntimeError when already started.
        A connection that is already dead is not an error here: it is reported
        lost (and reopened with ``reconnect``).
        """
        if self._accept_thread is not None:
            raise RuntimeError("tunnel already started")
        listener = self._open_listener()
        listener.listen(128)
        listener.setblocking(False)
        self.local_port = listener.getsockname()[1]
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping.clear()
        self._check_now.clear()
        session = self._session
        try:
            session.open()
        except ConnectError as exc:  # the watch thread finds it dead and says so
            log.debug("tunnel %s: %s", self.url, exc.message)
        with self._up:
            self._state = "connected"
        self._report("connected", self._connected_message(session, None))
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"mlctl-tunnel-{self.local_port}", daemon=True
        )
        self._accept_thread.start()
        self._watch_thread = threading.Thread(
            target=self._watch, name=f"mlctl-tunnel-{self.local_port}-watch", daemon=True
        )
        self._watch_thread.start()
        log.debug(
            "tunnel %s -> %s:%d on %s",
            self.url,
            self.remote_host,
            self.remote_port,
            self.conn.description,
        )
        return self.local_port

    def stop(self) -> None:
        """Close the listener and every forwarded connection, and join the threads.

        Also ends a reconnect in progress (an attempt already connecting is
        abandoned after ``_JOIN_TIMEOUT`` and closes what it gets). Safe to call
        more than once, and before ``start``.
        """
        self._stopping.set()
        self._check_now.set()
        with self._up:
            self._up.notify_all()
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
        if self._accept_thread is not None:
            self._accept_thread.join(_JOIN_TIMEOUT)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            links = list(self._links)
            threads = list(self._threads)
        for link in links:
            link.abort()
        deadline = time.monotonic() + _JOIN_TIMEOUT
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._watch_thread is not None:
            self._watch_thread.join(max(0.1, deadline - time.monotonic()))
        with self._up:
            session = self._session
            if self._state != "idle":
                self._state = "stopped"
        session.close()
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._wake_r = self._wake_w = None
        self._accept_thread = None
        self._watch_thread = None
        self._listener = None

    def __enter__(self) -> Tunnel:
        if self._accept_thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- binding

    def _open_listener(self) -> socket.socket:
        wanted = self.local_port
        try:
            return _bind(wanted)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or wanted == 0:
                raise _bind_error(wanted, exc) from exc
        holder = port_holder(wanted)
        held = f"in use by {holder}" if holder else "in use"
        if self.strict_port:
            raise UsageError(
                f"local port {wanted} on {LOCALHOST} is {held}",
                "stop what holds it, or choose another port (or drop --strict-port to take "
                "the next free one)",
            )
        last = min(wanted + 50, 65536)
        for port in range(wanted + 1, last):
            try:
                sock = _bind(port)
            except OSError:
                continue
            self.moved_from = wanted
            self.holder = holder
            log.info("local port %d is %s; using %d", wanted, held, port)
            return sock
        raise UsageError(
            f"local port {wanted} is {held}, and so are the ports up to {last - 1}",
            "choose another --local-port",
        )

    # -- the connection to the host

    def _new_session(self, conn: Connector, *, owned: bool) -> HostSession:
        return HostSession(
            conn,
            owned=owned,
            keepalive_interval=self.keepalive_interval,
            keepalive_timeout=self.keepalive_timeout,
        )

    def _connected_message(self, session: HostSession, after: float | None) -> str:
        where = session.conn.description
        if not session.is_ssh:
            return f"forwarding on {where}"
        text = f"connected to {where}" if after is None else f"reconnected to {where}"
        if after is not None:
            text += f" after {after:.1f} s"
        if not session.holds_pty:
            text += " (no pty session: small requests may be slow)"
        return text

    def _report(self, state: str, message: str) -> None:
        level = logging.WARNING if state in ("lost", "refused") else logging.INFO
        log.log(level, "tunnel %s: %s", self.url, message)
        if self.on_state is not None:
            try:
                self.on_state(state, message)
            except Exception as exc:  # a broken callback must not kill the watch thread
                log.warning("tunnel %s: on_state callback failed: %r", self.url, exc)

    def _watch(self) -> None:
        session = self._session
        while not self._stopping.is_set():
            reason = session.dead_reason()
            if reason is None:
                self._check_now.wait(_WATCH_INTERVAL)
                self._check_now.clear()
                continue
            self._lose(session, reason)
            if self.reconnect is None:
                return
            found = self._reconnect(self.reconnect)
            if found is None:
                return
            session = found

    def _lose(self, session: HostSession, reason: str) -> None:
        with self._up:
            if self._stopping.is_set():
                return
            self._state = "lost"
        then = "reconnecting" if self.reconnect is not None else "not reconnecting"
        self._report("lost", f"lost the connection to {session.conn.description}: {reason}; {then}")
        # In-flight connections fail now (reset), rather than wait on a dead connection.
        with self._lock:
            links = [link for link in self._links if link.session is session]
        for link in links:
            link.abort()
        session.close_dead()

    def _reconnect(self, reconnect: Callable[[], Connector]) -> HostSession | None:
        lost_at = time.monotonic()
        backoff = Backoff(_BACKOFF_FIRST, _BACKOFF_MOST)
        wait = backoff.next()
        said: str | None = None
        while not self._stopping.wait(wait):
            wait = backoff.next()
            try:
                conn = reconnect()
            except Exception as exc:  # ConnectError, UsageError, or a bug in the callable
                text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                why = refusal(exc)
                if why is not None:
                    wait = _REFUSED_RETRY
                    with self._up:
                        self._state = "refused"
                    hint = getattr(exc, "hint", None)
                    message = f"{why}: refused, not connecting ({text})"
                    message += f"; {hint}" if hint else ""
                    message += f"; trying again every {_REFUSED_RETRY:g} s"
                    state = "refused"
                else:
                    message = f"reconnecting failed: {text}; retrying with backoff"
                    state = "retrying"
                if text != said:
                    self._report(state, message)
                    said = text
                else:
                    log.debug("tunnel %s: %s", self.url, message)
                continue
            session = self._new_session(conn, owned=True)
            try:
                session.open()
            except ConnectError as exc:
                session.close()
                log.info("tunnel %s: %s; retrying", self.url, exc.message)
                continue
            with self._up:
                if self._stopping.is_set():
                    session.close()
                    return None
                self._session = session
                self._state = "connected"
                self._up.notify_all()
            after = time.monotonic() - lost_at
            self._report("reconnected", self._connected_message(session, after))
            return session
        return None

    def _host_session(self) -> HostSession | None:
        """Return the session to open a channel on, waiting a while when reconnecting."""
        deadline = time.monotonic() + _WAIT_FOR_HOST
        with self._up:
            while self._state == "lost" and not self._stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0 or self.reconnect is None:
                    break
                self._up.wait(left)
            return self._session if self._state == "connected" else None

    # -- threads

    def _accept_loop(self) -> None:
        listener, wake = self._listener, self._wake_r
        assert listener is not None and wake is not None
        with selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ, "accept")
            sel.register(wake, selectors.EVENT_READ, "wake")
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    if key.data == "wake":
                        return
                    try:
                        client, addr = listener.accept()
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        if self._stopping.is_set():
                            return
                        # e.g. out of file descriptors: don't spin on a readable listener
                        log.warning("tunnel %s: cannot accept a connection: %s", self.url, exc)
                        time.sleep(0.1)
                        continue
                    self._serve(client, f"{addr[0]}:{addr[1]}")

    def _serve(self, client: socket.socket, peer: str) -> None:
        client.setblocking(True)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(client, peer)
        thread = threading.Thread(target=self._run_link, args=(link,), daemon=True)
        with self._lock:
            if self._stopping.is_set():
                _close(client)
                return
            self._links.add(link)
            self._threads.add(thread)
        thread.start()

    def _open_channel(self, link: _Link) -> StreamChannel | None:
        session = self._host_session()
        if session is None:
            if not self._stopping.is_set():
                log.info(
                    "tunnel %s: not connected to the host (%s); closing a new connection from %s",
                    self.url,
                    self._state,
                    link.peer,
                )
            return None
        try:
            channel = session.conn.open_forward(self.remote_host, self.remote_port)
        except Exception as exc:  # report, close the client, keep serving
            if session.transport is not None and not session.transport.is_active():
                self._check_now.set()  # the watch thread says "lost" and reconnects
            log.info(  # expected while an engine is still loading (its port is closed)
                "tunnel %s: cannot open %s:%d on %s: %s",
                self.url,
                self.remote_host,
                self.remote_port,
                session.conn.description,
                getattr(exc, "message", None) or exc,
            )
            return None
        with link.lock:
            link.session = session
        return channel

    def _run_link(self, link: _Link) -> None:
        back: threading.Thread | None = None
        try:
            channel = self._open_channel(link)
            if channel is None:
                return
            channel.settimeout(None)
            with link.lock:
                link.channel = channel
                aborted = link.aborted
            if aborted:
                return
            # Replies go to the client from paramiko's thread where they can (tunnel_pipe).
            pipe = tunnel_pipe.install(channel, link.client)
            back = threading.Thread(target=_pump_back, args=(link, channel, pipe), daemon=True)
            with self._lock:
                self._threads.add(back)
            back.start()
            if pipe is not None:
                # Requests: read by paramiko's own thread where it can, else by this one,
                # and sent by fast_packets' lean sender (set up with the pipe).
                ok = _send_requests(link, channel, tunnel_pipe.sender(channel))
            else:
                ok = _pump(link.client, channel)
            if not ok:
                link.abort()
            back.join()
        finally:
            link.close()
            with self._lock:
                self._links.discard(link)
                self._threads.discard(threading.current_thread())
                if back is not None:
                    self._threads.discard(back)


def _bind_error(port: int, exc: OSError) -> UsageError:
    if exc.errno == errno.EACCES:
        return UsageError(
            f"not allowed to bind {LOCALHOST}:{port} ({exc.strerror})",
            "ports below 1024 need privileges; choose a port from 1024 to 65535",
        )
    return UsageError(f"cannot bind {LOCALHOST}:{port}: {exc}", "choose another --local-port")
