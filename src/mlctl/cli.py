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
hosts_app = typer.Typer(
    help="Saved hosts and their pinned host keys.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(hosts_app, name="hosts")
sandbox_app = typer.Typer(
    help="A simulated GPU host on loopback (real sshd, stand-in engines, local Hub).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(sandbox_app, name="sandbox")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ModelsDirOpt = Annotated[
    str | None,
    typer.Option(
        "--models-dir",
        help="Where checkpoints go on the host (default ~/.mlctl/models), e.g. a big "
        "volume: /workspace/models on RunPod.",
    ),
]
HostKeyPolicyOpt = Annotated[
    str,
    typer.Option(
        "--host-key-policy",
        help="accept-new: pin a new host's key, refuse a changed one; strict: refuse unknown keys.",
    ),
]


def _policy(value: str) -> Any:
    from mlctl.hosts.known_hosts import POLICIES

    if value not in POLICIES:
        raise UsageError(
            f"--host-key-policy {value!r} is not a policy.", f"Use one of: {', '.join(POLICIES)}."
        )
    return value


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
    from mlctl import profile_index
    from mlctl.render_plain import profiles_table

    rows = profile_index.rows()
    if as_json:
        _print_json(rows)
    else:
        profiles_table(rows)
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


def _host_facts(host: str, policy: str) -> HostFacts:
    from mlctl.gather import gather_facts
    from mlctl.hosts.open import open_connector

    conn = open_connector(host, host_key_policy=_policy(policy))
    try:
        return gather_facts(conn)
    finally:
        conn.close()


@app.command()
def facts(
    host: Annotated[str, typer.Option(help="Saved host name, ssh alias, user@host:port or local.")],
    host_key_policy: HostKeyPolicyOpt = "accept-new",
    as_json: JsonOpt = False,
) -> None:
    """Gather a host's facts in one round trip: GPUs, driver, RAM, disk, engines."""
    from mlctl import render

    data = _host_facts(host, host_key_policy)
    if as_json:
        _print_json(data.model_dump())
    else:
        render.facts(data, host)


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
    host: Annotated[
        str | None,
        typer.Option(
            help="Plan against this host's real GPUs (saved name, alias, user@host:port)."
        ),
    ] = None,
    host_key_policy: HostKeyPolicyOpt = "accept-new",
    max_model_len: Annotated[
        int | None, typer.Option(help="Request this context length instead of the profile's.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Deployment name (default: profile).")] = None,
    models_dir: ModelsDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show what a deploy would do: the fit, the exact commands and the warnings."""
    from mlctl import profiles, render
    from mlctl.backends.base import RemoteLayout
    from mlctl.errors import FitError
    from mlctl.fit import compute_fit
    from mlctl.plan import build_plan, fit_error_json, plan_json
    from mlctl.remote_paths import models_dir as parse_models_dir

    models = parse_models_dir(models_dir) if models_dir is not None else None
    layout = RemoteLayout(models_root=models.layout_path if models else None)
    profile = profiles.load(profile_name)
    if host and (gpus or nodes):
        raise UsageError(
            "--host plans against the host's real GPUs; --gpus/--nodes describe assumed ones.",
            "Pass either --host or --gpus/--nodes, not both.",
        )
    facts = _host_facts(host, host_key_policy) if host else _assumed_facts(profile, gpus, nodes)
    if max_model_len is not None and max_model_len < 256:
        raise UsageError(f"--max-model-len {max_model_len} is too small.", "Use 256 or more.")
    try:
        result = build_plan(
            profile,
            facts,
            name=name,
            layout=layout,
            max_model_len=max_model_len,
            alternatives=_all_profiles(),
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


# --------------------------------------------------------------------------- deploy


@app.command()
def deploy(
    profile_name: Annotated[
        str, typer.Option("--profile", "-p", help="Profile name or YAML file.")
    ],
    host: Annotated[
        str, typer.Option(help="Saved host name, ssh alias, user@host:port, sandbox or local.")
    ],
    name: Annotated[
        str | None, typer.Option(help="Deployment name (default: the profile's name).")
    ] = None,
    local_port: Annotated[
        int | None, typer.Option(help="Local port for the tunnel (default: the engine's).")
    ] = None,
    strict_port: Annotated[
        bool, typer.Option(help="Fail when the local port is busy instead of taking the next.")
    ] = False,
    max_model_len: Annotated[
        int | None, typer.Option(help="Request this context length instead of the profile's.")
    ] = None,
    models_dir: ModelsDirOpt = None,
    detach: Annotated[
        bool, typer.Option(help="Return once ready instead of holding the tunnel open.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option(help="Gather facts, check and plan against the host; change nothing.")
    ] = False,
    host_key_policy: HostKeyPolicyOpt = "accept-new",
    as_json: JsonOpt = False,
) -> None:
    """Deploy a profile to a host and open a private OpenAI-compatible endpoint on localhost."""
    from mlctl import hubmeta, profiles
    from mlctl.deploy import DeployOptions, NullReporter, run_deploy

    profile = profiles.load(profile_name)
    if local_port is not None and not 1024 <= local_port <= 65535:
        raise UsageError(f"--local-port {local_port} is out of range.", "Use 1024-65535.")
    from mlctl.remote_paths import models_dir as parse_models_dir

    options = DeployOptions(
        models_dir=parse_models_dir(models_dir) if models_dir is not None else None,
        name=name,
        local_port=local_port,
        strict_port=strict_port,
        max_model_len=max_model_len,
        hf_token=hubmeta.local_token(),
        dry_run=dry_run,
    )
    if as_json:
        reporter: Any = NullReporter()
    else:
        from mlctl.render_deploy import ConsoleReporter

        reporter = ConsoleReporter()
    session = run_deploy(
        host,
        profile,
        options,
        reporter=reporter,
        alternatives=_all_profiles(),
        host_key_policy=_policy(host_key_policy),
    )
    result = session.result
    try:
        if dry_run:
            from mlctl import render
            from mlctl.plan import plan_json

            assert result.plan is not None
            if as_json:
                _print_json({**result.to_json(), "plan": plan_json(result.plan)})
            else:
                render.plan(result.plan, profile)
            return
        if as_json:
            _print_json(result.to_json())
        else:
            from mlctl.render_deploy import handover

            handover(result)
        if detach or as_json:
            return
        if session.tunnel is not None:
            session.tunnel.on_state = lambda state, msg: sys.stderr.write(
                f"Tunnel {state}: {msg}\n"
            )
        sys.stderr.write(
            f"Tunnel open on {result.endpoint}; press Ctrl-C to close it "
            f"(the deployment keeps running; `mlctl tunnel {result.name}` reopens it).\n"
        )
        _wait_forever()
    finally:
        session.close()


def _print_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _wait_forever() -> None:
    import time

    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        sys.stderr.write("Tunnel closed.\n")


# --------------------------------------------------------------------------- demo


@app.command()
def demo(
    profile_name: Annotated[
        str, typer.Option("--profile", "-p", help="Profile to deploy to the sandbox.")
    ] = "a100-nvfp4",
    keep: Annotated[
        bool, typer.Option(help="Leave the sandbox and the deployment running afterwards.")
    ] = False,
    paramiko_server: Annotated[
        bool,
        typer.Option("--paramiko-server", help="Use mlctl's built-in SSH server, not OpenSSH."),
    ] = False,
) -> None:
    """The whole flow on this machine: sandbox host, deploy, chat through the tunnel, stop."""
    from mlctl import profiles
    from mlctl.demo import run_demo

    run_demo(profiles.load(profile_name), keep=keep, paramiko_server=paramiko_server)


# --------------------------------------------------------------------------- day two


def _record(name: str) -> Any:
    from mlctl import state

    return state.load(name)


@app.command()
def status(
    name: Annotated[str | None, typer.Argument(help="One deployment (default: all).")] = None,
    host_key_policy: HostKeyPolicyOpt = "accept-new",
    as_json: JsonOpt = False,
) -> None:
    """Every deployment with its host, profile, port, live state, health and uptime."""
    from mlctl import daytwo, state
    from mlctl.hosts.open import open_connector

    records = [state.load(name)] if name else state.list_records()
    policy = _policy(host_key_policy)
    found = daytwo.statuses(records, lambda h: open_connector(h, host_key_policy=policy))
    if as_json:
        _print_json([s.to_json() for s in found])
    else:
        from mlctl import render

        render.statuses(found)
    if name and found and found[0].state in ("exited", "unknown"):
        raise typer.Exit(1)


@app.command()
def logs(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep following.")] = False,
    tail: Annotated[int, typer.Option(help="Lines from the end.")] = 200,
    host_key_policy: HostKeyPolicyOpt = "accept-new",
) -> None:
    """The engine's log (server.log on the host), followed live with -f."""
    from mlctl import daytwo
    from mlctl.hosts.open import open_connector

    if tail < 0:
        raise UsageError(f"--tail {tail} is negative.", "Pass a number of lines, e.g. 200.")
    record = _record(name)
    conn = open_connector(record.host, host_key_policy=_policy(host_key_policy))
    try:
        command = daytwo.log_command(record, tail, follow)
        if follow:
            try:
                conn.run_stream(command, _print_line)
            except KeyboardInterrupt:
                return
        else:
            sys.stdout.write(conn.run(command, timeout=60).stdout)
    finally:
        conn.close()


@app.command()
def stop(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    purge: Annotated[
        bool, typer.Option(help="Also delete the deployment's directory and local record.")
    ] = False,
    purge_model: Annotated[
        bool, typer.Option(help="Also delete the downloaded model files on the host.")
    ] = False,
    host_key_policy: HostKeyPolicyOpt = "accept-new",
) -> None:
    """Stop a deployment: SIGTERM to its process group, SIGKILL after a timeout."""
    from mlctl import daytwo, state
    from mlctl.hosts.open import open_connector

    record = _record(name)
    shared = daytwo.shared_model_dirs(record, state.list_records()) if purge_model else []
    conn = open_connector(record.host, host_key_policy=_policy(host_key_policy))
    try:
        outcome = daytwo.stop(conn, record, purge=purge, purge_model=purge_model, keep=shared)
    finally:
        conn.close()
    if purge_model:
        deleted = [d for d in daytwo.model_dirs(record) if d not in shared]
        for d in deleted:
            typer.echo(f"Deleted the model files in {d} on {record.host}.")
        for d in shared:
            typer.echo(f"Kept {d}: another deployment on {record.host} uses it.")
        if not deleted and not shared:
            why = (
                " (Ollama keeps its models itself: `ollama rm TAG` on the host)"
                if record.engine == "ollama"
                else ""
            )
            typer.echo(f"No downloaded model files recorded for {name}{why}.")
    if purge:
        state.remove(name)
    words = {
        "terminated": "stopped",
        "killed": "killed after it ignored SIGTERM",
        "not-running": "was not running",
        "not-started": "was never started",
    }
    typer.echo(
        f"Deployment {name} {words.get(outcome, outcome)}"
        + ("; its files are removed." if purge else ".")
    )


@app.command()
def tunnel(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    local_port: Annotated[
        int | None, typer.Option(help="Local port (default: the deployment's).")
    ] = None,
    strict_port: Annotated[
        bool, typer.Option(help="Fail when the local port is busy instead of taking the next.")
    ] = False,
    print_ssh: Annotated[
        bool, typer.Option("--print-ssh", help="Print the equivalent OpenSSH command and exit.")
    ] = False,
    host_key_policy: HostKeyPolicyOpt = "accept-new",
) -> None:
    """Forward 127.0.0.1:PORT here to the deployment's engine; Ctrl-C closes it."""
    from mlctl.hosts.open import open_connector
    from mlctl.tunnel import Tunnel

    record = _record(name)
    port = local_port or record.local_port
    if print_ssh:
        from mlctl import shell
        from mlctl.hosts import known_hosts, saved
        from mlctl.hosts.target import openssh_forward_argv

        files = [str(known_hosts.mlctl_known_hosts_path()), "~/.ssh/known_hosts"]
        argv = openssh_forward_argv(saved.resolve(record.host), port, record.remote_port, files)
        typer.echo(shell.join(argv))
        return
    import logging

    # mlctl's own messages (connected, lost, reconnected) to stderr; paramiko's stay
    # silent (hosts/ssh gives it a NullHandler): what it logs, mlctl reports better
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    mlctl_log = logging.getLogger("mlctl")
    mlctl_log.addHandler(handler)
    mlctl_log.setLevel(logging.INFO)
    policy = _policy(host_key_policy)
    conn = open_connector(record.host, host_key_policy=policy)
    forward = Tunnel(
        conn,
        record.remote_port,
        local_port=port,
        strict_port=strict_port,
        reconnect=lambda: open_connector(record.host, host_key_policy=policy),
    )
    try:
        bound = forward.start()
        moved = f" ({port} was busy)" if bound != port else ""
        sys.stderr.write(
            f"Tunnel: http://127.0.0.1:{bound}/v1{moved} -> {record.host} port "
            f"{record.remote_port}. Ctrl-C closes it.\n"
        )
        _wait_forever()
    except KeyboardInterrupt:  # Ctrl-C is how a tunnel ends, even while it starts
        sys.stderr.write("Tunnel closed.\n")
    finally:
        forward.stop()
        conn.close()


# --------------------------------------------------------------------------- doctor


@app.command()
def doctor(
    log: Annotated[
        Path | None,
        typer.Option("--log", help="Diagnose this engine or Hub log file ('-' for stdin)."),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Check this host (saved name, alias, user@host:port).")
    ] = None,
    profile_name: Annotated[
        str | None, typer.Option("--profile", "-p", help="Check the host against this profile.")
    ] = None,
    models_dir: ModelsDirOpt = None,
    host_key_policy: HostKeyPolicyOpt = "accept-new",
    as_json: JsonOpt = False,
) -> None:
    """Check a host against a profile, or find the root cause in a log (exit 1 on failure)."""
    from mlctl import diagnose, render

    if log is None and host is None:
        raise UsageError(
            "Nothing to check: pass --host HOST [--profile P] or --log FILE.",
            "e.g. `mlctl doctor --host sandbox --profile a100-nvfp4` or "
            "`mlctl doctor --log server.log`.",
        )
    if log is not None:
        text = _read_log(log)
        findings = diagnose.diagnose(text)
        if as_json:
            _print_json(diagnose.to_json(findings))
        else:
            render.findings(findings, str(log))
        if findings:
            raise typer.Exit(1)
        return
    assert host is not None
    from mlctl import profiles
    from mlctl.doctor import run_doctor
    from mlctl.remote_paths import models_dir as parse_models_dir

    models = parse_models_dir(models_dir) if models_dir is not None else None
    profile = profiles.load(profile_name) if profile_name else None
    report = run_doctor(
        host,
        profile,
        alternatives=_all_profiles(),
        host_key_policy=_policy(host_key_policy),
        models_dir=models.probe_path if models else None,
    )
    if as_json:
        _print_json(report.to_json())
    else:
        render.checks(report.checks, host)
    if report.status == "fail":
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


# --------------------------------------------------------------------------- hosts


@hosts_app.command("add", context_settings={"ignore_unknown_options": True})
def hosts_add(
    name: Annotated[str, typer.Argument(help="A name to use with --host.")],
    command: Annotated[
        list[str],
        typer.Argument(
            help="The ssh command your provider shows (after --), or user@host:port.",
            metavar="-- SSH_COMMAND...",
        ),
    ],
    replace: Annotated[bool, typer.Option(help="Overwrite a saved host of this name.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Save a host from the ssh command line a provider shows you."""
    from mlctl.hosts import saved
    from mlctl.hosts.target import parse_ssh_command, parse_target

    if command and command[0] == "ssh":
        target = parse_ssh_command(command)
    elif len(command) == 1:
        target = parse_target(command[0])
    else:
        raise UsageError(
            f"Cannot read {' '.join(command)!r} as a host.",
            "Paste the provider's ssh command after --, e.g. "
            "`mlctl hosts add gpu1 -- ssh -p 40022 root@ssh4.vast.ai`, or give user@host:port.",
        )
    saved.add(name, target, replace=replace)
    if as_json:
        _print_json({"name": name, **target.to_dict()})
    else:
        typer.echo(f"Saved host {name}: {target.display()}")


@hosts_app.command("list")
def hosts_list(as_json: JsonOpt = False) -> None:
    """List saved hosts."""
    from mlctl.hosts import saved

    hosts = saved.list_hosts()
    if as_json:
        _print_json([{"name": n, **t.to_dict()} for n, t in sorted(hosts.items())])
        return
    if not hosts:
        typer.echo("No saved hosts. Add one with `mlctl hosts add NAME -- ssh ...`.")
    for name, target in sorted(hosts.items()):
        typer.echo(f"{name:<20} {target.display()}")


@hosts_app.command("show")
def hosts_show(name: str, as_json: JsonOpt = False) -> None:
    """Show one saved host."""
    from mlctl.errors import StateError
    from mlctl.hosts import saved

    target = saved.get(name)
    if target is None:
        raise StateError(f"No saved host named {name!r}.", "See `mlctl hosts list`.")
    data = {"name": name, **target.to_dict()}
    if as_json:
        _print_json(data)
    else:
        for key, value in data.items():
            typer.echo(f"{key}: {value}")


@hosts_app.command("remove")
def hosts_remove(name: str) -> None:
    """Forget a saved host (its pinned key stays until `hosts forget-key`)."""
    from mlctl.errors import StateError
    from mlctl.hosts import saved

    if not saved.remove(name):
        raise StateError(f"No saved host named {name!r}.", "See `mlctl hosts list`.")
    typer.echo(f"Removed host {name}.")


@hosts_app.command("forget-key")
def hosts_forget_key(
    host: Annotated[str, typer.Argument(help="Saved name, alias or host[:port].")],
) -> None:
    """Forget the pinned host key (after a box was re-rented behind the same address)."""
    from mlctl.hosts import known_hosts, saved

    target = saved.resolve(host)
    removed = known_hosts.forget(target.host, target.port)
    entry = known_hosts.host_entry(target.host, target.port)
    if removed:
        typer.echo(f"Forgot {removed} key(s) for {entry}; the next connection pins the new key.")
    else:
        typer.echo(f"No key pinned by mlctl for {entry}.")


# --------------------------------------------------------------------------- sandbox

SandboxNameOpt = Annotated[str, typer.Option("--name", help="Sandbox (and saved host) name.")]


@sandbox_app.command("up")
def sandbox_up(
    gpus: Annotated[str, typer.Option(help="Simulated GPUs, e.g. 8xA100-80GB.")] = "8xA100-80GB",
    name: SandboxNameOpt = "sandbox",
    no_engines: Annotated[
        bool, typer.Option("--no-engines", help="Start without vllm/ollama/llama-server.")
    ] = False,
    paramiko_server: Annotated[
        bool,
        typer.Option("--paramiko-server", help="Use mlctl's built-in SSH server, not OpenSSH."),
    ] = False,
    disk_gb: Annotated[
        float, typer.Option(help="Simulated free disk under the sandbox home, GB.")
    ] = 2000.0,
    real_engines: Annotated[
        bool | None,
        typer.Option(
            "--real-engines/--stand-in-engines",
            help="Use the real llama-server built by `python -m mlctl.sandbox.engines build` "
            "(default: when it has been built).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Start the sandbox host and save it as a host named `sandbox` (or --name)."""
    from mlctl.sandbox import host as sandbox

    if not disk_gb > 0:
        raise UsageError(f"--disk-gb {disk_gb:g} is not a size.", "Pass a positive number of GB.")
    info = sandbox.up(
        name,
        gpus,
        engines=not no_engines,
        force_paramiko=paramiko_server,
        disk_gb=disk_gb,
        real_engines=real_engines,
    )
    if as_json:
        _print_json(info.to_json())
        return
    typer.echo(
        f"Sandbox {info.name} is up: {info.gpus} behind "
        f"{'OpenSSH sshd' if info.ssh_server == 'openssh' else 'mlctl paramiko SSH server'} "
        f"at {info.user}@{info.host}:{info.port}, Hub at {info.hub_url}."
    )
    engines = ", ".join(f"{e} ({kind})" for e, kind in info.engines.items())
    typer.echo(f"Engines: {engines}. Use it with --host {info.name}.")


@sandbox_app.command("down")
def sandbox_down(
    name: SandboxNameOpt = "sandbox",
    purge: Annotated[bool, typer.Option(help="Also delete its state directory.")] = False,
) -> None:
    """Stop everything the sandbox started and forget its host entry."""
    from mlctl.sandbox import host as sandbox

    info = sandbox.down(name, purge=purge)
    typer.echo(f"Sandbox {name} stopped." if info else f"No sandbox named {name}.")


@sandbox_app.command("status")
def sandbox_status(name: SandboxNameOpt = "sandbox", as_json: JsonOpt = False) -> None:
    """Is the sandbox running, where, and which engines are real or stand-ins."""
    from mlctl.sandbox import host as sandbox

    data = sandbox.status(name)
    if as_json:
        _print_json(data)
    elif not data["running"] and "port" not in data:
        typer.echo(f"No sandbox named {name}. Start one with `mlctl sandbox up`.")
    else:
        state = "running" if data["running"] else "NOT running (run `mlctl sandbox up`)"
        typer.echo(f"Sandbox {name}: {state}")
        for key in ("gpus", "ssh_server", "host", "port", "user", "key_path", "hub_url", "home"):
            typer.echo(f"  {key}: {data[key]}")
        for engine, kind in data["engines"].items():
            typer.echo(f"  {engine}: {kind}")
    if not data["running"]:
        raise typer.Exit(1)


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
