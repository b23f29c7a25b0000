"""``mlctl doctor --host``: connect, probe, check, and read the deployments' logs.

Where the checks (pure, in ``checks.py``) meet I/O: one SSH connection, one
probe round trip, one round trip for the deployments, a local port bind test.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mlctl import diagnose
from mlctl.checks import Check, host_checks, worst
from mlctl.errors import ConnectError, RemoteError
from mlctl.facts import HostFacts
from mlctl.hosts.base import Connector
from mlctl.hosts.known_hosts import HostKeyPolicy
from mlctl.profiles import Profile
from mlctl.remote_status import RemoteDeployment, new_nonce, parse_status, status_script


@dataclass
class DoctorReport:
    """Everything doctor found: the checks in order, the facts, the deployments."""

    host: str
    checks: list[Check] = field(default_factory=list)
    facts: HostFacts | None = None
    deployments: list[RemoteDeployment] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``fail`` when any check failed, else ``warn`` or ``ok``."""
        return worst(self.checks)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready data for ``--json``."""
        return {
            "host": self.host,
            "status": self.status,
            "checks": [c.to_json() for c in self.checks],
            "facts": self.facts.model_dump() if self.facts else None,
            "deployments": [
                {"name": d.name, "pid": d.pid, "alive": d.alive, "exit_code": d.exit_code}
                for d in self.deployments
            ],
        }


def local_port_free(port: int) -> bool:
    """True when 127.0.0.1:``port`` can be bound on this machine right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def deployment_check(dep: RemoteDeployment) -> Check:
    """A check line for one deployment: alive or not, and its log's root cause."""
    findings = diagnose.diagnose(dep.log_tail)
    state = (
        f"running (pid {dep.pid})"
        if dep.alive
        else (f"exited with code {dep.exit_code}" if dep.exit_code is not None else "not running")
    )
    if findings:
        root = findings[0]
        return Check(
            f"deployment:{dep.name}",
            f"Deployment {dep.name}",
            "fail",
            f"{state}; log: {root.cause} at line {root.line}: {root.evidence}",
            root.fix,
        )
    if dep.alive:
        return Check(f"deployment:{dep.name}", f"Deployment {dep.name}", "ok", state)
    if dep.exit_code not in (None, 0, 143, -15):
        return Check(
            f"deployment:{dep.name}",
            f"Deployment {dep.name}",
            "fail",
            f"{state}; no known failure in the last lines of server.log",
            f"Read the whole log: `mlctl logs {dep.name}` or server.log in its directory.",
        )
    return Check(
        f"deployment:{dep.name}",
        f"Deployment {dep.name}",
        "warn",
        state,
        f"Start it again with `mlctl deploy --name {dep.name}`.",
    )


def read_deployments(conn: Connector, root: str) -> list[RemoteDeployment]:
    """Every deployment under ``root`` on the host, with its log tail (one round trip)."""
    nonce = new_nonce()
    result = conn.run(status_script(root, nonce), timeout=30)
    return parse_status(result.stdout, nonce)


def run_doctor(
    host: str,
    profile: Profile | None,
    *,
    alternatives: Sequence[Profile] = (),
    host_key_policy: HostKeyPolicy = "accept-new",
    check_local_port: bool = True,
    models_dir: str | None = None,
) -> DoctorReport:
    """Run every check against ``host``; never raises for what it can report as a check.

    ``models_dir`` (the probe's spelling, see remote_paths) is where the disk check looks.
    """
    from mlctl.gather import gather_facts
    from mlctl.hosts.open import open_connector

    report = DoctorReport(host=host)
    started = time.monotonic()
    try:
        conn = open_connector(host, host_key_policy=host_key_policy)
    except (ConnectError, RemoteError) as exc:
        report.checks.append(Check("ssh", "SSH", "fail", exc.message, exc.hint or ""))
        return report
    try:
        elapsed = (time.monotonic() - started) * 1000
        report.checks.append(
            Check("ssh", "SSH", "ok", f"connected to {conn.description} in {elapsed:.0f} ms")
        )
        try:
            facts = gather_facts(conn, models_dirs=[models_dir] if models_dir else ())
        except (ConnectError, RemoteError) as exc:
            report.checks.append(Check("probe", "Facts probe", "fail", exc.message, exc.hint or ""))
            return report
        report.facts = facts
        port_free = local_port_free(profile.serve.port) if (profile and check_local_port) else None
        report.checks += host_checks(
            facts,
            profile,
            alternatives=alternatives,
            models_dir=models_dir,
            local_port_free=port_free,
        )
        if facts.deployments and facts.root:
            try:
                report.deployments = read_deployments(conn, facts.root)
            except (ConnectError, RemoteError) as exc:
                report.checks.append(
                    Check("deployments", "Deployments", "warn", exc.message, exc.hint or "")
                )
            report.checks += [deployment_check(d) for d in report.deployments]
    finally:
        conn.close()
    return report
