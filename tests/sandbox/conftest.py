"""One sandbox host per test module, over the real OpenSSH sshd.

Without an sshd binary these tests skip, unless ``MLCTL_REQUIRE_SSHD=1`` (set in
CI), in which case they fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mlctl.sandbox import host


@pytest.fixture(scope="module")
def sandbox_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlctl-sandbox-home")


@pytest.fixture(autouse=True)
def _isolated_home(sandbox_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test of a module shares the module's MLCTL_HOME (where the sandbox is saved)."""
    monkeypatch.setenv("MLCTL_HOME", str(sandbox_home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return sandbox_home


@pytest.fixture(scope="module")
def sandbox(sandbox_home: Path, sshd_required: None) -> Iterator[host.SandboxInfo]:
    """A running sandbox named ``sandbox`` with 8x A100 80GB."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLCTL_HOME", str(sandbox_home))
        info = host.up("sandbox", "8xA100-80GB", real_engines=False)
        try:
            yield info
        finally:
            host.down("sandbox", purge=True)
