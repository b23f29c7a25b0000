"""The tunnel outlives its SSH connection: sshd killed and restarted, a changed host key,
a network that goes silent; and it holds the pty session that keeps latency low.

Each test owns its sshd (``make_sshd``), so killing it touches nobody else. "Killing
sshd" here means its listener and the per-connection processes it forked (stopping
only the listener leaves established connections up, as on a real host), which is
what a host reboot or a container restart does. Everything is on loopback, and
every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from mlctl.hosts import known_hosts
from mlctl.hosts.base import Connector
from mlctl.hosts.local import LocalConnector
from mlctl.hosts.ssh import SSHConnector, connect
from mlctl.hosts.target import SshTarget
from mlctl.sandbox import sshd as sandbox_sshd
from mlctl.sandbox.sshd import SandboxSshd
from mlctl.tunnel import Tunnel

TIMEOUT = httpx.Timeout(3.0)
BIG = 20_000_000

pytestmark = pytest.mark.sshd


# ---------------------------------------------------------------- an HTTP server


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/ping":
            self.send_response(200)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"pong")
        elif self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Length", str(BIG))
            self.end_headers()
            block = b"x" * 1_000_000
            try:
                for _ in range(BIG // len(block)):
                    self.wfile.write(block)
            except OSError:
                pass
        elif self.path == "/hang":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"f\r\ndata: started\n\n\r\n")
            self.wfile.flush()
            self.server.release.wait(10)
            self.close_connection = True
        else:
            self.send_error(404)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    release: threading.Event


@pytest.fixture
def http_port() -> Iterator[int]:
    server = Server(("127.0.0.1", 0), Handler)
    server.release = threading.Event()
    # A connection that goes away between the poll and accept() (a reset one) must not
    # leave serve_forever blocked in accept(), or shutdown() below would wait for ever.
    server.socket.settimeout(1.0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address[1]
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


# ---------------------------------------------------------------- helpers


def target(server: SandboxSshd) -> SshTarget:
    return SshTarget(
        host=server.host, port=server.port, user=server.user, identity_files=(str(server.key_path),)
    )


def opener(server: SandboxSshd) -> Callable[[], Connector]:
    """What the CLI passes as ``reconnect``: a fresh connection under the same key policy."""
    return lambda: connect(target(server))


class States:
    """An ``on_state`` recorder that can wait for a state."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self._cond = threading.Condition()

    def __call__(self, state: str, message: str) -> None:
        with self._cond:
            self.seen.append((state, message))
            self._cond.notify_all()

    def names(self) -> list[str]:
        with self._cond:
            return [state for state, _ in self.seen]

    def wait_for(self, state: str, timeout: float) -> str:
        """Return the message of the first ``state`` reported, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for name, message in self.seen:
                    if name == state:
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {state!r} state within {timeout} s: {self.seen}")
                self._cond.wait(left)


def _proc_field(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def session_processes(server: SandboxSshd) -> list[int]:
    """Return the pids of the per-connection processes this test's sshd forked."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _proc_field(int(entry), "stat")
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(server.pid):
            pids.append(int(entry))
    return pids


def kill_sessions(pids: list[int]) -> None:
    """End the per-connection sshd processes (forked by this test's sshd) in ``pids``."""
    for pid in pids:
        if _proc_field(pid, "cmdline").startswith("sshd"):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def kill_sshd(server: SandboxSshd) -> None:
    """Stop the listener and drop every connection it serves, like a host that went down."""
    sessions = session_processes(server)
    server.stop()
    kill_sessions(sessions)


def restart_sshd(server: SandboxSshd) -> None:
    """Start the same sshd again: same port, same config, same host key."""
    # start_sshd would write a fresh host key; launching the same config keeps it.
    server.pid = sandbox_sshd._launch(
        server.sshd_path, server.config_path, server.log_path, server.port, 10.0
    )


def ping(url: str, timeout: float = 3.0) -> bytes:
    with httpx.Client(timeout=httpx.Timeout(timeout), trust_env=False) as client:
        return client.get(url + "/ping").content


def tunnel_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("mlctl-tunnel")]


# ---------------------------------------------------------------- the pty session


def test_holds_a_pty_session_over_ssh(make_sshd: Callable[[], SandboxSshd], http_port: int) -> None:
    server = make_sshd()
    states = States()
    with connect(target(server)) as conn, Tunnel(conn, http_port, on_state=states) as tunnel:
        assert tunnel.holds_pty
        assert isinstance(conn, SSHConnector) and conn.transport.is_active()
        # On the host: the connection's sshd process has a terminal (sshd: user@pts/N).
        titles = [_proc_field(pid, "cmdline") for pid in session_processes(server)]
        assert any("@pts/" in title for title in titles), titles
        assert ping(tunnel.url) == b"pong"
        assert states.names() == ["connected"]
        assert "connected to" in states.seen[0][1]
    deadline = time.monotonic() + 3
    while any("@pts/" in _proc_field(pid, "cmdline") for pid in session_processes(server)):
        assert time.monotonic() < deadline, "the pty session outlived the tunnel"
        time.sleep(0.05)


def test_no_pty_session_on_the_local_machine(http_port: int) -> None:
    states = States()
    with Tunnel(LocalConnector(), http_port, on_state=states) as tunnel:
        assert not tunnel.holds_pty
        assert tunnel.state == "connected"
        assert ping(tunnel.url) == b"pong"
    assert states.names() == ["connected"]
    assert tunnel.state == "stopped"


# ---------------------------------------------------------------- sshd restarted


def test_sshd_restarted_on_the_same_port_serves_again(
    make_sshd: Callable[[], SandboxSshd], http_port: int
) -> None:
    server = make_sshd()
    states = States()
    first = connect(target(server))
    tunnel = Tunnel(first, http_port, reconnect=opener(server), on_state=states)
    try:
        tunnel.start()
        assert ping(tunnel.url) == b"pong"
        kill_sshd(server)
        assert "lost the connection" in states.wait_for("lost", 3.0)
        assert tunnel.state == "lost"
        assert tunnel.local_port and not _port_free(tunnel.local_port)  # still listening
        restart_sshd(server)
        restarted = time.monotonic()
        # A client that comes while the tunnel reconnects waits for it rather than failing.
        assert ping(tunnel.url, timeout=6.0) == b"pong"
        assert time.monotonic() - restarted < 5.0
        message = states.wait_for("reconnected", 1.0)
        assert "reconnected to" in message and " after " in message
        assert tunnel.state == "connected"
        assert tunnel.conn is not first
        assert tunnel.holds_pty
        for _ in range(5):
            assert ping(tunnel.url) == b"pong"
    finally:
        tunnel.stop()
        first.close()
    assert tunnel_threads() == []


def _port_free(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_in_flight_stream_fails_fast_and_stop_during_backoff_is_prompt(
    make_sshd: Callable[[], SandboxSshd], http_port: int
) -> None:
    server = make_sshd()
    states = States()
    with (
        connect(target(server)) as conn,
        Tunnel(conn, http_port, reconnect=opener(server), on_state=states) as tunnel,
        httpx.Client(timeout=TIMEOUT, trust_env=False) as client,
        client.stream("GET", tunnel.url + "/hang") as resp,
    ):
        lines = resp.iter_lines()
        assert next(lines) == "data: started"
        killed = time.monotonic()
        kill_sshd(server)
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            for _ in lines:
                pass
        assert time.monotonic() - killed < 2.0
        states.wait_for("lost", 2.0)
        time.sleep(0.5)  # sshd stays down: the tunnel is between reconnect attempts
        assert tunnel.state == "lost"
        stopping = time.monotonic()
        tunnel.stop()
        assert time.monotonic() - stopping < 1.0
        assert tunnel.state == "stopped"
    assert tunnel_threads() == []
    assert "reconnected" not in states.names()


# ---------------------------------------------------------------- host key changed


def test_changed_host_key_on_reconnect_is_refused(
    make_sshd: Callable[[], SandboxSshd], http_port: int
) -> None:
    server = make_sshd()
    states = States()
    pinned = known_hosts.known_keys(server.host, server.port)
    assert pinned == []
    with connect(target(server)) as conn:
        pinned = known_hosts.known_keys(server.host, server.port)
        assert len(pinned) == 1
        tunnel = Tunnel(conn, http_port, reconnect=opener(server), on_state=states)
        try:
            tunnel.start()
            old_sessions = session_processes(server)
            server.regenerate_host_key()  # a new key on the same port...
            kill_sessions(old_sessions)  # ...and the old connection gone, as after a re-rent
            message = states.wait_for("refused", 5.0)
            assert "host key changed" in message
            assert "mlctl hosts forget-key" in message
            assert tunnel.state == "refused"
            assert "reconnected" not in states.names()
            # Nothing reaches the host through the tunnel, and a client is told so at once.
            start = time.monotonic()
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                ping(tunnel.url)
            assert time.monotonic() - start < 1.0
            # The pinned key was not replaced.
            assert known_hosts.known_keys(server.host, server.port) == pinned
            assert server.host_public_key().split()[1] != pinned[0].key_b64
            stopping = time.monotonic()
        finally:
            tunnel.stop()
        assert time.monotonic() - stopping < 1.0
    assert tunnel_threads() == []


# ---------------------------------------------------------------- a silent network


class Relay:
    """A loopback TCP relay to ``port`` whose connections can go silent one by one."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listen_port = int(self.listener.getsockname()[1])
        self.links: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        self.threads: list[threading.Thread] = []
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.port))
            silent = threading.Event()
            self.links.append((client, upstream, silent))
            for src, dst in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(src, dst, silent), daemon=True)
                self.threads.append(thread)
                thread.start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, silent: threading.Event) -> None:
        try:
            while data := src.recv(65536):
                if not silent.is_set():  # else dropped, like packets into a sleeping network
                    dst.sendall(data)
        except OSError:
            pass

    def silence_existing(self) -> None:
        """Drop every byte of the connections relayed so far, closing nothing."""
        for _, _, silent in self.links:
            silent.set()

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept() (close alone does not)
        self.listener.close()
        for client, upstream, _ in self.links:
            for sock in (client, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        for thread in self.threads:
            thread.join(2)
        self.accepter.join(2)


def test_silent_connection_is_noticed_by_keepalive(
    make_sshd: Callable[[], SandboxSshd], http_port: int
) -> None:
    server = make_sshd()
    relay = Relay(server.port)
    states = States()
    via = SshTarget(
        host=server.host,
        port=relay.listen_port,
        user=server.user,
        identity_files=(str(server.key_path),),
    )
    try:
        with connect(via) as conn:
            tunnel = Tunnel(
                conn,
                http_port,
                reconnect=lambda: connect(via),
                on_state=states,
                keepalive_interval=0.3,
                keepalive_timeout=1.0,
            )
            with tunnel:
                assert ping(tunnel.url) == b"pong"
                relay.silence_existing()  # the connection stays open but nothing gets through
                message = states.wait_for("lost", 4.0)
                assert "no answer to an SSH keepalive" in message
                states.wait_for("reconnected", 5.0)  # a new connection gets through
                assert ping(tunnel.url) == b"pong"
    finally:
        relay.close()
    assert tunnel_threads() == []


# ---------------------------------------------------------------- a slow client


def test_a_slow_client_does_not_stall_the_others(sshd: SandboxSshd, http_port: int) -> None:
    with connect(target(sshd)) as conn, Tunnel(conn, http_port) as tunnel:
        with socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=5) as slow:
            slow.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            assert slow.recv(100).startswith(b"HTTP/1.1 200")  # then reads nothing more
            time.sleep(0.3)  # its window and buffers fill up
            start = time.monotonic()
            with httpx.Client(base_url=tunnel.url, timeout=TIMEOUT, trust_env=False) as client:
                for _ in range(20):
                    assert client.get("/ping").content == b"pong"
                assert len(client.get("/big").content) == BIG
            assert time.monotonic() - start < 5.0
            assert tunnel.active_connections >= 1  # the slow one is still there, stalled alone
