"""Host facts: what a GPU box has, as one typed object.

``HostFacts`` is produced either by the remote probe (see ``probe.sh`` and
:func:`parse_probe_output`) or assumed from a profile / ``--gpus`` spec when
planning without a host (:func:`assumed_facts`). Pure: no I/O here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mlctl.errors import RemoteError
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
    os: str | None = None
    kernel: str | None = None
    arch: str | None = None
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
    # candidate dir as given -> the existing directory actually measured (itself or a parent)
    disk_measured_at: dict[str, str] = Field(default_factory=dict)
    shm_bytes: int | None = None
    # tool -> version ("unknown" when present but unparsable), None when not on PATH
    tools: dict[str, str | None] = Field(default_factory=dict)
    root: str | None = None
    hf_endpoint: str | None = None  # HF_ENDPOINT on the host, when set
    deployments: list[str] = Field(default_factory=list)
    # what the parser could not make sense of (kept, not fatal)
    warnings: list[str] = Field(default_factory=list)

    @property
    def gpu_count(self) -> int:
        """Number of GPUs on this node."""
        return len(self.gpus)

    @property
    def mig_enabled(self) -> bool:
        """True when any GPU runs in MIG mode (its memory is then split into instances)."""
        return any((g.mig_mode or "").lower() == "enabled" for g in self.gpus)

    @property
    def python_version(self) -> str | None:
        """The version of ``python3`` on the host, or None without one."""
        return self.tools.get("python3")

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


# ---------------------------------------------------------------------------
# The remote probe: ``probe.sh`` prints one JSON line; the parser below turns it
# into HostFacts. The script passes raw command output through (JSON-escaped)
# and all interpretation happens here, where it is typed and tested.

PROBE_MARKER = "mlctl_probe"
PROBE_VERSION = 1
PROBE_TOOLS = ("python3", "uv", "docker", "vllm", "ollama", "llama-server", "hf")

_UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as 9223372036854771712
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_NUMBER = re.compile(r"-?\d+")
_VERSION = re.compile(r"(?<![\w.])v?(\d+\.\d+(?:\.\d+)*[\w.+-]*)")
_LLAMA_BUILD = re.compile(
    r"version:\s*(?:\S+\s*\(build\s+)?(\d+)(?:,\s*commit\s+|\s*\()([0-9a-f]+)\)"
)
_DF_LINE = re.compile(r"\s(\d+)\s+(\d+)\s+(\d+)\s+\d+%\s")
_SMI_DRIVER = re.compile(r"(?:Driver|KMD) Version:\s*([0-9][0-9.]*)")
_SMI_CUDA = re.compile(r"CUDA (?:UMD )?Version:\s*([0-9][0-9.]*)")
_TABLE_GPU = re.compile(r"^\|\s+(\d+)\s+(.+?)\s+(?:On|Off|WDDM|TCC|N/A)\s*\|")
_TABLE_MEM = re.compile(r"(\d+)MiB\s*/\s*(\d+)MiB")
_TABLE_MIG = re.compile(r"\|\s*(Enabled|Disabled|N/A)\s*\|\s*$")


def probe_script() -> str:
    """Return the text of ``probe.sh``, the POSIX sh probe shipped as package data."""
    return resources.files("mlctl").joinpath("probe.sh").read_text(encoding="utf-8")


def probe_argv(root: str | None = None, models_dirs: Sequence[str] = ()) -> list[str]:
    """Return the argv that runs the probe fed on stdin: ``sh -s -- [--root R] [DIR...]``.

    ``root`` and the directories may start with ``~/``; the probe expands it on the host.
    """
    argv = ["sh", "-s", "--"]
    if root is not None:
        argv += ["--root", root]
    argv += list(models_dirs)
    return argv


def parse_probe_output(text: str) -> HostFacts:
    """Return the HostFacts described by the output of ``probe.sh``.

    Lines before the JSON object (a login banner, a MOTD) are ignored. Raises
    RemoteError when the text holds no probe JSON object, or a cut-off one.
    """
    return facts_from_probe(_find_probe_object(text))


def facts_from_probe(data: Mapping[str, object]) -> HostFacts:
    """Return the HostFacts for an already decoded probe object (see ``probe.sh``)."""
    warnings: list[str] = []
    cpu_count = _effective_cpus(data)
    ram_host = _meminfo_bytes(_str(data, "mem_total"))
    ram_limit = _cgroup_memory_limit(data)
    ram_total = min((v for v in (ram_host, ram_limit) if v is not None), default=None)

    disk_free: dict[str, int] = {}
    measured_at: dict[str, str] = {}
    disks = data.get("disks")
    for entry in disks if isinstance(disks, list) else []:
        if not isinstance(entry, dict):
            continue
        path = _str(entry, "path")
        avail = _df_available_bytes(_str(entry, "df"))
        if path is None:
            continue
        if avail is None:
            warnings.append(f"no free-space figure for {path}")
            continue
        disk_free[path] = avail
        measured_at[path] = _str(entry, "at") or path

    shm = _df_total_bytes(_str(data, "shm_df"))

    gpus: list[GpuInfo] = []
    status: Literal["ok", "missing", "error"] = "missing"
    smi_error: str | None = None
    driver: str | None = None
    cuda: str | None = None
    smi_state = _str(data, "nvidia_smi")
    if smi_state == "missing" or smi_state is None:
        smi_error = "nvidia-smi is not on PATH"
    else:
        csv_text = _str(data, "smi_csv") or ""
        csv_rc = _int(_str(data, "smi_csv_rc"))
        table = _str(data, "smi_table") or ""
        table_rc = _int(_str(data, "smi_table_rc"))
        if table_rc == 0:
            driver, cuda = _smi_header_versions(table)
        if csv_rc == 0:
            fields = (_str(data, "smi_fields") or "").split(",")
            gpus, csv_driver = _parse_smi_csv(csv_text, fields, warnings)
            driver = csv_driver or driver
            status = "ok"
        else:
            smi_error = _smi_failure(csv_text, csv_rc)
            status = "error"
            if table_rc == 0:
                gpus = _parse_smi_table(table)
                if gpus:
                    warnings.append(f"{smi_error} (GPUs read from the nvidia-smi table instead)")
                    status, smi_error = "ok", None
        if status == "ok" and not gpus:
            warnings.append("nvidia-smi answered but listed no GPUs")

    tools: dict[str, str | None] = {}
    raw_tools = data.get("tools")
    raw_tools = raw_tools if isinstance(raw_tools, dict) else {}
    for name in (*PROBE_TOOLS, *(k for k in raw_tools if k not in PROBE_TOOLS)):
        entry = raw_tools.get(name)
        tools[name] = _tool_version(name, entry) if isinstance(entry, dict) else None

    raw_deps = data.get("deployments")
    deployments = [d for d in raw_deps if isinstance(d, str)] if isinstance(raw_deps, list) else []

    os_name = _str(data, "os_release")
    return HostFacts(
        source="probe",
        hostname=(_str(data, "hostname") or "").strip() or None,
        os=os_name.strip().strip("\"'") or None if os_name else None,
        kernel=(_str(data, "kernel") or "").strip() or None,
        arch=(_str(data, "arch") or "").strip() or None,
        gpus=gpus,
        nvidia_smi=status,
        nvidia_smi_error=smi_error,
        driver_version=driver,
        cuda_version=cuda,
        cpu_count=cpu_count,
        ram_total_bytes=ram_total,
        ram_host_bytes=ram_host,
        ram_cgroup_limit_bytes=ram_limit,
        disk_free_bytes=disk_free,
        disk_measured_at=measured_at,
        shm_bytes=shm,
        tools=tools,
        root=_str(data, "root"),
        hf_endpoint=_str(data, "hf_endpoint") or None,
        deployments=sorted(deployments),
        warnings=warnings,
    )


def _find_probe_object(text: str) -> dict[str, object]:
    decoder = json.JSONDecoder()
    needle = '{"' + PROBE_MARKER + '"'
    start = text.find(needle)
    last_error: json.JSONDecodeError | None = None
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError as exc:
            last_error = exc
        else:
            if isinstance(obj, dict):
                return obj
        start = text.find(needle, start + 1)
    if last_error is not None:
        raise RemoteError(
            f"The host's facts probe printed a broken JSON object ({last_error.msg} "
            f"at character {last_error.pos}): the output was cut off or mangled.",
            "Run the probe again; if it keeps failing, run `sh -s < probe.sh` on the host "
            "and report its output.",
        )
    shown = "\n".join(line[:160] for line in text.strip().splitlines()[:5]) or "(no output)"
    raise RemoteError(
        f"The host did not answer with mlctl's facts JSON. It printed:\n{shown}",
        "Check that the account has a POSIX `sh` and that its shell startup files print "
        "nothing that replaces the command's output (a forced command, `exec` in .bashrc).",
    )


def _str(data: Mapping[str, object], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    m = _NUMBER.search(value)
    return int(m.group()) if m else None


def _effective_cpus(data: Mapping[str, object]) -> int | None:
    counts: list[int] = []
    online = _int(_str(data, "cpu_count"))
    if online is not None and online > 0:
        counts.append(online)
    quota: int | None = None
    period: int | None = None
    cpu_max = (_str(data, "cgroup_cpu_max") or "").split()
    if len(cpu_max) == 2 and cpu_max[0] != "max":
        quota, period = _int(cpu_max[0]), _int(cpu_max[1])
    else:
        quota = _int(_str(data, "cgroup_cpu_quota_v1"))
        period = _int(_str(data, "cgroup_cpu_period_v1"))
    if quota is not None and period and quota > 0:
        counts.append(max(1, math.ceil(quota / period)))
    return min(counts, default=None)


def _meminfo_bytes(line: str | None) -> int | None:
    kib = _int(line)
    return kib * 1024 if kib else None


def _cgroup_memory_limit(data: Mapping[str, object]) -> int | None:
    for key in ("cgroup_memory_max", "cgroup_memory_limit_v1"):
        raw = (_str(data, key) or "").strip()
        if not raw or raw == "max" or not raw.isdigit():
            continue
        value = int(raw)
        return value if 0 < value < _UNLIMITED else None
    return None


def _df_numbers(df: str | None) -> tuple[int, int] | None:
    """(total, available) bytes from the last line of ``df -Pk``."""
    if not df:
        return None
    for line in reversed(df.strip().splitlines()):
        m = _DF_LINE.search(line + " ")
        if m:
            return int(m.group(1)) * 1024, int(m.group(3)) * 1024
    return None


def _df_available_bytes(df: str | None) -> int | None:
    numbers = _df_numbers(df)
    return numbers[1] if numbers else None


def _df_total_bytes(df: str | None) -> int | None:
    numbers = _df_numbers(df)
    return numbers[0] if numbers else None


def _na(value: str) -> str | None:
    """None for nvidia-smi's placeholders: ``N/A``, ``[N/A]``, ``[Not Supported]``…"""
    value = value.strip()
    if not value or value == "N/A" or (value.startswith("[") and value.endswith("]")):
        return None
    return value


def _mib(value: str | None) -> int | None:
    if value is None:
        return None
    m = re.match(r"\d+", value.strip())
    return int(m.group()) if m else None


def _parse_smi_csv(
    text: str, fields: list[str], warnings: list[str]
) -> tuple[list[GpuInfo], str | None]:
    """GPUs and the driver version from ``--query-gpu=FIELDS --format=csv,noheader,nounits``."""
    gpus: list[GpuInfo] = []
    driver: str | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) > len(fields) and "name" in fields:
            # a product name with a comma in it: glue the extra cells back into the name
            extra = len(cells) - len(fields)
            at = fields.index("name")
            cells[at : at + extra + 1] = [", ".join(cells[at : at + extra + 1])]
        row = dict(zip(fields, cells, strict=False))
        row.setdefault("index", str(len(gpus)))  # queries without `index` list GPUs in order
        if len(cells) != len(fields) or not row["index"].isdigit():
            warnings.append(f"ignored nvidia-smi line: {line.strip()[:160]}")
            continue
        total = _mib(_na(row.get("memory.total", "")))
        if total is None:
            warnings.append(f"GPU {row['index']} reports no memory.total")
        cap = _na(row.get("compute_cap", ""))
        mig = _na(row.get("mig.mode.current", ""))
        gpus.append(
            GpuInfo(
                index=int(row["index"]),
                name=row.get("name", ""),
                memory_total_mib=total or 0,
                memory_used_mib=_mib(_na(row.get("memory.used", ""))),
                compute_capability=cap if cap and re.fullmatch(r"\d+\.\d+", cap) else None,
                uuid=_na(row.get("uuid", "")),
                mig_mode=mig if mig in ("Enabled", "Disabled") else None,
            )
        )
        driver = driver or _na(row.get("driver_version", ""))
    return gpus, driver


def _parse_smi_table(text: str) -> list[GpuInfo]:
    """GPUs from the plain ``nvidia-smi`` table (names may be cut short with ``...``)."""
    gpus: list[GpuInfo] = []
    pending: tuple[int, str] | None = None  # a GPU row whose memory line is still to come
    for line in text.splitlines():
        if "Processes:" in line or "MIG devices:" in line:
            break
        row = _TABLE_GPU.match(line)
        if row:
            pending = (int(row.group(1)), row.group(2))
            continue
        mem = _TABLE_MEM.search(line)
        if pending is not None and mem:
            gpus.append(
                GpuInfo(
                    index=pending[0],
                    name=pending[1],
                    memory_total_mib=int(mem.group(2)),
                    memory_used_mib=int(mem.group(1)),
                )
            )
            pending = None
            continue
        mig = _TABLE_MIG.search(line)
        if pending is None and gpus and gpus[-1].mig_mode is None and mig:
            gpus[-1].mig_mode = _na(mig.group(1))
    return gpus


def _smi_header_versions(table: str) -> tuple[str | None, str | None]:
    """(driver, CUDA) versions from the ``nvidia-smi`` table header."""
    driver = _SMI_DRIVER.search(table)
    cuda = _SMI_CUDA.search(table)
    return (driver.group(1) if driver else None, cuda.group(1) if cuda else None)


def _smi_failure(output: str, rc: int | None) -> str:
    if rc in (124, 137):
        return "nvidia-smi did not answer in time (timed out)"
    lines = [line.strip() for line in _ANSI.sub("", output).splitlines() if line.strip()]
    message = " ".join(lines)[:400]
    status = f"exit status {rc}" if rc is not None else "unknown exit status"
    return (
        f"nvidia-smi failed ({status}): {message}" if message else f"nvidia-smi failed ({status})"
    )


def _tool_version(name: str, entry: Mapping[str, object]) -> str:
    """The version a tool printed, or ``unknown`` when it printed none we can read."""
    out = _ANSI.sub("", _str(entry, "out") or "")
    if name == "llama-server":
        build = _LLAMA_BUILD.search(out)
        if build:
            return f"b{build.group(1)}"
    for line in reversed(out.splitlines()):
        m = _VERSION.search(line)
        if m:
            return m.group(1).rstrip(".-+")
    return "unknown"
