"""A sandbox without engines: deploy installs them through the stand-in uv/pip and curl | sh."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlctl import daytwo, profiles, state
from mlctl.deploy import DeployOptions, run_deploy
from mlctl.hosts.open import open_connector
from mlctl.sandbox import host


@pytest.fixture(scope="module")
def bare(sandbox_home: Path, sshd_required: None) -> Iterator[host.SandboxInfo]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLCTL_HOME", str(sandbox_home))
        info = host.up("bare", "8xA100-80GB", engines=False)
        try:
            yield info
        finally:
            conn = open_connector("bare")
            try:
                for record in state.list_records():
                    daytwo.stop(conn, record, purge=True)
                    state.remove(record.name)
            finally:
                conn.close()
            host.down("bare", purge=True)


def _installs(info: host.SandboxInfo) -> list[dict[str, object]]:
    path = Path(info.state_dir) / "installs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_facts_show_no_engine(bare: host.SandboxInfo) -> None:
    from mlctl.gather import gather_facts

    conn = open_connector("bare")
    try:
        facts = gather_facts(conn)
    finally:
        conn.close()
    assert facts.tools["vllm"] is None and facts.tools["ollama"] is None
    assert facts.tools["uv"]


def test_vllm_is_installed_with_uv_then_reused(bare: host.SandboxInfo) -> None:
    options = DeployOptions(name="installed-vllm", ready_timeout=30)
    run_deploy("bare", profiles.load("a100-nvfp4"), options).close()
    calls = [c["argv"] for c in _installs(bare)]
    venv = f"{bare.home}/.mlctl/venvs/vllm-0.12.0"
    assert ["uv", "venv", "--seed", "--python", "3.12", venv] in calls
    pip = next(c for c in calls if c[:3] == ["uv", "pip", "install"])
    assert "vllm==0.12.0" in pip and "mistral_common>=1.8.6" in pip
    again = run_deploy("bare", profiles.load("a100-nvfp4"), options)
    again.close()
    install = next(s for s in again.result.steps if s.id == "install")
    assert install.status == "ok"
    assert len([c for c in _installs(bare) if c["argv"][:2] == ["uv", "venv"]]) == 1
    conn = open_connector("bare")
    try:
        daytwo.stop(conn, state.load("installed-vllm"), purge=True)
    finally:
        conn.close()


def test_ollama_is_installed_with_its_script(bare: host.SandboxInfo) -> None:
    host.up("bare", "1xRTX4090-24GB", engines=False)
    try:
        session = run_deploy(
            "bare",
            profiles.load("4090-ministral-14b"),
            DeployOptions(name="installed-ollama", ready_timeout=30),
        )
        session.close()
        install = next(s for s in session.result.steps if s.id == "install")
        assert install.status == "changed"
        calls = _installs(bare)
        assert ["curl", "-fsSL", "https://ollama.com/install.sh"] in [c["argv"] for c in calls]
        script = next(c for c in calls if c["tool"] == "ollama-install.sh")
        assert script["version"] == "0.13.1"
    finally:
        host.up("bare", "8xA100-80GB", engines=False)
