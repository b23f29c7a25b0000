"""vLLM: install into a pinned venv, fetch the checkpoint with ``hf``, ``vllm serve``.

Flags follow vllm-project/recipes (Mistral-Large-3): tensor parallel = GPUs per
node, the three Mistral flags exactly when the checkpoint is in Mistral format
(``params.json`` + ``tekken.json``; never on an HF-format repo, vLLM #16681),
``--enable-auto-tool-choice --tool-call-parser mistral``. The API key reaches
vLLM as ``VLLM_API_KEY`` read from a 0600 file, never through argv.
"""

from __future__ import annotations

import json

from mlctl import shell
from mlctl.backends.base import DownloadSpec, InstallSpec, LaunchSpec, RemoteLayout
from mlctl.facts import HostFacts
from mlctl.fit import GB, FitReport
from mlctl.profiles import Profile

MISTRAL_FLAGS = [
    "--tokenizer-mode",
    "mistral",
    "--config-format",
    "mistral",
    "--load-format",
    "mistral",
]
# mistral_common is what vLLM's Mistral tokenizer mode needs (model card: >= 1.8.6).
EXTRA_PACKAGES = ["mistral_common>=1.8.6"]


def venv_name(profile: Profile) -> str:
    """The venv mlctl installs this vLLM version into."""
    return f"vllm-{profile.engine.version}"


def install(profile: Profile, layout: RemoteLayout) -> InstallSpec:
    """Return how to install the pinned vLLM into mlctl's venv (uv when present)."""
    venv = layout.venv_dir(venv_name(profile))
    vllm_bin = f"{venv}/bin/vllm"
    packages = [f"vllm=={profile.engine.version}", *EXTRA_PACKAGES, "huggingface_hub>=0.34"]
    version = shell.quote(profile.engine.version)
    check = f"{shell.quote(vllm_bin)} --version 2>/dev/null | grep -qx {version}"
    with_uv = shell.and_then(
        shell.join(["uv", "venv", "--seed", "--python", "3.12", venv]),
        shell.join(["uv", "pip", "install", "--python", f"{venv}/bin/python", *packages]),
    )
    with_pip = shell.and_then(
        shell.join(["python3", "-m", "venv", venv]),
        shell.join([f"{venv}/bin/pip", "install", "--upgrade", *packages]),
    )
    command = f"if command -v uv >/dev/null 2>&1; then {with_uv}; else {with_pip}; fi"
    return InstallSpec(
        description=f"vLLM {profile.engine.version} in {venv} (uv when present, else pip)",
        check=check,
        commands=[command],
        binary=vllm_bin,
    )


def hf_binary(profile: Profile, layout: RemoteLayout) -> str:
    """The ``hf`` CLI inside the vLLM venv (huggingface_hub is installed there)."""
    return f"{layout.venv_dir(venv_name(profile))}/bin/hf"


def downloads(profile: Profile, layout: RemoteLayout) -> list[DownloadSpec]:
    """The checkpoint and, with speculative decoding, the draft model."""
    ck = profile.checkpoint
    specs = [
        DownloadSpec(
            repo=ck.repo,
            revision=ck.revision,
            include=list(ck.include),
            local_dir=layout.model_dir(ck.repo),
            size_bytes=int(ck.size_gb * GB),
        )
    ]
    spec = profile.serve.speculative
    if spec is not None and spec.repo:
        specs.append(
            DownloadSpec(
                repo=spec.repo,
                revision="main",
                include=[],
                local_dir=layout.model_dir(spec.repo),
                size_bytes=int(spec.size_gb * GB),
            )
        )
    return specs


def launch(
    profile: Profile, facts: HostFacts, report: FitReport, layout: RemoteLayout, name: str
) -> LaunchSpec:
    """Return the ``vllm serve`` argv and environment for this profile and fit."""
    serve = profile.serve
    ck = profile.checkpoint
    binary = f"{layout.venv_dir(venv_name(profile))}/bin/vllm"
    argv = [
        binary,
        "serve",
        layout.model_dir(ck.repo),
        "--served-model-name",
        profile.served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(serve.port),
        "--tensor-parallel-size",
        str(report.tensor_parallel),
    ]
    if report.pipeline_parallel > 1:
        argv += [
            "--pipeline-parallel-size",
            str(report.pipeline_parallel),
            "--distributed-executor-backend",
            "ray",
        ]
    if ck.format == "mistral":
        argv += MISTRAL_FLAGS
    if serve.tool_calling:
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", serve.tool_parser or "mistral"]
    argv += ["--max-model-len", str(report.chosen_context)]
    argv += ["--gpu-memory-utilization", f"{serve.gpu_memory_utilization:g}"]
    if serve.kv_cache_dtype != "auto":
        argv += ["--kv-cache-dtype", serve.kv_cache_dtype]
    if serve.images_per_prompt is not None:
        argv += ["--limit-mm-per-prompt", json.dumps({"image": serve.images_per_prompt})]
    if serve.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(serve.max_num_seqs)]
    if serve.speculative is not None:
        sp = serve.speculative
        config: dict[str, object] = {
            "method": sp.method,
            "num_speculative_tokens": sp.num_speculative_tokens,
        }
        if sp.repo:
            config["model"] = layout.model_dir(sp.repo)
        if sp.max_model_len:
            config["max_model_len"] = sp.max_model_len
        argv += ["--speculative-config", json.dumps(config, separators=(",", ":"))]
    argv += list(serve.extra_args)
    env = {
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",  # the checkpoint is local; never reach the Hub at start
        **serve.extra_env,
    }
    return LaunchSpec(
        argv=argv,
        env=env,
        secret_env={"VLLM_API_KEY": layout.api_key_file(name)},
        port=serve.port,
        health_path="/health",
    )


def phases() -> list[tuple[str, str]]:
    """Startup phases as (name, regex on a log line), in the order vLLM logs them."""
    return [
        ("starting", r"Starting vLLM API server|vLLM API server version"),
        ("loading weights", r"Loading safetensors checkpoint shards|Loading weights took"),
        ("profiling memory", r"Memory profiling takes|Available KV cache memory"),
        ("capturing CUDA graphs", r"Capturing CUDA graph|Graph capturing finished"),
        ("serving", r"Application startup complete|Uvicorn running on"),
    ]
