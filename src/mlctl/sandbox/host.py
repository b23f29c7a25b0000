"""The sandbox host: a simulated GPU node on loopback, behind a real SSH server.

``up`` starts, on 127.0.0.1 only: an SSH server running as the current user
(OpenSSH ``sshd`` when installed, else mlctl's paramiko server) with fresh keys,
a local Hugging Face Hub, and stand-ins for ``nvidia-smi``, ``vllm``,
``ollama`` and ``llama-server`` on the session's PATH (the real ``llama-server`` instead,
when one is built: :mod:`mlctl.sandbox.engines`). It saves itself as a host
(default name ``sandbox``) so ``--host sandbox`` works everywhere. Everything
lives in ``<state dir>/sandbox/<name>/``; ``down`` stops it by pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlctl.errors import SandboxError
from mlctl.gpus import parse_gpu_spec
from mlctl.paths import state_dir
from mlctl.sandbox.sshd import pid_alive, terminate

DEFAULT_NAME = "sandbox"
DEFAULT_GPUS = "8xA100-80GB"
# The simulated disk under the sandbox's home: room for any built-in checkpoint.
DEFAULT_DISK_GB = 2000.0
ENGINES = ("vllm", "ollama", "llama-server")


@dataclass
class SandboxInfo:
    """How to reach a running sandbox, and what runs in it."""

    name: str
    host: str
    port: int
    user: str
    key_path: str
    hub_url: str
    gpus: str
    state_dir: str
    home: str
    ssh_server: str  # "openssh" or "paramiko"
    sshd_pid: int
    hub_pid: int
    disk_gb: float = DEFAULT_DISK_GB
    # engine -> "stand-in" | "real" | "absent"
    engines: dict[str, str] = field(default_factory=dict)
    # the SSH server's own record (SandboxSshd.to_dict), to rotate its host key
    ssh: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready data (``mlctl sandbox up --json``)."""
        return asdict(self)


def sandbox_dir(name: str) -> Path:
    """The state directory of the sandbox called ``name``."""
    return state_dir() / "sandbox" / name


def load(name: str = DEFAULT_NAME) -> SandboxInfo | None:
    """The recorded sandbox ``name``, or None when there is none."""
    path = sandbox_dir(name) / "sandbox.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SandboxError(
            f"The sandbox record {path} is unreadable: {exc}.",
            f"Run `mlctl sandbox down --name {name}` to clean it up.",
        ) from None
    return SandboxInfo(**data)


def is_running(info: SandboxInfo) -> bool:
    """True when both the SSH server and the Hub of ``info`` are alive."""
    return pid_alive(info.sshd_pid) and pid_alive(info.hub_pid)


def _start_hub(
    state: Path, timeout: float = 10.0, throttle_bps: int | None = None
) -> tuple[int, str]:
    """Start the sandbox Hub detached (it outlives this process); return (pid, url)."""
    from mlctl import shell

    record = state / "hub.json"
    record.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "mlctl.sandbox.hub", "--state", str(state)]
    if throttle_bps:
        argv += ["--throttle", str(int(throttle_bps))]
    log = shell.quote(str(state / "hub.log"))
    setsid = "setsid " if shutil.which("setsid") else ""
    subprocess.run(
        ["/bin/sh", "-c", f"{setsid}{shell.join(argv)} >> {log} 2>&1 < /dev/null &"],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if record.exists():
            try:
                data = json.loads(record.read_text())
                return int(data["pid"]), str(data["url"])
            except (ValueError, KeyError):
                pass
        time.sleep(0.05)
    tail = (
        (state / "hub.log").read_text(errors="replace")[-400:]
        if (state / "hub.log").exists()
        else ""
    )
    raise SandboxError(
        f"The sandbox's Hugging Face Hub did not start: {tail.strip() or 'no output'}.",
        f"See {state / 'hub.log'}.",
    )


def _session_env(state: Path, home: Path, hub_url: str) -> dict[str, str]:
    bin_dir = state / "bin"
    return {
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
        "HOME": str(home),
        "MLCTL_SANDBOX_STATE": str(state),
        "HF_ENDPOINT": hub_url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def write_df_standin(bin_dir: Path, home: Path, disk_gb: float) -> Path:
    """A ``df`` that reports a simulated disk of ``disk_gb`` for paths under ``home``.

    Other paths (and /dev/shm) get the real ``df``. The facts probe runs
    ``df -Pk DIR``, so the sandbox can present a rented box's big volume.
    """
    from mlctl import shell

    real = shutil.which("df") or "/bin/df"
    kib = int(disk_gb * 1e9 // 1024)
    used = kib // 100
    script = f"""#!/bin/sh
# mlctl sandbox stand-in: simulated {disk_gb:g} GB disk under the sandbox home.
last=""
for arg in "$@"; do last=$arg; done
case "$last" in
  {shell.quote(str(home))}|{shell.quote(str(home))}/*)
    printf 'Filesystem     1024-blocks      Used Available Capacity Mounted on\n'
    printf 'sandbox-disk %s %s %s 1%% /\n' {kib} {used} {kib - used}
    ;;
  *) exec {shell.quote(real)} "$@" ;;
esac
"""
    path = bin_dir / "df"
    path.write_text(script)
    path.chmod(0o755)
    return path


def write_installers(bin_dir: Path) -> list[Path]:
    """Stand-in ``uv`` and ``curl`` that install the stand-in engines (``--no-engines``)."""
    from mlctl import shell

    python = shell.quote(sys.executable)
    paths = []
    for tool in ("uv", "curl"):
        path = bin_dir / tool
        path.write_text(
            f'#!/bin/sh\nexec {python} -m mlctl.sandbox.standins.installers {tool} "$@"\n'
        )
        path.chmod(0o755)
        paths.append(path)
    return paths


def write_python_tools(bin_dir: Path) -> list[Path]:
    """``python3`` and ``hf`` on the sandbox PATH: this interpreter and its huggingface_hub.

    A rented box has them (or mlctl installs them); the sandbox's sshd session
    has a minimal PATH, so they are provided here as wrappers.
    """
    from mlctl import shell

    python = shell.quote(sys.executable)
    scripts = {
        "python3": f'#!/bin/sh\nexec {python} "$@"\n',
        "hf": f'#!/bin/sh\nexec {python} -m huggingface_hub.cli.hf "$@"\n',
    }
    paths = []
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
        paths.append(path)
    return paths


def write_real_engines(bin_dir: Path, wanted: bool | None) -> dict[str, str]:
    """Replace stand-ins in ``bin_dir`` by wrappers of the built real engines.

    Returns engine -> "real" for each one replaced. ``wanted`` None: when built;
    True: SandboxError when none is built; False: none.
    """
    from mlctl import shell
    from mlctl.sandbox.engines import find_llama_server

    if wanted is False:
        return {}
    binary = find_llama_server()
    if binary is None:
        if wanted:
            raise SandboxError(
                "No real llama-server is built for the sandbox.",
                "Build it once with `python -m mlctl.sandbox.engines build` (about 4 minutes).",
            )
        return {}
    path = bin_dir / "llama-server"
    path.write_text(f'#!/bin/sh\nexec {shell.quote(str(binary))} "$@"\n')
    path.chmod(0o755)
    return {"llama-server": "real"}


def _switch_real_engines(bin_dir: Path, info: SandboxInfo, real: bool) -> None:
    """On a running sandbox, put the real engines (or the stand-ins back) on its PATH."""
    from mlctl.sandbox.standins.install import TOOLS, wrapper_script

    if info.engines.get("llama-server") not in ("real", "stand-in"):
        return  # started with --no-engines: the installers own the PATH
    if real:
        info.engines.update(write_real_engines(bin_dir, True))
    elif info.engines.get("llama-server") == "real":
        path = bin_dir / "llama-server"
        path.write_text(wrapper_script(TOOLS["llama-server"], sys.executable))
        path.chmod(0o755)
        info.engines["llama-server"] = "stand-in"


def up(
    name: str = DEFAULT_NAME,
    gpus: str = DEFAULT_GPUS,
    *,
    engines: bool = True,
    force_paramiko: bool = False,
    disk_gb: float = DEFAULT_DISK_GB,
    hub_throttle_bps: int | None = None,
    real_engines: bool | None = None,
) -> SandboxInfo:
    """Start the sandbox (or, when it already runs, switch its GPUs) and save it as a host.

    ``real_engines``: True puts the real engines built by ``python -m mlctl.sandbox.engines
    build`` on the sandbox's PATH instead of the stand-ins (SandboxError when none is
    built); None does so when one is built; False keeps the stand-ins. Only llama.cpp's
    ``llama-server`` has a real engine (``engines["llama-server"] == "real"``).
    Raises SandboxError when a part does not start; what did start is stopped.
    """
    from mlctl.hosts import known_hosts, saved
    from mlctl.hosts.target import SshTarget
    from mlctl.sandbox.sshd import find_sshd, start_sshd
    from mlctl.sandbox.standins.install import install_standins, write_gpus

    count, model = parse_gpu_spec(gpus)
    state = sandbox_dir(name)
    existing = load(name)
    if existing is not None and is_running(existing):
        write_gpus(state, count, model)
        existing.gpus = f"{count}x{model.key}"
        if real_engines is not None and "llama-server" in existing.engines:
            _switch_real_engines(state / "bin", existing, real_engines)
        _record(state, existing)
        return existing
    if existing is not None:
        _stop_pids(existing)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    home = state / "home"
    home.mkdir(exist_ok=True, mode=0o700)
    bin_dir = state / "bin"
    if bin_dir.exists():
        shutil.rmtree(bin_dir)
    bin_dir.mkdir()
    write_gpus(state, count, model)
    installed = install_standins(bin_dir, python=sys.executable)
    write_df_standin(bin_dir, home, disk_gb)
    write_python_tools(bin_dir)
    if not engines:
        for path in installed:
            if path.name in ENGINES:
                path.unlink()
        write_installers(bin_dir)
    real = write_real_engines(bin_dir, real_engines) if engines else {}
    hub_pid, hub_url = _start_hub(state, throttle_bps=hub_throttle_bps)
    env = _session_env(state, home, hub_url)
    try:
        if find_sshd() and not force_paramiko:
            server = start_sshd(state / "ssh", session_env=env)
            kind = "openssh"
        else:
            from mlctl.sandbox.paramiko_server import start_paramiko_sshd

            server = start_paramiko_sshd(state / "ssh", session_env=env)
            kind = "paramiko"
    except BaseException:
        terminate(hub_pid, 5.0)
        raise
    info = SandboxInfo(
        name=name,
        host=server.host,
        port=server.port,
        user=server.user,
        key_path=str(server.key_path),
        hub_url=hub_url,
        gpus=f"{count}x{model.key}",
        state_dir=str(state),
        home=str(home),
        ssh_server=kind,
        sshd_pid=server.pid,
        hub_pid=hub_pid,
        disk_gb=disk_gb,
        ssh=server.to_dict(),
        engines={
            e: real.get(e, "stand-in" if engines else "absent (installable)") for e in ENGINES
        },
    )
    _record(state, info)
    known_hosts.forget(server.host, server.port)
    target = SshTarget(
        host=server.host, port=server.port, user=server.user, identity_files=(str(server.key_path),)
    )
    saved.add(name, target, replace=True)
    return info


def rotate_host_key(name: str = DEFAULT_NAME) -> SandboxInfo:
    """Give the running sandbox a new host key on the same port (a re-rented box).

    Raises SandboxError when there is no running sandbox ``name``.
    """
    from mlctl.sandbox.paramiko_server import sandbox_sshd_from_dict

    info = load(name)
    if info is None or not is_running(info):
        raise SandboxError(
            f"No running sandbox named {name!r}.", "Start one with `mlctl sandbox up`."
        )
    server = sandbox_sshd_from_dict(info.ssh)
    server.regenerate_host_key()
    info.sshd_pid = server.pid
    info.ssh = server.to_dict()
    _record(Path(info.state_dir), info)
    return info


def _record(state: Path, info: SandboxInfo) -> None:
    tmp = state / "sandbox.json.tmp"
    tmp.write_text(json.dumps(info.to_json(), indent=2))
    os.replace(tmp, state / "sandbox.json")


def _is_ours(pid: int, needle: str) -> bool:
    """True when process ``pid`` still runs a command line containing ``needle``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        done = subprocess.run(
            ["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True, check=False
        )
        cmdline = done.stdout
    return needle in cmdline


def _stop_pids(info: SandboxInfo) -> None:
    """Stop the SSH server and the Hub, checking first that the pids are still theirs."""
    if _is_ours(info.hub_pid, "mlctl.sandbox.hub"):
        terminate(info.hub_pid, 5.0)
    ssh_marker = str(info.ssh.get("config_path") or info.state_dir)
    if _is_ours(info.sshd_pid, ssh_marker) or _is_ours(info.sshd_pid, info.state_dir):
        terminate(info.sshd_pid, 5.0)


def _stop_engines(info: SandboxInfo, timeout: float = 5.0) -> None:
    """Stop engines the sandbox's deployments left running: TERM, then KILL after ``timeout``.

    Only a pid whose working directory is still its deployment directory is
    signalled: a stale pid file's number may belong to an unrelated process.
    """
    root = Path(info.home) / ".mlctl" / "deployments"
    groups: list[int] = []
    for pidfile in root.glob("*/server.pid"):
        try:
            pid = int(pidfile.read_text().strip())
            if os.path.realpath(f"/proc/{pid}/cwd") != os.path.realpath(pidfile.parent):
                continue
            os.killpg(pid, signal.SIGTERM)
            groups.append(pid)
        except (ValueError, OSError):
            continue
    deadline = time.monotonic() + timeout
    while groups and time.monotonic() < deadline:
        groups = [g for g in groups if _group_alive(g)]
        time.sleep(0.05)
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def down(name: str = DEFAULT_NAME, *, purge: bool = False) -> SandboxInfo | None:
    """Stop everything sandbox ``name`` started (by pid) and forget its host entry.

    Returns what was stopped, or None when there was no sandbox. ``purge``
    also deletes its state directory.
    """
    from mlctl.hosts import known_hosts, saved

    info = load(name)
    if info is None:
        return None
    _stop_engines(info)
    _stop_pids(info)
    known_hosts.forget(info.host, info.port)
    saved.remove(name)
    state = sandbox_dir(name)
    if purge:
        shutil.rmtree(state, ignore_errors=True)
    else:
        (state / "sandbox.json").unlink(missing_ok=True)
    return info


def status(name: str = DEFAULT_NAME) -> dict[str, Any]:
    """What runs in sandbox ``name``: its record plus liveness of each part."""
    info = load(name)
    if info is None:
        return {"name": name, "running": False}
    return {
        **info.to_json(),
        "running": is_running(info),
        "sshd_alive": pid_alive(info.sshd_pid),
        "hub_alive": pid_alive(info.hub_pid),
    }
