"""Stand-in ``nvidia-smi``: the GPUs of ``$MLCTL_SANDBOX_STATE/gpus.json`` in the real formats.

Supports ``--query-gpu=FIELDS --format=csv[,noheader][,nounits]`` (``-i`` to pick
GPUs), ``-L``, ``--version`` and the plain table of driver 550. An unknown field
prints ``Field "X" is not a valid field to query.`` and exits 2; the ``driver``
scenario prints the real "couldn't communicate with the NVIDIA driver" text and
exits 9, as nvidia-smi does on a box whose kernel module is not loaded.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mlctl.sandbox.standins.common import (
    GpuEntry,
    GpuInventory,
    emit,
    load_inventory,
    load_scenario,
    state_dir,
)

DRIVER_FAILURE = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running.\n"
)
NO_DEVICES = "No devices were found"
EXIT_DRIVER = 9
EXIT_BAD_FIELD = 2
WIDTH = 91


@dataclass(frozen=True)
class BoardTraits:
    """What the table shows besides the name and memory, per board family."""

    power_cap_w: int
    idle_w: int
    datacenter: bool  # persistence mode On, no fan, ECC 0
    mig_capable: bool


_TRAITS: tuple[tuple[str, BoardTraits], ...] = (
    ("B200", BoardTraits(1000, 140, True, True)),
    ("H200", BoardTraits(700, 75, True, True)),
    ("H100 NVL", BoardTraits(400, 60, True, True)),
    ("H100", BoardTraits(700, 70, True, True)),
    ("A100", BoardTraits(400, 60, True, True)),
    ("L40S", BoardTraits(350, 35, True, False)),
    ("L4", BoardTraits(72, 16, True, False)),
    ("RTX 5090", BoardTraits(575, 20, False, False)),
    ("RTX 4090", BoardTraits(450, 18, False, False)),
    ("RTX 3090", BoardTraits(350, 22, False, False)),
)


def traits(name: str) -> BoardTraits:
    """The board traits for an nvidia-smi product name (a generic consumer card if unknown)."""
    for key, value in _TRAITS:
        if key in name:
            return value
    return BoardTraits(300, 20, False, False)


def bus_id(index: int) -> str:
    """A PCI bus id as nvidia-smi prints it in queries (``00000000:07:00.0``)."""
    buses = (0x07, 0x0B, 0x48, 0x4C, 0x88, 0x8B, 0xC8, 0xCB)
    bus = buses[index] if index < len(buses) else 0x10 + index
    return f"00000000:{bus:02X}:00.0"


# A field: (header with unit, value with unit, value without unit).
_Field = Callable[[int, GpuEntry, GpuInventory], tuple[str, str]]


def _mib(value: int) -> tuple[str, str]:
    return f"{value} MiB", str(value)


def _plain(value: str) -> tuple[str, str]:
    return value, value


FIELDS: dict[str, tuple[str, _Field]] = {
    "index": ("index", lambda i, g, inv: _plain(str(i))),
    "name": ("name", lambda i, g, inv: _plain(g.name)),
    "gpu_name": ("name", lambda i, g, inv: _plain(g.name)),
    "uuid": ("uuid", lambda i, g, inv: _plain(g.uuid)),
    "gpu_uuid": ("uuid", lambda i, g, inv: _plain(g.uuid)),
    "count": ("count", lambda i, g, inv: _plain(str(len(inv.gpus)))),
    "driver_version": ("driver_version", lambda i, g, inv: _plain(inv.driver_version)),
    "pci.bus_id": ("pci.bus_id", lambda i, g, inv: _plain(bus_id(i))),
    "gpu_bus_id": ("pci.bus_id", lambda i, g, inv: _plain(bus_id(i))),
    "memory.total": ("memory.total [MiB]", lambda i, g, inv: _mib(g.memory_total_mib)),
    "memory.used": ("memory.used [MiB]", lambda i, g, inv: _mib(0)),
    "memory.free": ("memory.free [MiB]", lambda i, g, inv: _mib(g.memory_total_mib)),
    "compute_cap": ("compute_cap", lambda i, g, inv: _plain(g.compute_capability)),
    "utilization.gpu": ("utilization.gpu [%]", lambda i, g, inv: ("0 %", "0")),
    "mig.mode.current": (
        "mig.mode.current",
        lambda i, g, inv: _plain("Disabled" if traits(g.name).mig_capable else "[N/A]"),
    ),
}


class SmiUsageError(Exception):
    """A command line nvidia-smi refuses; ``code`` is its exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def query_csv(
    inventory: GpuInventory,
    fields: Sequence[str],
    header: bool = True,
    units: bool = True,
    indices: Sequence[int] | None = None,
) -> str:
    """The output of ``--query-gpu=FIELDS --format=csv[,noheader][,nounits]``.

    Raises SmiUsageError(exit 2) naming the first unknown field, with nvidia-smi's text.
    """
    for name in fields:
        if name not in FIELDS:
            raise SmiUsageError(f'Field "{name}" is not a valid field to query.\n', EXIT_BAD_FIELD)
    lines: list[str] = []
    if header:
        lines.append(", ".join(FIELDS[name][0] for name in fields))
    for index, gpu in enumerate(inventory.gpus):
        if indices is not None and index not in indices:
            continue
        cells = []
        for name in fields:
            with_unit, without = FIELDS[name][1](index, gpu, inventory)
            cells.append(with_unit if units else without)
        lines.append(", ".join(cells))
    return "\n".join(lines) + "\n"


def list_gpus(inventory: GpuInventory) -> str:
    """The output of ``nvidia-smi -L``."""
    return "".join(
        f"GPU {i}: {gpu.name} (UUID: {gpu.uuid})\n" for i, gpu in enumerate(inventory.gpus)
    )


def version_text(inventory: GpuInventory) -> str:
    """The output of ``nvidia-smi --version``."""
    nvml = ".".join(inventory.driver_version.split(".")[:2])
    return (
        f"NVIDIA-SMI version  : {inventory.driver_version}\n"
        f"NVML version        : {nvml}\n"
        f"DRIVER version      : {inventory.driver_version}\n"
        f"CUDA Version        : {inventory.cuda_version}\n"
    )


def _row(*cells: str) -> str:
    return "|" + "|".join(cells) + "|"


def table(inventory: GpuInventory, now: float | None = None) -> str:
    """The plain ``nvidia-smi`` table, laid out as driver 550 prints it."""
    stamp = time.strftime("%a %b %e %H:%M:%S %Y", time.localtime(now))
    rule = "+" + "-" * 41 + "+" + "-" * 24 + "+" + "-" * 22 + "+"
    full = "+" + "-" * (WIDTH - 2) + "+"
    head = (
        f"| NVIDIA-SMI {inventory.driver_version:<23}Driver Version: "
        f"{inventory.driver_version:<15}CUDA Version: {inventory.cuda_version:<9}|"
    )
    lines = [
        stamp + " " * 7,
        full,
        head,
        "|" + "-" * 41 + "+" + "-" * 24 + "+" + "-" * 22 + "+",
        _row(
            " GPU  Name                 Persistence-M ",
            " Bus-Id          Disp.A ",
            " Volatile Uncorr. ECC ",
        ),
        _row(
            " Fan  Temp   Perf          Pwr:Usage/Cap ",
            "           Memory-Usage ",
            " GPU-Util  Compute M. ",
        ),
        _row(" " * 41, " " * 24, "               MIG M. "),
        "|" + "=" * 41 + "+" + "=" * 24 + "+" + "=" * 22 + "|",
    ]
    for index, gpu in enumerate(inventory.gpus):
        t = traits(gpu.name)
        persist = "On" if t.datacenter else "Off"
        fan = "N/A" if t.datacenter else "30%"
        ecc = "0" if t.datacenter else "Off"
        mig = "Disabled" if t.mig_capable else "N/A"
        name = gpu.name if len(gpu.name) <= 30 else gpu.name[:27] + "..."
        lines.append(
            _row(
                f"{index:>4}  {name:<30}{persist:>3}  ",
                f"{bus_id(index):>19} {'Off':>3} ",
                f"{ecc:>21} ",
            )
        )
        lines.append(
            _row(
                f"{fan:>4}{'32C':>6}{'P0' if t.datacenter else 'P8':>6}"
                f"{str(t.idle_w) + 'W':>16} / {str(t.power_cap_w) + 'W':>5} ",
                f"{'1MiB':>11} / {str(gpu.memory_total_mib) + 'MiB':>9} ",
                f"{'0%':>8}{'Default':>13} ",
            )
        )
        lines.append(_row(" " * 41, " " * 24, f"{mig:>21} "))
        lines.append(rule)
    lines += [
        " " * WIDTH,
        full,
        "| Processes:".ljust(WIDTH - 1) + "|",
        "|  GPU   GI   CI        PID   Type   Process name" + " " * 30 + "GPU Memory |",
        "|        ID   ID" + " " * 63 + "Usage      |",
        "|" + "=" * (WIDTH - 2) + "|",
        "|  No running processes found".ljust(WIDTH - 1) + "|",
        full,
    ]
    return "\n".join(lines) + "\n"


@dataclass
class SmiArgs:
    """The parts of an nvidia-smi command line the stand-in understands."""

    query: list[str] | None = None
    format: list[str] | None = None
    list_gpus: bool = False
    version: bool = False
    ids: list[int] | None = None


def parse_args(argv: Sequence[str]) -> SmiArgs:
    """Parse nvidia-smi's options (``--opt=value`` and ``--opt value`` forms).

    Raises SmiUsageError for an option the stand-in does not know.
    """
    args = SmiArgs()
    items = list(argv)
    i = 0

    def value(flag: str) -> str:
        nonlocal i
        item = items[i]
        if "=" in item and item.startswith("--"):
            return item.split("=", 1)[1]
        if i + 1 >= len(items):
            raise SmiUsageError(f'Option "{flag}" requires a value.\n', EXIT_BAD_FIELD)
        i += 1
        return items[i]

    while i < len(items):
        item = items[i]
        key = item.split("=", 1)[0]
        if key in ("--query-gpu", "--query-gpus"):
            args.query = [f.strip() for f in value(key).split(",") if f.strip()]
        elif key == "--format":
            args.format = [f.strip() for f in value(key).split(",") if f.strip()]
        elif key in ("-L", "--list-gpus"):
            args.list_gpus = True
        elif key == "--version":
            args.version = True
        elif key in ("-i", "--id"):
            args.ids = [int(x) for x in value(key).split(",") if x.strip().isdigit()]
        elif key.startswith("-i") and key[2:].isdigit():
            args.ids = [int(key[2:])]
        else:
            raise SmiUsageError(
                f"\nInvalid combination of input arguments. Please run 'nvidia-smi -h' "
                f"for help.\n(unknown option {item!r})\n",
                EXIT_BAD_FIELD,
            )
        i += 1
    return args


def run(argv: Sequence[str], inventory: GpuInventory, fail: str | None) -> tuple[str, int]:
    """Return (stdout text, exit status) of ``nvidia-smi ARGV`` on this inventory."""
    if fail == "driver":
        return DRIVER_FAILURE, EXIT_DRIVER
    try:
        args = parse_args(argv)
        if args.version:
            return version_text(inventory), 0
        if not inventory.gpus:
            return NO_DEVICES + "\n", 6
        if args.list_gpus:
            return list_gpus(inventory), 0
        if args.query is not None:
            fmt = args.format or ["csv"]
            return (
                query_csv(
                    inventory,
                    args.query,
                    header="noheader" not in fmt,
                    units="nounits" not in fmt,
                    indices=args.ids,
                ),
                0,
            )
        return table(inventory), 0
    except SmiUsageError as exc:
        return exc.message, exc.code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: print what nvidia-smi would and return its exit status."""
    state = state_dir()
    text, code = run(
        list(sys.argv[1:] if argv is None else argv),
        load_inventory(state),
        load_scenario(state, "nvidia-smi").fail,
    )
    emit(text.rstrip("\n"))
    return code


if __name__ == "__main__":
    sys.exit(main())
