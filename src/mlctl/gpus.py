"""Catalogue of GPU models mlctl knows, and the ``8xH100-80GB`` spec syntax.

Pure data. ``memory_mib`` is what ``nvidia-smi --query-gpu=memory.total``
reports for that SKU (MiB), which is what the fit arithmetic must use: a
"80GB" card is 80 GiB of raw memory, not 80 GB. The same table drives the
sandbox host's stand-in ``nvidia-smi``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlctl.errors import UsageError

MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuModel:
    """One GPU SKU: its catalogue key, family and what nvidia-smi reports."""

    key: str
    family: str
    smi_name: str
    memory_mib: int
    compute_capability: str

    @property
    def memory_bytes(self) -> int:
        """Raw memory in bytes."""
        return self.memory_mib * MIB


# memory.total values as nvidia-smi prints them for these SKUs (MiB); compute
# capability from NVIDIA's CUDA GPUs table (developer.nvidia.com/cuda-gpus).
CATALOGUE: tuple[GpuModel, ...] = (
    GpuModel("A100-40GB", "A100", "NVIDIA A100-SXM4-40GB", 40960, "8.0"),
    GpuModel("A100-80GB", "A100", "NVIDIA A100-SXM4-80GB", 81920, "8.0"),
    GpuModel("H100-80GB", "H100", "NVIDIA H100 80GB HBM3", 81559, "9.0"),
    GpuModel("H100-94GB", "H100", "NVIDIA H100 NVL", 95830, "9.0"),
    GpuModel("H200-141GB", "H200", "NVIDIA H200", 143771, "9.0"),
    GpuModel("B200-180GB", "B200", "NVIDIA B200", 183359, "10.0"),
    GpuModel("L40S-48GB", "L40S", "NVIDIA L40S", 46068, "8.9"),
    GpuModel("L4-24GB", "L4", "NVIDIA L4", 23034, "8.9"),
    GpuModel("RTX3090-24GB", "RTX3090", "NVIDIA GeForce RTX 3090", 24576, "8.6"),
    GpuModel("RTX4090-24GB", "RTX4090", "NVIDIA GeForce RTX 4090", 24564, "8.9"),
    GpuModel("RTX5090-32GB", "RTX5090", "NVIDIA GeForce RTX 5090", 32607, "12.0"),
)

_BY_KEY = {g.key.upper(): g for g in CATALOGUE}
_SPEC = re.compile(r"^\s*(?:(\d+)\s*[xX*]\s*)?([A-Za-z0-9-]+?)\s*$")


def known_keys() -> list[str]:
    """Return the catalogue keys, in catalogue order."""
    return [g.key for g in CATALOGUE]


def lookup(key: str) -> GpuModel:
    """Return the catalogue entry for ``key`` (case-insensitive).

    Raises UsageError naming the known keys when there is none.
    """
    found = _BY_KEY.get(key.strip().upper())
    if found is None:
        raise UsageError(
            f"Unknown GPU model {key!r}.",
            f"Use one of: {', '.join(known_keys())}.",
        )
    return found


def parse_gpu_spec(spec: str) -> tuple[int, GpuModel]:
    """Parse ``8xH100-80GB`` (count optional, default 1) into (count, model).

    Raises UsageError when the syntax or the model is unknown.
    """
    m = _SPEC.match(spec)
    if m is None:
        raise UsageError(
            f"Cannot read the GPU spec {spec!r}.",
            "Write COUNTxMODEL, for example 8xH100-80GB or 4xRTX4090-24GB.",
        )
    count = int(m.group(1) or 1)
    if count < 1 or count > 64:
        raise UsageError(
            f"GPU count {count} in {spec!r} is out of range.",
            "Use a count between 1 and 64 GPUs per node.",
        )
    return count, lookup(m.group(2))


def family_of(smi_name: str) -> str | None:
    """Return the catalogue family whose nvidia-smi name matches, or None."""
    name = smi_name.upper().replace(" ", "")
    for g in sorted(CATALOGUE, key=lambda g: -len(g.family)):
        if g.family.upper() in name:
            return g.family
    return None
