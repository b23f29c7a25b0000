"""Stand-in ``vllm`` (pinned 0.12.0): ``vllm --version`` and ``vllm serve MODEL [flags]``.

Like the real server, ``serve`` binds its port at once (so a taken port fails
before anything loads) but does not listen until the engine is up: connections
are refused for ``startup_seconds``, then ``/health`` answers 200. ``/v1/*``
needs ``Authorization: Bearer $VLLM_API_KEY`` (or ``--api-key``), else 401
``{"error": "Unauthorized"}``.

It refuses what the real engine refuses, with vLLM's own messages: the Mistral
flags on a Hugging Face-format directory, a Mistral-format directory without
them, a missing model directory, more tensor-parallel ranks than GPUs, a
``--max-model-len`` the KV cache cannot hold; and the scenario file can ask for
``oom``, ``kv-cache``, ``mistral-hf``, ``port-in-use``, ``crash-after-ready`` or
``tp-mismatch``. ``serve`` accepts exactly the option strings of the real ``vllm serve``
0.12.0 (``mlctl/data/vllm-0.12.0-serve-flags.txt``) and refuses any other as argparse
does (``unrecognized arguments``, exit 2).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlctl.engine_cli import vllm_serve_flags
from mlctl.sandbox.standins.common import (
    ApiError,
    GpuInventory,
    JsonHandler,
    Lifecycle,
    Scenario,
    answer_chat,
    bearer_token,
    completion_body,
    count_images,
    emit,
    load_inventory,
    load_scenario,
    log_time,
    make_server,
    new_id,
    openai_error,
    serve_in_thread,
    state_dir,
    stream_chunks,
)

VERSION = "0.12.0"
GIB = 1024**3
# KV bytes per token when the model's config says nothing (Mistral Large 3, MLA, BF16).
DEFAULT_KV_BYTES_PER_TOKEN = 70_272
DEFAULT_MAX_MODEL_LEN = 32_768
FAILURES = ("oom", "kv-cache", "mistral-hf", "port-in-use", "crash-after-ready", "tp-mismatch")
_VENV = "/root/.mlctl/venvs/vllm-0.12.0/lib/python3.12/site-packages"


# --------------------------------------------------------------------------- flags


def _max_model_len(value: str) -> int:
    """vLLM accepts ``32768``, ``32k``, ``32K`` (x1000 / x1024) for --max-model-len."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", value.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"invalid max model len: {value!r}")
    scale = {"": 1, "k": 1000, "K": 1024, "m": 1_000_000, "M": 1024 * 1024}[m.group(2)]
    return int(float(m.group(1)) * scale)


def _json_arg(value: str) -> object:
    try:
        return json.loads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not valid JSON: {exc}") from exc


def _limit_mm(value: str) -> dict[str, int]:
    """``{"image": 0}`` (JSON) or the older ``image=0,video=1`` form."""
    try:
        data = json.loads(value)
    except ValueError:
        data = {}
        for part in value.split(","):
            key, _, count = part.partition("=")
            if not count.strip().isdigit():
                raise argparse.ArgumentTypeError(
                    f"invalid --limit-mm-per-prompt: {value!r}"
                ) from None
            data[key.strip()] = int(count)
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"invalid --limit-mm-per-prompt: {value!r}")
    return {
        str(k): int(v if not isinstance(v, dict) else v.get("count", 0)) for k, v in data.items()
    }


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """Rewrite arguments as vLLM's FlexibleArgumentParser does before argparse sees them.

    ``--tokenizer_mode`` -> ``--tokenizer-mode`` (``_`` to ``-`` up to the first ``.``),
    ``-O3`` -> ``--optimization-level 3``, ``-O.x`` -> ``-cc.x``, and dotted JSON keys
    merged into one argument at the end: ``--speculative-config.method eagle`` ->
    ``--speculative-config '{"method": "eagle"}'``. (``--config FILE.yaml`` is not read.)
    """
    args = list(argv)
    first: list[str] = []
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            key, eq, value = arg.partition("=")
            head, dot, rest = key[2:].partition(".")
            first.append("--" + head.replace("_", "-") + dot + rest + eq + value)
        elif arg.startswith("-O."):
            first.append("-cc" + arg[2:])
        elif arg.startswith("-O") and arg != "-O":
            first += ["--optimization-level", arg[3:] if arg[2] == "=" else arg[2:]]
        elif arg == "-O" and i + 1 < len(args) and args[i + 1] in {"0", "1", "2", "3"}:
            first.append("--optimization-level")
        else:
            first.append(arg)
    out: list[str] = []
    merged: dict[str, dict[str, Any]] = {}
    i = 0
    while i < len(first):
        arg = first[i]
        i += 1
        if arg.startswith("-") and "." in arg.partition("=")[0] and ("=" in arg or i < len(first)):
            key, eq, value = arg.partition("=")
            if not eq:
                value, i = first[i], i + 1
            head, _, rest = key.partition(".")
            _merge_dotted(merged.setdefault(head, {}), rest.split("."), value)
            continue
        out.append(arg)
    for key, tree in merged.items():
        out += [key, json.dumps(tree)]
    return out


def _merge_dotted(tree: dict[str, Any], keys: list[str], value: str) -> None:
    """Put ``--a.b.c value`` into ``tree`` as ``{"b": {"c": value}}`` (``+`` appends a list)."""
    if keys[-1].endswith("+"):
        keys[-1] = keys[-1][:-1]
        value = json.dumps(value.split(","))
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    old = tree.get(keys[-1])
    tree[keys[-1]] = old + parsed if isinstance(old, list) and isinstance(parsed, list) else parsed


def _add_real_options(s: argparse.ArgumentParser) -> None:
    """Accept every other option the real ``vllm serve`` registers (the stand-in ignores them).

    The option list is extracted from the vLLM wheel (mlctl.engine_cli); argparse then
    rejects anything else with the real message (``unrecognized arguments``) and resolves
    unambiguous prefixes as the real parser does (allow_abbrev). The list does not say how
    many values each option takes: a ``--no-X``/``--X`` pair takes none, any other option
    takes the values up to the next option, so an unmodelled store-true option
    (``--headless``, ``-dph``) written before the model path would swallow it.
    """
    real = vllm_serve_flags(VERSION)
    taken = set(s._option_string_actions)
    for option in sorted(real - taken):
        bare = option.lstrip("-")
        is_switch = option.startswith("--") and (
            f"--no-{bare}" in real or (bare.startswith("no-") and f"--{bare[3:]}" in real)
        )
        hidden: dict[str, Any] = {
            "dest": "_ignored_" + bare.replace("-", "_"),
            "default": argparse.SUPPRESS,
            "help": argparse.SUPPRESS,
        }
        if is_switch:
            s.add_argument(option, action="store_true", **hidden)
        else:
            s.add_argument(option, nargs="*", **hidden)


def build_parser() -> argparse.ArgumentParser:
    """The ``vllm`` parser: ``serve`` models the flags mlctl passes and accepts the rest."""
    parser = argparse.ArgumentParser(prog="vllm", allow_abbrev=False)
    parser.add_argument("-v", "--version", action="version", version=VERSION)
    sub = parser.add_subparsers(dest="subparser")
    s = sub.add_parser("serve", prog="vllm serve", usage="vllm serve [model_tag] [options]")
    s.add_argument("model_tag", nargs="?", default=None)
    s.add_argument("--model", default=None)
    s.add_argument("--served-model-name", nargs="+", default=None)
    s.add_argument("--host", default=None)
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", nargs="+", default=None)
    s.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    s.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    s.add_argument("--data-parallel-size", "-dp", type=int, default=1)
    s.add_argument(
        "--distributed-executor-backend",
        choices=["ray", "mp", "uni", "external_launcher"],
        default=None,
    )
    s.add_argument("--tokenizer-mode", choices=["auto", "hf", "slow", "mistral", "custom"])
    s.add_argument("--config-format", choices=["auto", "hf", "mistral"], default="auto")
    s.add_argument("--load-format", default="auto")
    s.add_argument("--tokenizer", default=None)
    s.add_argument("--revision", default=None)
    s.add_argument("--download-dir", default=None)
    s.add_argument("--trust-remote-code", action="store_true")
    s.add_argument("--dtype", default="auto")
    s.add_argument("--quantization", "-q", default=None)
    s.add_argument("--enable-auto-tool-choice", action="store_true")
    s.add_argument("--tool-call-parser", default=None)
    s.add_argument("--chat-template", default=None)
    s.add_argument("--generation-config", default="auto")
    s.add_argument("--max-model-len", type=_max_model_len, default=None)
    s.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    s.add_argument(
        "--kv-cache-dtype",
        choices=["auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla"],
        default="auto",
    )
    s.add_argument("--limit-mm-per-prompt", type=_limit_mm, default=None)
    s.add_argument("--max-num-seqs", type=int, default=None)
    s.add_argument("--max-num-batched-tokens", type=int, default=None)
    s.add_argument("--speculative-config", type=_json_arg, default=None)
    s.add_argument("--enforce-eager", action="store_true")
    s.add_argument("--enable-expert-parallel", action="store_true")
    s.add_argument("--disable-custom-all-reduce", action="store_true")
    s.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction)
    s.add_argument("--swap-space", type=float, default=4)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--uvicorn-log-level", default="info")
    s.add_argument("--disable-log-stats", action="store_true")
    s.add_argument("--disable-uvicorn-access-log", action="store_true")
    _add_real_options(s)
    return parser


@dataclass
class ServeConfig:
    """The ``vllm serve`` options the stand-in acts on."""

    model: str
    served_names: list[str]
    host: str
    port: int
    api_keys: list[str]
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    tokenizer_mode: str = "auto"
    config_format: str = "auto"
    load_format: str = "auto"
    auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    kv_cache_dtype: str = "auto"
    limit_mm: dict[str, int] = field(default_factory=dict)
    max_num_seqs: int | None = None
    speculative: object = None

    @property
    def world_size(self) -> int:
        """Ranks the engine needs: tensor parallel x pipeline parallel."""
        return self.tensor_parallel * self.pipeline_parallel


def parse_serve(argv: Sequence[str], environ: dict[str, str] | None = None) -> ServeConfig:
    """Parse ``serve …`` arguments (after ``vllm``) into a ServeConfig.

    Exits 2 through argparse on an unknown flag or a bad value, like the real CLI.
    """
    env = dict(os.environ) if environ is None else environ
    ns = build_parser().parse_args(normalize_argv(argv))
    if ns.subparser != "serve":
        build_parser().error("the only command the sandbox's vllm supports is `serve`")
    model = ns.model_tag or ns.model
    if not model:
        build_parser().error("the following arguments are required: model_tag")
    keys = list(ns.api_key or [])
    if not keys and env.get("VLLM_API_KEY"):
        keys = [env["VLLM_API_KEY"]]
    return ServeConfig(
        model=model,
        served_names=list(ns.served_model_name or [model]),
        host=ns.host or "0.0.0.0",
        port=ns.port,
        api_keys=keys,
        tensor_parallel=ns.tensor_parallel_size,
        pipeline_parallel=ns.pipeline_parallel_size,
        tokenizer_mode=ns.tokenizer_mode or "auto",
        config_format=ns.config_format,
        load_format=ns.load_format,
        auto_tool_choice=ns.enable_auto_tool_choice,
        tool_call_parser=ns.tool_call_parser,
        max_model_len=ns.max_model_len,
        gpu_memory_utilization=ns.gpu_memory_utilization,
        kv_cache_dtype=ns.kv_cache_dtype,
        limit_mm=dict(ns.limit_mm_per_prompt or {}),
        max_num_seqs=ns.max_num_seqs,
        speculative=ns.speculative_config,
    )


# --------------------------------------------------------------------------- checks


class Prefix:
    """vLLM's per-process log prefixes (``(APIServer pid=N) INFO MM-DD HH:MM:SS [file:line]``)."""

    def __init__(self, pid: int) -> None:
        self.api = f"(APIServer pid={pid})"
        self.core = f"(EngineCore_DP0 pid={pid + 1})"
        self.worker = f"(Worker_TP0 pid={pid + 2})"

    @staticmethod
    def line(who: str, level: str, where: str, message: str) -> str:
        """One log line."""
        return f"{who} {level} {log_time()} [{where}] {message}"


@dataclass(frozen=True)
class Failure:
    """A start that ends in an error: the log lines to print and the exit status."""

    lines: tuple[str, ...]
    exit_code: int = 1
    after_ready: bool = False


def model_layout(model: str) -> str:
    """``mistral`` (params.json), ``hf`` (config.json), ``missing`` or ``unknown``."""
    path = Path(model)
    if not path.is_dir():
        return "missing"
    if (path / "config.json").is_file():
        return "hf"
    if (path / "params.json").is_file():
        return "mistral"
    return "unknown"


def _traceback(who: str, frames: Sequence[tuple[str, int, str, str]], error: str) -> list[str]:
    lines = [f"{who} Traceback (most recent call last):"]
    for file, lineno, func, code in frames:
        lines.append(f'{who}   File "{file}", line {lineno}, in {func}')
        lines.append(f"{who}     {code}")
    lines.extend(f"{who} {part}" for part in error.splitlines())
    return lines


def _cli_frames() -> list[tuple[str, int, str, str]]:
    return [
        ("/root/.mlctl/venvs/vllm-0.12.0/bin/vllm", 10, "<module>", "sys.exit(main())"),
        (f"{_VENV}/vllm/entrypoints/cli/main.py", 73, "main", "args.dispatch_function(args)"),
        (f"{_VENV}/vllm/entrypoints/cli/serve.py", 60, "cmd", "uvloop.run(run_server(args))"),
    ]


def config_failure(cfg: ServeConfig, pid: int) -> Failure | None:
    """The error the real API server raises while reading the model's config, if any."""
    p = Prefix(pid)
    layout = model_layout(cfg.model)
    wants_mistral = cfg.config_format == "mistral" or cfg.tokenizer_mode == "mistral"
    frames = _cli_frames() + [
        (
            f"{_VENV}/vllm/transformers_utils/config.py",
            620,
            "get_config",
            "raise ValueError(",
        )
    ]
    if cfg.config_format == "mistral" and layout != "mistral":
        return mistral_params_failure(cfg.model, pid)
    if layout == "missing" or layout == "unknown":
        error = (
            "ValueError: Could not detect config format for no config file found. With "
            "config_format 'auto', ensure your model has either config.json (HF format) or "
            "params.json (Mistral format). Otherwise please specify "
            "your_custom_config_format in engine args for customized config parser."
        )
        return Failure(tuple(_traceback(p.api, frames, error)))
    if cfg.tokenizer_mode == "mistral" and not _has_mistral_tokenizer(Path(cfg.model)):
        files = sorted(f.name for f in Path(cfg.model).iterdir())
        error = (
            "OSError: Found 0 files matching the pattern: "
            "`^tokenizer\\.model\\.v.*$|^tekken\\.json$|^tokenizer\\.mm\\.model\\.v.*$`. "
            f"Make sure that a Mistral tokenizer is present in {files}."
        )
        return Failure(tuple(_traceback(p.api, frames, error)))
    if layout == "mistral" and not wants_mistral:
        # A Mistral-format directory read with the Hugging Face tokenizer: transformers
        # looks for config.json / tokenizer files that the repo does not have.
        error = (
            f"OSError: {cfg.model} does not appear to have a file named config.json. "
            f"Checkout 'https://huggingface.co/{cfg.model}/tree/None' for available files."
        )
        tok_frames = _cli_frames() + [
            (
                f"{_VENV}/vllm/transformers_utils/tokenizer.py",
                241,
                "get_tokenizer",
                "tokenizer = AutoTokenizer.from_pretrained(",
            )
        ]
        return Failure(tuple(_traceback(p.api, tok_frames, error)))
    return None


def mistral_params_failure(model: str, pid: int) -> Failure:
    """vLLM's error for ``--config-format mistral`` on a directory without ``params.json``."""
    frames = _cli_frames() + [
        (
            f"{_VENV}/vllm/transformers_utils/config.py",
            1012,
            "load_params_config",
            "raise ValueError(",
        )
    ]
    error = (
        f"ValueError: Failed to load mistral 'params.json' config for model {model}. "
        "Please check if the model is a mistral-format model and if the config file exists."
    )
    return Failure(tuple(_traceback(Prefix(pid).api, frames, error)))


def _has_mistral_tokenizer(path: Path) -> bool:
    pattern = re.compile(r"^tokenizer\.model\.v.*$|^tekken\.json$|^tokenizer\.mm\.model\.v.*$")
    return any(pattern.match(f.name) for f in path.iterdir())


def _model_config(model: str) -> dict[str, Any]:
    for name in ("config.json", "params.json"):
        try:
            data = json.loads((Path(model) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            return data
    return {}


def model_max_len(model: str) -> int:
    """The context the model's config declares (vLLM's default ``--max-model-len``)."""
    data = _model_config(model)
    for key in ("max_position_embeddings", "max_seq_len", "max_model_len"):
        value = data.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_MAX_MODEL_LEN


def kv_bytes_per_token(model: str, kv_cache_dtype: str) -> int:
    """KV-cache bytes per token: from the config (MLA or GQA) or the Mistral Large 3 figure."""
    data = _model_config(model)
    layers = data.get("num_hidden_layers") or data.get("n_layers")
    kv_lora = data.get("kv_lora_rank")
    per_token = DEFAULT_KV_BYTES_PER_TOKEN
    if isinstance(layers, int) and isinstance(kv_lora, int):
        rope = data.get("qk_rope_head_dim", 64)
        per_token = layers * (kv_lora + (rope if isinstance(rope, int) else 64)) * 2
    elif isinstance(layers, int):
        heads = data.get("num_key_value_heads") or data.get("n_kv_heads") or 8
        hidden = data.get("hidden_size") or data.get("dim") or 4096
        n_heads = data.get("num_attention_heads") or data.get("n_heads") or 32
        head_dim = data.get("head_dim") or int(hidden) // int(n_heads)
        per_token = layers * 2 * int(heads) * int(head_dim) * 2
    return per_token // 2 if kv_cache_dtype.startswith("fp8") else per_token


@dataclass(frozen=True)
class MemoryPlan:
    """The numbers a healthy start logs (per GPU)."""

    total_gib: float
    weights_gib: float
    kv_gib: float
    kv_tokens: int
    max_model_len: int

    @property
    def concurrency(self) -> float:
        """Requests of max_model_len tokens the KV cache holds at once."""
        return self.kv_tokens / self.max_model_len


def memory_plan(cfg: ServeConfig, inventory: GpuInventory, scenario: Scenario) -> MemoryPlan:
    """Weights and KV cache per GPU, from the GPU's memory and the scenario's overrides."""
    total_mib = inventory.gpus[0].memory_total_mib if inventory.gpus else 0
    total_gib = total_mib / 1024 * 0.99  # what torch reports is a little under nvidia-smi's
    weights = float(scenario.extra.get("weights_gib_per_gpu", total_gib * 0.55))
    kv_gib = max(total_gib * cfg.gpu_memory_utilization - weights - 1.5, 0.0)
    kv_tokens = int(kv_gib * GIB // kv_bytes_per_token(cfg.model, cfg.kv_cache_dtype))
    if "kv_cache_tokens" in scenario.extra:
        kv_tokens = int(scenario.extra["kv_cache_tokens"])
    max_len = cfg.max_model_len or model_max_len(cfg.model)
    return MemoryPlan(round(total_gib, 2), round(weights, 2), round(kv_gib, 2), kv_tokens, max_len)


def tp_failure(cfg: ServeConfig, inventory: GpuInventory, pid: int, forced: bool) -> Failure | None:
    """vLLM's refusal when the ranks asked for exceed the GPUs present (Ray placement group)."""
    available = len(inventory.gpus)
    if not forced and cfg.world_size <= available:
        return None
    p = Prefix(pid)
    frames = _cli_frames() + [
        (
            f"{_VENV}/vllm/v1/executor/ray_utils.py",
            368,
            "initialize_ray_cluster",
            "raise ValueError(",
        )
    ]
    error = (
        "ValueError: The number of required GPUs exceeds the total number of available GPUs "
        f"in the placement group. Required number of devices: {cfg.world_size}. "
        f"Total number of devices: {available}."
    )
    lines = [
        p.line(
            p.api,
            "INFO",
            "ray_utils.py:345",
            "No current placement group found. Creating a new placement group.",
        ),
        *_traceback(p.api, frames, error),
    ]
    return Failure(tuple(lines))


def _engine_core_failure(p: Prefix, root: list[str]) -> list[str]:
    where = "core.py:843"
    lines = [
        *root,
        p.line(p.core, "ERROR", where, "EngineCore failed to start."),
        p.line(p.core, "ERROR", where, "Traceback (most recent call last):"),
        p.line(
            p.core,
            "ERROR",
            where,
            f'  File "{_VENV}/vllm/v1/engine/core.py", line 834, in run_engine_core',
        ),
        p.line(p.core, "ERROR", where, "    engine_core = EngineCoreProc(*args, **kwargs)"),
    ]
    lines += _traceback(
        p.api,
        _cli_frames()
        + [
            (
                f"{_VENV}/vllm/v1/engine/utils.py",
                925,
                "wait_for_engine_startup",
                "raise RuntimeError(",
            )
        ],
        "RuntimeError: Engine core initialization failed. See root cause above. "
        "Failed core proc(s): {'EngineCore_DP0': 1}",
    )
    return lines


def oom_failure(plan: MemoryPlan, pid: int) -> Failure:
    """The CUDA OOM the engine hits while loading weights, as torch words it."""
    p = Prefix(pid)
    free = 1.79
    in_use = plan.total_gib - free
    error = (
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a "
        f"total capacity of {plan.total_gib:.2f} GiB of which {free:.2f} GiB is free. Including "
        f"non-PyTorch memory, this process has {in_use:.2f} GiB memory in use. Of the allocated "
        f"memory {in_use - 1.42:.2f} GiB is allocated by PyTorch, and 13.88 MiB is reserved by "
        "PyTorch but unallocated. If reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See "
        "documentation for Memory Management  "
        "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
    )
    where = "multiproc_executor.py:743"
    root = [
        p.line(p.worker, "ERROR", where, "WorkerProc failed to start."),
        p.line(p.worker, "ERROR", where, "Traceback (most recent call last):"),
        p.line(
            p.worker,
            "ERROR",
            where,
            f'  File "{_VENV}/vllm/model_executor/model_loader/base_loader.py", line 49, '
            "in load_model",
        ),
        p.line(p.worker, "ERROR", where, "    model = initialize_model("),
        p.line(p.worker, "ERROR", where, error),
    ]
    return Failure(tuple(_engine_core_failure(p, root)))


def kv_failure(plan: MemoryPlan, pid: int) -> Failure:
    """vLLM's refusal when one request of max_model_len tokens does not fit the KV cache."""
    p = Prefix(pid)
    tokens = min(plan.kv_tokens, plan.max_model_len // 2)
    error = (
        f"ValueError: The model's max seq len ({plan.max_model_len}) is larger than the maximum "
        f"number of tokens that can be stored in KV cache ({tokens}). Try increasing "
        "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine."
    )
    where = "core.py:843"
    root = [
        p.line(
            p.worker, "INFO", "gpu_worker.py:359", f"Available KV cache memory: {plan.kv_gib} GiB"
        ),
        p.line(p.core, "ERROR", where, "EngineCore failed to start."),
        p.line(p.core, "ERROR", where, "Traceback (most recent call last):"),
        p.line(
            p.core,
            "ERROR",
            where,
            f'  File "{_VENV}/vllm/v1/core/kv_cache_utils.py", line 690, '
            "in check_enough_kv_cache_memory",
        ),
        p.line(p.core, "ERROR", where, "    raise ValueError("),
        p.line(p.core, "ERROR", where, error),
    ]
    lines = root + _traceback(
        p.api,
        _cli_frames(),
        "RuntimeError: Engine core initialization failed. See root cause above. "
        "Failed core proc(s): {'EngineCore_DP0': 1}",
    )
    return Failure(tuple(lines))


def port_failure(pid: int) -> Failure:
    """The bind error of a taken port (vLLM binds before the engine starts)."""
    p = Prefix(pid)
    frames = _cli_frames() + [
        (
            f"{_VENV}/vllm/entrypoints/openai/api_server.py",
            1903,
            "create_server_socket",
            "sock.bind(addr)",
        )
    ]
    return Failure(tuple(_traceback(p.api, frames, "OSError: [Errno 98] Address already in use")))


def crash_lines(pid: int) -> list[str]:
    """What vLLM prints when the engine dies while serving (an illegal memory access)."""
    p = Prefix(pid)
    where = "core.py:782"
    return [
        p.line(p.core, "ERROR", where, "EngineCore encountered a fatal error."),
        p.line(p.core, "ERROR", where, "Traceback (most recent call last):"),
        p.line(
            p.core,
            "ERROR",
            where,
            f'  File "{_VENV}/vllm/v1/engine/core.py", line 773, in run_engine_core',
        ),
        p.line(p.core, "ERROR", where, "    engine_core.run_busy_loop()"),
        p.line(
            p.core,
            "ERROR",
            where,
            "torch.AcceleratorError: CUDA error: an illegal memory access was encountered",
        ),
        p.line(
            p.core,
            "ERROR",
            where,
            "CUDA kernel errors might be asynchronously reported at some other API call, so the "
            "stacktrace below might be incorrect.",
        ),
        p.line(p.core, "ERROR", where, "For debugging consider passing CUDA_LAUNCH_BLOCKING=1"),
        p.line(
            p.core,
            "ERROR",
            where,
            "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.",
        ),
        p.line(p.api, "ERROR", "async_llm.py:525", "AsyncLLM output_handler failed."),
        p.line(
            p.api,
            "ERROR",
            "async_llm.py:525",
            "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. "
            "See stack trace (above) for the root cause.",
        ),
        f"{p.api} INFO:     Shutting down",
        f"{p.api} INFO:     Finished server process [{pid}]",
    ]


def startup_lines(
    cfg: ServeConfig, inventory: GpuInventory, plan: MemoryPlan, pid: int
) -> list[str]:
    """The INFO lines of a healthy start, phase by phase, up to the engine being ready."""
    p = Prefix(pid)
    name = cfg.served_names[0]
    args: dict[str, object] = {"model_tag": cfg.model, "host": cfg.host, "port": cfg.port}
    if cfg.tensor_parallel != 1:
        args["tensor_parallel_size"] = cfg.tensor_parallel
    if cfg.max_model_len:
        args["max_model_len"] = cfg.max_model_len
    args["served_model_name"] = cfg.served_names
    lines = [
        p.line(p.api, "INFO", "api_server.py:1772", f"vLLM API server version {VERSION}"),
        p.line(p.api, "INFO", "utils.py:253", f"non-default args: {args}"),
        p.line(p.api, "INFO", "model.py:1750", f"Using max model len {plan.max_model_len}"),
        p.line(
            p.api,
            "INFO",
            "scheduler.py:228",
            "Chunked prefill is enabled with max_num_batched_tokens=8192.",
        ),
        p.line(
            p.core,
            "INFO",
            "core.py:93",
            f"Initializing a V1 LLM engine (v{VERSION}) with config: model='{cfg.model}', "
            f"tokenizer_mode={cfg.tokenizer_mode}, max_seq_len={plan.max_model_len}, "
            f"tensor_parallel_size={cfg.tensor_parallel}, "
            f"pipeline_parallel_size={cfg.pipeline_parallel}, served_model_name={name}",
        ),
        p.line(
            p.worker,
            "INFO",
            "parallel_state.py:1208",
            f"rank 0 in world size {cfg.world_size} is assigned as DP rank 0, PP rank 0, "
            "TP rank 0, EP rank 0",
        ),
    ]
    cap = inventory.gpus[0].compute_capability if inventory.gpus else "0.0"
    if "nvfp4" in cfg.model.lower() and float(cap) < 10.0:
        lines.append(
            p.line(
                p.worker,
                "WARNING",
                "marlin_utils_fp4.py:204",
                "Your GPU does not have native support for FP4 computation but FP4 quantization "
                "is being used. Weight-only FP4 compression will be used leveraging the Marlin "
                "kernel. This may degrade performance for compute-heavy workloads.",
            )
        )
    lines += [
        p.line(
            p.worker, "INFO", "gpu_model_runner.py:3338", f"Starting to load model {cfg.model}..."
        ),
        p.line(p.worker, "INFO", "default_loader.py:308", "Loading weights took 0.42 seconds"),
        p.line(
            p.worker,
            "INFO",
            "gpu_model_runner.py:3420",
            f"Model loading took {plan.weights_gib:.4f} GiB memory and 0.61 seconds",
        ),
        p.line(p.worker, "INFO", "gpu_worker.py:340", "Memory profiling takes 0.35 seconds"),
        p.line(
            p.worker, "INFO", "gpu_worker.py:359", f"Available KV cache memory: {plan.kv_gib} GiB"
        ),
        p.line(
            p.core,
            "INFO",
            "kv_cache_utils.py:1229",
            f"GPU KV cache size: {plan.kv_tokens:,} tokens",
        ),
        p.line(
            p.core,
            "INFO",
            "kv_cache_utils.py:1234",
            f"Maximum concurrency for {plan.max_model_len:,} tokens per request: "
            f"{plan.concurrency:.2f}x",
        ),
        f"{p.worker} Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 100%|██████████| "
        "67/67 [00:01<00:00, 52.30it/s]",
        p.line(
            p.worker,
            "INFO",
            "gpu_model_runner.py:4244",
            "Graph capturing finished in 2 secs, took 0.49 GiB",
        ),
        p.line(
            p.core,
            "INFO",
            "core.py:250",
            "init engine (profile, create kv cache, warmup model) took 3.10 seconds",
        ),
        p.line(p.api, "INFO", "api_server.py:1520", "Supported tasks: ['generate']"),
    ]
    if cfg.auto_tool_choice:
        lines.append(
            p.line(
                p.api,
                "INFO",
                "serving_chat.py:140",
                '"auto" tool choice has been enabled please note that while the '
                "parallel_tool_calls client option is preset for compatibility reasons, "
                "it will be ignored.",
            )
        )
    host = cfg.host
    lines += [
        p.line(
            p.api,
            "INFO",
            "api_server.py:1912",
            f"Starting vLLM API server 0 on http://{host}:{cfg.port}",
        ),
        p.line(p.api, "INFO", "launcher.py:44", "Available routes are:"),
    ]
    for route, methods in (
        ("/health", "GET"),
        ("/v1/models", "GET"),
        ("/v1/chat/completions", "POST"),
    ):
        lines.append(p.line(p.api, "INFO", "launcher.py:52", f"Route: {route}, Methods: {methods}"))
    return lines


def ready_lines(cfg: ServeConfig, pid: int) -> list[str]:
    """Uvicorn's lines once the socket listens."""
    p = Prefix(pid)
    return [
        f"{p.api} INFO:     Started server process [{pid}]",
        f"{p.api} INFO:     Waiting for application startup.",
        f"{p.api} INFO:     Application startup complete.",
        f"{p.api} INFO:     Uvicorn running on http://{cfg.host}:{cfg.port} (Press CTRL+C to quit)",
    ]


# --------------------------------------------------------------------------- HTTP


class VllmEngine:
    """The serving side: the config and a few counters the handler consults."""

    def __init__(self, cfg: ServeConfig, pid: int) -> None:
        self.cfg = cfg
        self.pid = pid
        self.created = int(time.time())


class VllmHandler(JsonHandler):
    """vLLM's OpenAI-compatible routes."""

    def _engine(self) -> VllmEngine:
        engine = self.server.engine
        assert isinstance(engine, VllmEngine)
        return engine

    def _access(self, status: int) -> None:
        engine = self._engine()
        host, port = self.client_address[:2]
        reason = self.responses.get(status, ("",))[0]
        emit(
            f'(APIServer pid={engine.pid}) INFO:     {host}:{port} - "{self.command} {self.path} '
            f'HTTP/1.1" {status} {reason}'
        )

    def _authorized(self) -> bool:
        keys = self._engine().cfg.api_keys
        if not keys or not self.path.startswith("/v1"):
            return True
        token = bearer_token(self.headers)
        if token is not None and token in keys:
            return True
        self.send_json(401, {"error": "Unauthorized"})
        self._access(401)
        return False

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        """GET /health, /version, /v1/models."""
        if not self._authorized():
            return
        path = self.path.split("?", 1)[0]
        engine = self._engine()
        if path == "/health":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self._access(200)
        elif path == "/version":
            self.send_json(200, {"version": VERSION})
            self._access(200)
        elif path == "/v1/models":
            data: list[dict[str, object]] = [
                {
                    "id": name,
                    "object": "model",
                    "created": engine.created,
                    "owned_by": "vllm",
                    "root": engine.cfg.model,
                    "parent": None,
                    "max_model_len": engine.cfg.max_model_len or model_max_len(engine.cfg.model),
                    "permission": [],
                }
                for name in engine.cfg.served_names
            ]
            self.send_json(200, {"object": "list", "data": data})
            self._access(200)
        else:
            self.send_json(404, {"detail": "Not Found"})
            self._access(404)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        """POST /v1/chat/completions."""
        if not self._authorized():
            return
        path = self.path.split("?", 1)[0]
        if path != "/v1/chat/completions":
            self.send_json(404, {"detail": "Not Found"})
            self._access(404)
            return
        try:
            body = self.read_json()
            self._chat(body)
        except ApiError as exc:
            self.send_json(exc.status, exc.body)
            self._access(exc.status)

    def _chat(self, body: dict[str, Any]) -> None:
        engine = self._engine()
        cfg = engine.cfg
        model = body.get("model") or cfg.served_names[0]
        if model not in cfg.served_names:
            raise ApiError(
                404, openai_error(f"The model `{model}` does not exist.", 404, "NotFoundError")
            )
        if body.get("tools") and body.get("tool_choice", "auto") == "auto":
            if not (cfg.auto_tool_choice and cfg.tool_call_parser):
                raise ApiError(
                    400,
                    openai_error(
                        '"auto" tool choice requires --enable-auto-tool-choice and '
                        "--tool-call-parser to be set",
                        400,
                    ),
                )
        images = count_images(body.get("messages") or [])
        limit = cfg.limit_mm.get("image")
        if images and limit is not None and images > limit:
            raise ApiError(
                400,
                openai_error(f"At most {limit} image(s) may be provided in one prompt.", 400),
            )
        answer = answer_chat(body, cfg.tool_call_parser)
        completion_id = new_id("chatcmpl-")
        created = int(time.time())
        if body.get("stream"):
            options = body.get("stream_options") or {}
            include_usage = (
                bool(options.get("include_usage")) if isinstance(options, dict) else False
            )
            self.send_sse(stream_chunks(answer, model, completion_id, created, include_usage))
        else:
            self.send_json(200, completion_body(answer, model, completion_id, created))
        self._access(200)


# --------------------------------------------------------------------------- main


def serve(cfg: ServeConfig, inventory: GpuInventory, scenario: Scenario, life: Lifecycle) -> int:
    """Run ``vllm serve`` to the end: checks, log phases, closed port while loading, serving."""
    pid = os.getpid()
    fail = scenario.fail
    failure = config_failure(cfg, pid)
    if failure is None and fail == "mistral-hf":
        failure = mistral_params_failure(cfg.model, pid)
    if failure is not None:
        emit(failure.lines)
        return failure.exit_code
    try:
        server = make_server(cfg.host, cfg.port, VllmHandler, VllmEngine(cfg, pid))
    except OSError:
        emit(port_failure(pid).lines)
        return 1
    serving = False
    try:
        if fail == "port-in-use":
            emit(port_failure(pid).lines)
            return 1
        plan = memory_plan(cfg, inventory, scenario)
        tp = tp_failure(cfg, inventory, pid, forced=fail == "tp-mismatch")
        if tp is not None:
            emit(tp.lines)
            return tp.exit_code
        lines = startup_lines(cfg, inventory, plan, pid)
        split = next(i for i, line in enumerate(lines) if "Starting to load model" in line)
        emit(lines[: split + 1])
        if life.sleep(scenario.startup_seconds):
            return 0
        if fail == "oom":
            emit(oom_failure(plan, pid).lines)
            return 1
        if fail == "kv-cache" or plan.kv_tokens < plan.max_model_len:
            emit(kv_failure(plan, pid).lines)
            return 1
        emit(lines[split + 1 :])
        server.server_activate()
        serve_in_thread(server)
        serving = True
        emit(ready_lines(cfg, pid))
        if fail == "crash-after-ready":
            if life.sleep(scenario.crash_after_seconds):
                return 0
            emit(crash_lines(pid))
            return 1
        life.stop.wait()
        emit(
            [
                f"(APIServer pid={pid}) INFO:     Shutting down",
                f"(APIServer pid={pid}) INFO:     Waiting for application shutdown.",
                f"(APIServer pid={pid}) INFO:     Application shutdown complete.",
            ]
        )
        return 0
    finally:
        if serving:
            server.shutdown()
        server.server_close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vllm``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-v", "--version") or args[0] != "serve":
        build_parser().parse_args(normalize_argv(args))
        build_parser().print_help()
        return 0 if not args else 2
    cfg = parse_serve(args)
    life = Lifecycle()
    life.install()
    state = state_dir()
    return serve(cfg, load_inventory(state), load_scenario(state, "vllm"), life)


if __name__ == "__main__":
    sys.exit(main())
