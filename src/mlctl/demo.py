"""``mlctl demo``: the whole product on this machine, narrated, in a few seconds.

Brings up a sandbox host (a real SSH server on loopback with simulated GPUs and
stand-in engines), deploys a profile to it, sends a chat through the tunnel,
shows the status, stops the deployment and tears the sandbox down.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from mlctl.deploy import DeployOptions, run_deploy
from mlctl.errors import MlctlError
from mlctl.profiles import Profile

DEMO_NAME = "mlctl-demo"


def gpus_for(profile: Profile) -> str:
    """The sandbox GPU spec that matches a profile's hardware."""
    return f"{profile.hardware.gpus_per_node}x{profile.hardware.gpu}"


def run_demo(
    profile: Profile,
    *,
    keep: bool = False,
    paramiko_server: bool = False,
    console: Console | None = None,
) -> str:
    """Run the demo; return the model's answer. Raises MlctlError when a step fails.

    Everything it started is stopped again, also on failure, unless ``keep``.
    """
    from mlctl import daytwo, health, render, state
    from mlctl.hosts.open import open_connector
    from mlctl.render_deploy import ConsoleReporter, handover
    from mlctl.sandbox import host as sandbox

    out = console or Console(highlight=False)
    gpus = gpus_for(profile)
    out.rule(f"1. A sandbox GPU host: {gpus}")
    info = sandbox.up(DEMO_NAME, gpus, force_paramiko=paramiko_server)
    server = "OpenSSH sshd" if info.ssh_server == "openssh" else "mlctl's paramiko SSH server"
    engines = ", ".join(f"{name} ({kind})" for name, kind in info.engines.items())
    out.print(
        f"{server} on {info.user}@{info.host}:{info.port} (saved as host {DEMO_NAME!r}), "
        f"Hugging Face Hub at {info.hub_url}, a stand-in nvidia-smi; engines: {engines}."
    )
    session = None
    try:
        out.rule(f"2. mlctl deploy --profile {profile.name} --host {DEMO_NAME}")
        session = run_deploy(
            DEMO_NAME,
            profile,
            DeployOptions(name=f"demo-{profile.name}", ready_timeout=60),
            reporter=ConsoleReporter(out),
        )
        result = session.result
        handover(result, out)
        out.rule("3. A chat request through the tunnel")
        key = state.read_api_key(result.name) if result.api_key_file else None
        question = "In one sentence, what does mlctl do?"
        out.print(f"[bold]user:[/] {question}")
        answer = health.chat_once(
            result.endpoint or "", key, result.served_model, max_tokens=48, prompt=question
        )
        # a tiny random-weight model answers gibberish: show it printable
        shown = "".join(ch if ch.isprintable() else "?" for ch in answer.text)
        out.print(f"[bold]{escape(result.served_model)}:[/] {escape(shown)}")
        out.print(f"[dim]({answer.elapsed_ms:.1f} ms through the SSH tunnel)[/]")
        out.rule(f"4. mlctl status {result.name}")
        render.statuses(daytwo.statuses([state.load(result.name)], open_connector))
        if keep:
            out.rule("Kept running")
            out.print(
                f"The sandbox and {result.name!r} keep running: try `mlctl status`, "
                f"`mlctl logs {result.name}`, `mlctl tunnel {result.name}`; "
                f"`mlctl stop {result.name} --purge` and `mlctl sandbox down --name "
                f"{DEMO_NAME}` clean up."
            )
            return answer.text
        out.rule(f"5. mlctl stop {result.name} --purge, mlctl sandbox down")
        session.close()
        session = None
        conn = open_connector(DEMO_NAME)
        try:
            outcome = daytwo.stop(conn, state.load(result.name), purge=True)
        finally:
            conn.close()
        state.remove(result.name)
        out.print(f"Deployment {result.name}: {outcome}.")
        return answer.text
    finally:
        if session is not None:
            session.close()
        if not keep:
            state.remove(f"demo-{profile.name}")
            try:
                sandbox.down(DEMO_NAME, purge=True)
                out.print("Sandbox stopped; nothing is left running.")
            except MlctlError as exc:  # report, but keep the first error
                out.print(f"[red]Could not stop the sandbox:[/] {escape(exc.message)}")
