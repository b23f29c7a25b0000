"""Profiles: a hardware target plus a serving recipe, as validated YAML.

A profile names the GPUs it needs, the checkpoint (Hub repo, file patterns,
on-disk format, recorded size, the architecture numbers the KV cache depends
on), the engine and its serve options. Built-in profiles ship with mlctl;
a user profile of the same name in ``$XDG_CONFIG_HOME/mlctl/profiles/``
overrides a built-in one, and ``--profile ./file.yaml`` loads a file.

Errors name the file, the line, the field and what is allowed: loading never
shows a traceback to the user.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlctl.errors import ProfileError
from mlctl.profile_files import ProfileEntry, builtin_dir, find, list_entries, user_dir

__all__ = [
    "Profile",
    "ProfileEntry",
    "builtin_dir",
    "find",
    "json_schema",
    "list_entries",
    "load",
    "load_file",
    "parse_profile",
    "user_dir",
]

EngineKind = Literal["vllm", "ollama", "llamacpp"]
CheckpointFormat = Literal["mistral", "hf", "gguf"]
KvCacheDtype = Literal["auto", "bf16", "fp16", "fp8", "fp8_e4m3", "fp8_e5m2", "q8_0", "q4_0"]

_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_VERSION = r"^\d+\.\d+(\.\d+)?$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hardware(_Strict):
    """What a host must have for this profile (per node, unless said)."""

    gpu: str = Field(description="GPU model from mlctl's catalogue, e.g. H100-80GB.")
    gpu_families: list[str] = Field(
        default_factory=list,
        description="GPU families accepted on a real host (default: the family of `gpu`).",
    )
    gpus_per_node: int = Field(ge=1, le=64)
    vram_gb: float = Field(gt=0, le=1024, description="Minimum memory per GPU, GB.")
    min_compute_capability: str = Field(pattern=r"^\d+\.\d+$")
    min_driver: str | None = Field(default=None, pattern=r"^\d+(\.\d+){0,2}$")
    min_cuda: str | None = Field(default=None, pattern=r"^\d+\.\d+$")
    ram_gb: float = Field(gt=0, le=65536, description="System RAM per node, GB.")
    disk_gb: float = Field(gt=0, le=1_000_000, description="Free disk for the checkpoint, GB.")
    nodes: int = Field(default=1, ge=1, le=16)

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, value: str) -> str:
        from mlctl.gpus import known_keys, lookup

        try:
            return lookup(value).key
        except Exception as exc:
            raise ValueError(f"unknown GPU model; use one of {', '.join(known_keys())}") from exc


class Architecture(_Strict):
    """The numbers the memory fit needs: layers, attention kind and MoE layout."""

    layers: int = Field(ge=1, le=1000)
    attention: Literal["mla", "gqa"]
    num_attention_heads: int = Field(ge=1, le=4096)
    kv_lora_rank: int | None = Field(default=None, ge=1)
    qk_rope_head_dim: int | None = Field(default=None, ge=1)
    num_kv_heads: int | None = Field(default=None, ge=1)
    head_dim: int | None = Field(default=None, ge=1)
    moe_layers: int = Field(default=0, ge=0)
    routed_experts: int = Field(default=0, ge=0)
    experts_per_token: int = Field(default=0, ge=0)
    expert_bytes_fraction: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Share of the checkpoint's bytes that are routed-expert tensors.",
    )
    vision_encoder_gb: float = Field(default=0.0, ge=0.0)
    max_context: int = Field(ge=512, le=16_777_216)

    @model_validator(mode="after")
    def _attention_numbers(self) -> Architecture:
        if self.attention == "mla" and (self.kv_lora_rank is None or self.qk_rope_head_dim is None):
            raise ValueError("attention 'mla' needs kv_lora_rank and qk_rope_head_dim")
        if self.attention == "gqa" and (self.num_kv_heads is None or self.head_dim is None):
            raise ValueError("attention 'gqa' needs num_kv_heads and head_dim")
        if self.moe_layers > self.layers:
            raise ValueError(f"moe_layers ({self.moe_layers}) exceeds layers ({self.layers})")
        if self.moe_layers and not self.expert_bytes_fraction:
            raise ValueError("an MoE model (moe_layers > 0) needs expert_bytes_fraction")
        return self


class ModelInfo(_Strict):
    """The model a profile serves."""

    name: str = Field(min_length=1)
    params_b: float = Field(gt=0)
    active_params_b: float | None = Field(default=None, gt=0)
    architecture: Architecture


class Checkpoint(_Strict):
    """Which files to fetch, in what format, and how big they are."""

    repo: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
    revision: str = Field(default="main", pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")
    include: list[str] = Field(default_factory=list)
    format: CheckpointFormat
    quant: str = Field(pattern=r"^[a-z0-9_.-]+$", description="e.g. fp8, nvfp4, ud-iq1_s")
    size_gb: float = Field(gt=0, description="Total size on disk, decimal GB.")
    size_source: str = Field(min_length=1, description="Where size_gb comes from.")
    gguf_file: str | None = Field(
        default=None, description="GGUF only: the file to launch (the first shard of a split)."
    )
    ollama_tag: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9._/-]*(:[\w.-]+)?$")
    served_name: str | None = Field(
        default=None, description="Model name clients send; default: the repo id or Ollama tag."
    )

    @field_validator("include")
    @classmethod
    def _safe_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern or pattern.startswith(("/", "-")) or ".." in pattern.split("/"):
                raise ValueError(f"include pattern {pattern!r} must be a relative glob")
        return value


class Engine(_Strict):
    """The serving engine and the version mlctl pins."""

    kind: EngineKind
    version: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class Speculative(_Strict):
    """Speculative decoding (vLLM), e.g. Mistral's Eagle draft model."""

    method: Literal["eagle", "eagle3", "mtp", "ngram"]
    repo: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
    size_gb: float = Field(default=0.0, ge=0.0)
    num_speculative_tokens: int = Field(ge=1, le=16)
    max_model_len: int | None = Field(default=None, ge=256)


class Serve(_Strict):
    """How the engine is launched."""

    tensor_parallel: int | None = Field(default=None, ge=1, le=64)
    pipeline_parallel: int | None = Field(default=None, ge=1, le=16)
    max_model_len: int = Field(ge=256, le=16_777_216)
    kv_cache_dtype: KvCacheDtype = "auto"
    gpu_memory_utilization: float = Field(default=0.9, gt=0.1, le=0.99)
    reserve_gb: float | None = Field(
        default=None, ge=0, le=64, description="Per-GPU reserve override (activations, graphs)."
    )
    tool_calling: bool = True
    tool_parser: str | None = Field(default=None, pattern=r"^[a-z0-9_]+$")
    images_per_prompt: int | None = Field(default=None, ge=0, le=64)
    speculative: Speculative | None = None
    max_num_seqs: int | None = Field(default=None, ge=1, le=4096)
    n_gpu_layers: int = Field(default=999, ge=0)
    offload_experts: Literal["auto", "all", "none"] = "auto"
    num_parallel: int = Field(default=1, ge=1, le=64)
    port: int = Field(default=8000, ge=1024, le=65535)
    extra_args: list[str] = Field(default_factory=list)
    extra_env: dict[str, str] = Field(default_factory=dict)

    @field_validator("extra_env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.match(r"^[A-Z_][A-Z0-9_]*$", name):
                raise ValueError(f"environment variable name {name!r} is not valid")
            if name in {"VLLM_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"}:
                raise ValueError(f"{name} is a secret; mlctl sets it from a 0600 file")
        return value


class Profile(_Strict):
    """A complete deployment recipe. ``name`` is what users type."""

    name: str = Field(pattern=_NAME)
    description: str = Field(min_length=1)
    model: ModelInfo
    checkpoint: Checkpoint
    hardware: Hardware
    engine: Engine
    serve: Serve

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        kind, fmt, serve, hw = self.engine.kind, self.checkpoint.format, self.serve, self.hardware
        if kind == "vllm" and fmt == "gguf":
            raise ValueError("engine vllm with a gguf checkpoint: use llamacpp or ollama")
        if kind in ("llamacpp", "ollama") and fmt == "mistral":
            raise ValueError(f"engine {kind} cannot load the Mistral-format checkpoint")
        if kind == "llamacpp" and fmt == "gguf" and not self.checkpoint.gguf_file:
            raise ValueError("a llamacpp profile needs checkpoint.gguf_file (the first shard)")
        if kind == "ollama" and not self.checkpoint.ollama_tag:
            raise ValueError("an ollama profile needs checkpoint.ollama_tag")
        if serve.speculative is not None and kind != "vllm":
            raise ValueError("serve.speculative is only supported with engine vllm")
        if kind != "vllm" and serve.kv_cache_dtype.startswith("fp8"):
            raise ValueError(f"kv_cache_dtype {serve.kv_cache_dtype!r} is vLLM-only")
        if kind == "vllm" and serve.kv_cache_dtype in ("q8_0", "q4_0", "bf16", "fp16"):
            # vLLM 0.12 --kv-cache-dtype choices: auto (the model's bf16), fp8, fp8_e4m3, fp8_e5m2
            raise ValueError(
                f"kv_cache_dtype {serve.kv_cache_dtype!r} is not a vLLM cache dtype; use auto "
                "(the model's dtype), fp8, fp8_e4m3 or fp8_e5m2"
            )
        tp = serve.tensor_parallel or hw.gpus_per_node
        pp = serve.pipeline_parallel or hw.nodes
        if tp > hw.gpus_per_node:
            raise ValueError(
                f"serve.tensor_parallel ({tp}) exceeds hardware.gpus_per_node ({hw.gpus_per_node})"
            )
        if kind == "vllm" and tp * pp != hw.gpus_per_node * hw.nodes:
            raise ValueError(
                f"tensor_parallel x pipeline_parallel ({tp}x{pp}) must equal the GPUs in all "
                f"nodes ({hw.gpus_per_node}x{hw.nodes})"
            )
        if kind != "vllm" and hw.nodes > 1:
            raise ValueError(f"engine {kind} runs on one node; set hardware.nodes to 1")
        if serve.max_model_len > self.model.architecture.max_context:
            raise ValueError(
                f"serve.max_model_len ({serve.max_model_len}) exceeds the model's max_context "
                f"({self.model.architecture.max_context})"
            )
        if hw.vram_gb * 1e9 > _catalogue_bytes(hw.gpu) * 1.02:
            raise ValueError(f"hardware.vram_gb ({hw.vram_gb}) is more than a {hw.gpu} has")
        return self

    @property
    def served_name(self) -> str:
        """The model name clients put in requests."""
        return self.checkpoint.served_name or self.checkpoint.ollama_tag or self.checkpoint.repo

    @property
    def gpu_families(self) -> list[str]:
        """GPU families this profile accepts on a real host."""
        from mlctl.gpus import lookup

        return list(self.hardware.gpu_families) or [lookup(self.hardware.gpu).family]


def _catalogue_bytes(key: str) -> int:
    from mlctl.gpus import lookup

    return lookup(key).memory_bytes


# --------------------------------------------------------------------------- loading


def load(name_or_path: str) -> Profile:
    """Find and validate one profile. Raises ProfileError with file:line on any problem."""
    entry = find(name_or_path)
    return load_file(entry.path)


def load_file(path: Path) -> Profile:
    """Read and validate a profile file; the name defaults to the file's stem.

    Raises ProfileError naming the file, line, field and what is allowed.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(
            f"Cannot read profile {path}: {exc.strerror or exc}.", "Check the file's permissions."
        ) from exc
    return parse_profile(text, str(path), default_name=path.stem)


def parse_profile(text: str, filename: str, default_name: str | None = None) -> Profile:
    """Validate profile YAML text. Pure; raises ProfileError with file:line:field."""
    data, lines = _load_yaml_with_lines(text, filename)
    if not isinstance(data, dict):
        raise ProfileError(
            f"{filename}:1: a profile must be a YAML mapping (key: value), "
            f"not {type(data).__name__}.",
            "Start from `mlctl profiles show a100-nvfp4` and edit it.",
        )
    if default_name is not None:
        data.setdefault("name", default_name)
        if data["name"] != default_name:
            raise ProfileError(
                f"{filename}:{lines.get(('name',), 1)}: name {data['name']!r} does not match "
                f"the file name {default_name!r}.",
                f"Rename the file to {data['name']}.yaml or set name: {default_name}.",
            )
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise _profile_error(exc, lines, filename) from None


def _profile_error(
    exc: ValidationError, lines: dict[tuple[Any, ...], int], filename: str
) -> ProfileError:
    problems: list[str] = []
    for err in exc.errors()[:5]:
        loc = tuple(err["loc"])
        line = _line_for(loc, lines)
        field = ".".join(str(p) for p in loc) or "(profile)"
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = f"unknown key; allowed here: {', '.join(_allowed_keys(loc))}"
        elif err["type"] == "literal_error":
            message = f"{message}"
        got = err.get("input")
        shown = (
            ""
            if err["type"] in ("missing", "extra_forbidden") or isinstance(got, dict | list)
            else f" (got {got!r})"
        )
        problems.append(f"{filename}:{line}: {field}: {message}{shown}")
    more = len(exc.errors()) - len(problems)
    text = "Invalid profile: " + "; ".join(problems) + (f"; and {more} more." if more > 0 else ".")
    return ProfileError(text, "Fix the field named above; `mlctl profiles schema` lists them all.")


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Profile
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            break
        model = nested[0]
    return sorted(model.model_fields)


def _line_for(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


def _load_yaml_with_lines(text: str, filename: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    import yaml

    try:
        # libyaml's loader when PyYAML was built with it: ~10x faster than pure Python
        node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProfileError(
            f"{filename}:{line}: not valid YAML: {problem}.",
            "Check indentation and quoting on that line.",
        ) from None
    lines: dict[tuple[Any, ...], int] = {}
    if node is None:
        return None, lines
    constructor = yaml.constructor.SafeConstructor()
    return _construct(node, (), lines, filename, constructor), lines


def _construct(
    node: Any,
    path: tuple[Any, ...],
    lines: dict[tuple[Any, ...], int],
    filename: str,
    constructor: Any,
) -> Any:
    import yaml

    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = constructor.construct_object(key_node)
            if key in out:
                raise ProfileError(
                    f"{filename}:{key_node.start_mark.line + 1}: key {key!r} appears twice.",
                    "Keep one of them.",
                )
            out[key] = _construct(value_node, path + (key,), lines, filename, constructor)
            lines[path + (key,)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _construct(v, path + (i,), lines, filename, constructor)
            for i, v in enumerate(node.value)
        ]
    return constructor.construct_object(node)


def json_schema() -> dict[str, Any]:
    """Return the JSON Schema of a profile file, for editors."""
    schema = Profile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "mlctl profile"
    return schema
