#!/usr/bin/env python3
"""Tunnel latency, streaming and throughput, as ratios to OpenSSH's ``ssh -tt -L`` in the same run.

Against a small HTTP server on 127.0.0.1 reached through a sandbox sshd on
loopback (started in a temp dir, stopped at the end), four paths:

- direct: the HTTP server's port itself,
- OpenSSH: ``ssh -tt -L … 'sleep …'`` (the reference: a pty session is what makes
  sshd disable Nagle on its side),
- mlctl: ``mlctl.tunnel.Tunnel`` over ``mlctl.hosts.ssh.connect``,
- mlctl-plain: the same with ``MLCTL_TUNNEL_DIRECT=0``: paramiko's own packet layer
  and a thread per direction (no ``mlctl/tunnel_pipe.py``, ``hosts/fast_packets.py``
  or ``hosts/request_loop.py``), to show what those save.

The HTTP server, the OpenSSH client and mlctl's tunnel each run in their own
process, as they do for a user; this process is only the client. It measures
the p50/p99 latency of small keep-alive requests (in interleaved rounds, so a
busy moment on the machine hits all paths alike) twice: with a raw-socket
client, so that the numbers are the tunnels' own cost, and through httpx (the
client the OpenAI SDK uses), as an application sees it; the worst delay of chunks
streamed every 10 ms (like tokens), and the throughput of a 50 MB body (best
of five). Targets (issue #5): latency <= 1.15x OpenSSH, worst chunk delay
<= 2 ms, throughput >= 0.9x OpenSSH; the latency target is checked for both
clients. Exit status 1 when a target is missed.

    python benchmarks/tunnel.py [--requests 5000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BIG = 50 * 1000 * 1000
STREAM_CHUNKS = 100
STREAM_EVERY = 0.010
TARGETS = {"latency_ratio": 1.15, "chunk_delay_ms": 2.0, "throughput_ratio": 0.9}
_STARTUP = 20.0  # seconds a helper process may take to come up


# ---------------------------------------------------------------- helper processes


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

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
            block = b"x" * (1 << 20)
            left = BIG
            while left:
                n = min(left, len(block))
                self.wfile.write(block[:n] if n < len(block) else block)
                left -= n
        elif self.path == "/stream":
            # No Content-Length: the body ends when the connection does. One line per token,
            # carrying its send time on the shared monotonic clock.
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.flush()
            start = time.monotonic()
            for i in range(STREAM_CHUNKS):
                pause = start + i * STREAM_EVERY - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                self.wfile.write(b"%.9f\n" % time.monotonic())
                self.wfile.flush()
            self.close_connection = True
        else:
            self.send_error(404)


def _serve_http() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    server.shutdown()


def _serve_tunnel(host: str, port: int, user: str, key: str, http_port: int, direct: str) -> None:
    os.environ["MLCTL_TUNNEL_DIRECT"] = direct  # read when each connection is set up
    from mlctl.hosts.ssh import connect
    from mlctl.hosts.target import SshTarget
    from mlctl.tunnel import Tunnel

    conn = connect(SshTarget(host=host, port=port, user=user, identity_files=(key,)))
    tunnel = Tunnel(conn, http_port)
    print(tunnel.start(), tunnel.holds_pty, flush=True)
    sys.stdin.read()
    tunnel.stop()
    conn.close()


@contextmanager
def _child(argv: list[str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run a helper that prints one line when ready and exits when its stdin closes."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line:
            raise RuntimeError(f"{argv[1:3]} did not start")
        yield proc, line
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_accepting(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + _STARTUP
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ssh exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"ssh -L did not open 127.0.0.1:{port}")


@contextmanager
def _openssh(sshd: Any, http_port: int) -> Iterator[int]:
    port = _free_port()
    argv = [
        "ssh",
        "-tt",
        "-L",
        f"127.0.0.1:{port}:127.0.0.1:{http_port}",
        "-p",
        str(sshd.port),
        "-i",
        str(sshd.key_path),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "LogLevel=ERROR",
        f"{sshd.user}@{sshd.host}",
        "sleep 600",
    ]
    # stdin stays open (a pipe): EOF on it would end the pty session.
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_accepting(port, proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ---------------------------------------------------------------- measurements


class _KeepAlive:
    """One keep-alive HTTP/1.1 connection sending ``GET /ping`` on a raw socket."""

    REQUEST = b"GET /ping HTTP/1.1\r\nHost: bench\r\n\r\n"

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def ping(self) -> float:
        start = time.perf_counter()
        self.sock.sendall(self.REQUEST)
        data = b""
        while not data.endswith(b"pong"):
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError("connection closed during a request")
            data += chunk
        return time.perf_counter() - start

    def close(self) -> None:
        self.sock.close()


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


class _HttpxKeepAlive:
    """The same request through httpx, as an application sends it (end-to-end latency)."""

    def __init__(self, port: int) -> None:
        import httpx

        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False)

    def ping(self) -> float:
        start = time.perf_counter()
        if self.client.get("/ping").content != b"pong":
            raise RuntimeError("wrong answer")
        return time.perf_counter() - start

    def close(self) -> None:
        self.client.close()


def measure_latency(
    ports: dict[str, int], requests: int, rounds: int = 10, client: str = "raw"
) -> dict[str, Any]:
    """Return p50/p99 (ms) of ``requests`` keep-alive pings per path, interleaved in rounds."""
    kind = _KeepAlive if client == "raw" else _HttpxKeepAlive
    clients = {name: kind(port) for name, port in ports.items()}
    samples: dict[str, list[float]] = {name: [] for name in ports}
    try:
        for client in clients.values():
            for _ in range(50):  # warm-up: connection, channel, caches
                client.ping()
        per_round = -(-requests // rounds)
        for _ in range(rounds):
            for name, client in clients.items():
                samples[name] += [client.ping() for _ in range(per_round)]
    finally:
        for client in clients.values():
            client.close()
    return {
        name: {
            "requests": len(values),
            "p50_ms": _percentile(values, 50) * 1000,
            "p99_ms": _percentile(values, 99) * 1000,
        }
        for name, values in samples.items()
    }


def measure_stream(port: int) -> dict[str, float]:
    """Return the worst and p99 delay (ms) of chunks sent every 10 ms, send to arrival."""
    delays: list[float] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: bench\r\n\r\n")
        buf = b""
        in_body = False
        while True:
            chunk = sock.recv(65536)
            now = time.monotonic()
            if not chunk:
                break
            buf += chunk
            if not in_body:
                if b"\r\n\r\n" not in buf:
                    continue
                buf = buf.split(b"\r\n\r\n", 1)[1]
                in_body = True
            *lines, buf = buf.split(b"\n")
            delays += [now - float(line) for line in lines if line]
    if len(delays) != STREAM_CHUNKS:
        raise RuntimeError(f"stream: {len(delays)} chunks arrived, not {STREAM_CHUNKS}")
    return {"worst_ms": max(delays) * 1000, "p99_ms": _percentile(delays, 99) * 1000}


def measure_throughput(port: int, tries: int = 5) -> dict[str, float]:
    """Return the best MB/s (10^6 bytes) of ``tries`` downloads of the 50 MB body."""
    rates: list[float] = []
    view = memoryview(bytearray(1 << 20))
    for _ in range(tries):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            start = time.perf_counter()
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            total = 0
            while True:
                n = sock.recv_into(view)
                if not n:
                    break
                total += n
            elapsed = time.perf_counter() - start
        if total < BIG:
            raise RuntimeError(f"throughput: {total} bytes arrived, not {BIG}")
        rates.append(BIG / elapsed / 1e6)
    return {"mb_per_s": max(rates), "median_mb_per_s": statistics.median(rates)}


# ---------------------------------------------------------------- the run


def run(requests: int) -> dict[str, Any]:
    """Start the server, the sshd and both tunnels; measure; stop everything; return results."""
    from mlctl.sandbox.sshd import start_sshd

    here = os.path.abspath(__file__)
    with tempfile.TemporaryDirectory(prefix="mlctl-bench-tunnel-") as tmp, ExitStack() as stack:
        os.environ["MLCTL_HOME"] = str(Path(tmp) / "mlctl")
        sshd = start_sshd(Path(tmp) / "sshd")
        stack.callback(sshd.stop)
        _, line = stack.enter_context(_child([sys.executable, here, "_http"]))
        http_port = int(line)
        openssh_port = stack.enter_context(_openssh(sshd, http_port))
        tunnel_argv = [sys.executable, here, "_tunnel", sshd.host, str(sshd.port), sshd.user]
        tunnel_argv += [str(sshd.key_path), str(http_port)]
        _, line = stack.enter_context(_child([*tunnel_argv, "1"]))
        mlctl_port, holds_pty = int(line.split()[0]), line.split()[1] == "True"
        # the same tunnel with replies handed from paramiko's thread to ours (tunnel_pipe off)
        _, line = stack.enter_context(_child([*tunnel_argv, "0"]))
        plain_port = int(line.split()[0])
        ports = {
            "direct": http_port,
            "openssh": openssh_port,
            "mlctl": mlctl_port,
            "mlctl-plain": plain_port,
        }

        latency = measure_latency(ports, requests)
        with_httpx = measure_latency(ports, requests, client="httpx")
        stream = {name: measure_stream(port) for name, port in ports.items()}
        throughput = {name: measure_throughput(port) for name, port in ports.items()}

    paths = {
        name: {**latency[name], **{"chunk_" + k: v for k, v in stream[name].items()}}
        | throughput[name]
        for name in ports
    }
    ours, ref = paths["mlctl"], paths["openssh"]
    ratios = {
        "p50": ours["p50_ms"] / ref["p50_ms"],
        "p99": ours["p99_ms"] / ref["p99_ms"],
        "throughput": ours["mb_per_s"] / ref["mb_per_s"],
        "plain_p50": paths["mlctl-plain"]["p50_ms"] / ref["p50_ms"],
    }
    e2e = {
        p: with_httpx["mlctl"][f"{p}_ms"] / with_httpx["openssh"][f"{p}_ms"] for p in ("p50", "p99")
    }
    checks = {
        "latency p50 <= 1.15x OpenSSH (raw socket)": ratios["p50"] <= TARGETS["latency_ratio"],
        "latency p99 <= 1.15x OpenSSH (raw socket)": ratios["p99"] <= TARGETS["latency_ratio"],
        "latency p50 <= 1.15x OpenSSH (httpx)": e2e["p50"] <= TARGETS["latency_ratio"],
        "latency p99 <= 1.15x OpenSSH (httpx)": e2e["p99"] <= TARGETS["latency_ratio"],
        "worst chunk delay <= 2 ms": ours["chunk_worst_ms"] <= TARGETS["chunk_delay_ms"],
        "throughput >= 0.9x OpenSSH": ratios["throughput"] >= TARGETS["throughput_ratio"],
    }
    return {
        "paths": paths,
        "ratios_to_openssh": ratios,
        "targets": checks,
        "httpx_end_to_end": {**with_httpx, "ratios_to_openssh": e2e},
        "mlctl_holds_pty": holds_pty,
        "openssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip(),
    }


def _print(result: dict[str, Any]) -> None:
    print(f"{'path':<12}{'p50 ms':>9}{'p99 ms':>9}{'chunk worst':>13}{'chunk p99':>11}{'MB/s':>8}")
    for name, row in result["paths"].items():
        print(
            f"{name:<12}{row['p50_ms']:>9.3f}{row['p99_ms']:>9.3f}"
            f"{row['chunk_worst_ms']:>10.3f} ms{row['chunk_p99_ms']:>8.3f} ms"
            f"{row['mb_per_s']:>8.0f}"
        )
    ratios = result["ratios_to_openssh"]
    print(
        f"mlctl / OpenSSH: p50 {ratios['p50']:.2f}x, p99 {ratios['p99']:.2f}x, "
        f"throughput {ratios['throughput']:.2f}x; with paramiko's packet layer and a "
        f"thread per direction (MLCTL_TUNNEL_DIRECT=0) p50 {ratios['plain_p50']:.2f}x\n"
        f"(pty held: {result['mlctl_holds_pty']}; "
        f"{result['openssh']})"
    )
    e2e = result["httpx_end_to_end"]
    print(
        "end to end with an httpx client (p50/p99 ms): "
        + ", ".join(f"{n} {e2e[n]['p50_ms']:.3f}/{e2e[n]['p99_ms']:.3f}" for n in result["paths"])
        + f"; mlctl / OpenSSH p50 {e2e['ratios_to_openssh']['p50']:.2f}x, "
        f"p99 {e2e['ratios_to_openssh']['p99']:.2f}x"
    )
    for name, ok in result["targets"].items():
        print(f"  {'ok  ' if ok else 'MISS'} {name}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_http":
        _serve_http()
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_tunnel":
        host, port, user, key, http_port, direct = sys.argv[2:8]
        _serve_tunnel(host, int(port), user, key, int(http_port), direct)
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="small requests per path")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.requests < 500:
        parser.error("--requests must be at least 500")
    if shutil.which("ssh") is None:
        sys.exit("benchmarks/tunnel.py needs the OpenSSH client (ssh) for its reference")
    result = run(args.requests)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    sys.exit(0 if all(result["targets"].values()) else 1)


if __name__ == "__main__":
    main()
