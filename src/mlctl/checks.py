"""Host checks for ``mlctl doctor`` and deploy's preflight: facts against a profile.

Pure: each check is a function of :class:`HostFacts` and a :class:`Profile`
that returns a :class:`Check` (ok / warn / fail) with a one-line fix. The
I/O (SSH, the probe, reading remote logs) lives in ``doctor.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from mlctl.facts import HostFacts
from mlctl.fit import GB, compute_fit, disk_bytes_needed, profiles_that_fit
from mlctl.gpus import family_of
from mlctl.profiles import Profile

Status = Literal["ok", "warn", "fail"]
GIB = 1024**3
# NCCL moves tensor-parallel traffic through /dev/shm; Docker's default is 64 MiB.
MIN_SHM_BYTES = 1 * GIB


@dataclass(frozen=True)
class Check:
    """One line of doctor's report."""

    id: str
    title: str
    status: Status
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, Any]:
        """This check as JSON-ready data."""
        return asdict(self)


def _version_tuple(value: str) -> tuple[int, ...]:
    parts = []
    for piece in value.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_nvidia_smi(facts: HostFacts) -> Check:
    """Is there an NVIDIA driver that answers?"""
    if facts.nvidia_smi == "missing":
        return Check(
            "nvidia-smi",
            "NVIDIA driver",
            "fail",
            "nvidia-smi is not installed on the host",
            "Rent a box with NVIDIA GPUs and drivers, or start the container with GPU access "
            "(docker run --gpus all).",
        )
    if facts.nvidia_smi == "error":
        return Check(
            "nvidia-smi",
            "NVIDIA driver",
            "fail",
            f"nvidia-smi cannot reach the driver: {facts.nvidia_smi_error or 'unknown error'}",
            "The driver is not loaded or the container has no GPU access: restart the instance "
            "or ask the provider; inside Docker use --gpus all.",
        )
    return Check(
        "nvidia-smi",
        "NVIDIA driver",
        "ok",
        f"driver {facts.driver_version or '?'}, CUDA {facts.cuda_version or '?'}",
    )


def check_gpu_count(facts: HostFacts, profile: Profile) -> Check:
    """Enough GPUs on this node for the profile's tensor parallel size."""
    need = profile.hardware.gpus_per_node
    have = facts.gpu_count
    if have < need:
        return Check(
            "gpu-count",
            "GPU count",
            "fail",
            f"{have} GPU(s), profile {profile.name} needs {need} per node",
            f"Rent a box with {need} GPUs, or pick a profile for {have} GPU(s) "
            "(`mlctl profiles list`).",
        )
    if have > need:
        return Check(
            "gpu-count",
            "GPU count",
            "warn",
            f"{have} GPUs, the profile uses {need}",
            f"Set serve.tensor_parallel to {have} in your own copy of the profile to use them all.",
        )
    return Check("gpu-count", "GPU count", "ok", f"{have} GPU(s)")


def check_gpu_model(facts: HostFacts, profile: Profile) -> Check:
    """The GPU family and memory per GPU the profile expects."""
    if not facts.gpus:
        return Check(
            "gpu-model",
            "GPU model and memory",
            "fail",
            "no GPUs to check",
            "See the NVIDIA driver check.",
        )
    names = sorted({g.name for g in facts.gpus})
    smallest = facts.min_gpu_memory_bytes
    need = int(profile.hardware.vram_gb * GB)
    families = {family_of(name) for name in names}
    detail = f"{', '.join(names)}, {smallest / GIB:.1f} GiB each"
    if smallest < need * 0.97:
        return Check(
            "gpu-model",
            "GPU model and memory",
            "fail",
            f"{detail}; the profile needs {profile.hardware.vram_gb:g} GB per GPU",
            f"Rent {profile.hardware.gpu} GPUs (or larger), or choose a profile for these GPUs.",
        )
    if not families <= set(profile.gpu_families):
        known = ", ".join(profile.gpu_families)
        return Check(
            "gpu-model",
            "GPU model and memory",
            "warn",
            f"{detail}; the profile was made for {known}",
            "The memory is enough; speed and kernel support may differ from the profile's GPUs.",
        )
    return Check("gpu-model", "GPU model and memory", "ok", detail)


def check_compute_capability(facts: HostFacts, profile: Profile) -> Check:
    """Compute capability against the profile's minimum and the checkpoint's quant format."""
    caps = [g.compute_capability for g in facts.gpus if g.compute_capability]
    if not caps:
        return Check(
            "compute-capability",
            "Compute capability",
            "warn",
            "unknown (old driver or no GPU)",
            "Upgrade the NVIDIA driver to >= 510.",
        )
    lowest = min(caps, key=_version_tuple)
    low = _version_tuple(lowest)
    need = profile.hardware.min_compute_capability
    quant = profile.checkpoint.quant
    if low < _version_tuple(need):
        return Check(
            "compute-capability",
            "Compute capability",
            "fail",
            f"{lowest}, the profile needs >= {need} for {quant}",
            "Rent newer GPUs (Ampere 8.0+, Ada 8.9, Hopper 9.0, Blackwell 10.0) or pick "
            "another checkpoint format.",
        )
    if quant == "fp8" and low < (8, 9):
        return Check(
            "compute-capability",
            "Compute capability",
            "warn",
            f"{lowest}: no native FP8 (needs >= 8.9); vLLM falls back to Marlin W8A16",
            "Expect lower throughput; Hopper/Ada GPUs run FP8 natively.",
        )
    if quant == "nvfp4" and low < (10, 0):
        return Check(
            "compute-capability",
            "Compute capability",
            "warn",
            f"{lowest}: no native FP4 (needs Blackwell, 10.0); vLLM uses the Marlin "
            "weight-only FP4 kernel",
            "Fine for memory; for FP4 speed rent B200s, or use FP8 on H200s.",
        )
    return Check("compute-capability", "Compute capability", "ok", f"{lowest} ({quant} supported)")


def check_driver(facts: HostFacts, profile: Profile) -> Check:
    """Driver and the CUDA version it supports against the engine's need."""
    hw = profile.hardware
    driver, cuda = facts.driver_version, facts.cuda_version
    problems = []
    if hw.min_driver and driver and _version_tuple(driver) < _version_tuple(hw.min_driver):
        problems.append(f"driver {driver} < {hw.min_driver}")
    if hw.min_cuda and cuda and _version_tuple(cuda) < _version_tuple(hw.min_cuda):
        problems.append(f"CUDA {cuda} < {hw.min_cuda}")
    if problems:
        return Check(
            "driver",
            "Driver / CUDA",
            "fail",
            "; ".join(problems) + f" (needed by {profile.engine.kind} {profile.engine.version})",
            "Pick a host image with a newer NVIDIA driver (most providers let you filter by CUDA "
            "version), or pin an older engine in your own profile.",
        )
    if not driver:
        return Check(
            "driver",
            "Driver / CUDA",
            "warn",
            "driver version unknown",
            "See the NVIDIA driver check.",
        )
    return Check("driver", "Driver / CUDA", "ok", f"driver {driver}, CUDA {cuda or '?'}")


# The probe reports its default candidate, mlctl's own models directory, under this key.
MODELS_DIR_KEY = "~/.mlctl/models"


def models_free_bytes(facts: HostFacts, models_dir: str | None = None) -> tuple[str, int] | None:
    """The directory mlctl downloads into and its free bytes (else the roomiest one seen)."""
    if not facts.disk_free_bytes:
        return None
    for key in (models_dir, MODELS_DIR_KEY):
        if key and key in facts.disk_free_bytes:
            return key, facts.disk_free_bytes[key]
    path = max(facts.disk_free_bytes, key=lambda p: facts.disk_free_bytes[p])
    return path, facts.disk_free_bytes[path]


def check_disk(facts: HostFacts, profile: Profile, models_dir: str | None = None) -> Check:
    """Free disk at the models directory against the checkpoint's size."""
    need = disk_bytes_needed(profile)
    found = models_free_bytes(facts, models_dir)
    if found is None:
        return Check(
            "disk",
            "Disk for the checkpoint",
            "warn",
            "free space unknown",
            "Check with `df -h` on the host.",
        )
    path, free = found
    detail = f"{free / GB:,.1f} GB free at {path}, the checkpoint needs {need / GB:,.1f} GB"
    if free < need:
        return Check(
            "disk",
            "Disk for the checkpoint",
            "fail",
            detail,
            "Free space, or mount a larger volume (on rented boxes usually /workspace or /data) "
            "and download there.",
        )
    if free < need * 1.05:
        return Check(
            "disk",
            "Disk for the checkpoint",
            "warn",
            detail + " (under 5% spare)",
            "Leave room for logs and the engine's caches.",
        )
    return Check("disk", "Disk for the checkpoint", "ok", detail)


def check_ram(facts: HostFacts, profile: Profile) -> Check:
    """RAM (the container's cgroup limit when lower than the host's) against the profile."""
    have = facts.ram_total_bytes
    need = int(profile.hardware.ram_gb * GB)
    if have is None:
        return Check("ram", "RAM", "warn", "unknown", "Check with `free -g` on the host.")
    limited = (
        f" (container limit; host has {facts.ram_host_bytes / GB:,.0f} GB)"
        if facts.ram_cgroup_limit_bytes
        and facts.ram_host_bytes
        and facts.ram_cgroup_limit_bytes < facts.ram_host_bytes
        else ""
    )
    detail = f"{have / GB:,.1f} GB{limited}, the profile expects {profile.hardware.ram_gb:g} GB"
    if have < need * 0.9:
        # The fit check enforces what the checkpoint really needs in RAM (MoE experts
        # kept in RAM by llama.cpp); below the profile's figure is a warning.
        return Check(
            "ram",
            "RAM",
            "warn",
            detail,
            "Loading may be slow (page cache); rent a box with more RAM if it fails.",
        )
    return Check("ram", "RAM", "ok", detail)


def check_shm(facts: HostFacts, profile: Profile) -> Check:
    """/dev/shm size for NCCL when tensor parallel runs in a container."""
    tp = profile.serve.tensor_parallel or profile.hardware.gpus_per_node
    if facts.shm_bytes is None:
        return Check("shm", "/dev/shm", "warn", "size unknown", "Check with `df -h /dev/shm`.")
    detail = f"{facts.shm_bytes / GIB:,.1f} GiB"
    if tp > 1 and facts.shm_bytes < MIN_SHM_BYTES:
        return Check(
            "shm",
            "/dev/shm",
            "fail",
            f"{detail}; NCCL needs more for tensor parallel over {tp} GPUs",
            "Start the container with --ipc=host or --shm-size=16g (ask the provider for a "
            "template with a larger /dev/shm).",
        )
    return Check("shm", "/dev/shm", "ok", detail)


def check_mig(facts: HostFacts) -> Check | None:
    """MIG splits a GPU into slices the engines see as small GPUs."""
    enabled = [g.index for g in facts.gpus if (g.mig_mode or "").lower() == "enabled"]
    if not enabled:
        return None
    return Check(
        "mig",
        "MIG",
        "warn",
        f"MIG is enabled on GPU(s) {enabled}",
        "Ask the provider for whole GPUs, or disable MIG (`nvidia-smi -mig 0`, needs root).",
    )


def check_fit(facts: HostFacts, profile: Profile, alternatives: Iterable[Profile] = ()) -> Check:
    """Does the model fit these GPUs at all, and at what context."""
    report = compute_fit(profile, facts)
    if report.fits:
        return Check(
            "fit",
            "Memory fit",
            "warn" if report.warnings else "ok",
            f"context {report.chosen_context:,} tokens x {report.concurrency} "
            f"(largest that fits {report.max_context_fit:,})"
            + (f"; {'; '.join(report.warnings)}" if report.warnings else ""),
        )
    names = [n for n in profiles_that_fit(list(alternatives), facts) if n != profile.name]
    return Check(
        "fit",
        "Memory fit",
        "fail",
        "; ".join(report.reasons) + ". " + report.sums(),
        ("Profiles that fit this host: " + ", ".join(names) + ".")
        if names
        else "No built-in profile fits this host: rent more or larger GPUs.",
    )


def check_local_port(port: int, free: bool | None) -> Check | None:
    """Is the local port for the tunnel free on this machine?"""
    if free is None:
        return None
    if free:
        return Check("local-port", "Local port", "ok", f"127.0.0.1:{port} is free")
    return Check(
        "local-port",
        "Local port",
        "warn",
        f"127.0.0.1:{port} is in use on this machine",
        "mlctl will take the next free port; or stop what holds it (`lsof -i :PORT`).",
    )


def host_checks(
    facts: HostFacts,
    profile: Profile | None,
    *,
    alternatives: Iterable[Profile] = (),
    models_dir: str | None = None,
    local_port_free: bool | None = None,
) -> list[Check]:
    """All host checks, in the order a person reads them."""
    checks: list[Check] = [check_nvidia_smi(facts)]
    mig = check_mig(facts)
    if mig:
        checks.append(mig)
    if profile is None:
        return checks
    checks += [
        check_gpu_count(facts, profile),
        check_gpu_model(facts, profile),
        check_compute_capability(facts, profile),
        check_driver(facts, profile),
        check_fit(facts, profile, alternatives),
        check_disk(facts, profile, models_dir),
        check_ram(facts, profile),
        check_shm(facts, profile),
    ]
    port = check_local_port(profile.serve.port, local_port_free)
    if port:
        checks.append(port)
    return checks


def worst(checks: Iterable[Check]) -> Status:
    """The worst status among ``checks``."""
    statuses = {c.status for c in checks}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"
