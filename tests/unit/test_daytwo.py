"""Deployment state from what the host reported (pure)."""

from __future__ import annotations

import time

from mlctl.daytwo import STOPPED_MARK, classify, model_dirs, shared_model_dirs
from mlctl.remote_status import RemoteDeployment
from mlctl.state import DeploymentRecord


def record() -> DeploymentRecord:
    now = time.time()
    return DeploymentRecord(
        name="d",
        host="h",
        profile="a100-nvfp4",
        engine="vllm",
        served_model="m",
        remote_root="/r",
        remote_dir="/r/deployments/d",
        remote_port=8000,
        local_port=8001,
        api_key_file="/k",
        spec_hash="x",
        created_at=now,
        updated_at=now,
    )


def remote(**kw: object) -> RemoteDeployment:
    base: dict[str, object] = dict(
        name="d", pid=10, alive=True, exit_code=None, log_tail="", files=("server.log",)
    )
    base.update(kw)
    return RemoteDeployment(**base)  # type: ignore[arg-type]


def test_running_and_starting() -> None:
    assert classify(record(), remote(), healthy=True).state == "running"
    assert classify(record(), remote(), healthy=False).state == "starting"


def test_exited_with_a_diagnosis() -> None:
    log = "INFO x\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    status = classify(record(), remote(alive=False, exit_code=1, log_tail=log), healthy=None)
    assert (status.state, status.exit_code, status.cause) == ("exited", 1, "cuda-oom")
    assert status.fix and "--max-model-len" in status.fix


def test_exited_without_a_known_cause_shows_the_last_line() -> None:
    log = "INFO up\nRuntimeError: something new\nINFO: Finished server process [7]\n\n"
    status = classify(record(), remote(alive=False, exit_code=134, log_tail=log), healthy=None)
    assert status.cause is None and status.evidence == "RuntimeError: something new"
    assert status.fix and "mlctl logs d" in status.fix


def test_stopped_and_gone() -> None:
    stopped = remote(alive=False, exit_code=143, files=("server.log", STOPPED_MARK))
    assert classify(record(), stopped, healthy=None).state == "stopped"
    gone = classify(record(), None, healthy=None)
    assert gone.state == "stopped" and gone.error


def _with_dirs(name: str, host: str, dirs: object) -> DeploymentRecord:
    r = record()
    r.name, r.host = name, host
    r.extra = {"model_dirs": dirs}
    return r


def test_model_dirs_only_mlctl_shaped_directories() -> None:
    dirs = [
        "$HOME/.mlctl/models/mistralai--Large",
        "/workspace/models/org--repo/",
        "/",  # a hand-edited state file must not reach rm -rf
        "$HOME",
        "/workspace/models",
        "--x",
    ]
    assert model_dirs(_with_dirs("d", "h", dirs)) == dirs[:2]
    assert model_dirs(_with_dirs("d", "h", "not a list")) == []
    assert model_dirs(record()) == []  # records from before model_dirs was kept


def test_shared_model_dirs_are_those_another_deployment_on_the_host_uses() -> None:
    mine = _with_dirs("a", "gpu1", ["/v/org--one", "/v/org--two"])
    others = [
        mine,  # itself does not count
        _with_dirs("b", "gpu1", ["/v/org--two"]),
        _with_dirs("c", "gpu2", ["/v/org--one"]),  # another host: its own disk
    ]
    assert shared_model_dirs(mine, others) == ["/v/org--two"]
