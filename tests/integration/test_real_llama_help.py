"""Golden test: every flag the llamacpp backend can emit is in the real ``llama-server --help``.

An engine upgrade that renames or drops a flag fails here. The flags are read from the
backend's ``launch`` source (every string literal that looks like a flag, so a branch no
profile takes today is still checked).
Skips without a built engine unless ``MLCTL_REQUIRE_REAL_ENGINES=1``.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from mlctl.backends import llamacpp
from mlctl.sandbox import engines

_FLAG = re.compile(r"^--?[A-Za-z][\w-]*$")
_HELP_FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


@pytest.fixture(scope="module")
def llama_server() -> Path:
    binary = engines.find_llama_server()
    if binary is None:
        reason = "no real llama-server built (python -m mlctl.sandbox.engines build)"
        if os.environ.get("MLCTL_REQUIRE_REAL_ENGINES") == "1":
            pytest.fail(f"{reason}, and MLCTL_REQUIRE_REAL_ENGINES=1", pytrace=False)
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="module")
def help_text(llama_server: Path) -> str:
    done = subprocess.run(
        [str(llama_server), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def backend_flags() -> set[str]:
    """Every flag-like string literal in ``llamacpp.launch``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(llamacpp.launch)))
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and _FLAG.match(node.value)
    }


def test_backend_flags_are_found() -> None:
    flags = backend_flags()
    assert {"-m", "--alias", "--port", "--n-cpu-moe", "--api-key-file", "--jinja"} <= flags


def test_every_emitted_flag_is_in_the_real_help(help_text: str) -> None:
    listed = set(_HELP_FLAG.findall(help_text))
    assert len(listed) > 100, help_text[:500]
    missing = sorted(flag for flag in backend_flags() if flag not in listed)
    assert not missing, f"llama-server --help does not list: {missing}"


def test_help_is_from_the_pinned_build(llama_server: Path) -> None:
    done = subprocess.run(
        [str(llama_server), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    out = done.stdout + done.stderr
    want = f"build {engines.LLAMA_CPP_BUILD}, commit {engines.LLAMA_CPP_COMMIT}"
    assert want in out, out


def test_kv_cache_types_are_allowed_values(help_text: str) -> None:
    """The ``--cache-type-k`` values the backend maps kv_cache_dtype to are accepted."""
    block = help_text.split("--cache-type-k TYPE", 1)[1]
    allowed_line = next(line for line in block.splitlines() if "allowed values:" in line)
    allowed = {v.strip() for v in allowed_line.split("allowed values:", 1)[1].split(",")}
    assert set(llamacpp.KV_TYPES.values()) <= allowed, allowed
