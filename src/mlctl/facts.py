"""Host facts: what a GPU box has, as one typed object.

``HostFacts`` is produced either by the remote probe (see ``probe.sh`` and
:func:`parse_probe_output`) or assumed from a profile / ``--gpus`` spec when
planning without a host (:func:`assumed_facts`). Pure: no I/O here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mlctl.gpus import GpuModel


class GpuInfo(BaseModel):
    """One GPU as nvidia-smi reports it."""

    model_config = ConfigDict(extra="forbid")

    index: int
    name: str
    memory_total_mib: int
    memory_used_mib: int | None = None
    compute_capability: str | None = None
    uuid: str | None = None
    mig_mode: str | None = None

    @property
    def memory_total_bytes(self) -> int:
        """Raw memory in bytes."""
        return self.memory_total_mib * 1024 * 1024


class HostFacts(BaseModel):
    """Everything mlctl knows about one host (one node)."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["probe", "assumed"] = "probe"
    hostname: str | None = None
    nodes: int = 1
    gpus: list[GpuInfo] = Field(default_factory=list)
    nvidia_smi: Literal["ok", "missing", "error", "assumed"] = "ok"
    nvidia_smi_error: str | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    cpu_count: int | None = None
    ram_total_bytes: int | None = None
    ram_host_bytes: int | None = None
    ram_cgroup_limit_bytes: int | None = None
    disk_free_bytes: dict[str, int] = Field(default_factory=dict)
    shm_bytes: int | None = None
    tools: dict[str, str | None] = Field(default_factory=dict)
    deployments: list[str] = Field(default_factory=list)

    @property
    def gpu_count(self) -> int:
        """Number of GPUs on this node."""
        return len(self.gpus)

    @property
    def min_gpu_memory_bytes(self) -> int:
        """The smallest GPU's memory (the fit is bound by it); 0 without GPUs."""
        return min((g.memory_total_bytes for g in self.gpus), default=0)

    def gpu_summary(self) -> str:
        """A short human description such as ``8x NVIDIA H100 80GB HBM3 (79.6 GiB)``."""
        if not self.gpus:
            return "no GPUs"
        names = {g.name for g in self.gpus}
        name = names.pop() if len(names) == 1 else "mixed GPUs"
        gib = self.min_gpu_memory_bytes / 1024**3
        per_node = f"{len(self.gpus)}x {name} ({gib:.1f} GiB)"
        return per_node if self.nodes == 1 else f"{self.nodes} nodes of {per_node}"


def assumed_facts(
    count: int,
    gpu: GpuModel,
    nodes: int = 1,
    ram_bytes: int | None = None,
    disk_bytes: int | None = None,
) -> HostFacts:
    """Return facts for a host that is assumed, not probed (planning offline)."""
    return HostFacts(
        source="assumed",
        nodes=nodes,
        gpus=[
            GpuInfo(
                index=i,
                name=gpu.smi_name,
                memory_total_mib=gpu.memory_mib,
                compute_capability=gpu.compute_capability,
            )
            for i in range(count)
        ],
        nvidia_smi="assumed",
        ram_total_bytes=ram_bytes,
        disk_free_bytes={"~/.mlctl/models": disk_bytes} if disk_bytes else {},
    )
