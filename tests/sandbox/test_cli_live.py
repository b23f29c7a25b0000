"""Commands as a user runs them on a live deployment: `tunnel` (and the command its
`--print-ssh` prints, run for real), `logs -f`, and `deploy --dry-run`."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from mlctl import daytwo, profiles, state
from mlctl.deploy import DeployOptions, run_deploy
from mlctl.hosts.open import open_connector
from mlctl.sandbox import host
from mlctl.tunnel import find_free_port, port_is_free

Cli = Callable[[list[str]], tuple[int, str, str]]
NAME = "a100-nvfp4"


@pytest.fixture(scope="module")
def deployed(sandbox: host.SandboxInfo, sandbox_home: Path) -> Iterator[state.DeploymentRecord]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLCTL_HOME", str(sandbox_home))
        run_deploy("sandbox", profiles.load(NAME), DeployOptions(ready_timeout=30)).close()
        record = state.load(NAME)
        yield record
        conn = open_connector("sandbox")
        try:
            daytwo.stop(conn, record, purge=True)
        finally:
            conn.close()
        state.remove(NAME)


def _models(port: int, record: state.DeploymentRecord) -> httpx.Response:
    key = Path(record.api_key_file).read_text().strip()
    return httpx.get(
        f"http://127.0.0.1:{port}/v1/models",
        headers={"Authorization": f"Bearer {key}"},
        timeout=5,
        trust_env=False,
    )


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while port_is_free(port):
        assert proc.poll() is None, f"exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"nothing listens on {port}"
        time.sleep(0.05)


def test_tunnel_command_serves_and_ctrl_c_closes_it(
    deployed: state.DeploymentRecord, sandbox_home: Path
) -> None:
    port = find_free_port(20000 + os.getpid() % 20000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlctl", "tunnel", NAME, "--local-port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "MLCTL_HOME": str(sandbox_home)},
    )
    try:
        assert proc.stderr is not None
        said = b""
        deadline = time.monotonic() + 20
        while b"Tunnel: " not in said:  # started: Ctrl-C from here on closes it cleanly
            assert time.monotonic() < deadline and proc.poll() is None, said
            said += proc.stderr.readline()
        resp = _models(port, deployed)
        assert resp.status_code == 200
        assert deployed.served_model in {m["id"] for m in resp.json()["data"]}
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    text = (said + err).decode()
    assert proc.returncode == 0, text
    assert f"Tunnel: http://127.0.0.1:{port}/v1" in text and "Tunnel closed." in text
    assert "connected to" in text  # mlctl's own state messages are shown
    assert "Traceback" not in text and "paramiko" not in text and "Authentication" not in text
    assert port_is_free(port)


def test_print_ssh_prints_a_command_that_works(
    deployed: state.DeploymentRecord, run_cli: Cli
) -> None:
    port = find_free_port(21000 + os.getpid() % 20000)
    code, out, _ = run_cli(["tunnel", NAME, "--print-ssh", "--local-port", str(port)])
    assert code == 0
    argv = shlex.split(out.strip())
    assert argv[:2] == ["ssh", "-tt"] and argv[-1] == "sleep 2147483647"
    # BatchMode: no prompt may be needed, so the host key must come from the printed
    # UserKnownHostsFile (mlctl pinned it during the deploy)
    proc = subprocess.Popen(
        [argv[0], "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", *argv[1:]],
        stdin=subprocess.PIPE,  # open: EOF would end the terminal session
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_port(port, proc)
        assert _models(port, deployed).status_code == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_dry_run_plans_against_the_host_and_changes_nothing(
    deployed: state.DeploymentRecord, sandbox: host.SandboxInfo, run_cli: Cli
) -> None:
    args = ["deploy", "-p", NAME, "--host", "sandbox", "--name", "dry", "--dry-run", "--json"]
    code, out, err = run_cli(args)
    assert code == 0, err
    result = json.loads(out)
    assert result["plan"]["name"] == "dry" and "8x NVIDIA A100" in result["plan"]["host"]
    assert {s["title"].split()[0] for s in result["steps"]} >= {"Gather", "Preflight"}
    assert not (Path(sandbox.home) / ".mlctl" / "deployments" / "dry").exists()
    assert "dry" not in {r.name for r in state.list_records()}
    code, out, err = run_cli(args[:-1])  # the human form prints the plan
    assert code == 0 and "vllm serve" in out, err


def test_logs_follow_shows_new_lines_live_and_ctrl_c_ends_it(
    deployed: state.DeploymentRecord, sandbox_home: Path
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlctl", "logs", NAME, "-f", "--tail", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "MLCTL_HOME": str(sandbox_home)},
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the last line already in the log
        assert first.strip()
        # a request the engine logs after `logs -f` started (the sandbox engine is local)
        assert _models(deployed.remote_port, deployed).status_code == 200
        deadline = time.monotonic() + 10
        seen = b""
        while b"/v1/models" not in seen:
            assert time.monotonic() < deadline, seen
            seen += proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and b"Traceback" not in err, err
