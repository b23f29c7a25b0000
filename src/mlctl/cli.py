"""The ``mlctl`` command line: parse, call one function, render.

Thin on purpose. Heavy modules (paramiko, httpx, huggingface_hub, and even
pydantic models) are imported inside the commands that need them, so that
``mlctl --help`` starts fast. One place, :func:`main`, turns an
:class:`~mlctl.errors.MlctlError` into a message, a hint and an exit code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from mlctl import __version__
from mlctl.errors import MlctlError, UsageError

if TYPE_CHECKING:
    from mlctl.facts import HostFacts
    from mlctl.profiles import Profile

app = typer.Typer(
    name="mlctl",
    help=(
        "From a rented GPU box's SSH address to a verified, private, OpenAI-compatible "
        "endpoint of a frontier open-weight model on your localhost."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: typer's rich help formatter costs ~55 ms of imports on every --help.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
profiles_app = typer.Typer(
    help="List, show and validate deployment profiles.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(profiles_app, name="profiles")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mlctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """mlctl: deploy frontier open-weight models to rented GPU boxes."""


# --------------------------------------------------------------------------- profiles


@profiles_app.command("list")
def profiles_list(as_json: JsonOpt = False) -> None:
    """List built-in and user profiles (a user profile overrides a built-in one)."""
    from mlctl import profiles, render

    rows: list[dict[str, Any]] = []
    for entry in profiles.list_entries():
        try:
            profile = profiles.load_file(entry.path)
            rows.append(render.profile_row(profile, entry.origin, str(entry.path)))
        except MlctlError as exc:
            rows.append(
                {
                    "name": entry.name,
                    "origin": entry.origin,
                    "path": str(entry.path),
                    "error": exc.message,
                }
            )
    if as_json:
        _print_json(rows)
    else:
        render.profiles_table(rows)
    if any("error" in row for row in rows):
        raise typer.Exit(1)


@profiles_app.command("show")
def profiles_show(
    name: Annotated[str, typer.Argument(help="Profile name or path to a YAML file.")],
    as_json: JsonOpt = False,
) -> None:
    """Show one profile, validated, with where it comes from."""
    from mlctl import profiles

    entry = profiles.find(name)
    profile = profiles.load_file(entry.path)
    if as_json:
        _print_json({"origin": entry.origin, "path": str(entry.path), **profile.model_dump()})
    else:
        sys.stdout.write(f"# {entry.origin} profile: {entry.path}\n")
        sys.stdout.write(entry.path.read_text(encoding="utf-8"))


@profiles_app.command("schema")
def profiles_schema() -> None:
    """Print the JSON Schema of a profile file (for editors' YAML language servers)."""
    from mlctl import profiles

    _print_json(profiles.json_schema())


# --------------------------------------------------------------------------- plan


def _all_profiles() -> list[Profile]:
    from mlctl import profiles

    found = []
    for entry in profiles.list_entries():
        try:
            found.append(profiles.load_file(entry.path))
        except MlctlError:
            continue  # an invalid user profile must not break planning for others
    return found


def _assumed_facts(profile: Profile, gpus: str | None, nodes: int | None) -> HostFacts:
    from mlctl.facts import assumed_facts
    from mlctl.fit import GB
    from mlctl.gpus import lookup, parse_gpu_spec

    hw = profile.hardware
    if gpus:
        count, model = parse_gpu_spec(gpus)
    else:
        count, model = hw.gpus_per_node, lookup(hw.gpu)
    if nodes is not None and nodes < 1:
        raise UsageError(f"--nodes {nodes} is not a node count.", "Pass --nodes 1 or more.")
    return assumed_facts(
        count,
        model,
        nodes=nodes or hw.nodes,
        ram_bytes=int(hw.ram_gb * GB),
        disk_bytes=int(hw.disk_gb * GB),
    )


@app.command()
def plan(
    profile_name: Annotated[
        str, typer.Option("--profile", "-p", help="Profile name or YAML file.")
    ] = "a100-nvfp4",
    gpus: Annotated[
        str | None,
        typer.Option(help="Assume these GPUs instead of the profile's, e.g. 8xH100-80GB."),
    ] = None,
    nodes: Annotated[int | None, typer.Option(help="Assume this many nodes.")] = None,
    max_model_len: Annotated[
        int | None, typer.Option(help="Request this context length instead of the profile's.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Deployment name (default: profile).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show what a deploy would do: the fit, the exact commands and the warnings."""
    from mlctl import profiles, render
    from mlctl.errors import FitError
    from mlctl.fit import compute_fit
    from mlctl.plan import build_plan, fit_error_json, plan_json

    profile = profiles.load(profile_name)
    facts = _assumed_facts(profile, gpus, nodes)
    if max_model_len is not None and max_model_len < 256:
        raise UsageError(f"--max-model-len {max_model_len} is too small.", "Use 256 or more.")
    try:
        result = build_plan(
            profile, facts, name=name, max_model_len=max_model_len, alternatives=_all_profiles()
        )
    except FitError as exc:
        report = compute_fit(profile, facts, max_model_len=max_model_len)
        if as_json:
            _print_json(fit_error_json(profile, report, exc))
        else:
            render.fit_table(report, profile)
        raise
    if as_json:
        _print_json(plan_json(result))
    else:
        render.plan(result, profile)


# --------------------------------------------------------------------------- doctor


@app.command()
def doctor(
    log: Annotated[
        Path | None,
        typer.Option("--log", help="Diagnose this engine or Hub log file ('-' for stdin)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Find the root cause in a log and say how to fix it (exit 1 when a failure is found)."""
    from mlctl import diagnose, render

    if log is None:
        raise UsageError(
            "Nothing to check: `mlctl doctor` needs --log FILE for now.",
            "Pass the engine's log, e.g. `mlctl doctor --log server.log`.",
        )
    text = _read_log(log)
    findings = diagnose.diagnose(text)
    if as_json:
        _print_json(diagnose.to_json(findings))
    else:
        render.findings(findings, str(log))
    if findings:
        raise typer.Exit(1)


def _read_log(path: Path) -> str:
    if str(path) == "-":
        return sys.stdin.read()
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise UsageError(
            f"Log file {path} does not exist.", "Check the path passed to --log."
        ) from None
    except OSError as exc:
        raise UsageError(
            f"Cannot read log file {path}: {exc.strerror or exc}.",
            "Check the file's permissions.",
        ) from None


# --------------------------------------------------------------------------- entry point


def _fail(exc: MlctlError) -> NoReturn:
    from rich.console import Console
    from rich.markup import escape

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    err.print(f"[bold red]Error:[/] {escape(exc.message)}")
    if exc.hint:
        err.print(f"[bold]Hint:[/] {escape(exc.hint)}")
    raise SystemExit(exc.exit_code)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; an MlctlError becomes message + hint on stderr and its exit code."""
    try:
        app(args=argv, prog_name="mlctl")
    except MlctlError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        raise SystemExit(130) from None
