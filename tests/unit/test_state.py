"""mlctl.state: deployment records and API keys under $MLCTL_HOME/state/deployments."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

from mlctl import paths, state
from mlctl.errors import StateError, UsageError
from mlctl.state import DeploymentRecord


def _record(name: str = "large3", **changes: object) -> DeploymentRecord:
    values: dict[str, object] = {
        "name": name,
        "host": "gpu-box",
        "profile": "a100-nvfp4",
        "engine": "vllm",
        "served_model": "mistralai/Mistral-Large-3-675B-Instruct-2512-NVFP4",
        "remote_root": "/home/ubuntu/.mlctl",
        "remote_dir": f"/home/ubuntu/.mlctl/deployments/{name}",
        "remote_port": 8000,
        "local_port": 18000,
        "api_key_file": f"/home/user/.local/state/mlctl/deployments/{name}.key",
        "spec_hash": "0123456789abcdef",
        "created_at": 1_765_000_000.5,
        "updated_at": 1_765_000_100.0,
        "extra": {"tensor_parallel": 8, "notes": ["a", "b"]},
    }
    values.update(changes)
    return DeploymentRecord(**values)  # type: ignore[arg-type]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _leftovers() -> list[str]:
    return sorted(p.name for p in state.deployments_dir().iterdir() if p.name.startswith("."))


def test_deployments_dir_is_under_state_dir(_isolated_home: Path) -> None:
    assert state.deployments_dir() == paths.state_dir() / "deployments"
    assert state.deployments_dir().is_relative_to(_isolated_home)


def test_round_trip_and_modes() -> None:
    record = _record()
    state.save(record)
    assert state.load("large3") == record
    path = state.deployments_dir() / "large3.json"
    assert _mode(path) == 0o600
    assert _mode(state.deployments_dir()) == 0o700
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["remote_port"] == 8000
    assert _leftovers() == []


def test_modes_do_not_depend_on_umask() -> None:
    old = os.umask(0)
    try:
        state.save(_record())
        state.write_api_key("large3", state.new_api_key())
    finally:
        os.umask(old)
    assert _mode(state.deployments_dir()) == 0o700
    assert _mode(state.deployments_dir() / "large3.json") == 0o600
    assert _mode(state.key_path("large3")) == 0o600


def test_an_existing_wide_directory_is_tightened() -> None:
    directory = state.deployments_dir()
    directory.mkdir(parents=True)
    directory.chmod(0o755)
    state.save(_record())
    assert _mode(directory) == 0o700


def test_save_replaces_and_list_is_sorted() -> None:
    state.save(_record("b-two"))
    state.save(_record("a-one"))
    state.save(_record("b-two", local_port=18001))
    assert [r.name for r in state.list_records()] == ["a-one", "b-two"]
    assert state.load("b-two").local_port == 18001
    assert _leftovers() == []


def test_a_crash_between_write_and_replace_keeps_the_old_file() -> None:
    state.save(_record(local_port=18000))
    original = (state.deployments_dir() / "large3.json").read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", crash)
        with pytest.raises(StateError) as info:
            state.save(_record(local_port=19999))
    assert "large3.json" in info.value.message and "No space left" in info.value.message
    assert (state.deployments_dir() / "large3.json").read_bytes() == original
    assert state.load("large3").local_port == 18000
    assert _leftovers() == []


def test_an_interrupt_mid_write_keeps_the_old_file() -> None:
    state.save(_record())
    original = (state.deployments_dir() / "large3.json").read_bytes()

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "fsync", interrupted)
        with pytest.raises(KeyboardInterrupt):
            state.save(_record(local_port=19999))
    assert (state.deployments_dir() / "large3.json").read_bytes() == original
    assert _leftovers() == []


def test_a_process_killed_before_the_rename_keeps_the_old_file() -> None:
    state.save(_record(local_port=18000))
    code = textwrap.dedent(
        """
        import os
        from mlctl import state
        record = state.load("large3")
        record.local_port = 19999
        os.replace = lambda src, dst: os._exit(9)  # dies after write + fsync
        state.save(record)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == 9
    assert state.load("large3").local_port == 18000
    leftovers = _leftovers()
    assert len(leftovers) == 1 and leftovers[0].startswith(".large3.json.")
    assert [r.name for r in state.list_records()] == ["large3"]
    assert _mode(state.deployments_dir() / leftovers[0]) == 0o600


def test_a_leftover_temporary_is_ignored() -> None:
    state.save(_record())
    (state.deployments_dir() / ".large3.json.abc123.tmp").write_text("{half")
    assert [r.name for r in state.list_records()] == ["large3"]


def test_missing_record_names_the_file_and_the_fix() -> None:
    with pytest.raises(StateError) as info:
        state.load("nope")
    assert str(state.deployments_dir() / "nope.json") in info.value.message
    assert info.value.hint and "mlctl status" in info.value.hint


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        ("{not json", "not a valid deployment record"),
        ("[]", "not a JSON object"),
        ('{"version": 99}', "format version 99"),
        ('{"version": 1, "name": "large3"}', "'host' is missing"),
    ],
)
def test_corrupt_record_names_the_path(content: str, detail: str) -> None:
    state.save(_record())
    path = state.deployments_dir() / "large3.json"
    path.write_text(content)
    with pytest.raises(StateError) as info:
        state.load("large3")
    assert str(path) in info.value.message and detail in info.value.message
    assert info.value.hint and "delete it" in info.value.hint


def test_wrong_field_types_are_refused() -> None:
    state.save(_record())
    path = state.deployments_dir() / "large3.json"
    data = json.loads(path.read_text())
    data["remote_port"] = "8000"
    path.write_text(json.dumps(data))
    with pytest.raises(StateError, match="'remote_port' should be int"):
        state.load("large3")
    data["remote_port"] = True
    path.write_text(json.dumps(data))
    with pytest.raises(StateError, match="'remote_port' should be int"):
        state.load("large3")


def test_a_record_under_another_name_is_refused() -> None:
    state.save(_record("one"))
    directory = state.deployments_dir()
    (directory / "one.json").rename(directory / "two.json")
    with pytest.raises(StateError, match="holds deployment 'one', not 'two'"):
        state.load("two")


def test_list_skips_and_reports_unreadable_records(caplog: pytest.LogCaptureFixture) -> None:
    state.save(_record("good"))
    state.save(_record("bad"))
    bad = state.deployments_dir() / "bad.json"
    bad.write_text("{")
    records, problems = state.scan()
    assert [r.name for r in records] == ["good"]
    assert len(problems) == 1 and str(bad) in problems[0].message
    with caplog.at_level(logging.WARNING, logger="mlctl.state"):
        assert [r.name for r in state.list_records()] == ["good"]
    assert str(bad) in caplog.text


def test_list_without_any_state() -> None:
    assert state.list_records() == []
    assert not state.deployments_dir().exists()


def test_remove() -> None:
    state.save(_record())
    state.write_api_key("large3", state.new_api_key())
    assert state.remove("large3") is True
    assert not (state.deployments_dir() / "large3.json").exists()
    assert not state.key_path("large3").exists()
    assert state.remove("large3") is False


# --------------------------------------------------------------------------- API keys


def test_api_key_round_trip_mode_and_shape() -> None:
    key = state.new_api_key()
    assert key.startswith("sk-mlctl-") and len(key) == len("sk-mlctl-") + 43
    assert state.new_api_key() != key
    path = state.write_api_key("large3", key)
    assert path == state.deployments_dir() / "large3.key"
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    assert path.read_text() == key
    assert state.read_api_key("large3") == key
    rotated = state.new_api_key()
    state.write_api_key("large3", rotated)
    assert state.read_api_key("large3") == rotated
    assert _mode(path) == 0o600
    assert _leftovers() == []


def test_api_key_is_never_world_readable_while_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under umask 0, the key file is 0600 from its creation (before any byte) to the end."""
    seen: list[tuple[str, int, int]] = []
    real_mkstemp, real_fsync = tempfile.mkstemp, os.fsync

    def mkstemp_spy(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = real_mkstemp(*args, **kwargs)
        st = os.fstat(fd)
        seen.append(("created", stat.S_IMODE(st.st_mode), st.st_size))
        return fd, name

    def fsync_spy(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            seen.append(("written", stat.S_IMODE(st.st_mode), st.st_size))
        real_fsync(fd)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_spy)
    monkeypatch.setattr(os, "fsync", fsync_spy)
    key = state.new_api_key()
    old = os.umask(0)
    try:
        state.write_api_key("large3", key)
    finally:
        os.umask(old)
    assert seen == [("created", 0o600, 0), ("written", 0o600, len(key))]


def test_api_key_refusals() -> None:
    with pytest.raises(StateError) as info:
        state.read_api_key("large3")
    assert str(state.key_path("large3")) in info.value.message
    with pytest.raises(UsageError):
        state.write_api_key("large3", "")
    with pytest.raises(UsageError):
        state.write_api_key("large3", "sk-mlctl-a b")
    path = state.write_api_key("large3", "sk-mlctl-x")
    path.chmod(0o644)
    with pytest.raises(StateError) as info:
        state.read_api_key("large3")
    assert "0644" in info.value.message and info.value.hint and "chmod 600" in info.value.hint
    assert "sk-mlctl-x" not in str(info.value)
    path.chmod(0o600)
    path.write_text("")
    with pytest.raises(StateError, match="is empty"):
        state.read_api_key("large3")


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["a", "large3", "my-model_v2.1", "0", "a" * 63])
def test_valid_names(name: str) -> None:
    assert state.check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "A", "Large3", "-x", ".x", "_x", "a/b", "../x", "a b", "a" * 64, "é", "x\n"],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(UsageError):
        state.check_name(name)
    with pytest.raises(UsageError):
        state.load(name)
    with pytest.raises(UsageError):
        state.write_api_key(name, "sk-mlctl-x")
    with pytest.raises(UsageError):
        state.save(_record(name, api_key_file="/tmp/x"))
