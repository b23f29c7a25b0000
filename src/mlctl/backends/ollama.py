"""Ollama: the official install script at a pinned version, ``ollama serve``, pull by tag.

Ollama reads its settings from the environment (``envconfig/config.go``):
``OLLAMA_HOST`` (bound to 127.0.0.1 here), ``OLLAMA_NUM_PARALLEL``,
``OLLAMA_CONTEXT_LENGTH``, ``OLLAMA_MODELS``. It has no API key of its own: the
endpoint is private because it listens on loopback and is reached through the
SSH tunnel only.
"""

from __future__ import annotations

from mlctl import shell
from mlctl.backends.base import DownloadSpec, InstallSpec, LaunchSpec, RemoteLayout
from mlctl.facts import HostFacts
from mlctl.fit import FitReport
from mlctl.profiles import Profile

INSTALL_URL = "https://ollama.com/install.sh"
KV_TYPES = {"q8_0": "q8_0", "q4_0": "q4_0", "fp16": "f16"}


def install(profile: Profile, layout: RemoteLayout) -> InstallSpec:
    """Return how to install the pinned Ollama with its official script."""
    version = profile.engine.version
    check = f"ollama --version 2>/dev/null | grep -q {shell.quote(version)}"
    command = f"curl -fsSL {shell.quote(INSTALL_URL)} | OLLAMA_VERSION={shell.quote(version)} sh"
    return InstallSpec(
        description=f"Ollama {version} with the official install script",
        check=check,
        commands=[command],
        binary="ollama",
    )


def downloads(profile: Profile, layout: RemoteLayout) -> list[DownloadSpec]:
    """Ollama pulls by tag after it starts (see LaunchSpec.after_start), not from the Hub."""
    return []


def environment(profile: Profile, report: FitReport, layout: RemoteLayout) -> dict[str, str]:
    """The OLLAMA_* settings for ``ollama serve`` and ``ollama pull``."""
    serve = profile.serve
    env = {
        "OLLAMA_HOST": f"127.0.0.1:{serve.port}",
        "OLLAMA_NUM_PARALLEL": str(serve.num_parallel),
        "OLLAMA_CONTEXT_LENGTH": str(report.chosen_context),
        "OLLAMA_MODELS": f"{layout.models_dir}/ollama",
        "OLLAMA_KEEP_ALIVE": "-1",
        "OLLAMA_MAX_LOADED_MODELS": "1",
    }
    if serve.kv_cache_dtype in KV_TYPES:
        env["OLLAMA_FLASH_ATTENTION"] = "1"  # a quantised KV cache needs flash attention
        env["OLLAMA_KV_CACHE_TYPE"] = KV_TYPES[serve.kv_cache_dtype]
    env.update(serve.extra_env)
    return env


def launch(
    profile: Profile, facts: HostFacts, report: FitReport, layout: RemoteLayout, name: str
) -> LaunchSpec:
    """Return ``ollama serve`` with its environment and the pull that follows it."""
    env = environment(profile, report, layout)
    tag = profile.checkpoint.ollama_tag
    assert tag is not None
    pull = f"env {shell.env_assignments(env)} {shell.join(['ollama', 'pull', tag])}"
    return LaunchSpec(
        argv=["ollama", "serve", *profile.serve.extra_args],
        env=env,
        port=profile.serve.port,
        health_path="/api/version",
        api_key_enforced=False,
        after_start=[pull],
    )


def hf_binary(profile: Profile, layout: RemoteLayout) -> str:
    """Ollama fetches from its own registry; no ``hf`` CLI is used."""
    return ""


def phases() -> list[tuple[str, str]]:
    """Startup phases as (name, regex on a log line) of ``ollama serve``."""
    return [("serving", r"Listening on")]
