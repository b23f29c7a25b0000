"""Fixtures for tests against a real OpenSSH sshd on 127.0.0.1.

Without an sshd binary these tests skip, unless ``MLCTL_REQUIRE_SSHD=1`` (set in
CI), in which case they fail.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mlctl.sandbox.sshd import SandboxSshd, find_sshd, start_sshd


def _require_sshd() -> None:
    if find_sshd() is not None:
        return
    message = "no OpenSSH sshd binary (apt-get install openssh-server)"
    if os.environ.get("MLCTL_REQUIRE_SSHD") == "1":
        pytest.fail(f"{message}, and MLCTL_REQUIRE_SSHD=1", pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point mlctl's dirs and $HOME at tmp, and hide any ssh-agent."""
    monkeypatch.setenv("MLCTL_HOME", str(tmp_path / "mlctl"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxSshd]:
    """A loopback sshd shared by the session (don't change its host key; use make_sshd)."""
    _require_sshd()
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def make_sshd(tmp_path: Path) -> Iterator[Callable[[], SandboxSshd]]:
    """Start private sshd instances for one test; all are stopped afterwards."""
    _require_sshd()
    started: list[SandboxSshd] = []

    def make() -> SandboxSshd:
        server = start_sshd(tmp_path / f"sshd{len(started)}")
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
