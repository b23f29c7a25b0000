"""Shared test set-up: every test gets its own MLCTL_HOME, never the real ~."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "mlctl-home"
    monkeypatch.setenv("MLCTL_HOME", str(home))
    yield home


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def sshd_required() -> None:
    """Skip without an OpenSSH sshd binary, or fail when CI sets MLCTL_REQUIRE_SSHD=1."""
    from mlctl.sandbox.sshd import find_sshd

    if find_sshd() is not None:
        return
    message = "no OpenSSH sshd binary (apt-get install openssh-server)"
    if os.environ.get("MLCTL_REQUIRE_SSHD") == "1":
        pytest.fail(f"{message}, and MLCTL_REQUIRE_SSHD=1", pytrace=False)
    pytest.skip(message)


CliRun = Callable[[list[str]], tuple[int, str, str]]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> CliRun:
    """Run the CLI in-process through ``main``; return (exit code, stdout, stderr)."""
    from mlctl.cli import main

    def run(args: list[str]) -> tuple[int, str, str]:
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run
