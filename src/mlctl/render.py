"""Human output with rich: tables for profiles, the fit, the plan and findings.

Only presentation lives here; every number comes from the pure modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from mlctl.diagnose import Finding
    from mlctl.fit import FitReport
    from mlctl.plan import Plan
    from mlctl.profiles import Profile

GB = 1_000_000_000


def console() -> Console:
    """The stdout console (no syntax highlighting guesses, soft wrapping for commands)."""
    return Console(highlight=False, soft_wrap=False)


def _gb(value: float) -> str:
    return f"{value / GB:,.1f} GB"


def fit_table(report: FitReport, profile: Profile) -> None:
    """Print the per-GPU memory sums and the context they allow."""
    out = console()
    title = "Memory fit, per GPU" + ("" if report.fits else " - DOES NOT FIT")
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_column("how")
    table.add_row("GPUs", escape(report.gpus), "")
    table.add_row(
        "usable memory",
        _gb(report.usable_per_gpu_bytes),
        f"{_gb(report.gpu_memory_bytes)} x {profile.serve.gpu_memory_utilization:g}",
    )
    shards = report.tensor_parallel * report.pipeline_parallel
    how = f"{_gb(report.checkpoint_bytes)} / {shards}"
    if report.offload is not None:
        how = "non-expert tensors split over the GPUs + experts placed in VRAM"
    table.add_row("weights", _gb(report.weights_per_gpu_bytes), how)
    table.add_row("reserve", _gb(report.reserve_per_gpu_bytes), "activations, CUDA graphs, NCCL")
    table.add_row(
        "KV cache",
        _gb(report.kv_per_gpu_bytes()),
        f"{report.kv_bytes_per_token_per_gpu:,.0f} B/token ({report.kv_cache_dtype}) "
        f"x {report.chosen_context:,} x {report.concurrency}",
    )
    table.add_row("left over", _gb(report.free_per_gpu_bytes()), "")
    table.add_row("largest context", f"{report.max_context_fit:,}", "that fits one sequence")
    table.add_row(
        "context chosen", f"{report.chosen_context:,}", f"requested {report.requested_context:,}"
    )
    table.add_row("concurrency", str(report.concurrency), "full-length sequences at once")
    if report.offload is not None:
        o = report.offload
        table.add_row("MoE experts", _gb(o.expert_bytes_total), f"{o.moe_layers} MoE layers")
        table.add_row("  in VRAM", _gb(o.experts_in_vram_bytes), "")
        table.add_row("  in RAM", _gb(o.experts_in_ram_bytes), f"--n-cpu-moe {o.n_cpu_moe}")
        ram = "unknown" if o.ram_available_bytes is None else _gb(o.ram_available_bytes)
        table.add_row("RAM needed", _gb(o.ram_needed_bytes), f"of {ram}")
    out.print(table)
    for reason in report.reasons:
        out.print(f"[red]✗[/] {escape(reason)}")


def plan(result: Plan, profile: Profile) -> None:
    """Print a plan: header, fit, steps with their commands, warnings."""
    out = console()
    out.print(
        f"[bold]Plan[/] {escape(result.name)}: profile [bold]{escape(result.profile)}[/] "
        f"({escape(profile.model.name)}, {escape(profile.checkpoint.quant)}) with "
        f"{result.engine} {escape(result.engine_version)} on {escape(result.host)}"
    )
    fit_table(result.fit, profile)
    out.print("[bold]Steps[/]")
    for number, step in enumerate(result.steps, 1):
        out.print(f" {number}. [bold]{escape(step.title)}[/]")
        if step.detail:
            out.print(f"    {escape(step.detail)}", soft_wrap=True)
        if step.check:
            out.print(f"    [dim]skip when:[/] {escape(step.check)}", soft_wrap=True)
        for command in step.commands:
            out.print(f"    [cyan]$[/] {escape(command)}", soft_wrap=True)
    for warning in result.warnings:
        out.print(f"[yellow]⚠[/] {escape(warning)}", soft_wrap=True)


def findings(items: Sequence[Finding], source: str) -> None:
    """Print log findings, root cause first, each with its evidence and fix."""
    out = console()
    if not items:
        out.print(f"[green]✓[/] No known failure found in {escape(source)}.")
        return
    for index, finding in enumerate(items):
        label = "root cause" if index == 0 else "also"
        out.print(f"[red]✗[/] [bold]{finding.cause}[/] ({label}): {escape(finding.summary)}")
        out.print(f"    line {finding.line}: [dim]{escape(finding.evidence)}[/]", soft_wrap=True)
        out.print(f"    [bold]fix:[/] {escape(finding.fix)}", soft_wrap=True)


_MARKS = {"ok": "[green]✓[/]", "warn": "[yellow]⚠[/]", "fail": "[red]✗[/]"}


def checks(items: Sequence[Any], host: str) -> None:
    """Print doctor's checks, one line each with its fix under it."""
    out = console()
    out.print(f"[bold]Doctor[/] {escape(host)}")
    for check in items:
        out.print(
            f" {_MARKS[check.status]} {escape(check.title)}: {escape(check.detail)}",
            soft_wrap=True,
        )
        if check.fix and check.status != "ok":
            out.print(f"     [bold]fix:[/] {escape(check.fix)}", soft_wrap=True)


def facts(data: Any, host: str) -> None:
    """Print a host's facts for a person."""
    out = console()
    out.print(
        f"[bold]Facts[/] {escape(host)} ({escape(data.hostname or '?')}, "
        f"{escape(data.os or 'unknown OS')})"
    )
    if data.nvidia_smi == "ok":
        out.print(
            f"  GPUs: {escape(data.gpu_summary())}; driver {data.driver_version}, "
            f"CUDA {data.cuda_version}"
        )
        for gpu in data.gpus:
            cc = gpu.compute_capability or "?"
            out.print(
                f"    {gpu.index}: {escape(gpu.name)}, {gpu.memory_total_mib} MiB, cc {cc}"
                + (f", MIG {gpu.mig_mode}" if gpu.mig_mode not in (None, "", "[N/A]") else "")
            )
    else:
        out.print(
            f"  GPUs: nvidia-smi {data.nvidia_smi}"
            + (f": {escape(data.nvidia_smi_error)}" if data.nvidia_smi_error else "")
        )
    gb = 1_000_000_000
    ram = "?" if data.ram_total_bytes is None else f"{data.ram_total_bytes / gb:,.1f} GB"
    if (
        data.ram_cgroup_limit_bytes
        and data.ram_host_bytes
        and (data.ram_cgroup_limit_bytes < data.ram_host_bytes)
    ):
        ram += f" (container limit; host {data.ram_host_bytes / gb:,.0f} GB)"
    out.print(f"  CPUs: {data.cpu_count or '?'}; RAM: {ram}")
    shm = "?" if data.shm_bytes is None else f"{data.shm_bytes / 1024**3:,.1f} GiB"
    out.print(f"  /dev/shm: {shm}")
    for path, free in data.disk_free_bytes.items():
        out.print(f"  disk free at {escape(path)}: {free / gb:,.1f} GB")
    tools = ", ".join(f"{k} {v}" for k, v in data.tools.items() if v) or "none"
    out.print(f"  tools: {escape(tools)}")
    if data.deployments:
        out.print(f"  mlctl deployments: {escape(', '.join(data.deployments))}")


def statuses(items: Sequence[Any]) -> None:
    """Print ``mlctl status``: one line per deployment, the cause under a failed one."""
    out = console()
    if not items:
        out.print("No deployments. Start one with `mlctl deploy --profile P --host H`.")
        return
    colors = {
        "running": "green",
        "starting": "yellow",
        "exited": "red",
        "stopped": "dim",
        "unknown": "red",
    }
    for s in items:
        r = s.record
        uptime = f", up {s.uptime_s}s" if s.uptime_s is not None else ""
        code = f", exit code {s.exit_code}" if s.state == "exited" else ""
        out.print(
            f"[{colors[s.state]}]{s.state:>8}[/] [bold]{escape(r.name)}[/] {escape(r.profile)} "
            f"on {escape(r.host)} -> http://127.0.0.1:{r.local_port}/v1{uptime}{code}"
        )
        if s.error:
            out.print(f"          [red]{escape(s.error)}[/]", soft_wrap=True)
        if s.cause or s.evidence:
            label = s.cause or "last log line"
            out.print(f"          {label}: {escape(s.evidence or '')}", soft_wrap=True)
        if s.fix:
            out.print(f"          [bold]fix:[/] {escape(s.fix)}", soft_wrap=True)
