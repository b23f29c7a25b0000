"""Doctor's host checks: each passes and fails for the right reason, with a fix."""

from __future__ import annotations

from typing import Any

from mlctl import profiles
from mlctl.checks import host_checks, worst
from mlctl.facts import GpuInfo, HostFacts

GIB = 1024**3


def host(
    name: str = "NVIDIA A100-SXM4-80GB",
    mib: int = 81920,
    cc: str = "8.0",
    count: int = 8,
    **extra: Any,
) -> HostFacts:
    base: dict[str, Any] = dict(
        source="probe",
        nvidia_smi="ok",
        driver_version="550.54.15",
        cuda_version="12.4",
        ram_total_bytes=1000 * 10**9,
        disk_free_bytes={"/root/.mlctl/models": 2000 * 10**9},
        shm_bytes=64 * GIB,
        gpus=[
            GpuInfo(index=i, name=name, memory_total_mib=mib, compute_capability=cc)
            for i in range(count)
        ],
    )
    base.update(extra)
    return HostFacts(**base)


def by_id(checks: list[Any]) -> dict[str, Any]:
    return {c.id: c for c in checks}


def test_a100_box_passes_a100_profile() -> None:
    checks = host_checks(host(), profiles.load("a100-nvfp4"), local_port_free=True)
    statuses = {c.id: c.status for c in checks}
    assert statuses["gpu-count"] == "ok" and statuses["gpu-model"] == "ok"
    assert statuses["fit"] == "ok" and statuses["disk"] == "ok"
    # NVFP4 on Ampere is a Marlin warning, never a failure
    assert statuses["compute-capability"] == "warn"
    assert worst(checks) == "warn"


def test_4090_box_fails_a100_profile_with_fixes() -> None:
    checks = by_id(
        host_checks(
            host("NVIDIA GeForce RTX 4090", 24564, "8.9", 4),
            profiles.load("a100-nvfp4"),
            alternatives=[profiles.load_file(e.path) for e in profiles.list_entries()],
        )
    )
    assert checks["gpu-count"].status == "fail" and "needs 8" in checks["gpu-count"].detail
    assert checks["gpu-model"].status == "fail" and "80 GB per GPU" in checks["gpu-model"].detail
    assert checks["fit"].status == "fail"
    assert "4090-gguf" in checks["fit"].fix  # names the profile that fits this box
    for c in checks.values():
        if c.status == "fail":
            assert c.fix


def test_missing_and_broken_driver() -> None:
    missing = by_id(host_checks(host(count=0, nvidia_smi="missing"), None))
    assert missing["nvidia-smi"].status == "fail" and "--gpus all" in missing["nvidia-smi"].fix
    broken = by_id(
        host_checks(
            host(
                count=0,
                nvidia_smi="error",
                nvidia_smi_error="NVIDIA-SMI has failed because it couldn't communicate with the "
                "NVIDIA driver.",
            ),
            profiles.load("a100-nvfp4"),
        )
    )
    assert broken["nvidia-smi"].status == "fail" and "couldn't communicate" in (
        broken["nvidia-smi"].detail
    )
    assert broken["gpu-count"].status == "fail"


def test_fp8_needs_ada_or_hopper() -> None:
    strict = by_id(host_checks(host(), profiles.load("h100-fp8")))
    assert strict["compute-capability"].status == "fail"  # the profile asks for >= 8.9
    data = profiles.load("h100-fp8").model_dump()
    data["hardware"]["min_compute_capability"] = "8.0"
    lenient = by_id(host_checks(host(), profiles.Profile.model_validate(data)))
    assert lenient["compute-capability"].status == "warn"
    assert "Marlin W8A16" in lenient["compute-capability"].detail


def test_old_driver() -> None:
    checks = by_id(
        host_checks(
            host(driver_version="470.82.01", cuda_version="11.4"), profiles.load("a100-nvfp4")
        )
    )
    assert checks["driver"].status == "fail"
    assert "470.82.01 < 525" in checks["driver"].detail and "11.4 < 12.0" in checks["driver"].detail


def test_disk_too_small_names_the_sizes() -> None:
    checks = by_id(
        host_checks(
            host(disk_free_bytes={"/": 300 * 10**9, "/workspace": 350 * 10**9}),
            profiles.load("a100-nvfp4"),
        )
    )
    disk = checks["disk"]
    assert disk.status == "fail"
    assert "350.0 GB free at /workspace" in disk.detail and "403.1 GB" in disk.detail


def test_cgroup_ram_limit_is_what_counts() -> None:
    facts = host(
        "NVIDIA GeForce RTX 4090",
        24564,
        "8.9",
        4,
        ram_total_bytes=64 * 10**9,
        ram_host_bytes=512 * 10**9,
        ram_cgroup_limit_bytes=64 * 10**9,
    )
    checks = by_id(host_checks(facts, profiles.load("4090-gguf")))
    assert checks["ram"].status == "warn" and "container limit" in checks["ram"].detail
    # the fit enforces what the MoE experts kept in RAM really need
    assert checks["fit"].status == "fail" and "RAM" in checks["fit"].detail


def test_small_shm_fails_tensor_parallel() -> None:
    checks = by_id(host_checks(host(shm_bytes=64 * 1024**2), profiles.load("a100-nvfp4")))
    assert checks["shm"].status == "fail" and "--shm-size" in checks["shm"].fix
    single = by_id(
        host_checks(
            host("NVIDIA GeForce RTX 4090", 24564, "8.9", 1, shm_bytes=64 * 1024**2),
            profiles.load("4090-ministral-14b"),
        )
    )
    assert single["shm"].status == "ok"


def test_mig_and_local_port() -> None:
    facts = host()
    facts.gpus[0].mig_mode = "Enabled"
    checks = by_id(host_checks(facts, profiles.load("a100-nvfp4"), local_port_free=False))
    assert checks["mig"].status == "warn"
    assert checks["local-port"].status == "warn"
