"""``mlctl deploy``: where the plan meets the host, over one SSH connection.

Steps, each reported ok / changed / failed: facts and preflight, checkpoint
metadata from the Hub (sizes, gated access), runtime, download (resumable,
with progress), launch under the supervisor, readiness (health, model listed,
one real chat completion, with the engine's log followed and diagnosed), and
the tunnel. Re-running the same deploy changes nothing; a changed spec
restarts the engine and says so.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from mlctl import diagnose, shell, supervise
from mlctl.backends import backend_for
from mlctl.backends.base import DownloadSpec, RemoteLayout
from mlctl.checks import host_checks
from mlctl.deploy_spec import download_fingerprint, sized_profile, spec_hash, spec_of
from mlctl.errors import DeployError, HealthError, HubError, MlctlError, RemoteError
from mlctl.facts import HostFacts
from mlctl.fit import GB
from mlctl.hosts.base import Connector
from mlctl.plan import Plan, build_plan, render_launch_script
from mlctl.profiles import Profile
from mlctl.remote_paths import ModelsDir
from mlctl.startup_log import PhaseTracker, failure_from_log, failure_or

StepStatus = Literal["ok", "changed", "failed", "skipped"]
# Checks that do not depend on the checkpoint's size (run before the Hub is asked).
HARDWARE_CHECKS = frozenset(
    {"nvidia-smi", "mig", "gpu-count", "gpu-model", "compute-capability", "driver", "shm"}
)
READY_TIMEOUT = 1800.0  # a 675B model takes minutes to load; the sandbox takes milliseconds
DOWNLOAD_POLL = 0.5
LOG_POLL = 0.2


@dataclass
class StepResult:
    """The outcome of one step."""

    id: str
    title: str
    status: StepStatus
    detail: str = ""
    seconds: float = 0.0


class Reporter(Protocol):
    """Where deploy reports progress (the CLI renders it; tests record it)."""

    def step_started(self, step_id: str, title: str) -> None: ...

    def step_done(self, result: StepResult) -> None: ...

    def progress(self, label: str, done: int, total: int) -> None: ...

    def phase(self, name: str, elapsed: float) -> None: ...


class NullReporter:
    """Reports nothing (``--json`` and tests)."""

    def step_started(self, step_id: str, title: str) -> None:
        """Ignore."""

    def step_done(self, result: StepResult) -> None:
        """Ignore."""

    def progress(self, label: str, done: int, total: int) -> None:
        """Ignore."""

    def phase(self, name: str, elapsed: float) -> None:
        """Ignore."""


@dataclass
class DeployOptions:
    """What the user chose on the command line."""

    name: str | None = None
    local_port: int | None = None
    strict_port: bool = False
    max_model_len: int | None = None
    hf_token: str | None = None
    dry_run: bool = False
    ready_timeout: float = READY_TIMEOUT
    models_dir: ModelsDir | None = None

    @property
    def models_probe_path(self) -> str | None:
        """--models-dir as the facts probe and the disk check name it (None: the default)."""
        return self.models_dir.probe_path if self.models_dir else None

    @property
    def models_root(self) -> str | None:
        """--models-dir as remote shell commands name it (None: the default)."""
        return self.models_dir.layout_path if self.models_dir else None


@dataclass
class DeployResult:
    """What a deploy did, for the hand-over and ``--json``."""

    name: str
    host: str
    profile: str
    engine: str
    served_model: str
    remote_port: int
    remote_dir: str
    steps: list[StepResult] = field(default_factory=list)
    endpoint: str | None = None
    local_port: int | None = None
    api_key_file: str | None = None
    restarted: bool = False
    plan: Plan | None = None
    phases: list[tuple[str, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready data; never a secret value."""
        return {
            "name": self.name,
            "host": self.host,
            "profile": self.profile,
            "engine": self.engine,
            "served_model": self.served_model,
            "endpoint": self.endpoint,
            "local_port": self.local_port,
            "remote_port": self.remote_port,
            "remote_dir": self.remote_dir,
            "api_key_file": self.api_key_file,
            "restarted": self.restarted,
            "phases": [{"phase": n, "seconds": round(t, 3)} for n, t in self.phases],
            "steps": [
                {
                    "id": s.id,
                    "title": s.title,
                    "status": s.status,
                    "detail": s.detail,
                    "seconds": round(s.seconds, 3),
                }
                for s in self.steps
            ],
        }


# --------------------------------------------------------------------------- the runner


class Deployer:
    """Runs one deploy on one open connection."""

    def __init__(
        self,
        conn: Connector,
        host: str,
        profile: Profile,
        options: DeployOptions,
        reporter: Reporter,
        alternatives: Sequence[Profile] = (),
    ) -> None:
        self.conn = conn
        self.host = host
        self.profile = profile
        self.options = options
        self.reporter = reporter
        self.alternatives = alternatives
        self.steps: list[StepResult] = []
        self.restarted = False
        self.ready_phases: list[tuple[str, float]] = []

    # -- step bookkeeping

    def _step(self, step_id: str, title: str, fn: Callable[[], tuple[StepStatus, str]]) -> None:
        self.reporter.step_started(step_id, title)
        started = time.monotonic()
        try:
            status, detail = fn()
        except MlctlError as exc:
            result = StepResult(step_id, title, "failed", exc.message, time.monotonic() - started)
            self.steps.append(result)
            self.reporter.step_done(result)
            raise
        result = StepResult(step_id, title, status, detail, time.monotonic() - started)
        self.steps.append(result)
        self.reporter.step_done(result)

    # -- the steps

    def gather(self) -> HostFacts:
        """The host's facts in one round trip."""
        from mlctl.gather import gather_facts

        holder: dict[str, HostFacts] = {}

        def run() -> tuple[StepStatus, str]:
            probe_path = self.options.models_probe_path
            holder["facts"] = gather_facts(
                self.conn, models_dirs=[probe_path] if probe_path else ()
            )
            return "ok", holder["facts"].gpu_summary()

        self._step("facts", "Gather host facts", run)
        return holder["facts"]

    def preflight(self, facts: HostFacts, profile: Profile, *, hardware_only: bool = False) -> None:
        """Host checks against the profile: refuse before anything is installed or downloaded.

        ``hardware_only`` runs the checks that do not depend on the checkpoint's size
        (driver, GPUs, compute capability, /dev/shm) before the Hub is asked; the full set
        runs once the real file sizes are known.
        """

        def run() -> tuple[StepStatus, str]:
            checks = host_checks(
                facts,
                profile,
                alternatives=self.alternatives,
                models_dir=self.options.models_probe_path,
            )
            if hardware_only:
                checks = [c for c in checks if c.id in HARDWARE_CHECKS]
            failed = [c for c in checks if c.status == "fail"]
            if failed:
                lines = "; ".join(f"{c.title}: {c.detail}" for c in failed)
                fixes = " ".join(dict.fromkeys(c.fix for c in failed if c.fix))
                raise DeployError(
                    f"{self.host} cannot run profile {profile.name}: {lines}.",
                    fixes + " Nothing was installed or downloaded.",
                )
            warned = [f"{c.title}: {c.detail}" for c in checks if c.status == "warn"]
            return "ok", "; ".join(warned) if warned else "every check passed"

        if hardware_only:
            self._step("hardware", "Hardware checks", run)
        else:
            self._step("preflight", "Preflight checks", run)

    def checkpoint_metadata(self, facts: HostFacts) -> Profile:
        """Exact files and sizes from the Hub, and gated access with the user's token."""
        if self.profile.engine.kind == "ollama":
            return self.profile
        from mlctl import hubmeta

        holder: dict[str, Profile] = {"profile": self.profile}
        ck = self.profile.checkpoint

        def run() -> tuple[StepStatus, str]:
            endpoint = facts.hf_endpoint or None
            snap = hubmeta.snapshot(
                ck.repo, ck.revision, ck.include, endpoint=endpoint, token=self.options.hf_token
            )
            if not snap.files:
                raise HubError(
                    f"No file of {ck.repo}@{ck.revision} matches the profile's include patterns "
                    f"{ck.include}.",
                    "Fix checkpoint.include in the profile (see the repo's file list).",
                )
            hubmeta.check_access(snap, endpoint=endpoint, token=self.options.hf_token)
            sized = sized_profile(self.profile, snap.total_bytes)
            holder["profile"] = sized
            return "ok", (
                f"{len(snap.files)} files, {snap.total_bytes / GB:,.2f} GB at commit "
                f"{snap.commit[:12]}"
            )

        self._step("metadata", f"Checkpoint metadata for {ck.repo}", run)
        return holder["profile"]

    def make_plan(self, profile: Profile, facts: HostFacts) -> Plan:
        """The plan against the real facts (raises FitError with the sums)."""
        layout = RemoteLayout(
            root=facts.root or "$HOME/.mlctl", models_root=self.options.models_root
        )
        return build_plan(
            profile,
            facts,
            name=self.options.name,
            layout=layout,
            max_model_len=self.options.max_model_len,
            alternatives=list(self.alternatives),
        )

    def secrets(self, plan: Plan, api_key: str) -> None:
        """The HF token and the API key into 0600 files on the host, over stdin."""
        layout = plan.layout()
        deploy_dir = layout.deployment_dir(plan.name)

        def run() -> tuple[StepStatus, str]:
            self.conn.run(
                f"umask 077 && mkdir -p {shell.quote(layout.secrets_dir)} "
                f"{shell.quote(deploy_dir)}",
                check=True,
                timeout=30,
            )
            self.conn.put_text(layout.api_key_file(plan.name), api_key + "\n", mode=0o600)
            written = ["API key"]
            if self.options.hf_token:
                self.conn.put_text(layout.hf_token_file, self.options.hf_token + "\n", 0o600)
                written.append("HF token")
            return "ok", f"{' and '.join(written)} in 0600 files under {layout.root}"

        self._step("secrets", "Secrets on the host", run)

    def install(self, plan: Plan) -> None:
        """Install the engine unless its check says it is there."""
        step = next(s for s in plan.steps if s.kind == "install")

        def run() -> tuple[StepStatus, str]:
            if step.check and self.conn.run(step.check, timeout=60).ok:
                return "ok", step.detail
            output: list[str] = []
            for command in step.commands:
                code = self.conn.run_stream(command, output.append, timeout=3600)
                if code != 0:
                    tail = " | ".join(output[-5:]) or "no output"
                    raise RemoteError(
                        f"Installing {plan.engine} {plan.engine_version} failed (exit {code}): "
                        f"{tail}",
                        "Run the command from `mlctl plan` by hand on the host to see why; "
                        "`mlctl doctor --host HOST` checks the driver and disk.",
                    )
            if step.check and not self.conn.run(step.check, timeout=60).ok:
                raise RemoteError(
                    f"{plan.engine} {plan.engine_version} is still missing after installing it.",
                    "Check the install output with `mlctl plan` and the host's PATH.",
                )
            return "changed", step.detail

        self._step("install", step.title, run)

    def download(self, plan: Plan, spec: DownloadSpec, command: str) -> None:
        """Fetch one repo in the background on the host, showing progress; resumable."""
        marker = f"{spec.local_dir}/.mlctl-complete"
        state_dir = f"{spec.local_dir}/.mlctl-download"

        def run() -> tuple[StepStatus, str]:
            quoted_marker = shell.quote(marker)
            done = self.conn.run(f"cat {quoted_marker} 2>/dev/null", timeout=30)
            fingerprint = download_fingerprint(spec)
            if done.ok and done.stdout.strip() == fingerprint:
                return "ok", f"{spec.repo} already downloaded to {spec.local_dir}"
            self._run_download(spec, command, state_dir)
            self.conn.put_text(marker, fingerprint + "\n", mode=0o644)
            return "changed", f"{spec.size_bytes / GB:,.2f} GB into {spec.local_dir}"

        self._step(f"download:{spec.repo}", f"Download {spec.repo}", run)

    def _run_download(self, spec: DownloadSpec, command: str, state_dir: str) -> None:
        d = shell.quote(state_dir)
        local = shell.quote(spec.local_dir)
        # The wrapper records its own pid ($$) and, at the end, the exit code; it runs in
        # its own session (setsid) so nothing of ours outlives a kill of its group. A
        # download already running (a re-run after Ctrl-C or a cut connection) is joined.
        # The command runs in a subshell, so even an ``exit`` in it leaves an exit code.
        wrapper = shell.quote(
            "echo $$ > pid.tmp && mv pid.tmp pid; ("
            + command
            + "\n); echo $? > rc.tmp && mv rc.tmp rc"
        )
        alive = 'ours "$(cat pid 2>/dev/null | tr -dc 0-9)" . rc.tmp'
        start = (
            supervise.OURS_FUNCTION + f"mkdir -p {d} {local} && cd {d} && "
            f"if {alive}; then echo running; else "
            "rm -f rc pid; "
            "if command -v setsid >/dev/null 2>&1; then S=setsid; else S=; fi; "
            f"{{ $S nohup sh -c {wrapper} > log 2>&1 < /dev/null & }}; "
            "i=0; while [ ! -s pid ] && [ $i -lt 100 ]; do sleep 0.02; i=$((i+1)); done; "
            "echo started; fi"
        )
        self.conn.run(start, check=True, timeout=30)
        poll = (
            # Alive first, then rc: the wrapper writes rc just before it exits, so a
            # process found gone with no rc afterwards really died (the other order
            # races with a download that finishes between the two checks).
            supervise.OURS_FUNCTION + f"cd {d} && if {alive}; then echo -; "
            "elif [ -f rc ]; then cat rc; else echo dead; fi; "
            f"du -sb {local} 2>/dev/null | cut -f1 || echo 0; "
            "tail -n 5 log 2>/dev/null"
        )
        while True:
            out = self.conn.run(poll, timeout=60).stdout.split("\n", 2)
            rc = out[0].strip() if out else "-"
            size = int(out[1].strip()) if len(out) > 1 and out[1].strip().isdigit() else 0
            self.reporter.progress(spec.repo, min(size, spec.size_bytes), spec.size_bytes)
            if rc == "dead":
                raise HubError(
                    f"The download of {spec.repo} on the host stopped before it finished "
                    "(the process was killed, or the host restarted).",
                    "Run the deploy again: it resumes, and finished files are kept.",
                )
            if rc != "-":
                break
            time.sleep(DOWNLOAD_POLL)
        if rc != "0":
            log = self.conn.run(f"tail -n 60 {d}/log 2>/dev/null", timeout=30).stdout
            findings = diagnose.diagnose(log)
            if findings:
                raise HubError(
                    f"Downloading {spec.repo} failed: {findings[0].cause} "
                    f"({findings[0].evidence}).",
                    findings[0].fix + " Re-run the deploy to resume; finished files are kept.",
                )
            tail = " | ".join(log.strip().splitlines()[-3:]) or "no output"
            raise HubError(
                f"Downloading {spec.repo} failed (exit {rc}): {tail}.",
                "Re-run the deploy to resume; finished files are kept.",
            )
        self.reporter.progress(spec.repo, spec.size_bytes, spec.size_bytes)

    def launch(self, plan: Plan, profile: Profile) -> bool:
        """Write spec.json and run.sh; start, keep or restart the engine. True if started."""
        layout = plan.layout()
        deploy_dir = layout.deployment_dir(plan.name)
        spec = spec_of(plan, profile)
        digest = spec_hash(spec)
        started: dict[str, bool] = {"started": False}

        def run() -> tuple[StepStatus, str]:
            q = shell.quote(deploy_dir)
            probe = self.conn.run(
                f"cat {q}/spec.hash 2>/dev/null || echo -; "
                f"{supervise.alive_command(deploy_dir)} && echo alive || echo dead",
                timeout=30,
            ).stdout.split()
            old_hash = probe[0] if probe else "-"
            alive = bool(probe) and probe[-1] == "alive"
            if alive and old_hash == digest:
                return "ok", f"{plan.engine} already running with this spec in {deploy_dir}"
            reason = "started"
            if alive:
                self.conn.run(supervise.stop_command(deploy_dir), timeout=60)
                reason = "restarted: the profile or options changed since the running spec"
            port = plan.launch.port
            if self.conn.run(supervise.port_listening_command(port), timeout=30).stdout.strip() == (
                "busy"
            ):
                raise DeployError(
                    f"Port {port} on {self.host} is already in use by another process, so "
                    f"{plan.engine} could not listen on it.",
                    "Stop that process (`ss -ltnp` on the host shows it), or set serve.port "
                    "to a free port in your own copy of the profile.",
                )
            self.conn.put_text(f"{deploy_dir}/run.sh", render_launch_script(plan), mode=0o700)
            self.conn.put_text(
                f"{deploy_dir}/spec.json", json.dumps(spec, indent=2) + "\n", mode=0o600
            )
            self.conn.put_text(f"{deploy_dir}/spec.hash", digest + "\n", mode=0o600)
            pid = self.conn.run(supervise.start_command(deploy_dir), check=True, timeout=30)
            started["started"] = True
            started["restarted"] = alive
            return "changed", f"{reason} (pid {pid.stdout.strip()}) in {deploy_dir}"

        self._step("launch", f"Launch {plan.engine} as {plan.name!r}", run)
        self.restarted = started.get("restarted", False)
        return started["started"]

    def wait_ready(
        self, plan: Plan, base_url: str, api_key: str, fresh: bool
    ) -> list[tuple[str, float]]:
        """Follow the log through the startup phases until the endpoint answers a real chat."""
        from mlctl import health

        layout = plan.layout()
        deploy_dir = layout.deployment_dir(plan.name)
        backend = backend_for(plan.engine)
        started = time.monotonic()
        tracker = PhaseTracker(backend.phases(), started)
        offset = {"bytes": 0, "last": 0.0}
        key = api_key if plan.launch.api_key_enforced else None

        def poll_log() -> None:
            now = time.monotonic()
            if now - offset["last"] < LOG_POLL:
                return
            offset["last"] = now
            out = self.conn.run(
                supervise.log_chunk_command(deploy_dir, int(offset["bytes"])), timeout=30
            ).stdout
            alive, exit_code, size, text = supervise.parse_log_chunk(out)
            offset["bytes"] = max(offset["bytes"], size)
            for name, elapsed in tracker.feed(text, time.monotonic()):
                self.reporter.phase(name, elapsed)
            if not alive:
                raise failure_from_log(tracker, exit_code, plan.name)
            if tracker.findings():
                raise failure_from_log(tracker, None, plan.name)

        def run() -> tuple[StepStatus, str]:
            after = list(plan.launch.after_start)
            if after:
                deadline = time.monotonic() + self.options.ready_timeout
                while not health.check_health(base_url, plan.launch.health_path).ok:
                    poll_log()
                    if time.monotonic() > deadline:
                        raise HealthError(
                            f"{plan.engine} did not answer {plan.launch.health_path} within "
                            f"{self.options.ready_timeout:.0f} s.",
                            f"See `mlctl logs {plan.name}`.",
                        )
                    time.sleep(0.05)
                for command in after:
                    lines: list[str] = []
                    code = self.conn.run_stream(command, lines.append, timeout=7200)
                    if code != 0:
                        raise DeployError(
                            f"`{shlex.join(command.split()[-3:])}` failed (exit {code}): "
                            f"{' | '.join(lines[-3:])}",
                            "Check the model tag in the profile (checkpoint.ollama_tag).",
                        )
            report = health.wait_ready(
                base_url,
                plan.launch.health_path,
                key,
                self.profile.served_name,
                timeout=self.options.ready_timeout,
                on_poll=poll_log,
            )
            offset["last"] = 0.0
            poll_log()  # the engine that answered must be ours, and still alive
            self.ready_phases = [(f"ready: {n}", t) for n, t in report.phases]
            total = time.monotonic() - started
            return "ok" if not fresh else "changed", (
                f"health, /v1/models and a 1-token chat answered after {total:.2f} s"
            )

        try:
            self._step("ready", "Wait until the endpoint is ready", run)
        except HealthError as exc:
            raise failure_or(exc, tracker) from None
        return tracker.phases


# --------------------------------------------------------------------------- the whole deploy


@dataclass
class Session:
    """A finished deploy that still holds its connection and tunnel (close both)."""

    result: DeployResult
    conn: Connector | None
    tunnel: Any = None

    def close(self) -> None:
        """Stop the tunnel and close the connection; the deployment keeps running."""
        if self.tunnel is not None:
            self.tunnel.stop()
            self.tunnel = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def run_deploy(
    host: str,
    profile: Profile,
    options: DeployOptions,
    *,
    reporter: Reporter | None = None,
    alternatives: Sequence[Profile] = (),
    host_key_policy: Any = "accept-new",
) -> Session:
    """Deploy ``profile`` to ``host``; return the session holding the tunnel.

    Raises a MlctlError subclass (ConnectError, FitError, HubError, DeployError,
    HealthError...) naming the failed step and its fix; what was done stays
    done, so the next run continues from there.
    """
    from mlctl import state
    from mlctl.hosts.open import open_connector
    from mlctl.tunnel import Tunnel

    reporter = reporter or NullReporter()
    if options.name is not None:
        state.check_name(options.name)
    conn = open_connector(host, host_key_policy=host_key_policy)
    tunnel: Tunnel | None = None
    try:
        deployer = Deployer(conn, host, profile, options, reporter, alternatives)
        facts = deployer.gather()
        deployer.preflight(facts, profile, hardware_only=True)
        sized = deployer.checkpoint_metadata(facts)
        deployer.preflight(facts, sized)
        plan = deployer.make_plan(sized, facts)
        layout = plan.layout()
        result = DeployResult(
            name=plan.name,
            host=host,
            profile=profile.name,
            engine=plan.engine,
            served_model=profile.served_name,
            remote_port=plan.launch.port,
            remote_dir=layout.deployment_dir(plan.name),
            steps=deployer.steps,
            plan=plan,
        )
        if options.dry_run:
            return Session(result, conn)
        state.check_name(plan.name)
        api_key = _api_key(plan.name)
        result.api_key_file = str(state.key_path(plan.name))
        deployer.secrets(plan, api_key)
        deployer.install(plan)
        for spec in plan.downloads:
            step = next(s for s in plan.steps if s.id == f"download:{spec.repo}")
            deployer.download(plan, spec, step.commands[0])
        fresh = deployer.launch(plan, sized)
        result.restarted = deployer.restarted
        wanted = options.local_port or _default_local_port(host, plan.launch.port)
        tunnel = Tunnel(
            conn,
            plan.launch.port,
            local_port=wanted,
            strict_port=options.strict_port,
            reconnect=lambda: open_connector(host, host_key_policy=host_key_policy),
        )
        result.local_port = tunnel.start()
        result.endpoint = f"http://127.0.0.1:{result.local_port}/v1"
        result.phases = deployer.wait_ready(plan, tunnel.url, api_key, fresh)
        result.phases += deployer.ready_phases
        state.save(
            state.DeploymentRecord(
                name=plan.name,
                host=host,
                profile=profile.name,
                engine=plan.engine,
                served_model=profile.served_name,
                remote_root=plan.layout_root,
                remote_dir=result.remote_dir,
                remote_port=plan.launch.port,
                local_port=result.local_port,
                api_key_file=result.api_key_file,
                spec_hash=spec_hash(spec_of(plan, sized)),
                created_at=time.time(),
                updated_at=time.time(),
                extra={
                    "health_path": plan.launch.health_path,
                    # what `mlctl stop --purge-model` deletes
                    "model_dirs": [spec.local_dir for spec in plan.downloads],
                },
            )
        )
        return Session(result, conn, tunnel)
    except BaseException:
        if tunnel is not None:
            tunnel.stop()
        conn.close()
        raise


def same_machine(host: str) -> bool:
    """True when ``host`` is this machine (``local`` or an SSH target on loopback)."""
    import ipaddress

    if host == "local":
        return True
    from mlctl.hosts import saved

    try:
        address = saved.resolve(host).host
    except MlctlError:
        return False
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def _default_local_port(host: str, remote_port: int) -> int:
    """The engine's port, unless the engine runs on this very machine and needs it itself."""
    return remote_port + 1 if same_machine(host) else remote_port


def _api_key(name: str) -> str:
    """The deployment's API key: the saved one, else a new one saved 0600."""
    from mlctl import state

    try:
        return state.read_api_key(name)
    except MlctlError:
        key = state.new_api_key()
        state.write_api_key(name, key)
        return key
