"""Stand-in llama.cpp ``llama-server``, behaving as ``FACTS.md`` measured the real one.

It binds and listens first, then "loads" the model: ``/health`` answers 503
``{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}``
for ``startup_seconds``, then 200 ``{"status":"ok"}``. ``-m`` must name an
existing file; a split GGUF (``…-00001-of-0000N.gguf``) needs all its sibling
shards, else ``failed to load GGUF split from …`` and exit 1. With an API key
(``--api-key`` / ``--api-key-file``) every route but ``/health``, ``/v1/health``,
``/models`` and ``/v1/models`` answers 401 without it, as ``server.cpp`` does.
Bare ``-fa`` is rejected (it needs ``on|off|auto``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from mlctl.sandbox.standins.common import (
    ApiError,
    GpuInventory,
    JsonHandler,
    Lifecycle,
    Scenario,
    answer_chat,
    completion_body,
    emit,
    load_inventory,
    load_scenario,
    make_server,
    new_id,
    serve_in_thread,
    state_dir,
    stream_chunks,
)

BUILD = 11312
COMMIT = "0c1e570"
N_LAYER = 61  # Mistral Large 3's block count; the stand-in does not read GGUF headers
FAILURES = ("oom", "port-in-use", "crash-after-ready")
_SPLIT = re.compile(r"^(?P<prefix>.*)-(?P<idx>\d{5})-of-(?P<n>\d{5})\.gguf$")


class LlamaArgError(Exception):
    """A command line llama.cpp's argument parser rejects (exit 1)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise LlamaArgError(message)


def _flash_attn(value: str) -> str:
    if value in ("on", "enabled", "1", "off", "disabled", "0", "auto", "-1"):
        return value
    raise argparse.ArgumentTypeError(f"error: unknown value for --flash-attn: '{value}'")


def build_parser() -> argparse.ArgumentParser:
    """The subset of ``llama-server``'s flags mlctl and its users pass."""
    p = _Parser(prog="llama-server", add_help=False, allow_abbrev=False)
    p.add_argument("-m", "--model", default=None)
    p.add_argument("-a", "--alias", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("-c", "--ctx-size", type=int, default=4096)
    p.add_argument("-np", "--parallel", type=int, default=1)
    p.add_argument("-ngl", "--gpu-layers", "--n-gpu-layers", dest="gpu_layers", default="-1")
    p.add_argument("-ts", "--tensor-split", default=None)
    p.add_argument("-ncmoe", "--n-cpu-moe", type=int, default=0)
    p.add_argument("-cmoe", "--cpu-moe", action="store_true")
    p.add_argument("-ot", "--override-tensor", action="append", default=[])
    p.add_argument("-ctk", "--cache-type-k", default="f16")
    p.add_argument("-ctv", "--cache-type-v", default="f16")
    p.add_argument("--jinja", action="store_true")
    p.add_argument("--api-key", default=None)
    p.add_argument("--api-key-file", default=None)
    p.add_argument("-fa", "--flash-attn", type=_flash_attn, default="auto")
    p.add_argument("--metrics", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--version", action="store_true")
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("-b", "--batch-size", type=int, default=2048)
    p.add_argument("-ub", "--ubatch-size", type=int, default=512)
    p.add_argument("--no-mmap", action="store_true")
    p.add_argument("--mlock", action="store_true")
    p.add_argument("-h", "--help", action="store_true")
    return p


@dataclass
class LlamaConfig:
    """The parsed ``llama-server`` options the stand-in acts on."""

    model: str | None
    alias: str | None
    host: str
    port: int
    ctx_size: int
    parallel: int
    gpu_layers: str
    tensor_split: str | None
    n_cpu_moe: int
    override_tensor: list[str]
    api_keys: list[str] = field(default_factory=list)
    metrics: bool = False
    verbose: bool = False
    version: bool = False
    flash_attn: str = "auto"

    @property
    def model_name(self) -> str:
        """What ``/v1/models`` lists: the alias, else the model path."""
        return self.alias or self.model or ""


def parse_args(argv: Sequence[str]) -> LlamaConfig:
    """Parse the command line; raises LlamaArgError as llama.cpp's parser refuses it.

    Reads ``--api-key-file`` (one key per line) and splits ``--api-key`` on commas.
    """
    ns = build_parser().parse_args(list(argv))
    keys: list[str] = []
    if ns.api_key:
        keys += [k for k in ns.api_key.split(",") if k]
    if ns.api_key_file:
        try:
            text = Path(ns.api_key_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise LlamaArgError(f"error: failed to open file '{ns.api_key_file}'") from exc
        keys += [line.strip() for line in text.splitlines() if line.strip()]
    return LlamaConfig(
        model=ns.model,
        alias=ns.alias,
        host=ns.host,
        port=ns.port,
        ctx_size=ns.ctx_size,
        parallel=ns.parallel,
        gpu_layers=ns.gpu_layers,
        tensor_split=ns.tensor_split,
        n_cpu_moe=N_LAYER if ns.cpu_moe else ns.n_cpu_moe,
        override_tensor=list(ns.override_tensor),
        api_keys=keys,
        metrics=ns.metrics,
        verbose=ns.verbose,
        version=ns.version,
        flash_attn=ns.flash_attn,
    )


def arg_error_text(message: str, argv: Sequence[str]) -> str:
    """llama.cpp's wording for a rejected command line."""
    if "expected one argument" in message:
        flag = message.split("argument ", 1)[1].split(":", 1)[0].split("/")[0]
        return f'error while handling argument "{flag}": expected value for argument\n'
    if "unrecognized arguments" in message:
        bad = message.split(":", 1)[1].strip().split()[0]
        return f"error: invalid argument: {bad}\n"
    if "--flash-attn" in message or "-fa" in message:
        detail = message.split(":", 1)[1].strip() if ":" in message else message
        return f'error while handling argument "-fa": {detail}\n'
    return f"error: {message}\n"


def version_text() -> str:
    """``llama-server --version``."""
    return (
        f"version: {BUILD} ({COMMIT})\n"
        "built with cc (Debian 12.2.0-14) 12.2.0 for x86_64-linux-gnu\n"
    )


def split_shards(model: str) -> list[str]:
    """All shard paths of a split GGUF named by its first shard; ``[model]`` otherwise."""
    m = _SPLIT.match(model)
    if m is None:
        return [model]
    n = int(m.group("n"))
    return [f"{m.group('prefix')}-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]


def load_error(cfg: LlamaConfig) -> list[str] | None:
    """The lines llama.cpp prints when the model files are missing, or None when all exist."""
    model = cfg.model or ""
    tail = [
        "llama_model_load_from_file_impl: failed to load model",
        f"common_init_from_params: failed to load model '{model}'",
        f"srv    load_model: failed to load model, '{model}'",
        "srv    operator(): operator(): cleaning up before exit...",
        "main: exiting due to model loading error",
    ]
    if not Path(model).is_file():
        return [
            f"gguf_init_from_file: failed to open GGUF file '{model}' (No such file or directory)",
            "llama_model_load: error loading model: llama_model_loader: failed to load model "
            f"from {model}",
            *tail,
        ]
    for shard in split_shards(model)[1:]:
        if not Path(shard).is_file():
            return [
                f"gguf_init_from_file: failed to open GGUF file '{shard}' "
                "(No such file or directory)",
                "llama_model_load: error loading model: llama_model_loader: failed to load GGUF "
                f"split from {shard}",
                *tail,
            ]
    return None


def gpu_lines(inventory: GpuInventory) -> list[str]:
    """``ggml_cuda_init`` lines naming the simulated devices."""
    lines = [
        "ggml_cuda_init: GGML_CUDA_FORCE_MMQ:    no",
        "ggml_cuda_init: GGML_CUDA_FORCE_CUBLAS: no",
        f"ggml_cuda_init: found {len(inventory.gpus)} CUDA devices:",
    ]
    for i, gpu in enumerate(inventory.gpus):
        lines.append(
            f"  Device {i}: {gpu.name}, compute capability {gpu.compute_capability}, VMM: yes"
        )
    return lines


def load_lines(cfg: LlamaConfig, inventory: GpuInventory) -> list[str]:
    """The model-loading lines, with the expert tensors kept on the CPU when asked."""
    model = cfg.model or ""
    shards = split_shards(model)
    lines = [f"srv    load_model: loading model '{model}'"]
    for i, gpu in enumerate(inventory.gpus):
        lines.append(
            f"llama_model_load_from_file_impl: using device CUDA{i} ({gpu.name}) - "
            f"{gpu.memory_total_mib - 500} MiB free"
        )
    if len(shards) > 1:
        lines.append(f"llama_model_loader: additional {len(shards) - 1} GGUFs metadata loaded.")
    lines.append(
        f"llama_model_loader: loaded meta data with 52 key-value pairs and 1025 tensors from "
        f"{model} (version GGUF V3 (latest))"
    )
    cpu_layers = range(min(cfg.n_cpu_moe, N_LAYER))
    if cfg.verbose:
        for layer in cpu_layers:
            for kind in ("down", "gate", "up"):
                lines.append(
                    f"tensor blk.{layer}.ffn_{kind}_exps.weight (1792 MiB iq1_s) buffer type "
                    "overridden to CPU"
                )
        if cfg.override_tensor:
            lines.append(
                f"tensor blk.{N_LAYER - 1}.ffn_down_exps.weight (1792 MiB iq1_s) buffer type "
                "overridden to CPU"
            )
    offloaded = N_LAYER if cfg.gpu_layers in ("-1", "all", "auto") else int(cfg.gpu_layers)
    offloaded = min(offloaded, N_LAYER)
    lines += [
        f"load_tensors: offloading {offloaded} repeating layers to GPU",
        f"load_tensors: offloaded {min(offloaded + 1, N_LAYER + 1)}/{N_LAYER + 1} layers to GPU",
    ]
    if cfg.n_cpu_moe or cfg.override_tensor:
        lines.append(
            f"load_tensors:   CPU_Mapped model buffer size = {1792 * 3 * max(len(cpu_layers), 1)}"
            ".00 MiB"
        )
    for i in range(len(inventory.gpus)):
        lines.append(f"load_tensors:        CUDA{i} model buffer size = 18432.00 MiB")
    lines += [
        f"llama_context: n_ctx         = {cfg.ctx_size}",
        f"llama_context: n_seq_max     = {cfg.parallel}",
        f"srv    load_model: initializing slots, n_slots = {cfg.parallel}",
    ]
    for slot in range(cfg.parallel):
        lines.append(
            f"slot   load_model: id  {slot} | task -1 | new slot, "
            f"n_ctx = {cfg.ctx_size // max(cfg.parallel, 1)}"
        )
    return lines


def oom_lines(inventory: GpuInventory) -> list[str]:
    """A CUDA buffer allocation failure while loading, as llama.cpp logs it."""
    size_mib = (inventory.gpus[0].memory_total_mib + 2048) if inventory.gpus else 26000
    return [
        f"ggml_backend_cuda_buffer_type_alloc_buffer: allocating {size_mib:.2f} MiB on device 0: "
        "cudaMalloc failed: out of memory",
        f"alloc_tensor_range: failed to allocate CUDA0 buffer of size {size_mib * 1024 * 1024}",
        "llama_model_load: error loading model: unable to allocate CUDA0 buffer",
        "llama_model_load_from_file_impl: failed to load model",
        "srv    load_model: failed to load model",
        "srv    operator(): operator(): cleaning up before exit...",
        "main: exiting due to model loading error",
    ]


CRASH_LINES = [
    "CUDA error: an illegal memory access was encountered",
    "  current device: 0, in function ggml_backend_cuda_synchronize at "
    "/root/.mlctl/engines/llama.cpp-b11312/ggml/src/ggml-cuda/ggml-cuda.cu:2628",
    "  cudaStreamSynchronize(cuda_ctx->stream())",
    "/root/.mlctl/engines/llama.cpp-b11312/ggml/src/ggml-cuda/ggml-cuda.cu:88: CUDA error",
]


# --------------------------------------------------------------------------- HTTP


class LlamaEngine:
    """Server state: loading until the model is in."""

    def __init__(self, cfg: LlamaConfig) -> None:
        self.cfg = cfg
        self.ready = False
        self.created = int(time.time())


_PUBLIC = frozenset({"/health", "/v1/health", "/models", "/v1/models", "/api/tags"})
UNAVAILABLE = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
UNAUTHORIZED = {
    "error": {"code": 401, "message": "Invalid API Key", "type": "authentication_error"}
}


class LlamaHandler(JsonHandler):
    """``server.cpp``'s middlewares (loading state, then API key) and the OpenAI routes."""

    def _engine(self) -> LlamaEngine:
        engine = self.server.engine
        assert isinstance(engine, LlamaEngine)
        return engine

    def _log(self, status: int) -> None:
        host = self.client_address[0]
        emit(f"srv  log_server_r: request: {self.command} {self.path} {host} {status}")

    def _gate(self, path: str) -> bool:
        engine = self._engine()
        if not engine.ready and path not in ("/models", "/v1/models", "/api/tags"):
            self.send_json(503, UNAVAILABLE)
            self._log(503)
            return False
        keys = engine.cfg.api_keys
        if keys and path not in _PUBLIC and path != "/":
            auth = self.headers.get("Authorization") or ""
            token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
            if token not in keys and self.headers.get("X-Api-Key") not in keys:
                self.send_json(401, UNAUTHORIZED)
                emit("srv  log_server_r: Unauthorized: Invalid API Key")
                self._log(401)
                return False
        return True

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        """GET /health, /v1/models, /metrics."""
        path = self.path.split("?", 1)[0]
        if not self._gate(path):
            return
        engine = self._engine()
        if path in ("/health", "/v1/health"):
            self.send_json(200, {"status": "ok"})
        elif path in ("/models", "/v1/models"):
            name = engine.cfg.model_name
            self.send_json(
                200,
                {
                    "models": [{"name": name, "model": name, "type": "model"}],
                    "object": "list",
                    "data": [
                        {
                            "id": name,
                            "object": "model",
                            "created": engine.created,
                            "owned_by": "llamacpp",
                            "meta": {"n_ctx_train": 262144, "n_params": 675_000_000_000},
                        }
                    ],
                },
            )
        elif path == "/metrics":
            if not engine.cfg.metrics:
                body = {
                    "error": {
                        "code": 501,
                        "message": "This server does not support metrics endpoint. Start it "
                        "with `--metrics`",
                        "type": "not_supported_error",
                    }
                }
                self.send_json(501, body)
                self._log(501)
                return
            self.send_text(200, "llamacpp:prompt_tokens_total 0\n", "text/plain; version=0.0.4")
        else:
            self.send_json(404, {"error": {"code": 404, "message": "File Not Found"}})
            self._log(404)
            return
        self._log(200)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        """POST /v1/chat/completions (and /chat/completions)."""
        path = self.path.split("?", 1)[0]
        if not self._gate(path):
            return
        if path not in ("/v1/chat/completions", "/chat/completions"):
            self.send_json(404, {"error": {"code": 404, "message": "File Not Found"}})
            self._log(404)
            return
        try:
            body = self.read_json()
            answer = answer_chat(body)
        except ApiError as exc:
            message = exc.body.get("error", {}).get("message", "bad request")
            self.send_json(
                400, {"error": {"code": 400, "message": message, "type": "invalid_request_error"}}
            )
            self._log(400)
            return
        model = str(body.get("model") or self._engine().cfg.model_name)
        completion_id = new_id("chatcmpl-")
        created = int(time.time())
        extra: dict[str, Any] = {"system_fingerprint": f"b{BUILD}-{COMMIT}"}
        if body.get("stream"):
            self.send_sse(stream_chunks(answer, model, completion_id, created, False))
        else:
            self.send_json(200, completion_body(answer, model, completion_id, created, extra))
        self._log(200)


# --------------------------------------------------------------------------- main


def serve(cfg: LlamaConfig, inventory: GpuInventory, scenario: Scenario, life: Lifecycle) -> int:
    """Run llama-server to the end; returns its exit status."""
    fail = scenario.fail
    threads = os.cpu_count() or 1
    emit(
        [
            f"build: {BUILD} ({COMMIT}) with cc (Debian 12.2.0-14) 12.2.0 for x86_64-linux-gnu",
            *gpu_lines(inventory),
            f"system info: n_threads = {threads}, n_threads_batch = {threads}, "
            f"total_threads = {threads}",
            "",
            "main: binding port with default address family",
        ]
    )
    engine = LlamaEngine(cfg)
    try:
        if fail == "port-in-use":
            raise OSError("scenario: port in use")
        server = make_server(cfg.host, cfg.port, LlamaHandler, engine)
    except OSError:
        emit(
            [
                f"main: couldn't bind HTTP server socket, hostname: {cfg.host}, port: {cfg.port}",
                "srv    operator(): operator(): cleaning up before exit...",
            ]
        )
        return 1
    server.server_activate()
    serve_in_thread(server)
    try:
        emit(
            [
                f"main: HTTP server is listening, hostname: {cfg.host}, port: {cfg.port}, "
                f"http threads: {max(threads - 1, 1)}",
                "main: loading model",
            ]
        )
        if life.sleep(scenario.startup_seconds):
            return 0
        failure = load_error(cfg)
        if failure is None and fail == "oom":
            failure = oom_lines(inventory)
        if failure is not None:
            emit(failure)
            return 1
        emit(load_lines(cfg, inventory))
        engine.ready = True
        emit(
            [
                "main: model loaded",
                f"main: server is listening on http://{cfg.host}:{cfg.port} - starting the main "
                "loop",
                "srv  update_slots: all slots are idle",
            ]
        )
        if fail == "crash-after-ready":
            if life.sleep(scenario.crash_after_seconds):
                return 0
            emit(CRASH_LINES)
            return 134  # abort()
        life.stop.wait()
        emit(["srv    operator(): operator(): cleaning up before exit...", "main: exiting"])
        return 0
    finally:
        server.shutdown()
        server.server_close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``llama-server``."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_args(args)
    except LlamaArgError as exc:
        emit(arg_error_text(str(exc), args).rstrip("\n"), sys.stderr)
        return 1
    if cfg.version:
        emit(version_text().rstrip("\n"), sys.stderr)
        return 0
    if not cfg.model:
        emit("error: --model is required (or use -hf to download one)", sys.stderr)
        return 1
    life = Lifecycle()
    life.install()
    state = state_dir()
    return serve(cfg, load_inventory(state), load_scenario(state, "llamacpp"), life)


if __name__ == "__main__":
    sys.exit(main())
