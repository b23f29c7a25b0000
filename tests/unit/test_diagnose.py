"""Offline log diagnosis: real engine logs in, root cause out."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from mlctl.diagnose import CAUSES, Finding, Rule, diagnose, load_rules, parse_rules, to_json
from mlctl.errors import MlctlError

LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "logs"
# real-llamacpp/: output of the real llama-server, saved by tests/sandbox/test_real_llamacpp.py
FIXTURES = sorted(LOGS.glob("*.log")) + sorted((LOGS / "real-llamacpp").glob("*.log"))
SOURCE_URL = re.compile(r"^https://github\.com/[\w.-]+/[\w.-]+/(issues|pull)/\d+$")


def _parse_fixture(path: Path) -> tuple[str, str, str]:
    """Return (source URL, expected cause or "none", log body without the header)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header: dict[str, str] = {}
    index = 0
    while index < len(lines) and lines[index].startswith("# "):
        key, _, value = lines[index][2:].partition(":")
        header[key.strip()] = value.strip()
        index += 1
    source = header["source"].split()[0]
    return source, header["expect"].split()[0], "\n".join(lines[index:])


def test_fixtures_exist() -> None:
    assert len(FIXTURES) >= 29


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixture_root_cause(path: Path) -> None:
    _, expected, body = _parse_fixture(path)
    findings = diagnose(body)
    if expected == "none":
        assert findings == [], [f.evidence for f in findings]
    else:
        assert findings, "no finding"
        assert findings[0].cause == expected, findings[0]


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixture_header(path: Path) -> None:
    source, expected, body = _parse_fixture(path)
    assert SOURCE_URL.match(source) or path.parent.name == "real-llamacpp", source
    assert expected == "none" or expected in CAUSES
    assert body.strip()
    prefix = "healthy" if expected == "none" else expected
    assert path.stem.startswith(prefix + "-")


def test_every_cause_has_two_real_fixtures() -> None:
    counts = Counter(_parse_fixture(path)[1] for path in FIXTURES)
    for cause in CAUSES:
        assert counts[cause] >= 2, cause
    assert counts["none"] >= 3


def test_rules_file_validates_and_covers_every_cause() -> None:
    rules = load_rules()
    assert len({rule.id for rule in rules}) == len(rules)
    assert {rule.cause for rule in rules} == set(CAUSES)
    assert all(rule.fix and rule.summary for rule in rules)
    assert load_rules() is rules  # cached


def test_oom_before_engine_core_failure_is_the_root_cause() -> None:
    log = (
        "INFO 07-07 15:19:40 [gpu_model_runner.py:1595] Starting to load model\n"
        "ERROR 07-07 15:19:48 [multiproc_executor.py:492] torch.OutOfMemoryError: CUDA out of "
        "memory. Tried to allocate 2.50 GiB. GPU 5 has a total capacity of 79.25 GiB\n"
        "ERROR 07-07 15:19:51 [core.py:515] EngineCore failed to start.\n"
        "RuntimeError: Engine core initialization failed. See root cause above.\n"
    )
    findings = diagnose(log)
    assert [f.cause for f in findings] == ["cuda-oom"]
    assert findings[0].line == 2
    assert findings[0].rule_id == "vllm-cuda-oom"
    assert "--max-model-len" in findings[0].fix


def test_generic_consequences_alone_give_no_finding() -> None:
    log = (
        "ERROR 06-30 13:53:19 [core.py:515] EngineCore failed to start.\n"
        "RuntimeError: Engine core initialization failed. See root cause above. "
        "Failed core proc(s): {}\n"
        "RuntimeError: Engine process failed to start. See stack trace for the root cause.\n"
    )
    assert diagnose(log) == []


def test_empty_text() -> None:
    assert diagnose("") == []
    assert diagnose("\n  \n") == []


def test_findings_ordered_by_line_one_per_cause() -> None:
    log = (
        "Error: listen tcp 127.0.0.1:11434: bind: address already in use\n"
        "ValueError: Total number of attention heads (52) must be divisible by tensor "
        "parallel size (8).\n"
        "OSError: [Errno 98] Address already in use\n"
    )
    findings = diagnose(log)
    assert [(f.cause, f.line) for f in findings] == [("port-in-use", 1), ("tp-divisibility", 2)]


def test_nccl_shm_out_of_space_is_nccl_not_disk() -> None:
    line = "include/shm.h:28 NCCL WARN Call to posix_fallocate failed: No space left on device"
    assert [f.cause for f in diagnose(line)] == ["nccl"]


def test_healthy_noise_lines_do_not_fire() -> None:
    noise = [
        "INFO 01-01 00:00:00 [config.py:1] gpu_memory_utilization=0.9, max_model_len=65536",
        "(EngineCore pid=1) INFO [gpu_worker.py:277] Available KV cache memory: 112.61 GiB",
        "INFO [kv_cache_utils.py:853] Maximum concurrency for 65536 tokens per request: 2.00x",
        "Cannot use FlashAttention-2 backend because the flash_attn package is not found.",
        "(Worker_TP0 pid=1) WARNING [marlin_utils_fp4.py:257] Your GPU does not have native "
        "support for FP4 computation but FP4 quantization is being used. Weight-only FP4 "
        "compression will be used leveraging the Marlin kernel.",
        "NCCL WARN NET/Plugin : No plugin found (libnccl-net.so), using internal implementation",
        'msg="system memory" total="62.7 GiB" free="56.0 GiB" free_swap="31.1 GiB"',
        "main: server is listening on http://127.0.0.1:8080 - starting the main loop",
        "INFO:     Uvicorn running on http://0.0.0.0:8000 (Press CTRL+C to quit)",
    ]
    assert diagnose("\n".join(noise)) == []


def test_evidence_is_stripped_and_truncated() -> None:
    line = (
        "   ValueError: Free memory on device (7.34/139.72 GiB) on startup is less than "
        "desired GPU memory utilization (0.9, 125.75 GiB). " + "x" * 400
    )
    (finding,) = diagnose(line)
    assert finding.evidence.startswith("ValueError: Free memory")
    assert len(finding.evidence) <= 300


def test_to_json_shape() -> None:
    findings = diagnose("Error: model requires more system memory (164.8 GiB) than is available")
    data = to_json(findings)
    assert json.loads(json.dumps(data)) == data
    items = data["findings"]
    assert isinstance(items, list) and len(items) == 1
    item = items[0]
    assert set(item) == {"cause", "evidence", "fix", "summary", "line", "rule_id"}
    assert item["cause"] == "ollama-memory"
    assert "OLLAMA_NUM_PARALLEL=1" in item["fix"]
    assert to_json([]) == {"findings": []}


def test_custom_rules_and_priority() -> None:
    low = Rule(id="a", cause="disk-full", engines=("any",), pattern="boom", summary="s", fix="f")
    high = replace(low, id="b", cause="nccl", priority=1)
    assert [f.rule_id for f in diagnose("boom", [low, high])] == ["b"]
    assert [f.rule_id for f in diagnose("boom", [low, replace(high, priority=0)])] == ["a"]
    assert isinstance(diagnose("boom", [low])[0], Finding)


def _row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": "test-row",
        "cause": "cuda-oom",
        "engines": ["vllm"],
        "pattern": "CUDA out of memory",
        "summary": "s",
        "fix": "f",
    }
    row.update(changes)
    return row


def test_parse_rules_accepts_a_good_row() -> None:
    (rule,) = parse_rules({"rules": [_row()]}, "t.yaml")
    assert rule == Rule("test-row", "cuda-oom", ("vllm",), "CUDA out of memory", "s", "f")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (_row(cause="gpu-on-fire"), "unknown cause 'gpu-on-fire'"),
        (_row(pattern="CUDA (out of"), "not a valid regex"),
        (_row(fix="  "), "fix is empty"),
        (_row(engines=["tgi"]), "unknown engine"),
        (_row(priority="high"), "'priority' must be an integer"),
        ({"id": "half", "cause": "cuda-oom"}, "missing field"),
        (_row(colour="red"), "unknown field"),
    ],
)
def test_parse_rules_rejects_a_bad_row(row: dict[str, object], message: str) -> None:
    with pytest.raises(MlctlError) as info:
        parse_rules({"rules": [_row(id="fine"), row]}, "t.yaml")
    text = str(info.value)
    assert message in text
    assert "t.yaml: row 2" in text


def test_parse_rules_rejects_duplicates_and_bad_documents() -> None:
    with pytest.raises(MlctlError, match="duplicate rule id"):
        parse_rules({"rules": [_row(), _row()]})
    with pytest.raises(MlctlError, match="'rules' list"):
        parse_rules(["not", "a", "mapping"])
    with pytest.raises(MlctlError, match="empty"):
        parse_rules({"rules": []})


def test_rule_validates_on_construction() -> None:
    with pytest.raises(MlctlError, match="'bad'.*unknown cause"):
        Rule(id="bad", cause="nope", engines=("any",), pattern="x", summary="s", fix="f")
    with pytest.raises(MlctlError, match="'bad'.*valid regex"):
        Rule(id="bad", cause="nccl", engines=("any",), pattern="(", summary="s", fix="f")


def test_packaged_rules_file_is_the_one_in_the_tree() -> None:
    path = Path(__file__).resolve().parents[2] / "src" / "mlctl" / "data" / "diagnose_rules.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert parse_rules(data) == load_rules()


def test_importing_diagnose_loads_no_network_libraries() -> None:
    code = (
        "import sys, mlctl.diagnose as d; d.load_rules(); d.diagnose('x'); "
        "print(sorted(m for m in ('paramiko', 'httpx') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
