"""The stand-in engines as real processes on 127.0.0.1: health, keys, models, streams, signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mlctl.gpus import parse_gpu_spec
from mlctl.sandbox.standins.install import install_standins, write_gpus, write_scenario

KEY = "sk-sandbox"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(port: int, path: str, body: object = None, key: str | None = None) -> tuple[int, bytes]:
    """(status, body) of one request; connection errors propagate."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_status(port: int, path: str, want: int, timeout: float = 4.0) -> list[int | str]:
    """Poll until ``path`` answers ``want``; returns what was seen on the way."""
    seen: list[int | str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, _ = request(port, path)
        except (urllib.error.URLError, ConnectionError, OSError):
            status_or_refused: int | str = "refused"
        else:
            status_or_refused = status
        if not seen or seen[-1] != status_or_refused:
            seen.append(status_or_refused)
        if status_or_refused == want:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"{path} never answered {want}: saw {seen}")


class Proc:
    """A stand-in started as a child process; killed at teardown if still alive."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.handle = log.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", *args], env=env, stdout=self.handle, stderr=subprocess.STDOUT
        )

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8")

    def wait(self, timeout: float = 4.0) -> int:
        return self.popen.wait(timeout=timeout)

    def terminate_fast(self) -> float:
        start = time.monotonic()
        self.popen.send_signal(signal.SIGTERM)
        self.popen.wait(timeout=3)
        return time.monotonic() - start

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=3)
        self.handle.close()


Spawn = Callable[..., Proc]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    s = tmp_path / "state"
    count, model = parse_gpu_spec("8xA100-80GB")
    write_gpus(s, count, model)
    return s


@pytest.fixture
def spawn(tmp_path: Path, state: Path) -> Iterator[Spawn]:
    procs: list[Proc] = []

    def start(module: str, *argv: str, env: dict[str, str] | None = None) -> Proc:
        full_env = {**os.environ, "MLCTL_SANDBOX_STATE": str(state), **(env or {})}
        proc = Proc([module, *argv], full_env, tmp_path / f"log-{len(procs)}.txt")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.close()


def _hf_model(tmp_path: Path) -> Path:
    model = tmp_path / "models" / "hf"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"max_position_embeddings": 32768}')
    return model


def _stream_chat(port: int, model: str, key: str | None) -> list[str]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
        "stream": True,
    }
    status, raw = request(port, "/v1/chat/completions", body, key)
    assert status == 200, raw
    return [line for line in raw.decode().splitlines() if line.startswith("data: ")]


def test_vllm_port_closed_while_loading_then_serves(
    spawn: Spawn, state: Path, tmp_path: Path
) -> None:
    write_scenario(state, {"vllm": {"startup_seconds": 0.6}})
    port = free_port()
    model = _hf_model(tmp_path)
    proc = spawn(
        "mlctl.sandbox.standins.vllm",
        "serve",
        str(model),
        "--served-model-name",
        "demo",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--tensor-parallel-size",
        "8",
        "--limit-mm-per-prompt",
        '{"image": 0}',
        env={"VLLM_API_KEY": KEY},
    )
    seen = wait_status(port, "/health", 200)
    assert seen[0] == "refused" and seen[-1] == 200
    assert request(port, "/v1/models")[0] == 401
    assert json.loads(request(port, "/v1/models")[1]) == {"error": "Unauthorized"}
    status, body = request(port, "/v1/models", key=KEY)
    assert status == 200 and json.loads(body)["data"][0]["id"] == "demo"
    events = _stream_chat(port, "demo", KEY)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[1][6:])["choices"][0]["delta"]["content"] == "Hello!"
    image = {
        "model": "demo",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            }
        ],
    }
    status, body = request(port, "/v1/chat/completions", image, KEY)
    assert status == 400
    assert "At most 0 image(s) may be provided in one prompt." in body.decode()
    assert proc.terminate_fast() < 2.0
    log = proc.text()
    assert (
        "Starting vLLM API server" in log and f"Uvicorn running on http://127.0.0.1:{port}" in log
    )


def test_vllm_failures_exit_nonzero(spawn: Spawn, state: Path, tmp_path: Path) -> None:
    model = _hf_model(tmp_path)
    write_scenario(state, {"vllm": {"fail": "oom"}})
    oom = spawn("mlctl.sandbox.standins.vllm", "serve", str(model), "--port", str(free_port()))
    assert oom.wait() == 1
    assert "torch.OutOfMemoryError: CUDA out of memory" in oom.text()

    write_scenario(state, {})
    tp = spawn("mlctl.sandbox.standins.vllm", "serve", str(model), "-tp", "16")
    assert tp.wait() == 1
    assert "The number of required GPUs exceeds" in tp.text()

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = spawn(
            "mlctl.sandbox.standins.vllm",
            "serve",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        )
        assert taken.wait() == 1
    assert "OSError: [Errno 98] Address already in use" in taken.text()


def test_vllm_crash_after_ready(spawn: Spawn, state: Path, tmp_path: Path) -> None:
    write_scenario(state, {"vllm": {"fail": "crash-after-ready", "crash_after_seconds": 0.3}})
    port = free_port()
    proc = spawn(
        "mlctl.sandbox.standins.vllm",
        "serve",
        str(_hf_model(tmp_path)),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    )
    wait_status(port, "/health", 200)
    assert proc.wait() == 1
    assert "an illegal memory access was encountered" in proc.text()


def test_llama_server_503_then_200(spawn: Spawn, state: Path, tmp_path: Path) -> None:
    write_scenario(state, {"llamacpp": {"startup_seconds": 0.5}})
    gguf = tmp_path / "m-00001-of-00002.gguf"
    gguf.write_bytes(b"GGUF")
    (tmp_path / "m-00002-of-00002.gguf").write_bytes(b"GGUF")
    key_file = tmp_path / "api_key"
    key_file.write_text(KEY + "\n")
    port = free_port()
    proc = spawn(
        "mlctl.sandbox.standins.llama_server",
        "-m",
        str(gguf),
        "--alias",
        "demo",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-c",
        "8192",
        "-np",
        "1",
        "-ngl",
        "999",
        "--n-cpu-moe",
        "4",
        "--jinja",
        "--api-key-file",
        str(key_file),
        "-fa",
        "on",
    )
    seen = wait_status(port, "/health", 200)
    assert 503 in seen and seen[-1] == 200
    status, body = request(port, "/v1/chat/completions", {"messages": []})
    assert status == 401
    assert json.loads(body)["error"]["message"] == "Invalid API Key"
    status, body = request(port, "/v1/models")
    assert status == 200 and json.loads(body)["data"][0]["id"] == "demo"
    events = _stream_chat(port, "demo", KEY)
    assert events[-1] == "data: [DONE]"
    assert proc.terminate_fast() < 2.0
    assert f"main: server is listening on http://127.0.0.1:{port} - starting the main loop" in (
        proc.text()
    )


def test_llama_server_missing_shard(spawn: Spawn, tmp_path: Path) -> None:
    gguf = tmp_path / "m-00001-of-00002.gguf"
    gguf.write_bytes(b"GGUF")
    proc = spawn("mlctl.sandbox.standins.llama_server", "-m", str(gguf), "--port", str(free_port()))
    assert proc.wait() == 1
    assert f"failed to load GGUF split from {tmp_path}/m-00002-of-00002.gguf" in proc.text()


def test_ollama_serve_pull_chat(spawn: Spawn, tmp_path: Path) -> None:
    port = free_port()
    env = {"OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(tmp_path / "ollama")}
    server = spawn("mlctl.sandbox.standins.ollama", "serve", env=env)
    wait_status(port, "/api/version", 200)
    assert json.loads(request(port, "/api/version")[1]) == {"version": "0.13.1"}
    status, _ = request(port, "/v1/chat/completions", {"model": "ministral", "messages": []})
    assert status == 404
    pull = spawn("mlctl.sandbox.standins.ollama", "pull", "ministral", env=env)
    assert pull.wait() == 0
    assert pull.text().splitlines()[-1] == "success"
    tags = json.loads(request(port, "/api/tags")[1])["models"]
    assert [m["name"] for m in tags] == ["ministral:latest"]
    assert json.loads(request(port, "/v1/models")[1])["data"][0]["id"] == "ministral:latest"
    assert _stream_chat(port, "ministral", None)[-1] == "data: [DONE]"
    version = spawn("mlctl.sandbox.standins.ollama", "--version", env=env)
    assert version.wait() == 0 and "ollama version is 0.13.1" in version.text()
    assert server.terminate_fast() < 2.0


def test_wrappers_run_the_standins(tmp_path: Path, state: Path) -> None:
    paths = install_standins(tmp_path / "bin")
    env = {**os.environ, "MLCTL_SANDBOX_STATE": str(state)}
    out = subprocess.run(
        [str(tmp_path / "bin" / "nvidia-smi"), "--query-gpu=count,name", "--format=csv,noheader"],
        env=env,
        capture_output=True,
        text=True,
        timeout=5,
        check=True,
    ).stdout
    assert out.splitlines()[0] == "8, NVIDIA A100-SXM4-80GB"
    version = subprocess.run(
        [str(tmp_path / "bin" / "vllm"), "--version"],
        env=env,
        capture_output=True,
        text=True,
        timeout=5,
        check=True,
    )
    assert version.stdout.strip() == "0.12.0"
    assert len(paths) == 4
