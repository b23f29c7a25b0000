"""llama.cpp ``llama-server``: built from a pinned tag, launched on the first GGUF shard.

MoE experts go to system RAM with ``--n-cpu-moe N`` (the expert tensors of the
first N layers; public Mistral Large 3 scripts use 58, i.e. all); the fit decides N
so that the spare VRAM holds as many layers' experts as it can.
The API key is read from a 0600 file (``--api-key-file``), never argv.
``/health`` answers 503 "Loading model" until the weights are in, then 200.
"""

from __future__ import annotations

from mlctl import shell
from mlctl.backends.base import DownloadSpec, InstallSpec, LaunchSpec, RemoteLayout
from mlctl.facts import HostFacts
from mlctl.fit import GB, FitReport
from mlctl.profiles import Profile

REPO_URL = "https://github.com/ggml-org/llama.cpp"
KV_TYPES = {"q8_0": "q8_0", "q4_0": "q4_0", "fp16": "f16", "bf16": "bf16"}


def engine_name(profile: Profile) -> str:
    """Directory name of the pinned build."""
    return f"llama.cpp-{profile.engine.version}"


def server_binary(profile: Profile, layout: RemoteLayout) -> str:
    """Path of the built ``llama-server``."""
    return f"{layout.engine_dir(engine_name(profile))}/build/bin/llama-server"


def install(profile: Profile, layout: RemoteLayout) -> InstallSpec:
    """Return how to build ``llama-server`` with CUDA from the pinned tag."""
    src = layout.engine_dir(engine_name(profile))
    binary = server_binary(profile, layout)
    clone = shell.join(
        ["git", "clone", "--depth", "1", "--branch", profile.engine.version, REPO_URL, src]
    )
    configure = shell.join(
        [
            "cmake",
            "-S",
            src,
            "-B",
            f"{src}/build",
            "-DGGML_CUDA=ON",
            "-DLLAMA_CURL=OFF",
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLLAMA_BUILD_TESTS=OFF",
        ]
    )
    build = shell.join(["cmake", "--build", f"{src}/build", "--target", "llama-server", "-j"])
    hub = layout.venv_dir("hub")
    hub_cli = shell.and_then(
        shell.join(["python3", "-m", "venv", hub]),
        shell.join([f"{hub}/bin/pip", "install", "huggingface_hub>=0.34"]),
    )
    return InstallSpec(
        description=f"llama.cpp {profile.engine.version} built with CUDA in {src}",
        check=f"test -x {shell.quote(binary)} && test -x {shell.quote(hub + '/bin/hf')}",
        commands=[
            f"test -d {shell.quote(src + '/.git')} || {clone}",
            shell.and_then(configure, build),
            f"test -x {shell.quote(hub + '/bin/hf')} || {{ {hub_cli}; }}",
        ],
        binary=binary,
    )


def hf_binary(profile: Profile, layout: RemoteLayout) -> str:
    """The ``hf`` CLI in mlctl's small hub venv."""
    return f"{layout.venv_dir('hub')}/bin/hf"


def downloads(profile: Profile, layout: RemoteLayout) -> list[DownloadSpec]:
    """The GGUF files (all shards of the chosen quant)."""
    ck = profile.checkpoint
    return [
        DownloadSpec(
            repo=ck.repo,
            revision=ck.revision,
            include=list(ck.include),
            local_dir=layout.model_dir(ck.repo),
            size_bytes=int(ck.size_gb * GB),
        )
    ]


def launch(
    profile: Profile, facts: HostFacts, report: FitReport, layout: RemoteLayout, name: str
) -> LaunchSpec:
    """Return the ``llama-server`` argv for this profile and fit."""
    serve = profile.serve
    ck = profile.checkpoint
    assert ck.gguf_file is not None
    parallel = serve.num_parallel
    argv = [
        server_binary(profile, layout),
        "-m",
        f"{layout.model_dir(ck.repo)}/{ck.gguf_file}",
        "--alias",
        profile.served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(serve.port),
        "-c",
        str(report.chosen_context * parallel),
        "-np",
        str(parallel),
        "-ngl",
        str(serve.n_gpu_layers),
    ]
    if report.gpu_count > 1:
        argv += ["--tensor-split", ",".join("1" for _ in range(report.gpu_count))]
    if report.offload is not None and report.offload.n_cpu_moe > 0:
        # experts of the first N layers stay in RAM (N = all MoE layers when offloading all)
        argv += ["--n-cpu-moe", str(report.offload.n_cpu_moe)]
    if serve.kv_cache_dtype in KV_TYPES:
        argv += ["--cache-type-k", KV_TYPES[serve.kv_cache_dtype]]
    argv += ["--jinja", "--api-key-file", layout.api_key_file(name)]
    argv += list(serve.extra_args)
    return LaunchSpec(
        argv=argv,
        env=dict(serve.extra_env),
        port=serve.port,
        health_path="/health",
    )


def phases() -> list[tuple[str, str]]:
    """Startup phases as (name, regex on a log line), in the order llama-server logs them."""
    return [
        ("loading weights", r"load_model: loading model|llama_model_loader: loaded meta data"),
        # b11312 (0c1e570) logs "load_model: initializing, n_slots = N" and
        # "llama_server: listening on http://..."; older builds the other alternatives
        (
            "warming up",
            r"initializing slots|warming up the model|load_model: initializing, n_slots",
        ),
        (
            "serving",
            r"server is listening on|HTTP server is listening|llama_server: listening on",
        ),
    ]
