"""mlctl deploy end to end against the sandbox host over real sshd (stand-in engines)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mlctl import daytwo, health, profiles, state, supervise
from mlctl.deploy import DeployError, DeployOptions, Session, run_deploy
from mlctl.errors import HubError, MlctlError
from mlctl.hosts.open import open_connector
from mlctl.profiles import Profile
from mlctl.sandbox import host
from mlctl.sandbox.hub import SANDBOX_TOKEN
from mlctl.sandbox.standins.install import write_scenario

Cli = Callable[[list[str]], tuple[int, str, str]]


def variant(name: str, **changes: object) -> Profile:
    data = profiles.load(name).model_dump()
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return Profile.model_validate(data)


def deploy(profile: Profile, **options: object) -> Session:
    return run_deploy("sandbox", profile, DeployOptions(ready_timeout=30, **options))  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _clean(sandbox: host.SandboxInfo) -> Iterator[None]:
    """Each test starts with no engine running and no scenario."""
    write_scenario(Path(sandbox.state_dir), {})
    yield
    write_scenario(Path(sandbox.state_dir), {})
    conn = open_connector("sandbox")
    try:
        for record in state.list_records():
            daytwo.stop(conn, record, purge=True)
            state.remove(record.name)
        root = Path(sandbox.home) / ".mlctl" / "deployments"
        for directory in root.glob("*/"):  # failed deploys leave no record
            conn.run(supervise.stop_command(str(directory)), timeout=60)
    finally:
        conn.close()


def test_vllm_deploy_is_ready_idempotent_and_restarts_on_change(
    sandbox: host.SandboxInfo,
) -> None:
    session = deploy(profiles.load("a100-nvfp4"))
    try:
        result = session.result
        assert [s.status for s in result.steps][-2:] == ["changed", "changed"]
        assert result.endpoint and result.local_port != 8000  # engine and tunnel share a machine
        key = Path(result.api_key_file or "").read_text()
        assert stat.S_IMODE(os.stat(result.api_key_file or "").st_mode) == 0o600
        answer = health.chat_once(result.endpoint, key, result.served_model, max_tokens=4)
        assert answer.text
        with pytest.raises(MlctlError):  # the key is enforced
            health.chat_once(result.endpoint, "wrong-key", result.served_model)
        names = [p for p, _ in result.phases]
        assert names[:2] == ["starting", "loading weights"] and "serving" in names
    finally:
        session.close()
    pid = state.load("a100-nvfp4")
    first_pid = daytwo.statuses([pid], open_connector)[0].pid

    again = deploy(profiles.load("a100-nvfp4"))
    again.close()
    assert {s.status for s in again.result.steps} == {"ok"}
    assert not again.result.restarted
    assert daytwo.statuses([state.load("a100-nvfp4")], open_connector)[0].pid == first_pid

    changed = deploy(profiles.load("a100-nvfp4"), max_model_len=32768)
    changed.close()
    launch = next(s for s in changed.result.steps if s.id == "launch")
    assert launch.status == "changed" and "restarted" in launch.detail
    assert changed.result.restarted


def test_status_logs_and_stop(sandbox: host.SandboxInfo, run_cli: Cli) -> None:
    code, out, _ = run_cli(
        ["deploy", "-p", "a100-nvfp4", "--host", "sandbox", "--detach", "--json"]
    )
    assert code == 0, out
    result = json.loads(out)
    assert {"name", "endpoint", "api_key_file", "remote_port"} <= set(result)
    code, out, _ = run_cli(["status", "--json"])
    (entry,) = json.loads(out)
    assert entry["state"] == "running" and entry["exit_code"] is None and entry["healthy"]
    code, out, _ = run_cli(["logs", "a100-nvfp4", "--tail", "5"])
    assert code == 0 and "HTTP/1.1" in out
    code, out, _ = run_cli(["stop", "a100-nvfp4"])
    assert code == 0 and "stopped" in out
    code, out, _ = run_cli(["status", "--json"])
    assert json.loads(out)[0]["state"] == "stopped"


def test_crash_after_ready_shows_exited_with_code(sandbox: host.SandboxInfo) -> None:
    write_scenario(
        Path(sandbox.state_dir), {"vllm": {"fail": "crash-after-ready", "crash_after_seconds": 0.5}}
    )
    deploy(profiles.load("a100-nvfp4")).close()
    record = state.load("a100-nvfp4")
    deadline = time.monotonic() + 10
    while True:
        (found,) = daytwo.statuses([record], open_connector)
        if found.state == "exited" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert found.state == "exited" and found.exit_code not in (None, 0)
    assert found.evidence and "illegal memory access" in found.evidence  # the engine's last words
    assert found.fix and "mlctl logs a100-nvfp4" in found.fix


def test_injected_oom_fails_with_the_diagnosis(sandbox: host.SandboxInfo) -> None:
    write_scenario(Path(sandbox.state_dir), {"vllm": {"fail": "oom"}})
    with pytest.raises(DeployError) as info:
        deploy(profiles.load("a100-nvfp4"))
    assert "cuda-oom" in info.value.message and "--max-model-len" in (info.value.hint or "")
    with pytest.raises(MlctlError):
        state.load("a100-nvfp4")  # no record of an endpoint that never was


def test_mistral_flags_on_an_hf_format_repo(sandbox: host.SandboxInfo) -> None:
    wrong = variant(
        "a100-nvfp4",
        checkpoint__repo="mlctl-sandbox/hf-format-model",
        checkpoint__include=[],
        checkpoint__format="mistral",
    )
    with pytest.raises(DeployError) as info:
        deploy(wrong)
    assert "mistral-format-mismatch" in info.value.message


def test_gated_repo_without_token_is_refused_before_download(sandbox: host.SandboxInfo) -> None:
    gated = variant(
        "a100-nvfp4", checkpoint__repo="mlctl-sandbox/gated-model", checkpoint__include=[]
    )
    with pytest.raises(HubError) as info:
        deploy(gated)
    assert "gated" in info.value.message and "HF_TOKEN" in info.value.message
    models = Path(sandbox.home) / ".mlctl" / "models"
    assert not (models / "mlctl-sandbox--gated-model").exists()
    session = deploy(gated, hf_token=SANDBOX_TOKEN)  # with the token it goes through
    session.close()
    token_file = Path(sandbox.home) / ".mlctl" / "secrets" / "hf_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


def test_disk_too_small_is_refused_before_download(sandbox: host.SandboxInfo) -> None:
    host.write_df_standin(Path(sandbox.state_dir) / "bin", Path(sandbox.home), 1e-7)
    try:
        with pytest.raises(DeployError) as info:
            deploy(profiles.load("a100-nvfp4"))
        assert "Disk for the checkpoint" in info.value.message
        assert "Nothing was installed or downloaded" in (info.value.hint or "")
    finally:
        host.write_df_standin(Path(sandbox.state_dir) / "bin", Path(sandbox.home), 2000)


def test_ollama_deploy(sandbox: host.SandboxInfo) -> None:
    host.up("sandbox", "1xRTX4090-24GB")
    try:
        session = deploy(profiles.load("4090-ministral-14b"))
        try:
            result = session.result
            assert result.endpoint
            answer = health.chat_once(result.endpoint, None, "ministral-3:14b", max_tokens=2)
            assert answer.text
        finally:
            session.close()
    finally:
        host.up("sandbox", "8xA100-80GB")


def test_llamacpp_deploy_launches_the_first_shard(sandbox: host.SandboxInfo) -> None:
    host.up("sandbox", "4xRTX4090-24GB")
    try:
        session = deploy(profiles.load("4090-gguf"))
        try:
            result = session.result
            assert result.plan is not None
            argv = result.plan.launch.argv
            model = argv[argv.index("-m") + 1]
            assert model.endswith("-00001-of-00004.gguf")
            key = Path(result.api_key_file or "").read_text()
            assert "".join(
                health.stream_chat(
                    result.endpoint or "", key, "mistral-large-3", "hi", max_tokens=3
                )
            )
        finally:
            session.close()
    finally:
        host.up("sandbox", "8xA100-80GB")


def test_secrets_never_leak(sandbox: host.SandboxInfo, run_cli: Cli) -> None:
    os.environ["HF_TOKEN"] = SANDBOX_TOKEN
    try:
        code, out, err = run_cli(["deploy", "-p", "a100-nvfp4", "--host", "sandbox", "--detach"])
    finally:
        del os.environ["HF_TOKEN"]
    assert code == 0, err
    key = state.read_api_key("a100-nvfp4")
    for secret in (key, SANDBOX_TOKEN):
        assert secret not in out and secret not in err
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert secret not in ps
        for root in (Path(sandbox.home), Path(os.environ["MLCTL_HOME"])):
            for path in root.rglob("*"):
                if not path.is_file() or path.is_symlink():
                    continue
                mode = stat.S_IMODE(path.stat().st_mode)
                if mode & 0o077:
                    assert secret not in path.read_text(errors="replace"), path


def test_models_dir_holds_the_checkpoint_and_purge_model_respects_sharing(
    sandbox: host.SandboxInfo, run_cli: Cli
) -> None:
    volume = Path(sandbox.home) / "volume" / "models"  # a big volume, as on RunPod
    repo_dir = volume / profiles.load("a100-nvfp4").checkpoint.repo.replace("/", "--")
    args = ["deploy", "-p", "a100-nvfp4", "--host", "sandbox", "--detach", "--json"]
    code, out, err = run_cli([*args, "--models-dir", str(volume)])
    assert code == 0, out + err
    assert sorted(p.name for p in repo_dir.iterdir() if p.suffix == ".safetensors")
    run_sh = Path(sandbox.home) / ".mlctl" / "deployments" / "a100-nvfp4" / "run.sh"
    assert str(repo_dir) in run_sh.read_text()  # the engine loads it from there
    assert run_cli(["stop", "a100-nvfp4"])[0] == 0

    # a second deployment of the same checkpoint in the same directory: downloaded once
    code, out, err = run_cli([*args, "--models-dir", str(volume), "--name", "twin"])
    assert code == 0, out + err
    steps = {s["title"].split()[0]: s["status"] for s in json.loads(out)["steps"]}
    assert steps["Download"] == "ok"

    code, out, _ = run_cli(["stop", "a100-nvfp4", "--purge", "--purge-model"])
    assert code == 0 and f"Kept {repo_dir}: another deployment" in out
    assert repo_dir.is_dir()
    code, out, _ = run_cli(["stop", "twin", "--purge", "--purge-model"])
    assert code == 0 and f"Deleted the model files in {repo_dir}" in out
    assert not repo_dir.exists()
