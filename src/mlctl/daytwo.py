"""Day-two operations on deployments: status, logs, stop, tunnel.

Each command reads the local record (``state.py``), opens one SSH connection
to the deployment's host and runs one or two remote commands built by
``supervise.py`` / ``remote_status.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from mlctl import diagnose, shell, supervise
from mlctl.errors import ConnectError, MlctlError, RemoteError
from mlctl.hosts.base import Connector, StreamChannel
from mlctl.remote_status import RemoteDeployment, new_nonce, parse_status, status_script
from mlctl.state import DeploymentRecord

State = Literal["starting", "running", "exited", "stopped", "unknown"]
STOPPED_MARK = "stopped"  # file written by `mlctl stop` in the deployment directory


@dataclass
class DeploymentStatus:
    """A deployment's live state as seen from the host."""

    record: DeploymentRecord
    state: State
    pid: int | None = None
    exit_code: int | None = None
    uptime_s: int | None = None
    healthy: bool | None = None
    cause: str | None = None
    evidence: str | None = None
    fix: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready data (``mlctl status --json``)."""
        r = self.record
        return {
            "name": r.name,
            "host": r.host,
            "profile": r.profile,
            "engine": r.engine,
            "model": r.served_model,
            "local_port": r.local_port,
            "remote_port": r.remote_port,
            "state": self.state,
            "pid": self.pid,
            "exit_code": self.exit_code,
            "uptime_s": self.uptime_s,
            "healthy": self.healthy,
            "cause": self.cause,
            "evidence": self.evidence,
            "fix": self.fix,
            "error": self.error,
        }


def http_status_via(conn: Connector, port: int, path: str, timeout: float = 3.0) -> int | None:
    """GET ``path`` on the host's 127.0.0.1:``port`` through the SSH connection; the status."""
    try:
        channel = conn.open_forward("127.0.0.1", port)
    except (ConnectError, RemoteError, OSError):
        return None
    try:
        channel.settimeout(timeout)
        channel.sendall(
            f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        head = _read_head(channel)
        parts = head.split(" ", 2)
        return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    except (TimeoutError, OSError, EOFError, ValueError):
        return None
    finally:
        channel.close()


def _read_head(channel: StreamChannel) -> str:
    data = b""
    while b"\r\n" not in data and len(data) < 4096:
        chunk = channel.recv(1024)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].decode("latin-1")


def classify(
    record: DeploymentRecord, remote: RemoteDeployment | None, healthy: bool | None
) -> DeploymentStatus:
    """Pure: the state of a deployment from what the host reported."""
    if remote is None:
        return DeploymentStatus(record, "stopped", error="its directory is gone from the host")
    status = DeploymentStatus(
        record, "unknown", pid=remote.pid, exit_code=remote.exit_code, healthy=healthy
    )
    if remote.alive:
        status.state = "running" if healthy else "starting"
    elif STOPPED_MARK in remote.files:
        status.state = "stopped"
    else:
        status.state = "exited"
    if not remote.alive or not healthy:
        findings = diagnose.diagnose(remote.log_tail)
        if findings:
            status.cause, status.evidence, status.fix = (
                findings[0].cause,
                findings[0].evidence,
                findings[0].fix,
            )
        elif status.state == "exited":
            # no known cause: show the engine's last words and where to read the rest
            status.evidence = last_error_line(remote.log_tail)
            status.fix = f"Read the whole log: `mlctl logs {record.name}`."
    return status


_EXCEPTION = re.compile(r"\b\w+(Error|Exception): \S")
_ERRORISH = re.compile(r"Error\b|error:|Exception|FATAL|Fatal|failed|Aborted|Segmentation")
# consequences that name no cause: "see above" lines of vLLM's engine
_GENERIC = re.compile(
    r"EngineDeadError|See (the )?(root cause|stack trace)|Engine core initialization failed|"
    r"EngineCore failed to start|Engine process failed to start"
)


def last_error_line(log: str) -> str | None:
    """The line most likely to name an unknown cause: the first exception that is not a
    generic consequence, else the last error-looking line, else the last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    specific = [line for line in lines if not _GENERIC.search(line)]
    for line in specific:
        if _EXCEPTION.search(line):
            return line[:300]
    for line in reversed(specific):
        if _ERRORISH.search(line):
            return line[:300]
    return lines[-1][:300] if lines else None


def statuses(
    records: list[DeploymentRecord], open_conn: Callable[[str], Connector]
) -> list[DeploymentStatus]:
    """Live status of ``records``: one connection and one round trip per host."""
    by_host: dict[str, list[DeploymentRecord]] = {}
    for record in records:
        by_host.setdefault(record.host, []).append(record)
    out: list[DeploymentStatus] = []
    for host, group in by_host.items():
        try:
            conn = open_conn(host)
        except MlctlError as exc:
            out += [DeploymentStatus(r, "unknown", error=exc.message) for r in group]
            continue
        try:
            roots = sorted({r.remote_root for r in group})
            seen: dict[str, RemoteDeployment] = {}
            for root in roots:
                nonce = new_nonce()
                text = conn.run(status_script(root, nonce), timeout=30).stdout
                for dep in parse_status(text, nonce):
                    seen[f"{root}/deployments/{dep.name}"] = dep
            for record in group:
                remote = seen.get(record.remote_dir)
                healthy = None
                if remote is not None and remote.alive:
                    path = str(record.extra.get("health_path", "/health"))
                    code = http_status_via(conn, record.remote_port, path)
                    healthy = code == 200
                status = classify(record, remote, healthy)
                if remote is not None and remote.alive and remote.pid:
                    status.uptime_s = _uptime(conn, remote.pid)
                out.append(status)
        finally:
            conn.close()
    return out


def _uptime(conn: Connector, pid: int) -> int | None:
    result = conn.run(f"ps -o etimes= -p {int(pid)} 2>/dev/null", timeout=15)
    value = result.stdout.strip()
    return int(value) if value.isdigit() else None


def model_dirs(record: DeploymentRecord) -> list[str]:
    """The checkpoint directories this deployment downloaded (what --purge-model deletes)."""
    dirs = record.extra.get("model_dirs", [])
    # Only directories shaped like mlctl's own (".../org--repo"): a hand-edited state file
    # must not turn --purge-model into `rm -rf` of something else.
    return [
        str(d)
        for d in (dirs if isinstance(dirs, list) else [])
        if "--" in str(d).rstrip("/").rsplit("/", 1)[-1] and str(d).count("/") >= 2
    ]


def shared_model_dirs(record: DeploymentRecord, others: Iterable[DeploymentRecord]) -> list[str]:
    """Pure: this deployment's model directories that another one on the same host uses."""
    used = {
        d
        for other in others
        if other.host == record.host and other.name != record.name
        for d in model_dirs(other)
    }
    return [d for d in model_dirs(record) if d in used]


def stop(
    conn: Connector,
    record: DeploymentRecord,
    *,
    purge: bool = False,
    purge_model: bool = False,
    keep: Collection[str] = (),
) -> str:
    """Stop the engine (TERM, then KILL after a timeout); optionally delete its files.

    With ``purge_model``, the model directories in ``model_dirs(record)`` are deleted,
    except those in ``keep`` (another deployment on the host uses them).
    Returns what happened: ``terminated``, ``killed``, ``not-running`` or ``not-started``.
    """
    d = shell.quote(record.remote_dir)
    outcome = conn.run(supervise.stop_command(record.remote_dir), timeout=90).stdout.strip()
    if purge:
        conn.run(f"rm -rf {d}", check=True, timeout=120)
    else:
        conn.run(f"[ -d {d} ] && : > {d}/{STOPPED_MARK}", timeout=30)
    if purge_model:
        for model_dir in model_dirs(record):
            if model_dir not in keep:
                conn.run(f"rm -rf {shell.quote(model_dir)}", check=True, timeout=600)
    return outcome.splitlines()[-1] if outcome else "unknown"


def log_command(record: DeploymentRecord, tail: int, follow: bool) -> str:
    """``tail`` of the engine's log, following it with ``-f``."""
    log = shell.quote(f"{record.remote_dir}/server.log")
    flag = "-F" if follow else ""
    return f"tail -n {int(tail)} {flag} {log}".replace("  ", " ")
