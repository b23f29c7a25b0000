"""The plan: (profile, host facts, options) -> ordered steps a user can read.

Pure. ``mlctl plan`` prints it; ``deploy`` runs it. Each step has a ``check``
(a shell command whose exit 0 means "already done", so re-running is cheap)
and the commands that do the work, all built from quoted parts.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, Field

from mlctl import shell
from mlctl.backends import backend_for
from mlctl.backends.base import DownloadSpec, InstallSpec, LaunchSpec, RemoteLayout
from mlctl.errors import FitError
from mlctl.facts import HostFacts
from mlctl.fit import GB, FitReport, compute_fit, profiles_that_fit, require_fit
from mlctl.profiles import Profile

StepKind = Literal["preflight", "install", "download", "launch", "ready", "tunnel"]


class Step(BaseModel):
    """One thing the deploy does, described for a person reading ``--dry-run``."""

    id: str
    kind: StepKind
    title: str
    detail: str = ""
    check: str | None = None
    commands: list[str] = Field(default_factory=list)


class Plan(BaseModel):
    """Everything a deploy will do, and why."""

    name: str
    profile: str
    engine: str
    engine_version: str
    host: str
    layout_root: str
    models_root: str | None = None
    fit: FitReport
    launch: LaunchSpec
    downloads: list[DownloadSpec] = Field(default_factory=list)
    steps: list[Step]
    warnings: list[str] = Field(default_factory=list)

    def layout(self) -> RemoteLayout:
        """Where this plan puts things on the host."""
        return RemoteLayout(root=self.layout_root, models_root=self.models_root)


def default_name(profile: Profile) -> str:
    """The deployment name when the user gives none: the profile's name."""
    return profile.name


def quant_warnings(profile: Profile, facts: HostFacts, report: FitReport) -> list[str]:
    """Warnings about the checkpoint's quantisation on these GPUs and this context."""
    warnings: list[str] = []
    quant = profile.checkpoint.quant
    caps = [_cc(g.compute_capability) for g in facts.gpus if g.compute_capability]
    lowest = min(caps) if caps else None
    if quant == "nvfp4":
        if lowest is not None and lowest < (10, 0):
            warnings.append(
                "NVFP4 on a GPU without native FP4 (compute capability < 10.0): vLLM uses the "
                "Marlin weight-only FP4 kernel, which saves memory but gives no speed-up "
                '(its log says "Your GPU does not have native support for FP4 computation").'
            )
        if report.chosen_context > 65536:
            warnings.append(
                f"NVFP4 at {report.chosen_context:,} tokens of context: the vLLM recipe advises "
                "NVFP4 only below 64K; set serve.max_model_len to 65536 or use an FP8 profile."
            )
    if quant == "fp8" and lowest is not None and lowest < (8, 9):
        warnings.append(
            "FP8 on a GPU without native FP8 (compute capability < 8.9): vLLM falls back to "
            "the Marlin W8A16 kernel; expect lower throughput than on Hopper/Ada."
        )
    return warnings


ENGINE_TOOLS = {"vllm": "vllm", "ollama": "ollama", "llamacpp": "llama-server"}


def installed_engine(profile: Profile, facts: HostFacts) -> str | None:
    """The engine command already on the host's PATH at the pinned version, else None."""
    tool = ENGINE_TOOLS[profile.engine.kind]
    found = facts.tools.get(tool)
    if found is None:
        return None
    want = profile.engine.version.lstrip("v")
    return tool if found.lstrip("v") == want else None


def _cc(value: str) -> tuple[int, int]:
    major, _, minor = value.partition(".")
    try:
        return int(major), int(minor or 0)
    except ValueError:
        return (0, 0)


def build_plan(
    profile: Profile,
    facts: HostFacts,
    *,
    name: str | None = None,
    layout: RemoteLayout | None = None,
    max_model_len: int | None = None,
    alternatives: list[Profile] | None = None,
) -> Plan:
    """Return the plan for ``profile`` on ``facts``.

    Raises FitError (showing the sums, naming profiles from ``alternatives``
    that would fit) when the model does not fit.
    """
    layout = layout or RemoteLayout()
    name = name or default_name(profile)
    report = compute_fit(profile, facts, max_model_len=max_model_len)
    if not report.fits:
        fitting = profiles_that_fit(list(alternatives or []), facts)
        require_fit(report, [n for n in fitting if n != profile.name])
    backend = backend_for(profile.engine.kind)
    install = backend.install(profile, layout)
    downloads = backend.downloads(profile, layout)
    launch = backend.launch(profile, facts, report, layout, name)
    on_path = installed_engine(profile, facts)
    if on_path is not None:
        install = InstallSpec(
            description=f"{on_path} {profile.engine.version} is already on the host's PATH",
            check=f"command -v {shell.quote(on_path)} >/dev/null 2>&1",
            commands=[],
            binary=on_path,
        )
        launch = replace(launch, argv=[on_path, *launch.argv[1:]])

    steps: list[Step] = [
        Step(
            id="preflight",
            kind="preflight",
            title="Check the host against the profile",
            detail=report.sums(),
        ),
        Step(
            id="install",
            kind="install",
            title=f"Install {profile.engine.kind} {profile.engine.version}",
            detail=install.description,
            check=install.check,
            commands=install.commands,
        ),
    ]
    hf_bin = "hf" if facts.tools.get("hf") else backend.hf_binary(profile, layout)
    for spec in downloads:
        steps.append(
            Step(
                id=f"download:{spec.repo}",
                kind="download",
                title=f"Download {spec.repo}@{spec.revision}",
                detail=(
                    f"{spec.size_bytes / GB:,.1f} GB into {spec.local_dir} "
                    f"(patterns: {', '.join(spec.include) or 'all files'}); resumable"
                ),
                commands=[spec.command(layout, hf_bin)],
            )
        )
    deploy_dir = layout.deployment_dir(name)
    steps.append(
        Step(
            id="launch",
            kind="launch",
            title=f"Start {profile.engine.kind} as deployment {name!r}",
            detail=(
                f"run.sh in {deploy_dir}, started with setsid/nohup so it outlives SSH; "
                f"listens on 127.0.0.1:{launch.port}"
            ),
            commands=[launch.command()],
        )
    )
    for index, command in enumerate(launch.after_start):
        steps.append(
            Step(
                id=f"after-start:{index}",
                kind="download",
                title=f"Pull {profile.served_name} into Ollama",
                commands=[command],
            )
        )
    steps.append(
        Step(
            id="ready",
            kind="ready",
            title="Wait until the endpoint is ready",
            detail=(
                f"GET {launch.health_path} answers, {launch.models_path} lists "
                f"{profile.served_name!r}, one 1-token chat completion succeeds"
            ),
        )
    )
    steps.append(
        Step(
            id="tunnel",
            kind="tunnel",
            title="Open the SSH tunnel",
            detail=(
                f"127.0.0.1:{launch.port} on this machine -> 127.0.0.1:{launch.port} on the host"
            ),
        )
    )

    warnings = list(report.warnings) + quant_warnings(profile, facts, report)
    if not launch.api_key_enforced:
        warnings.append(
            f"{profile.engine.kind} has no API key of its own: the endpoint is private only "
            "because it listens on 127.0.0.1 and is reached through the SSH tunnel."
        )
    if report.pipeline_parallel > 1:
        warnings.append(
            f"{report.nodes} nodes: pipeline parallel runs over a Ray cluster; start "
            "`ray start --head` on the first node and `ray start --address HEAD:6379` on "
            "the others before launching."
        )
    if facts.source == "assumed":
        warnings.append("Planned for assumed hardware; pass --host to plan against the real GPUs.")
    return Plan(
        name=name,
        profile=profile.name,
        engine=profile.engine.kind,
        engine_version=profile.engine.version,
        host=("assumed " if facts.source == "assumed" else "") + facts.gpu_summary(),
        layout_root=layout.root,
        models_root=layout.models_root,
        fit=report,
        launch=launch,
        downloads=downloads,
        steps=steps,
        warnings=warnings,
    )


def plan_json(plan: Plan) -> dict[str, Any]:
    """The plan as JSON-ready data; secret environment values are never included."""
    fit = plan.fit
    return {
        "name": plan.name,
        "profile": plan.profile,
        "engine": plan.engine,
        "engine_version": plan.engine_version,
        "host": plan.host,
        "fits": fit.fits,
        "max_model_len": fit.chosen_context,
        "max_context_fit": fit.max_context_fit,
        "concurrency": fit.concurrency,
        "tensor_parallel": fit.tensor_parallel,
        "pipeline_parallel": fit.pipeline_parallel,
        "per_gpu": {
            "memory_gb": round(fit.gpu_memory_bytes / GB, 2),
            "usable_gb": round(fit.usable_per_gpu_bytes / GB, 2),
            "weights_gb": round(fit.weights_per_gpu_bytes / GB, 2),
            "reserve_gb": round(fit.reserve_per_gpu_bytes / GB, 2),
            "kv_gb": round(fit.kv_per_gpu_bytes() / GB, 2),
            "free_gb": round(fit.free_per_gpu_bytes() / GB, 2),
            "kv_bytes_per_token": fit.kv_bytes_per_token_per_gpu,
        },
        "offload": fit.offload.model_dump() if fit.offload else None,
        "launch": {
            "argv": list(plan.launch.argv),
            "env": {**plan.launch.env, **{k: "<secret>" for k in plan.launch.secret_env}},
            "secret_env": sorted(plan.launch.secret_env),
            "port": plan.launch.port,
            "health_path": plan.launch.health_path,
            "command": plan.launch.command(),
        },
        "steps": [step.model_dump() for step in plan.steps],
        "warnings": plan.warnings,
    }


def fit_error_json(profile: Profile, report: FitReport, error: FitError) -> dict[str, Any]:
    """JSON for a plan that does not fit: the report plus the error and its hint."""
    return {
        "profile": profile.name,
        "engine": profile.engine.kind,
        "fits": False,
        "max_model_len": 0,
        "error": error.message,
        "hint": error.hint,
        "fit": report.model_dump(),
    }


def render_launch_script(plan: Plan) -> str:
    """The readable ``run.sh`` a person finds on the host."""
    lines = [
        "#!/bin/sh",
        f"# mlctl deployment {plan.name!r}: profile {plan.profile}, "
        f"{plan.engine} {plan.engine_version}",
        "# Started by mlctl with setsid/nohup; stop it with `mlctl stop` or",
        '# kill -TERM -- -"$(cat server.pid)"',
        f"cd {shell.quote(plan.layout_root)}/deployments/{shell.quote(plan.name)} || exit 1",
        plan.launch.command(),
        "",
    ]
    return "\n".join(lines)
