"""Stand-in installers for a sandbox started with ``--no-engines``: ``uv``, ``pip``, ``curl``.

They accept the install commands mlctl's backends emit (``uv venv``, ``uv pip
install``, ``VENV/bin/pip install``, ``curl -fsSL https://ollama.com/install.sh |
OLLAMA_VERSION=V sh``), put the stand-in engine where the real installer would,
and record every call in ``$MLCTL_SANDBOX_STATE/installs.jsonl`` so tests can
check how mlctl installed the engine. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

from mlctl.sandbox.standins.install import wrapper_script

OLLAMA_SCRIPT_URL = "https://ollama.com/install.sh"
ENGINE_MODULES = {
    "vllm": "mlctl.sandbox.standins.vllm",
    "huggingface_hub": "huggingface_hub.cli.hf",
}


def _state() -> Path:
    return Path(os.environ.get("MLCTL_SANDBOX_STATE", "."))


def record(tool: str, argv: list[str], **extra: object) -> None:
    """Append one call to installs.jsonl."""
    entry = {"tool": tool, "argv": argv, "time": time.time(), **extra}
    with (_state() / "installs.jsonl").open("a", encoding="utf-8") as log:
        log.write(json.dumps(entry) + "\n")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def _package_name(spec: str) -> str:
    for sep in ("==", ">=", "<=", "~=", ">", "<", "["):
        spec = spec.split(sep, 1)[0]
    return spec.strip().lower().replace("-", "_")


def make_venv(venv: Path) -> None:
    """A venv-shaped directory whose python is this interpreter and whose pip is a stand-in."""
    python = shlex.quote(sys.executable)
    _write(venv / "bin" / "python", f'#!/bin/sh\nexec {python} "$@"\n')
    _write(
        venv / "bin" / "pip",
        f"#!/bin/sh\nMLCTL_STANDIN_VENV={shlex.quote(str(venv))} exec {python} "
        f'-m mlctl.sandbox.standins.installers pip "$@"\n',
    )


def install_packages(venv: Path, packages: list[str]) -> list[str]:
    """Put the stand-in commands of ``packages`` into ``venv/bin``; return what was placed."""
    placed = []
    for spec in packages:
        name = _package_name(spec)
        if name == "vllm":
            _write(venv / "bin" / "vllm", wrapper_script(ENGINE_MODULES["vllm"], sys.executable))
            placed.append("vllm")
        elif name == "huggingface_hub":
            _write(venv / "bin" / "hf", wrapper_script(ENGINE_MODULES[name], sys.executable))
            placed.append("hf")
    return placed


def _positional(args: list[str]) -> list[str]:
    """Arguments that are neither options nor the value of ``--python``."""
    return [
        a
        for i, a in enumerate(args)
        if not a.startswith("-") and (i == 0 or args[i - 1] != "--python")
    ]


def _uv(argv: list[str]) -> int:
    if argv[:1] == ["venv"]:
        positional = _positional(argv[1:])
        if not positional:
            print("error: uv venv needs a directory", file=sys.stderr)
            return 2
        venv = Path(positional[-1])
        make_venv(venv)
        record("uv", ["uv", *argv])
        print(f"Creating virtual environment at: {venv}")
        return 0
    if argv[:2] == ["pip", "install"]:
        args = argv[2:]
        python = args[args.index("--python") + 1] if "--python" in args else sys.executable
        packages = _positional(args)
        venv = Path(python).parent.parent
        placed = install_packages(venv, packages)
        record("uv", ["uv", *argv], placed=placed)
        print(f"Installed {len(packages)} packages (mlctl sandbox stand-in: {', '.join(placed)})")
        return 0
    if argv[:1] == ["--version"]:
        print("uv 0.9.0 (mlctl sandbox stand-in)")
        return 0
    print(
        f"error: the sandbox's uv stand-in does not support: uv {' '.join(argv)}", file=sys.stderr
    )
    return 2


def _pip(argv: list[str]) -> int:
    if argv[:1] != ["install"]:
        print("ERROR: the sandbox's pip stand-in only installs", file=sys.stderr)
        return 2
    packages = _positional(argv[1:])
    venv = Path(os.environ.get("MLCTL_STANDIN_VENV", "."))
    placed = install_packages(venv, packages)
    record("pip", ["pip", *argv], placed=placed)
    return 0


def _curl(argv: list[str]) -> int:
    urls = [a for a in argv if a.startswith(("http://", "https://"))]
    record("curl", ["curl", *argv])
    if urls == [OLLAMA_SCRIPT_URL]:
        python = sys.executable
        sys.stdout.write(
            "#!/bin/sh\n"
            "# mlctl sandbox stand-in for Ollama's install script\n"
            'echo ">>> Installing ollama ${OLLAMA_VERSION:-latest} (mlctl sandbox stand-in)"\n'
            f'exec "{python}" -m mlctl.sandbox.standins.installers ollama-install\n'
        )
        return 0
    print("curl: (6) Could not resolve host: the sandbox has no network", file=sys.stderr)
    return 6


def _ollama_install() -> int:
    target = _state() / "bin" / "ollama"
    _write(target, wrapper_script("mlctl.sandbox.standins.ollama", sys.executable))
    record("ollama-install.sh", ["sh"], version=os.environ.get("OLLAMA_VERSION"))
    print(">>> The Ollama API is now available at 127.0.0.1:11434.")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Dispatch on the first argument: uv, pip, curl or ollama-install."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        return 2
    tool, rest = args[0], args[1:]
    if tool == "uv":
        return _uv(rest)
    if tool == "pip":
        return _pip(rest)
    if tool == "curl":
        return _curl(rest)
    if tool == "ollama-install":
        return _ollama_install()
    return 2


if __name__ == "__main__":
    sys.exit(main())
