"""The real llama.cpp ``llama-server`` (built by ``python -m mlctl.sandbox.engines build``).

``mlctl deploy`` of ``4090-gguf`` to a sandbox whose ``llama-server`` is the real engine,
serving a tiny real GGUF split (:mod:`mlctl.sandbox.tinygguf`) from the sandbox Hub; and
the real engine's own failure output, diagnosed by :func:`mlctl.diagnose.diagnose`.

The tests never build the engine: without a built one (or without the ``gguf`` package)
they skip, unless ``MLCTL_REQUIRE_REAL_ENGINES=1`` (CI, after the build), then they fail.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlctl import daytwo, health, profiles, state
from mlctl.deploy import DeployOptions, run_deploy
from mlctl.diagnose import diagnose
from mlctl.facts import assumed_facts
from mlctl.gpus import parse_gpu_spec
from mlctl.hosts.open import open_connector
from mlctl.plan import build_plan
from mlctl.profiles import Profile
from mlctl.sandbox import engines, host, tinygguf

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "logs" / "real-llamacpp"
SOURCE = (
    f"# source: real llama-server built from llama-cpp-python {engines.LLAMA_CPP_PYTHON_VERSION} "
    f"(llama.cpp commit {engines.LLAMA_CPP_COMMIT}, build {engines.LLAMA_CPP_BUILD})"
)


def _need(reason: str) -> None:
    if os.environ.get("MLCTL_REQUIRE_REAL_ENGINES") == "1":
        pytest.fail(f"{reason}, and MLCTL_REQUIRE_REAL_ENGINES=1", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def llama_server() -> Path:
    found = engines.find_llama_server()
    if found is None:
        _need("no real llama-server built (python -m mlctl.sandbox.engines build)")
    if not tinygguf.available():
        _need("the gguf package is not installed (pip install gguf)")
    assert found is not None
    return found


@pytest.fixture(scope="module")
def sandbox(
    sandbox_home: Path, sshd_required: None, llama_server: Path
) -> Iterator[host.SandboxInfo]:
    """A sandbox with 4x RTX 4090 whose ``llama-server`` is the real one."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLCTL_HOME", str(sandbox_home))
        info = host.up("sandbox", "4xRTX4090-24GB", real_engines=True)
        try:
            yield info
        finally:
            host.down("sandbox", purge=True)


def real_profile() -> Profile:
    """The built-in ``4090-gguf``: it pins the very llama.cpp build the sandbox runs."""
    profile = profiles.load("4090-gguf")
    assert profile.engine.version == f"b{engines.LLAMA_CPP_BUILD}"
    return profile


def _stop_all(info: host.SandboxInfo) -> None:
    conn = open_connector("sandbox")
    try:
        for record in state.list_records():
            daytwo.stop(conn, record, purge=True)
            state.remove(record.name)
    finally:
        conn.close()


def test_sandbox_reports_the_real_engine(sandbox: host.SandboxInfo, llama_server: Path) -> None:
    assert sandbox.engines["llama-server"] == "real"
    assert sandbox.engines["vllm"] == "stand-in"
    wrapper = Path(sandbox.state_dir) / "bin" / "llama-server"
    assert str(llama_server) in wrapper.read_text()
    assert host.status("sandbox")["engines"]["llama-server"] == "real"


def test_deploy_4090_gguf_with_the_real_llama_server(sandbox: host.SandboxInfo) -> None:
    profile = real_profile()
    session = run_deploy("sandbox", profile, DeployOptions(ready_timeout=120))
    try:
        result = session.result
        assert result.plan is not None and result.endpoint and result.api_key_file
        argv = result.plan.launch.argv
        # the engine on the sandbox PATH (the real one) is what was launched
        assert argv[0] == "llama-server"
        model = argv[argv.index("-m") + 1]
        assert model.endswith(
            "UD-IQ1_S/Mistral-Large-3-675B-Instruct-2512-UD-IQ1_S-00001-of-00004.gguf"
        )
        names = [name for name, _ in result.phases]
        for phase in ("loading weights", "warming up", "serving"):
            assert phase in names, names

        key = Path(result.api_key_file).read_text().strip()
        base = result.endpoint.rstrip("/").removesuffix("/v1")
        assert httpx.get(f"{base}/health", timeout=10).status_code == 200
        assert httpx.get(f"{base}/v1/models", timeout=10).status_code == 401
        bad = health.auth_headers("not-the-key")
        assert httpx.get(f"{base}/v1/models", headers=bad, timeout=10).status_code == 401
        ok = httpx.get(f"{base}/v1/models", headers=health.auth_headers(key), timeout=10)
        assert ok.status_code == 200 and "mistral-large-3" in ok.text

        # stream_chat raises HealthError when the stream ends without [DONE]
        deltas = list(
            health.stream_chat(result.endpoint, key, "mistral-large-3", "hi", max_tokens=4)
        )
        assert isinstance(deltas, list)

        log = (Path(result.remote_dir) / "server.log").read_text(errors="replace")
        assert "llama_server: listening on" in log or "server is listening" in log, log
        # The deploy sizes the fit with the Hub's real (tiny) file sizes, so the sandbox's
        # checkpoint fits in VRAM and no experts are offloaded; the planned argv for the
        # real 165 GB checkpoint is run in test_planned_offload_argv_runs_on_the_real_binary.
        if "--n-cpu-moe" in argv:
            assert "tensor overrides to CPU are used" in log, log
    finally:
        session.close()
        _stop_all(sandbox)


# --------------------------------------------------------------------------- the binary itself


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(binary: Path, *args: str, timeout: float = 60) -> str:
    done = subprocess.run(
        [str(binary), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode != 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def _save_fixture(name: str, cause: str, text: str) -> None:
    """Keep the real output as a fixture (refreshed when ``MLCTL_REFRESH_FIXTURES=1``)."""
    path = FIXTURES / f"{name}.log"
    if path.exists() and os.environ.get("MLCTL_REFRESH_FIXTURES") != "1":
        return
    FIXTURES.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{SOURCE}\n# expect: {cause}\n{text.rstrip()}\n")


@pytest.fixture(scope="module")
def moe_split(llama_server: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-gguf")
    files = tinygguf.write_tiny_gguf(folder / "tiny-00001-of-00004.gguf", moe=True)
    assert len(files) == 4
    return files[0]


def test_health_goes_503_then_200(llama_server: Path, moe_split: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [str(llama_server), "-m", str(moe_split), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    seen: list[int] = []
    loading = ""
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", "/health")
                answer = conn.getresponse()
                status = answer.status
                if status == 503:
                    loading = answer.read().decode(errors="replace")
            except OSError:
                status = 0  # not listening yet
            finally:
                conn.close()
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == 200:
                break
        # not listening yet (0), then 503 "Loading model" while it loads, then 200
        assert seen[-1] == 200, seen
        assert 503 in seen and set(seen[:-1]) <= {0, 503}, seen
        assert "Loading model" in loading, loading
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_planned_offload_argv_runs_on_the_real_binary(
    llama_server: Path, moe_split: Path, tmp_path: Path
) -> None:
    """The argv mlctl plans for 4090-gguf on 4x RTX 4090 + 128 GB RAM, on the real binary."""
    count, gpu = parse_gpu_spec("4xRTX4090-24GB")
    facts = assumed_facts(count, gpu, ram_bytes=128 * 10**9, disk_bytes=400 * 10**9)
    plan = build_plan(real_profile(), facts, name="real-4090-gguf")
    argv = list(plan.launch.argv)
    assert "--n-cpu-moe" in argv and "--tensor-split" in argv, argv
    port = _free_port()
    key = tmp_path / "api-key"
    key.write_text("sandbox-key")
    key.chmod(0o600)
    argv[0] = str(llama_server)
    for flag, value in (
        ("-m", str(moe_split)),
        ("--port", str(port)),
        ("--api-key-file", str(key)),
    ):
        argv[argv.index(flag) + 1] = value
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            log = log_path.read_text(errors="replace")
            assert proc.poll() is None, log
            assert httpx.get(f"{base}/v1/models", timeout=5).status_code == 401
            auth = health.auth_headers("sandbox-key")
            assert httpx.get(f"{base}/v1/models", headers=auth, timeout=5).status_code == 200
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    # without -v, llama.cpp logs one line when tensors are overridden to the CPU
    # (test_moe_experts_overridden_to_cpu checks the per-tensor lines of -v)
    assert "tensor overrides to CPU are used" in log, log


def test_moe_experts_overridden_to_cpu(llama_server: Path, moe_split: Path) -> None:
    """With ``-v``, each expert tensor moved by ``--n-cpu-moe`` is logged, from the split."""
    port = _free_port()
    args = ["-m", str(moe_split), "--port", str(port), "-c", "512", "--n-cpu-moe", "1", "-v"]
    proc = subprocess.Popen(
        [str(llama_server), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "listening on" in line or len(lines) > 5000:
                break
    finally:
        proc.terminate()
        if proc.stdout is not None:
            proc.stdout.close()  # a -v server blocked on a full pipe cannot shut down otherwise
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    log = "".join(lines)
    assert "llama_model_loader: additional 3 GGUFs metadata loaded" in log, log[-3000:]
    moved = set(re.findall(r"tensor (blk\.\d+\.ffn_\w+_exps\.weight) .*overridden to CPU", log))
    # --n-cpu-moe 1: the experts of layer 0 only
    assert moved == {f"blk.0.ffn_{kind}_exps.weight" for kind in ("gate", "up", "down")}, moved


def test_missing_shard_is_diagnosed(llama_server: Path, moe_split: Path, tmp_path: Path) -> None:
    for shard in moe_split.parent.glob("tiny-0000*-of-00004.gguf"):
        if not shard.name.startswith("tiny-00003"):
            (tmp_path / shard.name).symlink_to(shard)
    first = tmp_path / moe_split.name
    out = _run(llama_server, "-m", str(first), "--port", str(_free_port()))
    assert f"failed to load GGUF split from {tmp_path}/tiny-00003-of-00004.gguf" in out, out
    _save_fixture("model-file-missing-llamacpp-1", "model-file-missing", out)
    findings = diagnose(out)
    assert findings and findings[0].cause == "model-file-missing", findings
    assert "tiny-00003-of-00004.gguf" in findings[0].evidence


def test_missing_model_file_is_diagnosed(llama_server: Path, tmp_path: Path) -> None:
    out = _run(llama_server, "-m", str(tmp_path / "nope.gguf"), "--port", str(_free_port()))
    assert "nope.gguf" in out, out
    _save_fixture("model-file-missing-llamacpp-2", "model-file-missing", out)
    findings = diagnose(out)
    assert findings and findings[0].cause == "model-file-missing", findings


def test_port_in_use_is_diagnosed(llama_server: Path, moe_split: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = _run(llama_server, "-m", str(moe_split), "--host", "127.0.0.1", "--port", str(port))
    assert "couldn't bind HTTP server socket" in out, out
    _save_fixture("port-in-use-llamacpp-real-1", "port-in-use", out)
    findings = diagnose(out)
    assert findings and findings[0].cause == "port-in-use", findings


@pytest.mark.parametrize(
    ("name", "args", "said"),
    [
        ("unknown-flag", ["--no-such-flag"], "invalid argument: --no-such-flag"),
        ("bare-fa", ["-fa"], "-fa"),
        ("bad-number", ["--n-cpu-moe", "lots"], "--n-cpu-moe"),
    ],
)
def test_bad_flag_is_diagnosed(
    llama_server: Path, moe_split: Path, name: str, args: list[str], said: str
) -> None:
    out = _run(llama_server, "-m", str(moe_split), "--port", str(_free_port()), *args)
    assert said in out, out
    _save_fixture(f"engine-bad-flag-llamacpp-{name}", "engine-bad-flag", out)
    findings = diagnose(out)
    assert findings and findings[0].cause == "engine-bad-flag", findings
