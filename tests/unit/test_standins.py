"""Pure parts of the sandbox's stand-in tools: formats, flags, scenarios, diagnose agreement."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from mlctl.diagnose import diagnose
from mlctl.facts import _parse_smi_csv, _parse_smi_table, _smi_header_versions
from mlctl.gpus import parse_gpu_spec
from mlctl.sandbox.standins import llama_server, nvidia_smi, ollama, vllm
from mlctl.sandbox.standins.common import (
    Scenario,
    answer_chat,
    load_inventory,
    load_scenario,
    stream_chunks,
)
from mlctl.sandbox.standins.install import install_standins, write_gpus, write_scenario

FIELDS = "index,name,memory.total,memory.used,compute_cap,uuid,mig.mode.current,driver_version"


def _inventory(tmp_path: Path, spec: str) -> nvidia_smi.GpuInventory:
    count, model = parse_gpu_spec(spec)
    write_gpus(tmp_path, count, model)
    return load_inventory(tmp_path)


# --------------------------------------------------------------------------- nvidia-smi


@pytest.mark.parametrize(
    ("spec", "name", "mib", "cap", "mig"),
    [
        ("8xA100-80GB", "NVIDIA A100-SXM4-80GB", 81920, "8.0", "Disabled"),
        ("4xRTX4090-24GB", "NVIDIA GeForce RTX 4090", 24564, "8.9", "[N/A]"),
        ("1xH200-141GB", "NVIDIA H200", 143771, "9.0", "Disabled"),
    ],
)
def test_query_csv_formats(
    tmp_path: Path, spec: str, name: str, mib: int, cap: str, mig: str
) -> None:
    inv = _inventory(tmp_path, spec)
    count = parse_gpu_spec(spec)[0]
    text, code = nvidia_smi.run(
        [f"--query-gpu={FIELDS}", "--format=csv,noheader,nounits"], inv, None
    )
    assert code == 0
    lines = text.splitlines()
    assert len(lines) == count
    cells = lines[0].split(", ")
    assert cells[:3] == ["0", name, str(mib)]
    assert cells[4] == cap and cells[6] == mig and cells[7] == "550.54.15"
    assert cells[5].startswith("GPU-")
    # the facts parser reads it back
    gpus, driver = _parse_smi_csv(text, FIELDS.split(","), [])
    assert [g.memory_total_mib for g in gpus] == [mib] * count
    assert driver == "550.54.15"

    with_units, _ = nvidia_smi.run(
        ["--query-gpu=memory.total,utilization.gpu", "--format=csv"], inv, None
    )
    assert with_units.splitlines()[:2] == [
        "memory.total [MiB], utilization.gpu [%]",
        f"{mib} MiB, 0 %",
    ]


@pytest.mark.parametrize("spec", ["8xA100-80GB", "4xRTX4090-24GB", "1xH200-141GB"])
def test_table_and_list(tmp_path: Path, spec: str) -> None:
    inv = _inventory(tmp_path, spec)
    text, code = nvidia_smi.run([], inv, None)
    assert code == 0
    assert (
        "| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4 "
        in text
    )
    assert all(len(line) == 91 for line in text.splitlines()[1:] if line.startswith(("|", "+")))
    gpus = _parse_smi_table(text)
    assert len(gpus) == len(inv.gpus)
    assert gpus[0].memory_total_mib == inv.gpus[0].memory_total_mib
    assert _smi_header_versions(text) == ("550.54.15", "12.4")
    listing, _ = nvidia_smi.run(["-L"], inv, None)
    assert listing.splitlines()[0] == f"GPU 0: {inv.gpus[0].name} (UUID: {inv.gpus[0].uuid})"


def test_smi_unknown_field_and_driver_failure(tmp_path: Path) -> None:
    inv = _inventory(tmp_path, "1xH200-141GB")
    assert nvidia_smi.run(["--query-gpu=index,foo", "--format=csv"], inv, None) == (
        'Field "foo" is not a valid field to query.\n',
        2,
    )
    text, code = nvidia_smi.run(["-L"], inv, "driver")
    assert code == 9
    assert text.startswith("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA")


# --------------------------------------------------------------------------- state files


def test_state_files_and_wrappers(tmp_path: Path) -> None:
    write_scenario(tmp_path, {"vllm": {"fail": "oom", "startup_seconds": 0.5}})
    assert load_scenario(tmp_path, "vllm") == Scenario(fail="oom", startup_seconds=0.5)
    assert load_scenario(tmp_path, "ollama") == Scenario()
    assert load_scenario(None, "vllm") == Scenario()
    with pytest.raises(ValueError, match="unknown engine"):
        write_scenario(tmp_path, {"sglang": {}})
    paths = install_standins(tmp_path / "bin", python="/usr/bin/python3")
    assert sorted(p.name for p in paths) == ["llama-server", "nvidia-smi", "ollama", "vllm"]
    smi = tmp_path / "bin" / "nvidia-smi"
    assert smi.read_text() == (
        '#!/bin/sh\nexec /usr/bin/python3 -m mlctl.sandbox.standins.nvidia_smi "$@"\n'
    )
    assert stat.S_IMODE(smi.stat().st_mode) == 0o755
    count, model = parse_gpu_spec("2xH100-80GB")
    data = json.loads(write_gpus(tmp_path, count, model).read_text())
    assert data["driver_version"] == "550.54.15" and data["cuda_version"] == "12.4"
    assert [g["memory_total_mib"] for g in data["gpus"]] == [81559, 81559]
    assert data["gpus"][0]["uuid"] != data["gpus"][1]["uuid"]


# --------------------------------------------------------------------------- vLLM flags


def test_vllm_parses_mlctl_flags_in_both_spellings() -> None:
    cfg = vllm.parse_serve(
        [
            "serve",
            "/m",
            "--served-model-name",
            "mistral-large-3",
            "--host",
            "127.0.0.1",
            "--port",
            "8000",
            "--tensor_parallel_size",
            "8",
            "--tokenizer_mode",
            "mistral",
            "--config-format=mistral",
            "--load_format",
            "mistral",
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "mistral",
            "--max-model-len",
            "64K",
            "--gpu-memory-utilization",
            "0.9",
            "--kv-cache-dtype",
            "fp8",
            "--limit-mm-per-prompt",
            '{"image": 0}',
            "--max-num-seqs",
            "4",
            "--speculative-config",
            '{"method":"eagle","num_speculative_tokens":3}',
            "--pipeline-parallel-size",
            "2",
            "--distributed-executor-backend",
            "ray",
        ],
        environ={"VLLM_API_KEY": "sk-1"},
    )
    assert cfg.tensor_parallel == 8 and cfg.pipeline_parallel == 2 and cfg.world_size == 16
    assert (cfg.tokenizer_mode, cfg.config_format, cfg.load_format) == ("mistral",) * 3
    assert cfg.max_model_len == 65536
    assert cfg.limit_mm == {"image": 0}
    assert cfg.api_keys == ["sk-1"]
    assert cfg.served_names == ["mistral-large-3"]


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "/m", "--no-such-flag"],
        ["serve", "/m", "--tensor-parallel-size", "eight"],
        ["serve", "/m", "--speculative-config", "{not json"],
        ["serve", "/m", "--kv-cache-dtype", "int3"],
    ],
)
def test_vllm_rejects_bad_flags_like_argparse(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        vllm.parse_serve(argv, environ={})
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def _hf_dir(tmp_path: Path) -> Path:
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text('{"max_position_embeddings": 32768}')
    (d / "tokenizer.json").write_text("{}")
    return d


def _mistral_dir(tmp_path: Path) -> Path:
    d = tmp_path / "mistral"
    d.mkdir()
    (d / "params.json").write_text('{"max_seq_len": 65536}')
    (d / "tekken.json").write_text("{}")
    return d


def _cfg(model: Path, *extra: str) -> vllm.ServeConfig:
    return vllm.parse_serve(["serve", str(model), *extra], environ={})


MISTRAL = ["--tokenizer-mode", "mistral", "--config-format", "mistral", "--load-format", "mistral"]


def test_vllm_flags_must_match_the_layout(tmp_path: Path) -> None:
    hf, mistral = _hf_dir(tmp_path), _mistral_dir(tmp_path)
    assert vllm.config_failure(_cfg(hf), 1) is None
    assert vllm.config_failure(_cfg(mistral, *MISTRAL), 1) is None

    wrong = vllm.config_failure(_cfg(hf, *MISTRAL), 1)
    assert wrong is not None and wrong.exit_code == 1
    text = "\n".join(wrong.lines)
    assert "ValueError: Failed to load mistral 'params.json' config for model" in text
    assert [f.cause for f in diagnose(text)] == ["mistral-format-mismatch"]

    tok_only = vllm.config_failure(_cfg(hf, "--tokenizer-mode", "mistral"), 1)
    assert tok_only is not None
    assert diagnose("\n".join(tok_only.lines))[0].cause == "mistral-format-mismatch"

    no_flags = vllm.config_failure(_cfg(mistral), 1)
    assert no_flags is not None
    assert "does not appear to have a file named config.json" in "\n".join(no_flags.lines)

    missing = vllm.config_failure(_cfg(tmp_path / "nope"), 1)
    assert missing is not None
    assert "Could not detect config format" in "\n".join(missing.lines)


def test_vllm_tp_larger_than_gpus(tmp_path: Path) -> None:
    inv = _inventory(tmp_path, "4xRTX4090-24GB")
    hf = _hf_dir(tmp_path)
    assert vllm.tp_failure(_cfg(hf, "-tp", "4"), inv, 1, forced=False) is None
    failure = vllm.tp_failure(_cfg(hf, "-tp", "8"), inv, 1, forced=False)
    assert failure is not None
    assert "Required number of devices: 8. Total number of devices: 4." in "\n".join(failure.lines)


# --------------------------------------------------------------------------- diagnose agreement


def _plan(
    tmp_path: Path, spec: str = "8xA100-80GB", *extra: str
) -> tuple[vllm.ServeConfig, nvidia_smi.GpuInventory, vllm.MemoryPlan]:
    inv = _inventory(tmp_path, spec)
    cfg = _cfg(_hf_dir(tmp_path), "--max-model-len", "65536", *extra)
    return cfg, inv, vllm.memory_plan(cfg, inv, Scenario())


def test_vllm_healthy_log_has_no_finding(tmp_path: Path) -> None:
    nvfp4 = tmp_path / "x" / "Mistral-Large-3-675B-Instruct-2512-NVFP4"
    nvfp4.mkdir(parents=True)
    (nvfp4 / "config.json").write_text("{}")
    inv = _inventory(tmp_path, "8xA100-80GB")
    cfg = _cfg(nvfp4, "-tp", "8", "--max-model-len", "65536", "--enable-auto-tool-choice")
    plan = vllm.memory_plan(cfg, inv, Scenario())
    assert plan.kv_tokens >= plan.max_model_len
    text = "\n".join(vllm.startup_lines(cfg, inv, plan, 100) + vllm.ready_lines(cfg, 100))
    for phase in (
        "Starting vLLM API server",
        "Loading weights took",
        "Memory profiling takes",
        "Available KV cache memory",
        "Maximum concurrency for 65,536 tokens per request",
        "Capturing CUDA graphs",
        "Application startup complete.",
        f"Uvicorn running on http://0.0.0.0:{cfg.port}",
        "Marlin",
    ):
        assert phase in text
    assert diagnose(text) == []


def test_vllm_failures_are_diagnosed(tmp_path: Path) -> None:
    cfg, inv, plan = _plan(tmp_path)
    oom = "\n".join(vllm.oom_failure(plan, 7).lines)
    assert "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate" in oom
    assert "RuntimeError: Engine core initialization failed. See root cause above." in oom
    assert [f.cause for f in diagnose(oom)] == ["cuda-oom"]

    kv = "\n".join(vllm.kv_failure(plan, 7).lines)
    assert "ValueError: The model's max seq len (65536) is larger than the maximum number" in kv
    assert [f.cause for f in diagnose(kv)] == ["kv-cache-insufficient"]

    port = "\n".join(vllm.port_failure(7).lines)
    assert port.endswith("OSError: [Errno 98] Address already in use")
    assert [f.cause for f in diagnose(port)] == ["port-in-use"]

    crash = "\n".join(vllm.crash_lines(7))
    assert "CUDA error: an illegal memory access was encountered" in crash
    assert diagnose(crash) == []  # no rule claims it, and nothing is misdiagnosed


def test_vllm_context_too_long_for_the_kv_cache(tmp_path: Path) -> None:
    inv = _inventory(tmp_path, "1xRTX4090-24GB")
    cfg = _cfg(_hf_dir(tmp_path), "--max-model-len", "1000000")
    plan = vllm.memory_plan(cfg, inv, Scenario())
    assert plan.kv_tokens < plan.max_model_len  # serve() then prints kv_failure


def test_llamacpp_and_ollama_failures_are_diagnosed(tmp_path: Path) -> None:
    inv = _inventory(tmp_path, "4xRTX4090-24GB")
    assert [f.cause for f in diagnose("\n".join(llama_server.oom_lines(inv)))] == ["cuda-oom"]
    bind = "main: couldn't bind HTTP server socket, hostname: 127.0.0.1, port: 8000"
    assert [f.cause for f in diagnose(bind)] == ["port-in-use"]
    ollama_bind = "Error: listen tcp 127.0.0.1:11434: bind: address already in use"
    assert [f.cause for f in diagnose(ollama_bind)] == ["port-in-use"]
    memory = ollama.log_line(
        "ERROR",
        "sched.go:478",
        "error loading llama server",
        error=("model requires more system memory (405.2 GiB) than is available (120.0 GiB)"),
    )
    assert [f.cause for f in diagnose(memory)] == ["ollama-memory"]


# --------------------------------------------------------------------------- llama-server


def test_llama_server_flags(tmp_path: Path) -> None:
    key = tmp_path / "api_key"
    key.write_text("sk-a\n")
    cfg = llama_server.parse_args(
        [
            "-m",
            "/m/x-00001-of-00004.gguf",
            "--alias",
            "mistral-large-3",
            "--host",
            "127.0.0.1",
            "--port",
            "8000",
            "-c",
            "16384",
            "-np",
            "1",
            "-ngl",
            "999",
            "--tensor-split",
            "1,1,1,1",
            "--n-cpu-moe",
            "34",
            "-ot",
            ".ffn_.*_exps.=CPU",
            "--cache-type-k",
            "q8_0",
            "--jinja",
            "--api-key-file",
            str(key),
            "-fa",
            "on",
            "--metrics",
            "-v",
        ]
    )
    assert cfg.api_keys == ["sk-a"] and cfg.n_cpu_moe == 34 and cfg.flash_attn == "on"
    assert cfg.model_name == "mistral-large-3"
    with pytest.raises(llama_server.LlamaArgError):
        llama_server.parse_args(["-m", "x", "-fa"])
    with pytest.raises(llama_server.LlamaArgError):
        llama_server.parse_args(["-m", "x", "-fa", "maybe"])
    with pytest.raises(llama_server.LlamaArgError) as exc:
        llama_server.parse_args(["-m", "x", "--bogus"])
    assert llama_server.arg_error_text(str(exc.value), []) == "error: invalid argument: --bogus\n"


def test_llama_server_shards_and_log(tmp_path: Path) -> None:
    first = tmp_path / "m-00001-of-00003.gguf"
    first.write_bytes(b"GGUF")
    (tmp_path / "m-00002-of-00003.gguf").write_bytes(b"GGUF")
    cfg = llama_server.parse_args(["-m", str(first), "--n-cpu-moe", "2", "-v"])
    error = llama_server.load_error(cfg)
    assert error is not None
    assert f"failed to load GGUF split from {tmp_path}/m-00003-of-00003.gguf" in "\n".join(error)
    (tmp_path / "m-00003-of-00003.gguf").write_bytes(b"GGUF")
    assert llama_server.load_error(cfg) is None
    lines = llama_server.load_lines(cfg, _inventory(tmp_path, "4xRTX4090-24GB"))
    assert sum("buffer type overridden to CPU" in line for line in lines) == 6
    assert f"srv    load_model: loading model '{first}'" in lines
    assert diagnose("\n".join(lines)) == []


# --------------------------------------------------------------------------- chat + ollama


def test_chat_answers() -> None:
    one = answer_chat({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert one.text == "Hello!" and one.finish_reason == "length"
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    call = answer_chat(
        {"messages": [{"role": "user", "content": "Call get_weather"}], "tools": tools}, "mistral"
    )
    assert call.finish_reason == "tool_calls"
    assert json.loads(call.tool_calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert len(call.tool_calls[0]["id"]) == 9
    text = answer_chat({"messages": [{"role": "user", "content": "Say hello"}], "tools": tools})
    assert text.tool_calls == () and text.text
    chunks = stream_chunks(call, "m", "id", 0, include_usage=True)
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert "usage" in chunks[-1]


def test_ollama_host_and_models(tmp_path: Path) -> None:
    assert ollama.parse_host(None) == ("127.0.0.1", 11434)
    assert ollama.parse_host("http://0.0.0.0:8000") == ("0.0.0.0", 8000)
    assert ollama.parse_host("127.0.0.1:9000") == ("127.0.0.1", 9000)
    ollama.record_model(tmp_path, "mistral-large-3:675b-cloud")
    ollama.record_model(tmp_path, "ministral")
    names = {m.name for m in ollama.list_models(tmp_path)}
    assert names == {"mistral-large-3:675b-cloud", "ministral:latest"}
    assert (tmp_path / "manifests/registry.ollama.ai/library/ministral/latest").is_file()
    events = list(ollama.pull_events("ministral"))
    assert events[0] == {"status": "pulling manifest"} and events[-1] == {"status": "success"}
