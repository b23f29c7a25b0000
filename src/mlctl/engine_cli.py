"""The real engines' command-line surface, for the versions the profiles pin.

``mlctl/data/vllm-<version>-serve-flags.txt`` lists every option string ``vllm serve``
registers (extracted from the vLLM wheel by ``scripts/extract_vllm_flags.py``);
``mlctl/data/ollama-<version>-env.txt`` lists the environment variables Ollama's
``envconfig`` reads. Tests check mlctl's backends against them and the sandbox's
stand-in ``vllm`` refuses any option outside the list.

The vLLM list holds the dashed spellings only: vLLM's ``FlexibleArgumentParser``
rewrites ``_`` to ``-`` in the name of every ``--option`` (up to the first ``.``)
before argparse sees it, and turns ``-O3`` / ``-O 3`` into ``--optimization-level``.
:func:`vllm_option_name` applies that rule.
"""

from __future__ import annotations

from importlib import resources

from mlctl.errors import MlctlError

_PACKAGE = "mlctl.data"
_VLLM_FILE = "vllm-{version}-serve-flags.txt"
_OLLAMA_FILE = "ollama-{version}-env.txt"


def _available(pattern: str) -> list[str]:
    prefix, suffix = pattern.split("{version}")
    names = (p.name for p in resources.files(_PACKAGE).iterdir())
    return sorted(
        n[len(prefix) : -len(suffix)] for n in names if n.startswith(prefix) and n.endswith(suffix)
    )


def _load(pattern: str, version: str, engine: str, how: str) -> frozenset[str]:
    resource = resources.files(_PACKAGE).joinpath(pattern.format(version=version))
    if not resource.is_file():
        known = ", ".join(_available(pattern)) or "none"
        raise MlctlError(
            f"no {engine} list for version {version!r} (mlctl has: {known})",
            hint=how.format(version=version),
        )
    lines = resource.read_text(encoding="utf-8").splitlines()
    return frozenset(s for line in lines if (s := line.strip()) and not s.startswith("#"))


def vllm_serve_flags(version: str) -> frozenset[str]:
    """Every option string ``vllm serve`` of this vLLM version accepts (dashed spellings)."""
    return _load(
        _VLLM_FILE,
        version,
        "`vllm serve` option",
        "download the wheel (pip download --no-deps -d /tmp/vllm-wheel vllm=={version}) and run "
        "scripts/extract_vllm_flags.py on it into src/mlctl/data/vllm-{version}-serve-flags.txt",
    )


def ollama_env_vars(version: str) -> frozenset[str]:
    """Every environment variable Ollama's server of this version reads (``envconfig``)."""
    return _load(
        _OLLAMA_FILE,
        version,
        "Ollama environment variable",
        "extract them from envconfig/config.go at tag v{version} with "
        "scripts/extract_ollama_env.py into src/mlctl/data/ollama-{version}-env.txt",
    )


def vllm_option_name(arg: str) -> str:
    """The option argparse sees for a ``vllm serve`` argument, after FlexibleArgumentParser.

    ``--max_model_len=4k`` -> ``--max-model-len``; ``--speculative_config.method`` ->
    ``--speculative-config`` (dotted JSON keys); ``-O3`` -> ``--optimization-level``;
    ``-O.x`` -> ``-cc``; anything else (a bare ``-O`` depends on the next argument) is
    returned unchanged.
    """
    if arg.startswith("--"):
        key = arg.split("=", 1)[0]
        return key.split(".", 1)[0].replace("_", "-")
    if arg.startswith("-O."):
        return "-cc"
    if arg.startswith("-O") and arg != "-O":
        return "--optimization-level"
    return arg


def vllm_accepts(arg: str, version: str) -> bool:
    """Whether ``vllm serve`` knows this option (exact name after the underscore rule)."""
    return vllm_option_name(arg) in vllm_serve_flags(version)
