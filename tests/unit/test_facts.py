"""Golden tests of the facts parser: probe.sh's JSON -> HostFacts.

The nvidia-smi texts under tests/fixtures/facts/ are real outputs copied from
public GitHub issues (each ``NAME.txt`` has a ``NAME.source`` with its URL).
The probe objects around them are built here, the way probe.sh emits them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlctl.errors import RemoteError
from mlctl.facts import (
    PROBE_MARKER,
    facts_from_probe,
    parse_probe_output,
    probe_argv,
    probe_script,
)
from mlctl.gpus import lookup

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "facts"
FULL_FIELDS = "index,name,memory.total,memory.used,compute_cap,uuid,mig.mode.current,driver_version"
NO_CC_FIELDS = "index,name,memory.total,memory.used,uuid,mig.mode.current,driver_version"
GIB = 1024**3


def fixture(name: str) -> str:
    """A fixture's text, without any ``# source:`` comment line."""
    text = (FIXTURES / name).read_text(encoding="utf-8")
    return "\n".join(line for line in text.splitlines() if not line.startswith("# source:"))


def probe(**fields: Any) -> dict[str, Any]:
    """A probe object as probe.sh prints it, for a plain host without a GPU tool."""
    obj: dict[str, Any] = {
        PROBE_MARKER: 1,
        "hostname": "gpu-box",
        "kernel": "Linux 5.15.0-107-generic",
        "arch": "x86_64",
        "os_release": '"Ubuntu 22.04.4 LTS"',
        "cpu_count": "32",
        "cgroup_cpu_max": "",
        "cgroup_cpu_quota_v1": "",
        "cgroup_cpu_period_v1": "",
        "mem_total": "MemTotal:       263846864 kB",
        "cgroup_memory_max": "",
        "cgroup_memory_limit_v1": "",
        "shm_df": (
            "Filesystem     1024-blocks  Used Available Capacity Mounted on\n"
            "shm                  65536     0     65536       0% /dev/shm"
        ),
        "disks": [],
        "nvidia_smi": "missing",
        "tools": {},
        "root": "/root/.mlctl",
        "deployments": [],
    }
    obj.update(fields)
    return obj


def smi(
    csv: str, csv_rc: int = 0, table: str = "", table_rc: int = 0, fields: str = FULL_FIELDS
) -> dict[str, str]:
    """The nvidia-smi part of a probe object."""
    return {
        "nvidia_smi": "ok" if csv_rc == 0 else "error",
        "smi_fields": fields,
        "smi_csv": csv,
        "smi_csv_rc": str(csv_rc),
        "smi_table": table,
        "smi_table_rc": str(table_rc),
    }


def output(obj: dict[str, Any], banner: str = "") -> str:
    return banner + json.dumps(obj, separators=(",", ":")) + "\n"


# ---- fixtures carry their source ---------------------------------------------


def test_every_fixture_names_its_source() -> None:
    texts = sorted(FIXTURES.glob("*.txt"))
    assert len(texts) >= 10
    for path in texts:
        source = path.with_suffix(".source")
        assert source.exists(), f"{path.name} has no {source.name}"
        assert "https://github.com/" in source.read_text(encoding="utf-8")


# ---- real nvidia-smi tables ----------------------------------------------------

# fixture, GPUs readable in the excerpt, first name, memory.total MiB, driver, CUDA, MIG modes
TABLES = [
    ("table_h100_nccl.txt", 1, "NVIDIA H100 80GB HBM3", 81559, "550.54.15", "12.4", ["Disabled"]),
    (
        "table_h100_gpuburn.txt",
        2,
        "NVIDIA H100 80GB HBM3",
        81559,
        "550.90.07",
        "12.4",
        ["Disabled", "Disabled"],
    ),
    (
        "table_a800_prompt.txt",
        2,
        "NVIDIA A800-SXM4-80GB",
        81920,
        "535.86.10",
        "12.2",
        ["Disabled", None],
    ),
    ("table_a100_sxm_450.txt", 2, "A100-SXM-80GB", 81252, "450.191.01", "11.3", ["Disabled"] * 2),
    (
        "table_a100_80g_truncated_name.txt",
        2,
        "NVIDIA A100 80G...",
        80994,
        "470.141.03",
        "11.4",
        ["Disabled", None],
    ),
    ("table_rtx4090.txt", 2, "NVIDIA GeForce RTX 4090", 24564, "550.163.01", "12.4", [None, None]),
    (
        "table_mig_a100.txt",
        2,
        "NVIDIA A100-SXM...",
        81920,
        "510.47.03",
        "11.6",
        ["Disabled", "Enabled"],
    ),
    ("table_b200_kmd.txt", 2, "NVIDIA B200", 183359, "610.43.02", "13.3", ["Disabled"] * 2),
    (
        "table_a100_40gb_cuda13.txt",
        2,
        "NVIDIA A100-SXM4-40GB",
        40960,
        "580.126.09",
        "13.0",
        ["Disabled"] * 2,
    ),
    ("table_gtx1080ti_wddm.txt", 1, "NVIDIA GeForce GTX 1080 Ti", 11264, "531.14", "12.1", [None]),
]


@pytest.mark.parametrize(("name", "count", "gpu", "mib", "driver", "cuda", "migs"), TABLES)
def test_real_tables_when_the_query_fails(
    name: str, count: int, gpu: str, mib: int, driver: str, cuda: str, migs: list[str | None]
) -> None:
    """--query-gpu failed (old driver) but the plain table answered: GPUs come from the table."""
    csv = fixture("error_compute_cap.txt")
    facts = facts_from_probe(probe(**smi(csv, csv_rc=2, table=fixture(name))))
    assert facts.nvidia_smi == "ok"
    assert facts.gpu_count == count
    assert [g.index for g in facts.gpus] == list(range(count))
    assert facts.gpus[0].name == gpu
    assert {g.memory_total_mib for g in facts.gpus} == {mib}
    assert [g.mig_mode for g in facts.gpus] == migs
    assert facts.driver_version == driver
    assert facts.cuda_version == cuda
    assert any("compute_cap" in w for w in facts.warnings)


def test_mig_rows_are_not_gpus() -> None:
    facts = facts_from_probe(probe(**smi("x", csv_rc=2, table=fixture("table_mig_a100.txt"))))
    assert facts.gpu_count == 2
    assert facts.mig_enabled


def test_used_memory_from_the_table() -> None:
    facts = facts_from_probe(probe(**smi("x", csv_rc=2, table=fixture("table_h100_gpuburn.txt"))))
    assert [g.memory_used_mib for g in facts.gpus] == [72790, 72790]


# ---- the --query-gpu csv -----------------------------------------------------


def eight_h100_csv(fields: str = FULL_FIELDS) -> str:
    """8 GPUs in the csv shape of the probe's query; values from the H100 table fixture."""
    h100 = lookup("H100-80GB")
    values = {
        "name": h100.smi_name,
        "memory.total": str(h100.memory_mib),
        "memory.used": "0",
        "compute_cap": h100.compute_capability,
        "mig.mode.current": "Disabled",
        "driver_version": "550.54.15",
    }
    rows = []
    for i in range(8):
        row = dict(values, index=str(i), uuid=f"GPU-e132d16d-fe10-de80-9b80-63b7f04fbdf{i}")
        rows.append(", ".join(row[f] for f in fields.split(",")))
    return "\n".join(rows)


def test_eight_gpus_from_the_query_and_cuda_from_the_table_header() -> None:
    table = fixture("table_h100_nccl.txt")
    facts = facts_from_probe(probe(**smi(eight_h100_csv(), table=table)))
    assert facts.nvidia_smi == "ok"
    assert facts.nvidia_smi_error is None
    assert facts.gpu_count == 8
    assert {g.name for g in facts.gpus} == {"NVIDIA H100 80GB HBM3"}
    assert {g.memory_total_mib for g in facts.gpus} == {81559}
    assert {g.compute_capability for g in facts.gpus} == {"9.0"}
    assert facts.gpus[7].uuid == "GPU-e132d16d-fe10-de80-9b80-63b7f04fbdf7"
    assert facts.driver_version == "550.54.15"
    assert facts.cuda_version == "12.4"
    assert not facts.mig_enabled
    assert facts.gpu_summary() == "8x NVIDIA H100 80GB HBM3 (79.6 GiB)"
    assert facts.warnings == []


def test_query_without_compute_cap_on_an_old_driver() -> None:
    facts = facts_from_probe(probe(**smi(eight_h100_csv(NO_CC_FIELDS), fields=NO_CC_FIELDS)))
    assert facts.gpu_count == 8
    assert {g.compute_capability for g in facts.gpus} == {None}


def test_real_csv_with_its_header_as_field_list() -> None:
    header, *rows = fixture("csv_titan_rtx5880.txt").splitlines()
    fields = ",".join(f.strip() for f in header.split(","))
    facts = facts_from_probe(probe(**smi("\n".join(rows), fields=fields)))
    assert [(g.index, g.name, g.compute_capability) for g in facts.gpus] == [
        (0, "NVIDIA TITAN V", "7.0"),
        (1, "NVIDIA RTX 5880 Ada Generation", "8.9"),
    ]
    assert facts.driver_version == "570.86.15"
    assert "GPU 0 reports no memory.total" in facts.warnings


def test_real_noheader_nounits_csv_without_index() -> None:
    fields = (
        "power.limit,power.min_limit,power.max_limit,memory.total,vbios_version,driver_version,"
        "name,gpu_uuid,power.draw,temperature.gpu,temperature.memory,clocks.current.graphics,"
        "clocks.sm,clocks.mem,utilization.gpu,utilization.memory,fan.speed,"
        "pcie.link.width.current,pstate"
    )
    facts = facts_from_probe(probe(**smi(fixture("csv_rtx2080_noheader.txt"), fields=fields)))
    (gpu,) = facts.gpus
    assert (gpu.index, gpu.name, gpu.memory_total_mib) == (0, "GeForce RTX 2080", 7979)
    assert facts.driver_version == "440.64"


def test_placeholders_mig_and_unsupported_fields() -> None:
    csv = (
        "0, NVIDIA A100-SXM4-80GB, 81920, 23100, 8.0, GPU-a, Enabled, 535.216.01\n"
        "1, NVIDIA A100-SXM4-80GB, 81920, [N/A], [N/A], [N/A], [Not Supported], 535.216.01\n"
        "WARNING: infoROM is corrupted at gpu 0000:41:00.0\n"
    )
    facts = facts_from_probe(probe(**smi(csv)))
    a, b = facts.gpus
    assert (a.mig_mode, a.compute_capability, a.memory_used_mib) == ("Enabled", "8.0", 23100)
    assert (b.mig_mode, b.compute_capability, b.memory_used_mib, b.uuid) == (None, None, None, None)
    assert facts.mig_enabled
    assert any("infoROM" in w for w in facts.warnings)


def test_a_product_name_with_a_comma() -> None:
    csv = "0, NVIDIA Graphics Device, Rev A, 16384, 0, 8.9, GPU-x, [N/A], 570.86.15"
    (gpu,) = facts_from_probe(probe(**smi(csv))).gpus
    assert (gpu.name, gpu.memory_total_mib) == ("NVIDIA Graphics Device, Rev A", 16384)


# ---- no GPU tool, a broken driver --------------------------------------------


def test_no_nvidia_smi() -> None:
    facts = parse_probe_output(output(probe()))
    assert facts.nvidia_smi == "missing"
    assert facts.nvidia_smi_error == "nvidia-smi is not on PATH"
    assert facts.gpus == []
    assert facts.gpu_summary() == "no GPUs"
    assert facts.driver_version is None and facts.cuda_version is None


def test_driver_unreachable() -> None:
    message = fixture("error_no_driver.txt")
    facts = facts_from_probe(probe(**smi(message, csv_rc=9, table=message, table_rc=9)))
    assert facts.nvidia_smi == "error"
    assert facts.gpus == []
    assert facts.nvidia_smi_error is not None
    assert facts.nvidia_smi_error.startswith("nvidia-smi failed (exit status 9): NVIDIA-SMI has")
    assert "couldn't communicate with the NVIDIA driver" in facts.nvidia_smi_error
    assert facts.driver_version is None


def test_nvidia_smi_timed_out() -> None:
    facts = facts_from_probe(probe(**smi("", csv_rc=124, table="", table_rc=124)))
    assert facts.nvidia_smi == "error"
    assert facts.nvidia_smi_error == "nvidia-smi did not answer in time (timed out)"


def test_ok_but_no_gpus_listed() -> None:
    facts = facts_from_probe(probe(**smi("", table="")))
    assert facts.nvidia_smi == "ok"
    assert facts.gpus == []
    assert "nvidia-smi answered but listed no GPUs" in facts.warnings


# ---- RAM, CPU, disks ---------------------------------------------------------


@pytest.mark.parametrize(
    ("v2", "v1", "limit"),
    [
        ("68719476736", "", 64 * GIB),  # cgroup v2 memory.max
        ("max", "", None),
        ("", "34359738368", 32 * GIB),  # cgroup v1 memory.limit_in_bytes
        ("", "9223372036854771712", None),  # v1 "no limit"
        ("", "", None),  # no cgroup files
    ],
)
def test_cgroup_limited_ram(v2: str, v1: str, limit: int | None) -> None:
    facts = facts_from_probe(probe(cgroup_memory_max=v2, cgroup_memory_limit_v1=v1))
    host = 263846864 * 1024
    assert facts.ram_host_bytes == host
    assert facts.ram_cgroup_limit_bytes == limit
    assert facts.ram_total_bytes == (min(host, limit) if limit else host)


@pytest.mark.parametrize(
    ("cpu_max", "quota_v1", "period_v1", "expected"),
    [
        ("800000 100000", "", "", 8),
        ("150000 100000", "", "", 2),  # 1.5 CPUs of quota: round up
        ("max 100000", "", "", 32),
        ("", "-1", "100000", 32),
        ("", "400000", "100000", 4),
    ],
)
def test_cpu_count_honours_the_cgroup_quota(
    cpu_max: str, quota_v1: str, period_v1: str, expected: int
) -> None:
    facts = facts_from_probe(
        probe(
            cgroup_cpu_max=cpu_max,
            cgroup_cpu_quota_v1=quota_v1,
            cgroup_cpu_period_v1=period_v1,
        )
    )
    assert facts.cpu_count == expected


def test_disks_and_shm() -> None:
    df_header = "Filesystem     1024-blocks      Used Available Capacity Mounted on\n"
    disks = [
        {
            "path": "~/.mlctl/models",
            "dir": "/root/.mlctl/models",
            "at": "/root",
            "df": df_header + "overlay         104806400  52428800  52377600      51% /",
        },
        {
            "path": "/workspace",
            "dir": "/workspace",
            "at": "/workspace",
            "df": df_header + "/dev/md0 with space 7812500000 12500000 7800000000  1% /work space",
        },
        {"path": "/data", "dir": "/data", "at": "/", "df": ""},
    ]
    facts = facts_from_probe(probe(disks=disks))
    assert facts.disk_free_bytes == {
        "~/.mlctl/models": 52377600 * 1024,
        "/workspace": 7800000000 * 1024,
    }
    assert facts.disk_measured_at == {"~/.mlctl/models": "/root", "/workspace": "/workspace"}
    assert "no free-space figure for /data" in facts.warnings
    assert facts.shm_bytes == 64 * 1024 * 1024


# ---- tools, host, deployments -----------------------------------------------


def tool(out: str, rc: int = 0) -> dict[str, str]:
    return {"path": "/usr/bin/x", "out": out, "rc": str(rc)}


def test_tool_versions() -> None:
    tools = {
        "python3": tool("Python 3.10.12"),
        "uv": tool("uv 0.4.18 (7b55e9790 2024-10-01)"),
        "docker": tool("Docker version 24.0.7, build afdd53b"),
        "vllm": tool(
            "INFO 10-10 12:00:00 __init__.py:190] Automatically detected platform cuda.\n"
            "0.6.3.post1"
        ),
        "ollama": tool(
            "Warning: could not connect to a running Ollama instance\n"
            "Warning: client version is 0.3.12"
        ),
        "llama-server": tool(
            "version: 3848 (c919d5db)\n"
            "built with cc (Ubuntu 11.4.0-1ubuntu1~22.04) 11.4.0 for x86_64-linux-gnu"
        ),
        "hf": tool("\x1b[32m\u2713 hf version\x1b[0m\n  version: 1.1.2"),
        "future-tool": tool("no version here", rc=1),
    }
    facts = facts_from_probe(probe(tools=tools))
    assert facts.tools == {
        "python3": "3.10.12",
        "uv": "0.4.18",
        "docker": "24.0.7",
        "vllm": "0.6.3.post1",
        "ollama": "0.3.12",
        "llama-server": "b3848",
        "hf": "1.1.2",
        "future-tool": "unknown",
    }
    assert facts.python_version == "3.10.12"


def test_absent_tools_are_none() -> None:
    facts = facts_from_probe(probe(tools={"python3": None, "docker": None}))
    assert facts.tools["python3"] is None
    assert facts.tools["vllm"] is None  # not reported at all: absent too
    assert facts.python_version is None


def test_host_fields_and_deployments() -> None:
    facts = facts_from_probe(probe(deployments=["qwen", 'it\'s "odd"', 3]))
    assert facts.source == "probe"
    assert facts.hostname == "gpu-box"
    assert facts.os == "Ubuntu 22.04.4 LTS"
    assert facts.kernel == "Linux 5.15.0-107-generic"
    assert facts.arch == "x86_64"
    assert facts.root == "/root/.mlctl"
    assert facts.deployments == ['it\'s "odd"', "qwen"]


# ---- finding the JSON in what came back -----------------------------------------


def test_banner_before_the_json() -> None:
    banner = (
        "Welcome to Ubuntu 22.04.4 LTS (GNU/Linux 5.15.0-107-generic x86_64)\n"
        "\n * Documentation:  https://help.ubuntu.com\n"
        'Last login: Tue Oct  1 10:00:00 2024 from 10.0.0.1 {"not": "this"}\n'
    )
    facts = parse_probe_output(output(probe(**smi(eight_h100_csv())), banner=banner))
    assert facts.gpu_count == 8


def test_banner_without_newline_and_crlf() -> None:
    text = "vast.ai says hi" + output(probe()).replace("\n", "\r\n")
    assert parse_probe_output(text).hostname == "gpu-box"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "bash: sh: command not found\n",
        "This account is currently not available.\n",
        '{"hostname": "x"}\n',  # JSON, but not the probe's
    ],
)
def test_garbage_is_a_remote_error(text: str) -> None:
    with pytest.raises(RemoteError) as info:
        parse_probe_output(text)
    assert "did not answer with mlctl's facts JSON" in info.value.message
    assert info.value.hint


def test_garbage_is_shown_in_the_message() -> None:
    with pytest.raises(RemoteError, match="This account is currently not available"):
        parse_probe_output("This account is currently not available.\n")


def test_cut_off_json_is_a_remote_error() -> None:
    text = output(probe())[:-40]
    with pytest.raises(RemoteError, match="cut off"):
        parse_probe_output(text)


# ---- the script itself ---------------------------------------------------------


def test_probe_script_is_package_data() -> None:
    script = probe_script()
    assert script.startswith("# mlctl host probe")
    assert PROBE_MARKER in script
    assert "set -e" not in script


def test_probe_argv() -> None:
    assert probe_argv() == ["sh", "-s", "--"]
    assert probe_argv("~/.mlctl", ["/workspace", "~/models"]) == [
        "sh",
        "-s",
        "--",
        "--root",
        "~/.mlctl",
        "/workspace",
        "~/models",
    ]
