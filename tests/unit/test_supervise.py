"""The supervisor's shell snippets, run for real: start, alive, stop, and stale pid files."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from mlctl import supervise


def sh(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)


def _deployment(tmp_path: Path, body: str) -> Path:
    d = tmp_path / "dep dir"
    d.mkdir()
    (d / "run.sh").write_text(f"#!/bin/sh\n{body}\n")
    return d


def test_start_survives_the_caller_and_stop_records_the_exit_code(tmp_path: Path) -> None:
    d = _deployment(tmp_path, "echo engine up; exec sleep 30")
    started = sh(f"setsid sh -c {supervise.shell.quote(supervise.start_command(str(d)))}")
    pid = int(started.stdout.strip())
    assert (d / "server.pid").read_text().strip() == str(pid)
    assert sh(supervise.alive_command(str(d))).returncode == 0
    time.sleep(0.2)
    assert "engine up" in (d / "server.log").read_text()
    assert sh(supervise.stop_command(str(d), timeout=5)).stdout.strip() == "terminated"
    deadline = time.monotonic() + 5
    while not (d / "exit_code").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (d / "exit_code").read_text().strip() == "143"
    assert sh(supervise.alive_command(str(d))).returncode != 0


def test_exit_code_of_a_crashing_engine(tmp_path: Path) -> None:
    d = _deployment(tmp_path, "echo boom >&2; exit 3")
    sh(supervise.start_command(str(d)))
    deadline = time.monotonic() + 5
    while not (d / "exit_code").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (d / "exit_code").read_text().strip() == "3"
    assert "boom" in (d / "server.log").read_text()
    assert sh(supervise.stop_command(str(d))).stdout.strip() == "not-running"


def test_a_stale_pid_file_never_signals_a_stranger(tmp_path: Path) -> None:
    d = _deployment(tmp_path, "exec sleep 30")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stranger = subprocess.Popen(["sleep", "30"], cwd=elsewhere, start_new_session=True)
    try:
        (d / "server.pid").write_text(f"{stranger.pid}\n")
        assert sh(supervise.alive_command(str(d))).returncode != 0
        assert sh(supervise.stop_command(str(d), timeout=1)).stdout.strip() == "not-running"
        assert stranger.poll() is None  # still alive
    finally:
        stranger.kill()
        stranger.wait()


def test_port_listening(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert sh(supervise.port_listening_command(port)).stdout.strip() == "busy"
    assert sh(supervise.port_listening_command(port)).stdout.strip() == "free"


def test_log_chunks_follow_the_file(tmp_path: Path) -> None:
    d = _deployment(tmp_path, "exec sleep 30")
    (d / "server.log").write_text("one\ntwo\n")
    alive, code, size, text = supervise.parse_log_chunk(
        sh(supervise.log_chunk_command(str(d), 0)).stdout
    )
    assert (alive, code, size, text) == (False, None, 8, "one\ntwo\n")
    (d / "exit_code").write_text("1\n")
    alive, code, size, text = supervise.parse_log_chunk(
        sh(supervise.log_chunk_command(str(d), 4)).stdout
    )
    assert (code, size, text) == (1, 8, "two\n")
