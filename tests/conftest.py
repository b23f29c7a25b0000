"""Shared test set-up: every test gets its own MLCTL_HOME, never the real ~."""

from __future__ import annotations

from collections.abc import Iterator
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
