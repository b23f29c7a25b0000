"""The tunnel over LocalConnector and over a real sshd, against a tiny threaded HTTP server.

Everything is on loopback, and every test is bounded by short timeouts.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from mlctl.errors import UsageError
from mlctl.hosts.base import Connector
from mlctl.hosts.local import LocalConnector
from mlctl.hosts.ssh import connect
from mlctl.hosts.target import SshTarget
from mlctl.sandbox.sshd import SandboxSshd
from mlctl.tunnel import Tunnel, find_free_port, port_holder, port_is_free

TIMEOUT = httpx.Timeout(3.0)


# ---------------------------------------------------------------- the HTTP server


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # headers and body are two writes: don't add 40 ms stalls
    server: Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, body: bytes, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self) -> None:
        if self.path == "/ping":
            self._reply(b"pong")
        elif self.path == "/slow":
            time.sleep(0.3)
            self._reply(b"slow")
        elif self.path in ("/stream", "/hang"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            if self.path == "/hang":
                self._chunk(b"data: started\n\n")
                self.server.release.wait(5)
                self.close_connection = True
                return
            for i in range(5):
                self._chunk(b"data: token %d\n\n" % i)
                time.sleep(0.1)
            self._chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._reply(b"no such path", 404)

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self._reply(self.rfile.read(length))


class Server(ThreadingHTTPServer):
    daemon_threads = True
    release: threading.Event


@pytest.fixture
def http_port() -> Iterator[int]:
    server = Server(("127.0.0.1", 0), Handler)
    server.release = threading.Event()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address[1]
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def ssh_target(sshd: SandboxSshd) -> SshTarget:
    return SshTarget(
        host=sshd.host, port=sshd.port, user=sshd.user, identity_files=(str(sshd.key_path),)
    )


@pytest.fixture(params=["local", "ssh"])
def conn(request: pytest.FixtureRequest) -> Iterator[Connector]:
    if request.param == "local":
        yield LocalConnector()
        return
    connector = connect(ssh_target(request.getfixturevalue("sshd")))
    yield connector
    connector.close()


@pytest.fixture
def tunnel(conn: Connector, http_port: int) -> Iterator[Tunnel]:
    with Tunnel(conn, http_port) as t:
        yield t


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tunnel_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("mlctl-tunnel")]


# ---------------------------------------------------------------- requests


def test_keep_alive_requests_and_a_large_body(tunnel: Tunnel) -> None:
    assert tunnel.url == f"http://127.0.0.1:{tunnel.local_port}"
    with httpx.Client(base_url=tunnel.url, timeout=TIMEOUT, trust_env=False) as client:
        for _ in range(50):
            resp = client.get("/ping")
            assert resp.status_code == 200 and resp.content == b"pong"
        body = os.urandom(2_000_000)
        assert client.post("/echo", content=body).content == body
        assert client.get("/missing").status_code == 404
    # One keep-alive client used one forwarded connection for all of it.
    deadline = time.monotonic() + 2
    while tunnel.active_connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert tunnel.active_connections == 0


def test_twenty_concurrent_clients(tunnel: Tunnel) -> None:
    def one(_: int) -> bytes:
        with httpx.Client(base_url=tunnel.url, timeout=TIMEOUT, trust_env=False) as client:
            first = client.get("/slow").content
            return first + client.get("/ping").content

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(20)))
    elapsed = time.monotonic() - start
    assert results == [b"slowpong"] * 20
    # 20 x 0.3 s served one after another would take 6 s.
    assert elapsed < 2.0


def test_streamed_chunks_arrive_incrementally(tunnel: Tunnel) -> None:
    arrivals: list[tuple[float, str]] = []
    start = time.monotonic()
    with (
        httpx.Client(timeout=TIMEOUT, trust_env=False) as client,
        client.stream("GET", tunnel.url + "/stream") as resp,
    ):
        for line in resp.iter_lines():
            if line:
                arrivals.append((time.monotonic() - start, line))
    assert [line for _, line in arrivals] == [f"data: token {i}" for i in range(5)] + [
        "data: [DONE]"
    ]
    times = [t for t, _ in arrivals]
    assert times[0] < 0.3  # the first token did not wait for the rest
    gaps = [times[i + 1] - times[i] for i in range(len(times) - 1)]
    assert all(gap > 0.05 for gap in gaps[:4]), gaps  # each one came on its own
    assert times[-1] - times[0] > 0.35


# ---------------------------------------------------------------- binding


def _non_loopback_ip() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: a UDP connect sends nothing
        except OSError:
            return None
        ip = str(s.getsockname()[0])
    return None if ip.startswith("127.") or ip == "0.0.0.0" else ip


def test_listener_binds_loopback_only(conn: Connector, http_port: int) -> None:
    with Tunnel(conn, http_port) as tunnel:
        assert tunnel.address == ("127.0.0.1", tunnel.local_port)
        other = _non_loopback_ip()
        if other is None:
            pytest.skip("this machine has no non-loopback IPv4 address")
        with pytest.raises(OSError):
            socket.create_connection((other, tunnel.local_port), timeout=1).close()


def test_busy_port_moves_to_the_next_free_one(conn: Connector, http_port: int) -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        busy = holder.getsockname()[1]
        assert not port_is_free(busy)
        assert f"pid {os.getpid()}" in (port_holder(busy) or "")
        with Tunnel(conn, http_port, local_port=busy) as tunnel:
            assert tunnel.moved_from == busy
            assert tunnel.local_port > busy
            assert tunnel.holder is not None and f"pid {os.getpid()}" in tunnel.holder
            with httpx.Client(timeout=TIMEOUT, trust_env=False) as client:
                assert client.get(tunnel.url + "/ping").content == b"pong"


def test_busy_port_with_strict_port_is_a_usage_error(conn: Connector, http_port: int) -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        busy = holder.getsockname()[1]
        tunnel = Tunnel(conn, http_port, local_port=busy, strict_port=True)
        with pytest.raises(UsageError) as info:
            tunnel.start()
        assert f"local port {busy}" in info.value.message
        assert f"in use by pid {os.getpid()}" in info.value.message
        tunnel.stop()


def test_requested_free_port_is_used_as_is(conn: Connector, http_port: int) -> None:
    port = find_free_port(closed_port())
    with Tunnel(conn, http_port, local_port=port, strict_port=True) as tunnel:
        assert tunnel.local_port == port and tunnel.moved_from is None


def test_find_free_port_skips_busy_ones() -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        busy = holder.getsockname()[1]
        assert find_free_port(busy) > busy
    with pytest.raises(UsageError, match="no free local port"):
        find_free_port(busy, tries=0)


# ---------------------------------------------------------------- failures and shutdown


def test_closed_remote_port_closes_the_client_quickly(
    conn: Connector, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO, logger="mlctl.tunnel")
    with Tunnel(conn, closed_port()) as tunnel:
        for _ in range(2):  # the listener keeps serving after a failure
            start = time.monotonic()
            with (
                httpx.Client(timeout=TIMEOUT, trust_env=False) as client,
                pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
            ):
                client.get(tunnel.url + "/ping")
            assert time.monotonic() - start < 1.0
        deadline = time.monotonic() + 2
        while tunnel.active_connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert tunnel.active_connections == 0
    assert any("cannot open 127.0.0.1" in r.getMessage() for r in caplog.records)
    assert "Traceback" not in capfd.readouterr().err


def test_stop_closes_every_connection_and_frees_the_port(conn: Connector, http_port: int) -> None:
    tunnel = Tunnel(conn, http_port)
    port = tunnel.start()
    with (
        httpx.Client(timeout=TIMEOUT, trust_env=False) as idle,
        httpx.Client(timeout=TIMEOUT, trust_env=False) as streaming,
    ):
        assert idle.get(tunnel.url + "/ping").content == b"pong"  # now idle, kept alive
        with streaming.stream("GET", tunnel.url + "/hang") as resp:
            lines = resp.iter_lines()
            assert next(lines) == "data: started"
            assert tunnel.active_connections == 2
            start = time.monotonic()
            tunnel.stop()
            assert time.monotonic() - start < 2.5
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                for _ in lines:
                    pass
        assert tunnel.active_connections == 0
        assert port_is_free(port)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert tunnel_threads() == []
    tunnel.stop()  # idempotent


def test_lost_ssh_connection_ends_in_flight_requests(sshd: SandboxSshd, http_port: int) -> None:
    conn = connect(ssh_target(sshd))
    with (
        Tunnel(conn, http_port) as tunnel,
        httpx.Client(timeout=TIMEOUT, trust_env=False) as client,
        client.stream("GET", tunnel.url + "/hang") as resp,
    ):
        lines = resp.iter_lines()
        assert next(lines) == "data: started"
        start = time.monotonic()
        conn.close()  # the transport dies under an open stream
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            for _ in lines:
                pass
        assert time.monotonic() - start < 2.0


def test_stop_before_start_and_start_twice(conn: Connector, http_port: int) -> None:
    tunnel = Tunnel(conn, http_port)
    tunnel.stop()
    tunnel.start()
    with pytest.raises(RuntimeError):
        tunnel.start()
    tunnel.stop()
    assert tunnel_threads() == []
