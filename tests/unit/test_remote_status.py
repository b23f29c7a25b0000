"""The deployments status script and its parser, run through a real shell."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from mlctl.remote_status import new_nonce, parse_status, status_script


def _make(root: Path, name: str, *, pid: int | None, exit_code: str | None, log: str) -> None:
    d = root / "deployments" / name
    d.mkdir(parents=True)
    if pid is not None:
        (d / "server.pid").write_text(f"{pid}\n")
    if exit_code is not None:
        (d / "exit_code").write_text(exit_code + "\n")
    (d / "server.log").write_text(log)


def test_reports_alive_dead_and_log_tails(tmp_path: Path) -> None:
    root = tmp_path / "root dir"
    nonce = new_nonce()
    _make(root, "alive", pid=None, exit_code=None, log="INFO ready\n")
    # the wrapper runs in its deployment directory: that is how "alive" is recognised
    ours = subprocess.Popen(["sleep", "30"], cwd=root / "deployments" / "alive")
    (root / "deployments" / "alive" / "server.pid").write_text(f"{ours.pid}\n")
    # a live pid that is NOT ours (this test process) must not count as alive
    _make(root, "stale", pid=os.getpid(), exit_code=None, log="")
    # a log line that imitates a marker with another nonce must stay a log line
    fake = "@@mlctl-0000000000000000-name evil\n"
    _make(
        root,
        "crashed",
        pid=999_999_9,
        exit_code="1",
        log="line one\n" + fake + "torch.OutOfMemoryError: CUDA out of memory.\n",
    )
    try:
        out = subprocess.run(
            ["sh", "-c", status_script(str(root), nonce)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        ours.kill()
        ours.wait()
    found = {d.name: d for d in parse_status(out, nonce)}
    assert set(found) == {"alive", "crashed", "stale"}
    assert found["alive"].alive and found["alive"].pid == ours.pid
    assert found["alive"].exit_code is None and found["alive"].log_tail == "INFO ready"
    assert not found["stale"].alive
    crashed = found["crashed"]
    assert not crashed.alive and crashed.exit_code == 1
    assert "evil" in crashed.log_tail and "CUDA out of memory" in crashed.log_tail
    assert "server.log" in crashed.files


def test_no_deployments(tmp_path: Path) -> None:
    nonce = new_nonce()
    out = subprocess.run(
        ["sh", "-c", status_script(str(tmp_path / "none"), nonce)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert parse_status(out, nonce) == []
