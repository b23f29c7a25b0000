"""The background download wrapper, run for real through the local connector (no sshd).

The deploy starts the download detached on the host (setsid nohup), then polls: alive,
finished with an exit code, or dead without one. A download that finishes between two
polls must read as finished, never as dead (CI once saw the poll check ``rc`` before
the process and find neither).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mlctl import deploy, profiles
from mlctl.backends.base import DownloadSpec
from mlctl.deploy import Deployer, DeployOptions, NullReporter
from mlctl.errors import HubError
from mlctl.hosts.local import LocalConnector


def _deployer() -> Deployer:
    profile = profiles.load("a100-nvfp4")
    return Deployer(LocalConnector(), "local", profile, DeployOptions(), NullReporter())


def _spec(tmp_path: Path) -> DownloadSpec:
    return DownloadSpec("org/repo", "main", [], str(tmp_path / "model"), 4)


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy, "DOWNLOAD_POLL", 0.0)


def test_quick_downloads_always_read_as_finished(tmp_path: Path) -> None:
    d = _deployer()
    for k in range(25):
        state = tmp_path / f"state{k}"
        # a download that ends while the poll loop is running flat out
        d._run_download(_spec(tmp_path), "sleep 0.0$((RANDOM % 5)) 2>/dev/null; :", str(state))
        assert (state / "rc").read_text().strip() == "0"


def test_a_download_that_ends_between_the_two_checks_reads_as_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Force the race: the process goes away (rc written) just as the poll looks at it.

    ``ours`` reads /proc/PID/cwd with readlink; a readlink earlier on PATH makes the
    download finish at exactly that moment and reports the process gone.
    """
    state = tmp_path / "state"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real = shutil.which("readlink")
    assert real
    fake = bin_dir / "readlink"
    fake.write_text(
        "#!/bin/sh\n"
        f"cd {state} || exit 1\n"
        'pid=$(cat pid); echo 0 > rc; kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid"\n'
        "exit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    _deployer()._run_download(_spec(tmp_path), "sleep 30", str(state))
    assert (state / "rc").read_text().strip() == "0"


def test_a_killed_download_reads_as_dead(tmp_path: Path) -> None:
    d = _deployer()
    # the wrapper itself is killed: no exit code is ever written
    with pytest.raises(HubError, match="stopped before it finished"):
        d._run_download(_spec(tmp_path), "kill -9 $$", str(tmp_path / "state"))
    assert not (tmp_path / "state" / "rc").exists()


def test_a_failed_download_reports_its_exit_code_and_log(tmp_path: Path) -> None:
    d = _deployer()
    with pytest.raises(HubError, match=r"failed \(exit 3\): disk said no"):
        d._run_download(_spec(tmp_path), "echo disk said no; exit 3", str(tmp_path / "state"))


def test_a_running_download_is_joined_not_started_twice(tmp_path: Path) -> None:
    d = _deployer()
    state = tmp_path / "state"
    marker = tmp_path / "starts"
    command = f"echo x >> {marker}; sleep 0.5"
    first = LocalConnector()
    # start one in the background exactly as a deploy would, then cut away (no polling)
    first.run(
        f"cd {tmp_path} && mkdir -p {state} && cd {state} && "
        f"{{ setsid nohup sh -c 'echo $$ > pid; {command}; echo $? > rc' >log 2>&1 </dev/null & }};"
        " "
        "while [ ! -s pid ]; do sleep 0.01; done",
        check=True,
    )
    d._run_download(_spec(tmp_path), command, str(state))
    assert marker.read_text() == "x\n"
