"""Interrupted downloads: Ctrl-C, a cut connection, a killed download; the next run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlctl import profiles
from mlctl.deploy import Deployer, DeployOptions, NullReporter, StepResult
from mlctl.hosts.open import open_connector
from mlctl.profiles import Profile
from mlctl.sandbox import host
from mlctl.sandbox.checkpoints import RESUMABLE_REPO_ID

SHARDS = [f"model-{k:05d}-of-00003.safetensors" for k in (1, 2, 3)]


@pytest.fixture(scope="module")
def slow(sandbox_home: Path, sshd_required: None) -> Iterator[host.SandboxInfo]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLCTL_HOME", str(sandbox_home))
        info = host.up("slow", "8xA100-80GB", hub_throttle_bps=20_000_000)
        try:
            yield info
        finally:
            host.down("slow", purge=True)


def _profile(name: str) -> Profile:
    data = profiles.load("a100-nvfp4").model_dump()
    data["name"] = name
    data["checkpoint"].update(repo=RESUMABLE_REPO_ID, include=[], format="hf", quant="bf16")
    return Profile.model_validate(data)


def _model_dir(info: host.SandboxInfo) -> Path:
    return Path(info.home) / ".mlctl" / "models" / RESUMABLE_REPO_ID.replace("/", "--")


def _gets(info: host.SandboxInfo) -> dict[str, int]:
    counts = dict.fromkeys(SHARDS, 0)
    path = Path(info.state_dir) / "hub-requests.jsonl"
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        for shard in SHARDS:
            if entry["method"] == "GET" and entry["path"].endswith("/" + shard):
                counts[shard] += 1
    return counts


def _download(profile: Profile, reporter: object) -> list[StepResult]:
    conn = open_connector("slow")
    try:
        d = Deployer(conn, "slow", profile, DeployOptions(name=profile.name), reporter)  # type: ignore[arg-type]
        facts = d.gather()
        sized = d.checkpoint_metadata(facts)
        plan = d.make_plan(sized, facts)
        spec = plan.downloads[0]
        step = next(s for s in plan.steps if s.id == f"download:{spec.repo}")
        d.download(plan, spec, step.commands[0])
        return d.steps
    finally:
        conn.close()


class InterruptWhenFirstShardLands(NullReporter):
    """Ctrl-C as soon as the small shard is complete and a big one is not."""

    def __init__(self, model_dir: Path, also: object = None) -> None:
        self.model_dir = model_dir
        self.also = also
        self.finished: set[str] = set()

    def progress(self, label: str, done: int, total: int) -> None:
        present = {s for s in SHARDS if (self.model_dir / s).exists()}
        if SHARDS[0] in present and SHARDS[2] not in present:
            self.finished = present
            if callable(self.also):
                self.also()
            raise KeyboardInterrupt


def _clear(info: host.SandboxInfo) -> None:
    subprocess.run(["rm", "-rf", str(_model_dir(info))], check=True)
    (Path(info.state_dir) / "hub-requests.jsonl").write_text("")


def test_ctrl_c_mid_download_then_the_next_run_continues(slow: host.SandboxInfo) -> None:
    _clear(slow)
    reporter = InterruptWhenFirstShardLands(_model_dir(slow))
    with pytest.raises(KeyboardInterrupt):
        _download(_profile("resume-ctrl-c"), reporter)
    assert reporter.finished and SHARDS[2] not in reporter.finished
    steps = _download(_profile("resume-ctrl-c"), NullReporter())
    assert steps[-1].status == "changed"
    for shard in SHARDS:
        assert (_model_dir(slow) / shard).stat().st_size > 0
    # the download kept running on the host (nohup): nothing was fetched twice
    assert set(_gets(slow).values()) == {1}
    again = _download(_profile("resume-ctrl-c"), NullReporter())
    assert again[-1].status == "ok"


def test_killed_download_resumes_without_refetching_finished_files(
    slow: host.SandboxInfo,
) -> None:
    _clear(slow)
    state = _model_dir(slow) / ".mlctl-download"

    def kill_download() -> None:  # the host side dies too (reboot, OOM killer...)
        pid = int((state / "pid").read_text())
        assert os.readlink(f"/proc/{pid}/cwd") == str(state)  # it is the download, nothing else
        os.killpg(pid, signal.SIGKILL)

    reporter = InterruptWhenFirstShardLands(_model_dir(slow), also=kill_download)
    with pytest.raises(KeyboardInterrupt):  # and the connection is cut
        _download(_profile("resume-killed"), reporter)
    finished = reporter.finished
    assert SHARDS[0] in finished
    steps = _download(_profile("resume-killed"), NullReporter())
    assert steps[-1].status == "changed"
    gets = _gets(slow)
    for shard in finished:
        assert gets[shard] == 1, gets  # finished files are never fetched again
    for shard in SHARDS:
        assert (_model_dir(slow) / shard).stat().st_size > 0
