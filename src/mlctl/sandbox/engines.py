"""Build and locate real inference engines for the sandbox.

Only llama.cpp builds here: its ``llama-server`` runs on a CPU. The source comes from
the package registry (the llama-cpp-python source package vendors a pinned llama.cpp),
CMake and Ninja come from PyPI, so nothing but a C/C++ compiler is needed from the
system. The result is cached under ``cache_dir()/engines/llama.cpp-<version>/`` and a
second ``build`` is instant.

    python -m mlctl.sandbox.engines build      # build (or reuse) llama-server
    python -m mlctl.sandbox.engines where      # print the binary's path, exit 1 if none

Tests find the binary with :func:`find_llama_server`; they never build it. Because
tests set ``MLCTL_HOME`` to a temporary directory, the lookup also tries the cache
that applies without ``MLCTL_HOME`` and ``MLCTL_ENGINES_DIR`` when set.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

from mlctl import paths

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
"""The llama-cpp-python source package whose vendored llama.cpp is built (commit 0c1e570)."""
LLAMA_CPP_COMMIT = "0c1e570"
LLAMA_CPP_BUILD = 11312
"""llama.cpp's build number of that commit (its ``b11312`` release tag)."""
LLAMA_TARGETS = ("llama-server", "llama-gguf-split")
_STAMP = "BUILD-INFO"


class EngineBuildError(RuntimeError):
    """The engine could not be built; the message says why and what to install."""


def engines_dirs() -> list[Path]:
    """Return the directories searched for built engines, most specific first."""
    found: list[Path] = []
    env = os.environ.get("MLCTL_ENGINES_DIR")
    if env:
        found.append(Path(env).expanduser())
    found.append(paths.cache_dir() / "engines")
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    found.append(base / "mlctl" / "engines")
    unique: list[Path] = []
    for item in found:
        if item not in unique:
            unique.append(item)
    return unique


def build_dir(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """Return where ``build`` puts llama.cpp (``MLCTL_ENGINES_DIR`` or the cache)."""
    return engines_dirs()[0] / f"llama.cpp-{version}"


def _binary_in(root: Path, name: str) -> Path | None:
    candidate = root / "bin" / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    return None


def find_engine(name: str, version: str = LLAMA_CPP_PYTHON_VERSION) -> Path | None:
    """Return a built llama.cpp binary (``llama-server``, ``llama-gguf-split``), or None."""
    override = os.environ.get("MLCTL_LLAMA_SERVER") if name == "llama-server" else None
    if override:
        path = Path(override).expanduser()
        return path if path.is_file() else None
    for root in engines_dirs():
        found = _binary_in(root / f"llama.cpp-{version}", name)
        if found is not None:
            return found
    return None


def find_llama_server() -> Path | None:
    """Return the built ``llama-server``, or None when it has not been built."""
    return find_engine("llama-server")


def _run(cmd: Sequence[str], *, cwd: Path | None = None, log: Path | None = None) -> None:
    shown = " ".join(str(c) for c in cmd)
    print(f"+ {shown}", file=sys.stderr, flush=True)
    if log is None:
        proc = subprocess.run(list(cmd), cwd=cwd, check=False)
    else:
        with log.open("ab") as out:
            proc = subprocess.run(list(cmd), cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = ""
        if log is not None and log.exists():
            tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise EngineBuildError(f"command failed ({proc.returncode}): {shown}{tail}")


def _compiler() -> tuple[str, str]:
    cc = shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")
    cxx = shutil.which(os.environ.get("CXX") or "c++") or shutil.which("g++")
    if not cc or not cxx:
        raise EngineBuildError(
            "no C/C++ compiler found (need cc and c++): install one, e.g. "
            "`apt-get install -y gcc g++` on Debian/Ubuntu, then rerun "
            "`python -m mlctl.sandbox.engines build`"
        )
    return cc, cxx


def _toolchain(tools: Path) -> tuple[Path, Path]:
    """Return (cmake, ninja) from PyPI, installed into a private virtual environment."""
    venv = tools / "venv"
    cmake, ninja = venv / "bin" / "cmake", venv / "bin" / "ninja"
    if cmake.exists() and ninja.exists():
        return cmake, ninja
    _run([sys.executable, "-m", "venv", str(venv)])
    _run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "cmake",
            "ninja",
        ]
    )
    for tool in (cmake, ninja):
        if not tool.exists():
            raise EngineBuildError(f"pip installed no {tool.name} into {venv}")
    return cmake, ninja


def _source(work: Path, version: str) -> Path:
    """Download and unpack the llama-cpp-python sdist; return its vendored llama.cpp."""
    dl = work / "sdist"
    dl.mkdir(parents=True, exist_ok=True)
    archives = sorted(dl.glob("llama_cpp_python-*.tar.gz"))
    if not archives:
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--disable-pip-version-check",
                "--no-binary",
                ":all:",
                "--no-deps",
                "-d",
                str(dl),
                f"llama-cpp-python=={version}",
            ]
        )
        archives = sorted(dl.glob("llama_cpp_python-*.tar.gz"))
    if not archives:
        raise EngineBuildError(f"pip downloaded no llama-cpp-python {version} sdist")
    src = work / "src"
    done = work / "src.unpacked"
    if not done.exists():  # an interrupted build keeps its tree, so ninja resumes
        if src.exists():
            shutil.rmtree(src)
        src.mkdir()
        with tarfile.open(archives[0]) as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
                tar.extractall(src, filter="data")
            else:  # pragma: no cover
                tar.extractall(src)
        done.write_text(archives[0].name + "\n")
    roots = [p for p in src.iterdir() if p.is_dir()]
    vendor = roots[0] / "vendor" / "llama.cpp" if roots else src
    if not (vendor / "CMakeLists.txt").exists():
        raise EngineBuildError(f"no vendored llama.cpp in the sdist (looked in {vendor})")
    return vendor


def build(version: str = LLAMA_CPP_PYTHON_VERSION, *, force: bool = False) -> Path:
    """Build llama-server and llama-gguf-split once; return the install directory."""
    dest = build_dir(version)
    if not force and all(_binary_in(dest, t) for t in LLAMA_TARGETS):
        print(f"llama.cpp {version}: already built in {dest}", file=sys.stderr)
        return dest
    cc, cxx = _compiler()
    started = time.monotonic()
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = dest.parent / f".work-llama.cpp-{version}"
    work.mkdir(parents=True, exist_ok=True)
    cmake, ninja = _toolchain(work / "tools")
    src = _source(work, version)
    out = work / "build"
    log = work / "build.log"
    log.write_text("")
    jobs = str(os.cpu_count() or 2)
    _run(
        [
            str(cmake),
            "-S",
            str(src),
            "-B",
            str(out),
            "-G",
            "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={ninja}",
            f"-DCMAKE_C_COMPILER={cc}",
            f"-DCMAKE_CXX_COMPILER={cxx}",
            "-DCMAKE_BUILD_TYPE=Release",
            "-DBUILD_SHARED_LIBS=OFF",
            "-DGGML_NATIVE=OFF",
            "-DGGML_CUDA=OFF",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_OPENSSL=OFF",  # no HTTPS needed; the build is the same with or without libssl
            "-DLLAMA_BUILD_SERVER=ON",
            "-DLLAMA_BUILD_TOOLS=ON",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_USE_PREBUILT_UI=OFF",
            # the sdist has no .git: stamp what `llama-server --version` reports
            f"-DLLAMA_BUILD_NUMBER={LLAMA_CPP_BUILD}",
            f"-DLLAMA_BUILD_COMMIT={LLAMA_CPP_COMMIT}",
        ],
        log=log,
    )
    _run(
        [str(cmake), "--build", str(out), "--config", "Release", "-j", jobs, "--target"]
        + list(LLAMA_TARGETS),
        log=log,
    )
    staging = dest.parent / f".staging-llama.cpp-{version}"
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "bin").mkdir(parents=True)
    for target in LLAMA_TARGETS:
        built = out / "bin" / target
        if not built.is_file():
            raise EngineBuildError(f"the build made no {built}")
        shutil.copy2(built, staging / "bin" / target)
    seconds = time.monotonic() - started
    (staging / _STAMP).write_text(
        f"llama-cpp-python {version} (llama.cpp commit {LLAMA_CPP_COMMIT})\n"
        f"targets: {' '.join(LLAMA_TARGETS)}\nbuild seconds: {seconds:.0f}\n"
    )
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)
    shutil.rmtree(work, ignore_errors=True)
    print(f"llama.cpp {version}: built in {seconds:.0f} s -> {dest}", file=sys.stderr)
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlctl.sandbox.engines")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build (or reuse) llama-server and llama-gguf-split")
    b.add_argument("--force", action="store_true", help="rebuild even when cached")
    sub.add_parser("where", help="print the built llama-server, exit 1 when there is none")
    args = parser.parse_args(argv)
    if args.command == "where":
        found = find_llama_server()
        if found is None:
            print("llama-server: not built (python -m mlctl.sandbox.engines build)")
            return 1
        print(found)
        return 0
    try:
        dest = build(force=args.force)
    except EngineBuildError as exc:
        print(f"error: building llama.cpp failed: {exc}", file=sys.stderr)
        return 1
    print(dest / "bin" / "llama-server")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
