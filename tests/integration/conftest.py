"""Fixtures for tests against a real OpenSSH sshd on 127.0.0.1.

Without an sshd binary these tests skip, unless ``MLCTL_REQUIRE_SSHD=1`` (set in
CI), in which case they fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mlctl.sandbox.sshd import SandboxSshd, start_sshd


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point mlctl's dirs and $HOME at tmp, and hide any ssh-agent."""
    monkeypatch.setenv("MLCTL_HOME", str(tmp_path / "mlctl"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory, sshd_required: None) -> Iterator[SandboxSshd]:
    """A loopback sshd shared by the session (don't change its host key; use make_sshd)."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def make_sshd(tmp_path: Path, sshd_required: None) -> Iterator[Callable[[], SandboxSshd]]:
    """Start private sshd instances for one test; all are stopped afterwards."""
    started: list[SandboxSshd] = []

    def make() -> SandboxSshd:
        server = start_sshd(tmp_path / f"sshd{len(started)}")
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
