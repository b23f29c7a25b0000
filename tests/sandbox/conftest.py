"""One sandbox host per test module, over the real OpenSSH sshd.

Without an sshd binary these tests skip, unless ``MLCTL_REQUIRE_SSHD=1`` (set in
CI), in which case they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlctl.sandbox import host
from mlctl.sandbox.sshd import find_sshd


def require_sshd() -> None:
    """Skip without sshd, or fail when CI says sshd must be there."""
    if find_sshd() is not None:
        return
    message = "no OpenSSH sshd binary (apt-get install openssh-server)"
    if os.environ.get("MLCTL_REQUIRE_SSHD") == "1":
        pytest.fail(f"{message}, and MLCTL_REQUIRE_SSHD=1", pytrace=False)
    pytest.skip(message)


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
def sandbox(sandbox_home: Path) -> Iterator[host.SandboxInfo]:
    """A running sandbox named ``sandbox`` with 8x A100 80GB."""
    require_sshd()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLCTL_HOME", str(sandbox_home))
        info = host.up("sandbox", "8xA100-80GB")
        try:
            yield info
        finally:
            host.down("sandbox", purge=True)


@pytest.fixture(scope="module")
def sshd_required() -> None:
    """Skip (or, in CI, fail) without an sshd binary."""
    require_sshd()
