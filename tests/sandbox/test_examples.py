"""The examples in examples/ run against a real mlctl endpoint on the sandbox host."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlctl import daytwo, profiles, state
from mlctl.deploy import DeployOptions, DeployResult, run_deploy
from mlctl.hosts.open import open_connector
from mlctl.sandbox import host

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture(scope="module")
def endpoint(sandbox: host.SandboxInfo, sandbox_home: Path) -> Iterator[DeployResult]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLCTL_HOME", str(sandbox_home))
        session = run_deploy(
            "sandbox", profiles.load("a100-nvfp4"), DeployOptions(name="examples", ready_timeout=30)
        )
        try:
            yield session.result
        finally:
            session.close()
            conn = open_connector("sandbox")
            try:
                daytwo.stop(conn, state.load("examples"), purge=True)
            finally:
                conn.close()
            state.remove("examples")


def _run(argv: list[str], result: DeployResult) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MLCTL_ENDPOINT": result.endpoint or "",
        "MLCTL_MODEL": result.served_model,
        "MLCTL_API_KEY_FILE": result.api_key_file or "",
    }
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=60, cwd=EXAMPLES, check=False
    )


@pytest.mark.parametrize(
    ("script", "expect"),
    [
        ("openai_chat.py", "sandbox"),
        ("function_calling.py", "tool call: get_weather("),
        ("image_input.py", ""),
    ],
)
def test_python_examples(endpoint: DeployResult, script: str, expect: str) -> None:
    done = _run([sys.executable, str(EXAMPLES / script)], endpoint)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and expect in done.stdout


def test_curl_example(endpoint: DeployResult) -> None:
    done = _run(["sh", str(EXAMPLES / "curl.sh")], endpoint)
    assert done.returncode == 0, done.stderr
    assert '"choices"' in done.stdout
