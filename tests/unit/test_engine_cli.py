"""mlctl's flags and environment against the real engines' lists (mlctl/data)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from mlctl import profiles
from mlctl.engine_cli import ollama_env_vars, vllm_accepts, vllm_option_name, vllm_serve_flags
from mlctl.errors import MlctlError
from mlctl.facts import HostFacts, assumed_facts
from mlctl.fit import GB
from mlctl.gpus import parse_gpu_spec
from mlctl.plan import build_plan
from mlctl.sandbox.standins import vllm as vllm_standin


def _facts(profile: profiles.Profile) -> HostFacts:
    hw = profile.hardware
    count, gpu = parse_gpu_spec(f"{hw.gpus_per_node}x{hw.gpu}")
    return assumed_facts(count, gpu, nodes=hw.nodes, ram_bytes=2048 * GB, disk_bytes=4000 * GB)


def _builtin(kind: str) -> list[profiles.Profile]:
    loaded = [profiles.load_file(e.path) for e in profiles.list_entries()]
    return [p for p in loaded if p.engine.kind == kind]


def _variant(profile: profiles.Profile, **serve: Any) -> profiles.Profile:
    data = profile.model_dump()
    data["serve"].update(serve)
    return profiles.Profile.model_validate(data)


def _vllm_profiles() -> list[profiles.Profile]:
    """Every built-in vLLM profile, and variants that turn on every optional flag."""
    builtin = _builtin("vllm")
    two_nodes = next(p for p in builtin if p.serve.pipeline_parallel)
    everything = _variant(
        two_nodes,
        kv_cache_dtype="fp8",
        images_per_prompt=2,
        max_num_seqs=16,
        tool_calling=True,
        tool_parser="mistral",
        speculative={
            "method": "eagle",
            "repo": "mistralai/Mistral-Large-3-675B-Instruct-2512-Eagle",
            "size_gb": 11.7,
            "num_speculative_tokens": 3,
            "max_model_len": 16384,
        },
    )
    data = everything.model_dump()
    data["checkpoint"]["format"] = "hf"
    hf = profiles.Profile.model_validate(data)
    return [*builtin, everything, hf]


def _emitted_options(argv: list[str]) -> list[str]:
    """The option arguments of a ``vllm serve`` argv (values never start with ``-``)."""
    serve = argv.index("serve")
    return [a for a in argv[serve + 1 :] if a.startswith("-")]


def test_the_pinned_lists_exist_and_look_real() -> None:
    flags = vllm_serve_flags("0.12.0")
    assert len(flags) > 200
    assert {"--tensor-parallel-size", "-tp", "--no-enable-prefix-caching", "--help"} <= flags
    assert all(f.startswith("-") and "_" not in f for f in flags)
    env = ollama_env_vars("0.13.1")
    assert {"OLLAMA_HOST", "OLLAMA_CONTEXT_LENGTH", "OLLAMA_KV_CACHE_TYPE"} <= env


def test_every_pinned_engine_version_has_its_list() -> None:
    for p in _builtin("vllm"):
        assert vllm_serve_flags(p.engine.version)
    for p in _builtin("ollama"):
        assert ollama_env_vars(p.engine.version)


@pytest.mark.parametrize("profile", _vllm_profiles(), ids=lambda p: p.name)
def test_every_flag_the_vllm_backend_emits_is_real(profile: profiles.Profile) -> None:
    plan = build_plan(profile, _facts(profile))
    options = _emitted_options(plan.launch.argv)
    assert "--tensor-parallel-size" in options
    real = vllm_serve_flags(profile.engine.version)
    unknown = [o for o in options if vllm_option_name(o) not in real]
    assert unknown == [], f"vllm {profile.engine.version} has no {unknown}"


def test_the_all_flags_variant_really_turns_every_flag_on() -> None:
    everything = _vllm_profiles()[-2]
    options = set(_emitted_options(build_plan(everything, _facts(everything)).launch.argv))
    for flag in (
        "--pipeline-parallel-size",
        "--distributed-executor-backend",
        "--tokenizer-mode",
        "--enable-auto-tool-choice",
        "--kv-cache-dtype",
        "--limit-mm-per-prompt",
        "--max-num-seqs",
        "--speculative-config",
    ):
        assert flag in options, flag


def test_ollama_environment_is_real() -> None:
    for profile in _builtin("ollama"):
        quantised_kv = _variant(profile, kv_cache_dtype="q8_0", num_parallel=2)
        for variant in (profile, quantised_kv):
            plan = build_plan(variant, _facts(variant))
            names = [n for n in plan.launch.env if n.startswith("OLLAMA_")]
            assert "OLLAMA_HOST" in names
            real = ollama_env_vars(variant.engine.version)
            assert [n for n in names if n not in real] == []
        assert "OLLAMA_KV_CACHE_TYPE" in build_plan(quantised_kv, _facts(quantised_kv)).launch.env


def test_underscore_and_dotted_spellings_follow_flexible_argument_parser() -> None:
    assert vllm_option_name("--max_model_len=4k") == "--max-model-len"
    assert vllm_option_name("--speculative_config.num_speculative_tokens") == "--speculative-config"
    assert vllm_option_name("-O3") == "--optimization-level"
    assert vllm_option_name("-tp") == "-tp"
    assert vllm_accepts("--tensor_parallel_size", "0.12.0")
    assert not vllm_accepts("--tensor-parallel", "0.12.0")


@pytest.mark.parametrize("call", [vllm_serve_flags, ollama_env_vars])
def test_unknown_version_is_a_clear_error(call: Any) -> None:
    with pytest.raises(MlctlError) as info:
        call("0.0.1")
    assert "0.0.1" in info.value.message and info.value.hint


def test_standin_registers_exactly_the_real_options() -> None:
    parser = vllm_standin.build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    assert set(serve._option_string_actions) == vllm_serve_flags(vllm_standin.VERSION)


def test_standin_accepts_real_flags_it_does_not_model() -> None:
    cfg = vllm_standin.parse_serve(
        [
            "serve",
            "/m",
            "--block_size",
            "16",
            "--no-enforce-eager",
            "--speculative_config.method",
            "eagle",
            "--speculative-config.num_speculative_tokens=3",
            "--max-model=8k",  # an unambiguous prefix, as argparse allows
            "-O3",
        ],
        environ={},
    )
    assert cfg.speculative == {"method": "eagle", "num_speculative_tokens": 3}
    assert cfg.max_model_len == 8000


def test_standin_rejects_an_unknown_flag_like_argparse() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mlctl.sandbox.standins.vllm", "serve", "/tmp/x", "--no-such-flag"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "error: unrecognized arguments: --no-such-flag" in result.stderr


def test_standin_rejects_an_ambiguous_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        vllm_standin.parse_serve(["serve", "/m", "--max", "3"], environ={})
    assert exc.value.code == 2
    assert "ambiguous option: --max could match" in capsys.readouterr().err
