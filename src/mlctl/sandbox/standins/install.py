"""Put the stand-ins on a PATH and write the sandbox state they read.

``write_gpus`` and ``write_scenario`` write ``$STATE/gpus.json`` and
``$STATE/scenario.json`` (formats in :mod:`mlctl.sandbox.standins.common`);
``install_standins`` writes ``#!/bin/sh`` wrappers named like the real tools.
The stand-ins find the state through ``MLCTL_SANDBOX_STATE``, which the caller
exports in the sandbox's environment.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

from mlctl.gpus import GpuModel
from mlctl.sandbox.standins.common import DEFAULT_CUDA, DEFAULT_DRIVER, GPUS_FILE, SCENARIO_FILE

# wrapper name → module run with ``python -m``
TOOLS: dict[str, str] = {
    "nvidia-smi": "mlctl.sandbox.standins.nvidia_smi",
    "vllm": "mlctl.sandbox.standins.vllm",
    "ollama": "mlctl.sandbox.standins.ollama",
    "llama-server": "mlctl.sandbox.standins.llama_server",
}

ENGINES = ("vllm", "ollama", "llamacpp", "nvidia-smi")


def gpu_uuid(index: int, model: GpuModel) -> str:
    """A stable ``GPU-…`` UUID for the index-th GPU of this model."""
    return "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"mlctl-sandbox/{model.key}/{index}"))


def _write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_gpus(
    state: Path,
    count: int,
    model: GpuModel,
    driver_version: str = DEFAULT_DRIVER,
    cuda_version: str = DEFAULT_CUDA,
) -> Path:
    """Write ``state/gpus.json`` with ``count`` GPUs of ``model``; returns the file's path.

    ``count`` 0 writes a host without GPUs. Raises OSError when the file cannot be written.
    """
    gpus = [
        {
            "name": model.smi_name,
            "memory_total_mib": model.memory_mib,
            "compute_capability": model.compute_capability,
            "uuid": gpu_uuid(i, model),
        }
        for i in range(count)
    ]
    data = {"gpus": gpus, "driver_version": driver_version, "cuda_version": cuda_version}
    return _write_json(state / GPUS_FILE, data)


def write_scenario(state: Path, scenario: Mapping[str, object]) -> Path:
    """Write ``state/scenario.json`` (engines re-read it at each start); returns its path.

    Keys are engine names (``vllm``, ``ollama``, ``llamacpp``, ``nvidia-smi``), each a
    mapping with ``fail``, ``startup_seconds``, ``crash_after_seconds`` and extras.
    Raises ValueError for an unknown engine key, OSError when it cannot be written.
    """
    unknown = sorted(set(scenario) - set(ENGINES))
    if unknown:
        raise ValueError(f"unknown engine(s) in scenario: {', '.join(unknown)}")
    return _write_json(state / SCENARIO_FILE, dict(scenario))


def wrapper_script(module: str, python: str) -> str:
    """The text of one ``#!/bin/sh`` wrapper."""
    return f'#!/bin/sh\nexec {shlex.quote(python)} -m {module} "$@"\n'


def install_standins(bin_dir: Path, python: str = sys.executable) -> list[Path]:
    """Write the ``nvidia-smi``, ``vllm``, ``ollama``, ``llama-server`` wrappers (mode 0755).

    Returns the paths written. Raises OSError when ``bin_dir`` cannot be written.
    """
    bin_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, module in TOOLS.items():
        path = bin_dir / name
        path.write_text(wrapper_script(module, python), encoding="utf-8")
        path.chmod(0o755)
        written.append(path)
    return written
