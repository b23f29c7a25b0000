"""The plan: ordered steps, exact commands, warnings, JSON without secrets."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mlctl import profiles
from mlctl.backends.base import RemoteLayout
from mlctl.errors import FitError
from mlctl.facts import assumed_facts
from mlctl.fit import GB
from mlctl.gpus import parse_gpu_spec
from mlctl.plan import build_plan, plan_json, render_launch_script


def _facts(spec: str, nodes: int = 1):  # type: ignore[no-untyped-def]
    count, gpu = parse_gpu_spec(spec)
    return assumed_facts(count, gpu, nodes=nodes, ram_bytes=512 * GB, disk_bytes=2000 * GB)


def test_steps_are_ordered_install_download_launch_ready_tunnel() -> None:
    plan = build_plan(profiles.load("h200-fp8"), _facts("8xH200-141GB"))
    kinds = [s.kind for s in plan.steps]
    assert kinds == ["preflight", "install", "download", "download", "launch", "ready", "tunnel"]
    repos = [s.title for s in plan.steps if s.kind == "download"]
    assert any("Eagle" in r for r in repos)  # the draft model is fetched too


def test_ollama_pulls_after_start() -> None:
    plan = build_plan(profiles.load("4090-ministral-14b"), _facts("1xRTX4090-24GB"))
    kinds = [s.kind for s in plan.steps]
    assert kinds.index("launch") < kinds.index("download")
    assert any("ollama pull ministral-3:14b" in c for s in plan.steps for c in s.commands)
    assert any("no API key" in w for w in plan.warnings)


def test_nvfp4_on_ampere_and_hopper_warns_about_marlin() -> None:
    for spec in ("8xA100-80GB", "8xH100-80GB"):
        plan = build_plan(profiles.load("a100-nvfp4"), _facts(spec))
        assert any("Marlin" in w for w in plan.warnings), spec
    blackwell = build_plan(profiles.load("a100-nvfp4"), _facts("8xB200-180GB"))
    assert not any("Marlin" in w for w in blackwell.warnings)


def test_nvfp4_above_64k_warns() -> None:
    plan = build_plan(profiles.load("a100-nvfp4"), _facts("8xA100-80GB"), max_model_len=131072)
    assert any("below 64K" in w for w in plan.warnings)
    short = build_plan(profiles.load("a100-nvfp4"), _facts("8xA100-80GB"))
    assert not any("below 64K" in w for w in short.warnings)


def test_fp8_below_ada_warns() -> None:
    plan = build_plan(profiles.load("h100-fp8"), _facts("8xA100-80GB", nodes=2))
    assert any("without native FP8" in w for w in plan.warnings)


def test_multi_node_mentions_ray() -> None:
    plan = build_plan(profiles.load("h100-fp8"), _facts("8xH100-80GB", nodes=2))
    assert any("ray start" in w for w in plan.warnings)
    assert "--pipeline-parallel-size" in plan.launch.argv


def test_mistral_flags_only_for_mistral_format() -> None:
    mistral = build_plan(profiles.load("a100-nvfp4"), _facts("8xA100-80GB"))
    assert mistral.launch.argv.count("mistral") >= 3
    data = profiles.load("a100-nvfp4").model_dump()
    data["checkpoint"]["format"] = "hf"
    hf = build_plan(profiles.Profile.model_validate(data), _facts("8xA100-80GB"))
    for flag in ("--tokenizer-mode", "--config-format", "--load-format"):
        assert flag not in hf.launch.argv


def test_does_not_fit_raises_with_alternatives() -> None:
    everything = [profiles.load_file(e.path) for e in profiles.list_entries()]
    with pytest.raises(FitError) as info:
        build_plan(profiles.load("h200-fp8"), _facts("8xH100-80GB"), alternatives=everything)
    assert "h100-nvfp4" in (info.value.hint or "")


def test_json_names_secrets_but_never_values() -> None:
    plan = build_plan(profiles.load("a100-nvfp4"), _facts("8xA100-80GB"))
    data = plan_json(plan)
    for key in ("profile", "engine", "fits", "max_model_len", "per_gpu", "launch"):
        assert key in data
    assert data["launch"]["env"]["VLLM_API_KEY"] == "<secret>"
    assert set(data["per_gpu"]) >= {"weights_gb", "kv_gb", "free_gb"}
    assert all(isinstance(a, str) for a in data["launch"]["argv"])
    assert "VLLM_API_KEY" not in " ".join(data["launch"]["argv"])
    json.dumps(data)


def test_api_key_never_on_argv_for_any_engine() -> None:
    for name, spec in (("a100-nvfp4", "8xA100-80GB"), ("4090-gguf", "4xRTX4090-24GB")):
        plan = build_plan(profiles.load(name), _facts(spec))
        assert "--api-key" not in plan.launch.argv
        joined = " ".join(plan.launch.argv)
        assert "api_key" not in joined or "--api-key-file" in plan.launch.argv


def test_launch_script_runs_in_a_real_shell(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """run.sh reads the key from its file and execs the engine with the quoted argv."""
    layout = RemoteLayout(root=str(tmp_path / "root"))
    plan = build_plan(profiles.load("a100-nvfp4"), _facts("8xA100-80GB"), layout=layout, name="t")
    deploy = tmp_path / "root" / "deployments" / "t"
    deploy.mkdir(parents=True)
    (deploy / "api_key").write_text("sk-test-123")
    venv_bin = tmp_path / "root" / "venvs" / "vllm-0.12.0" / "bin"
    venv_bin.mkdir(parents=True)
    fake = venv_bin / "vllm"
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "print(json.dumps({'argv': sys.argv[1:], 'key': os.environ.get('VLLM_API_KEY')}))\n"
    )
    fake.chmod(0o755)
    script = tmp_path / "run.sh"
    script.write_text(render_launch_script(plan))
    out = subprocess.run(["sh", str(script)], capture_output=True, text=True, check=True).stdout
    got = json.loads(out)
    assert got["argv"] == plan.launch.argv[1:]
    assert got["key"] == "sk-test-123"


def test_models_dir_moves_checkpoints_and_nothing_else() -> None:
    layout = RemoteLayout(models_root="/workspace/models")
    plan = build_plan(profiles.load("a100-nvfp4"), _facts("8xA100-80GB"), layout=layout)
    (spec,) = plan.downloads
    assert spec.local_dir.startswith("/workspace/models/mistralai--")
    assert spec.local_dir in plan.launch.argv  # vLLM serves it from there
    assert plan.layout() == layout and plan.layout().deployment_dir("x").startswith("$HOME/")
    ollama = build_plan(
        profiles.load("4090-ministral-14b"), _facts("1xRTX4090-24GB"), layout=layout
    )
    assert ollama.launch.env["OLLAMA_MODELS"] == "/workspace/models/ollama"
    default = build_plan(profiles.load("a100-nvfp4"), _facts("8xA100-80GB"))
    assert default.downloads[0].local_dir.startswith("$HOME/.mlctl/models/")
