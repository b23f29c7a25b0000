"""The sandbox host over real sshd: facts, doctor, plan --host, host keys, saved hosts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from mlctl.errors import ConnectError
from mlctl.gather import gather_facts
from mlctl.hosts.open import open_connector
from mlctl.sandbox import host
from mlctl.sandbox.standins.install import write_scenario

Cli = Callable[[list[str]], tuple[int, str, str]]

FIXTURES = Path(__file__).parents[1] / "fixtures"


def test_status_says_what_runs(sandbox: host.SandboxInfo, run_cli: Cli) -> None:
    code, out, _ = run_cli(["sandbox", "status", "--json"])
    assert code == 0
    data = json.loads(out)
    assert data["running"] and data["ssh_server"] == "openssh"
    assert data["host"] == "127.0.0.1" and data["port"] == sandbox.port
    assert data["hub_url"].startswith("http://127.0.0.1:")
    assert set(data["engines"].values()) == {"stand-in"}


def test_facts_of_8xa100(sandbox: host.SandboxInfo, run_cli: Cli) -> None:
    code, out, _ = run_cli(["facts", "--host", "sandbox", "--json"])
    assert code == 0
    facts = json.loads(out)
    assert facts["nvidia_smi"] == "ok" and len(facts["gpus"]) == 8
    gpu = facts["gpus"][0]
    assert gpu["name"] == "NVIDIA A100-SXM4-80GB" and gpu["memory_total_mib"] == 81920
    assert gpu["compute_capability"] == "8.0"
    assert facts["driver_version"] and facts["cuda_version"]
    assert facts["tools"]["vllm"] and facts["tools"]["ollama"] and facts["tools"]["llama-server"]
    assert max(facts["disk_free_bytes"].values()) >= 1900 * 10**9  # the simulated volume


def test_doctor_passes_a100_profile(sandbox: host.SandboxInfo, run_cli: Cli) -> None:
    code, out, _ = run_cli(["doctor", "--host", "sandbox", "--profile", "a100-nvfp4", "--json"])
    report = json.loads(out)
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert code == 0 and not failed, failed
    ids = {c["id"] for c in report["checks"]}
    assert {"ssh", "nvidia-smi", "gpu-count", "gpu-model", "fit", "disk", "shm"} <= ids


def test_doctor_measures_the_disk_at_models_dir(sandbox: host.SandboxInfo, run_cli: Cli) -> None:
    args = ["doctor", "--host", "sandbox", "--profile", "a100-nvfp4", "--json"]
    code, out, _ = run_cli([*args, "--models-dir", "~/volume/models"])
    disk = {c["id"]: c for c in json.loads(out)["checks"]}["disk"]
    assert code == 0 and disk["status"] == "ok"
    assert "GB free at ~/volume/models" in disk["detail"]


def test_doctor_fails_gpu_checks_on_4090s(sandbox: host.SandboxInfo, run_cli: Cli) -> None:
    code, out, _ = run_cli(["sandbox", "up", "--gpus", "4xRTX4090-24GB"])
    assert code == 0
    try:
        code, out, _ = run_cli(["doctor", "--host", "sandbox", "--profile", "a100-nvfp4", "--json"])
        checks = {c["id"]: c for c in json.loads(out)["checks"]}
        assert code == 1
        assert (
            checks["gpu-count"]["status"] == "fail" and "needs 8" in checks["gpu-count"]["detail"]
        )
        assert checks["gpu-model"]["status"] == "fail"
        assert "A100-80GB" in checks["gpu-model"]["fix"]
        assert checks["fit"]["status"] == "fail"
        code, out, _ = run_cli(["doctor", "--host", "sandbox", "--profile", "a100-nvfp4"])
        assert code == 1 and "✗ GPU count" in out and "fix:" in out
    finally:
        run_cli(["sandbox", "up", "--gpus", "8xA100-80GB"])


def test_plan_against_the_real_gpus(sandbox: host.SandboxInfo, run_cli: Cli) -> None:
    code, out, _ = run_cli(["plan", "--profile", "a100-nvfp4", "--host", "sandbox", "--json"])
    assert code == 0
    data = json.loads(out)
    assert data["fits"] and not data["host"].startswith("assumed")
    assert "NVIDIA A100-SXM4-80GB" in data["host"]


def test_broken_driver_is_reported(sandbox: host.SandboxInfo, run_cli: Cli) -> None:
    write_scenario(Path(sandbox.state_dir), {"nvidia-smi": {"fail": "driver"}})
    try:
        code, out, _ = run_cli(["doctor", "--host", "sandbox", "--profile", "a100-nvfp4", "--json"])
        checks = {c["id"]: c for c in json.loads(out)["checks"]}
        assert code == 1
        assert checks["nvidia-smi"]["status"] == "fail"
        assert "couldn't communicate with the NVIDIA driver" in checks["nvidia-smi"]["detail"]
    finally:
        write_scenario(Path(sandbox.state_dir), {})


def test_doctor_diagnoses_a_crashed_deployment(sandbox: host.SandboxInfo, run_cli: Cli) -> None:
    dep = Path(sandbox.home) / ".mlctl" / "deployments" / "crashed"
    dep.mkdir(parents=True)
    log = (FIXTURES / "logs" / "cuda-oom-vllm-1.log").read_text()
    (dep / "server.log").write_text(log)
    (dep / "server.pid").write_text("999999999\n")
    (dep / "exit_code").write_text("1\n")
    try:
        code, out, _ = run_cli(["doctor", "--host", "sandbox", "--json"])
        report = json.loads(out)
        check = {c["id"]: c for c in report["checks"]}["deployment:crashed"]
        assert code == 1 and check["status"] == "fail"
        assert "cuda-oom" in check["detail"] and "--max-model-len" in check["fix"]
        assert report["deployments"][0]["exit_code"] == 1
    finally:
        for f in dep.iterdir():
            f.unlink()
        dep.rmdir()


def test_changed_host_key_is_refused_until_forgotten(
    sandbox: host.SandboxInfo, run_cli: Cli
) -> None:
    conn = open_connector("sandbox")  # pins the current key (accept-new)
    conn.close()
    host.rotate_host_key("sandbox")
    with pytest.raises(ConnectError) as info:
        open_connector("sandbox")
    assert "SHA256:" in info.value.message and "forget-key" in (info.value.hint or "")
    code, _, err = run_cli(["facts", "--host", "sandbox"])
    assert code == 1 and "Traceback" not in err and "SHA256:" in err
    code, out, _ = run_cli(["hosts", "forget-key", "sandbox"])
    assert code == 0 and "Forgot" in out
    conn = open_connector("sandbox")
    assert gather_facts(conn).gpu_count == 8
    conn.close()


def test_strict_policy_refuses_an_unknown_key(sandbox: host.SandboxInfo, run_cli: Cli) -> None:
    run_cli(["hosts", "forget-key", "sandbox"])
    code, _, err = run_cli(["facts", "--host", "sandbox", "--host-key-policy", "strict"])
    assert code == 1 and "Traceback" not in err


def test_saved_host_from_a_pasted_ssh_line(sandbox: host.SandboxInfo, run_cli: Cli) -> None:
    line = [
        "ssh",
        "-p",
        str(sandbox.port),
        "-i",
        sandbox.key_path,
        f"{sandbox.user}@127.0.0.1",
        "-L",
        "8080:localhost:8080",
    ]
    code, out, _ = run_cli(["hosts", "add", "pasted", "--", *line])
    assert code == 0
    code, out, _ = run_cli(["hosts", "show", "pasted", "--json"])
    saved = json.loads(out)
    assert saved["port"] == sandbox.port and saved["identity_files"] == [sandbox.key_path]
    code, out, _ = run_cli(["facts", "--host", "pasted", "--json"])
    assert code == 0 and len(json.loads(out)["gpus"]) == 8
    code, out, _ = run_cli(["hosts", "list", "--json"])
    assert {"sandbox", "pasted"} <= {h["name"] for h in json.loads(out)}
    assert run_cli(["hosts", "remove", "pasted"])[0] == 0
