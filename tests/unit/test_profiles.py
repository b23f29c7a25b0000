"""Profiles: built-ins validate, errors name file:line:field, user profiles override."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlctl import profiles
from mlctl.errors import ProfileError

BUILTINS = {"a100-nvfp4", "h100-nvfp4", "h200-fp8", "h100-fp8", "4090-gguf", "4090-ministral-14b"}


def test_builtin_names_are_the_interface() -> None:
    names = {e.name for e in profiles.list_entries() if e.origin == "builtin"}
    assert BUILTINS <= names


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_profiles_validate(name: str) -> None:
    profile = profiles.load(name)
    assert profile.name == name
    assert profile.checkpoint.size_source


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_every_figure_has_a_source_comment(name: str) -> None:
    """Each line carrying a number in a built-in profile also carries a comment."""
    path = profiles.find(name).path
    missing = []
    numeric_keys = (
        "size_gb",
        "vram_gb",
        "ram_gb",
        "disk_gb",
        "gpus_per_node",
        "layers",
        "kv_lora_rank",
        "qk_rope_head_dim",
        "num_kv_heads",
        "max_context",
        "max_model_len",
        "version",
        "min_compute_capability",
        "expert_bytes_fraction",
    )
    for number, line in enumerate(path.read_text().splitlines(), 1):
        key = line.strip().split(":", 1)[0]
        if key in numeric_keys and "#" not in line:
            missing.append(f"{path.name}:{number}: {line.strip()}")
    assert not missing, "figures without a source comment:\n" + "\n".join(missing)


def _base_yaml() -> str:
    return profiles.find("a100-nvfp4").path.read_text()


def _error_for(text: str, tmp_path: Path, name: str = "a100-nvfp4") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError) as info:
        profiles.load_file(path)
    return info.value.message


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_unknown_key_names_file_line_and_allowed_keys(tmp_path: Path) -> None:
    text = _base_yaml().replace("  max_model_len: 65536", "  max_model_length: 65536")
    message = _error_for(text, tmp_path)
    line = _line_of(text, "max_model_length")
    assert f"a100-nvfp4.yaml:{line}: serve.max_model_length: unknown key" in message
    assert "max_model_len" in message  # the allowed keys are listed


def test_wrong_type_names_field_and_value(tmp_path: Path) -> None:
    text = _base_yaml().replace("  gpus_per_node: 8", "  gpus_per_node: eight")
    message = _error_for(text, tmp_path)
    line = _line_of(text, "gpus_per_node: eight")
    assert f":{line}: hardware.gpus_per_node:" in message
    assert "'eight'" in message


def test_impossible_value_is_refused(tmp_path: Path) -> None:
    text = _base_yaml().replace("  gpu_memory_utilization: 0.9", "  gpu_memory_utilization: 1.5")
    message = _error_for(text, tmp_path)
    assert "serve.gpu_memory_utilization" in message and "0.99" in message


def test_context_beyond_model_is_refused(tmp_path: Path) -> None:
    text = _base_yaml().replace("  max_model_len: 65536", "  max_model_len: 1048576")
    message = _error_for(text, tmp_path)
    assert "exceeds the model's max_context (262144)" in message


def test_parallel_layout_must_cover_the_gpus(tmp_path: Path) -> None:
    text = _base_yaml().replace("  tensor_parallel: 8", "  tensor_parallel: 4")
    message = _error_for(text, tmp_path)
    assert "tensor_parallel x pipeline_parallel (4x1) must equal" in message


def test_unknown_engine_lists_the_allowed(tmp_path: Path) -> None:
    text = _base_yaml().replace("  kind: vllm", "  kind: sglang")
    message = _error_for(text, tmp_path)
    assert "engine.kind" in message and "'vllm'" in message and "'llamacpp'" in message


def test_unknown_gpu_lists_catalogue(tmp_path: Path) -> None:
    text = _base_yaml().replace("  gpu: A100-80GB", "  gpu: A100-90GB")
    message = _error_for(text, tmp_path)
    assert "hardware.gpu" in message and "H100-80GB" in message


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    text = _base_yaml().replace("  revision: main", "  revision: [main")
    message = _error_for(text, tmp_path)
    assert "not valid YAML" in message and "a100-nvfp4.yaml:" in message


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    text = _base_yaml() + "name: a100-nvfp4\n"
    message = _error_for(text, tmp_path)
    assert "appears twice" in message


def test_name_must_match_file(tmp_path: Path) -> None:
    message = _error_for(_base_yaml(), tmp_path, name="other")
    assert "does not match the file name 'other'" in message


def test_secret_env_is_refused(tmp_path: Path) -> None:
    text = _base_yaml().replace("  port: 8000", "  port: 8000\n  extra_env: {HF_TOKEN: x}")
    message = _error_for(text, tmp_path)
    assert "HF_TOKEN is a secret" in message


def test_not_a_mapping(tmp_path: Path) -> None:
    assert "must be a YAML mapping" in _error_for("- a\n- b\n", tmp_path)


def test_user_profile_overrides_builtin(_isolated_home: Path) -> None:
    user = profiles.user_dir()
    user.mkdir(parents=True)
    text = _base_yaml().replace("max_model_len: 65536", "max_model_len: 32768")
    (user / "a100-nvfp4.yaml").write_text(text)
    entry = profiles.find("a100-nvfp4")
    assert entry.origin == "user"
    assert profiles.load("a100-nvfp4").serve.max_model_len == 32768


def test_unknown_name_lists_known(tmp_path: Path) -> None:
    with pytest.raises(ProfileError) as info:
        profiles.find("a100-fp4")
    assert "a100-nvfp4" in (info.value.hint or "")


def test_load_by_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(_base_yaml().replace("name: a100-nvfp4", "name: mine"))
    assert profiles.load(str(path)).name == "mine"


def test_schema_is_json_schema() -> None:
    schema = profiles.json_schema()
    json.dumps(schema)
    assert schema["title"] == "mlctl profile"
    assert {"model", "checkpoint", "hardware", "engine", "serve"} <= set(schema["properties"])


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[2] / "examples" / "profiles").glob("*.yaml"))
)
def test_example_profiles_validate(path: Path) -> None:
    assert profiles.load(str(path)).name == path.stem


def test_vllm_kv_dtype_must_be_one_vllm_accepts(tmp_path: Path) -> None:
    text = _base_yaml().replace("  kv_cache_dtype: auto", "  kv_cache_dtype: bf16")
    message = _error_for(text, tmp_path)
    assert "not a vLLM cache dtype" in message and "fp8_e4m3" in message
