"""`mlctl demo` end to end, as a user runs it: the real binary, both SSH servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("server", ["openssh", "paramiko"])
def test_demo_runs_and_cleans_up(tmp_path: Path, server: str, sshd_required: None) -> None:
    env = {**os.environ, "MLCTL_HOME": str(tmp_path / "home"), "COLUMNS": "120"}
    argv = [sys.executable, "-m", "mlctl", "demo"]
    if server == "paramiko":
        argv.append("--paramiko-server")
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert ("OpenSSH sshd" if server == "openssh" else "paramiko SSH server") in out
    assert "Ready:" in out and "through the SSH tunnel" in out
    assert "mistralai/Mistral-Large-3-675B-Instruct-2512-NVFP4:" in out  # the model answered
    assert "Sandbox stopped; nothing is left running." in out
    state = tmp_path / "home" / "state"
    assert not list((state / "sandbox").glob("*/sandbox.json"))
    assert not list((state / "deployments").glob("*.json"))
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path / "home")], capture_output=True, text=True
    ).stdout
    assert leftovers == ""
