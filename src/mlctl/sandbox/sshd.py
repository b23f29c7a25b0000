"""A real OpenSSH ``sshd`` on 127.0.0.1, running as the current user, for the sandbox host.

``start_sshd`` writes fresh ed25519 host and client keys (made with
``cryptography``), an authorized_keys and an sshd_config into a state
directory, starts ``sshd -D -e -f CONFIG`` detached from this process (so it
outlives ``mlctl sandbox up``), and waits for its banner. ``SandboxSshd.stop``
works from the pid alone, so another process can stop it.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlctl.errors import SandboxError

_HOST = "127.0.0.1"


def find_sshd() -> str | None:
    """Return the path of an OpenSSH ``sshd`` binary (PATH, then /usr/sbin), or None."""
    found = shutil.which("sshd")
    if found:
        return found
    for candidate in ("/usr/sbin/sshd", "/usr/local/sbin/sshd"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def generate_ed25519_key(private_path: Path, comment: str = "mlctl-sandbox") -> str:
    """Write a fresh ed25519 private key (OpenSSH format, 0600) and its ``.pub``; return the line.

    The returned public line is ``ssh-ed25519 AAAA… comment``.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = f"{public.decode()} {comment}"
    private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_path.unlink(missing_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    Path(f"{private_path}.pub").write_text(line + "\n", encoding="utf-8")
    return line


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _quoted(path: Path) -> str:
    return '"' + str(path).replace('"', '\\"') + '"'


def render_config(
    *,
    port: int,
    host_key: Path,
    pid_file: Path,
    authorized_keys: Path,
    session_env: Mapping[str, str] | None = None,
    extra: Sequence[str] = (),
) -> str:
    """Return an sshd_config for a loopback-only, key-only sshd (see FACTS.md)."""
    lines = [
        f"Port {port}",
        f"ListenAddress {_HOST}",
        f"HostKey {_quoted(host_key)}",
        f"PidFile {_quoted(pid_file)}",
        f"AuthorizedKeysFile {_quoted(authorized_keys)}",
        "UsePAM no",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "StrictModes no",
        "AllowTcpForwarding yes",
        "X11Forwarding no",
        "PrintMotd no",
        "UseDNS no",
        "Subsystem sftp internal-sftp",
    ]
    if session_env:
        lines.append("SetEnv " + " ".join(f'"{k}={v}"' for k, v in session_env.items()))
    lines.extend(extra)
    return "\n".join(lines) + "\n"


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists and has not exited (a zombie counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie has exited


def _read_banner(port: int, timeout: float) -> bytes:
    with socket.create_connection((_HOST, port), timeout=timeout) as sock:
        return sock.recv(256)


@dataclass
class SandboxSshd:
    """A running sandbox sshd: how to reach it and how to stop it."""

    host: str
    port: int
    user: str
    key_path: Path
    host_key_path: Path
    pid: int
    config_path: Path
    state_dir: Path
    sshd_path: str

    @property
    def log_path(self) -> Path:
        """Return the file sshd's log (-e) goes to."""
        return self.state_dir / "sshd.log"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (paths as strings)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    def host_public_key(self) -> str:
        """Return the host key's public line (``ssh-ed25519 AAAA… comment``)."""
        return Path(f"{self.host_key_path}.pub").read_text(encoding="utf-8").strip()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sshd by pid (SIGTERM, then SIGKILL); a pid already gone is fine."""
        terminate(self.pid, timeout)

    def regenerate_host_key(self, timeout: float = 5.0) -> None:
        """Give the server a fresh host key: stop, write a new key, start on the same port.

        Raises SandboxError when sshd does not come back.
        """
        self.stop(timeout)
        generate_ed25519_key(self.host_key_path, "mlctl-sandbox-host")
        self.pid = _launch(self.sshd_path, self.config_path, self.log_path, self.port, timeout)


def terminate(pid: int, timeout: float) -> None:
    """SIGTERM ``pid``, then SIGKILL when it outlives ``timeout`` s; reaps our own children."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _reap(pid)
            if not pid_alive(pid):
                return
            time.sleep(0.02)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _launch(sshd: str, config: Path, log: Path, port: int, timeout: float) -> int:
    # sh starts sshd in the background and exits, so sshd is nobody's child here
    # and outlives this process; setsid keeps terminal signals away from it.
    starter = subprocess.run(
        [
            "/bin/sh",
            "-c",
            '"$0" "$@" </dev/null >>"$MLCTL_SSHD_LOG" 2>&1 & echo $!',
            sshd,
            "-D",
            "-e",
            "-f",
            str(config),
        ],
        env={**os.environ, "MLCTL_SSHD_LOG": str(log)},
        capture_output=True,
        text=True,
        check=True,
        start_new_session=True,
    )
    pid = int(starter.stdout.strip())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            break
        try:
            if _read_banner(port, 1.0).startswith(b"SSH-2.0-"):
                return pid
        except OSError:
            pass
        time.sleep(0.02)
    terminate(pid, 1.0)
    tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
    raise SandboxError(
        f"sshd did not start on {_HOST}:{port}: " + (" | ".join(tail) or "no log output"),
        f"see {log}; run {sshd} -t -f {config} to check the config",
    )


def start_sshd(
    state_dir: Path,
    *,
    port: int | None = None,
    sshd_path: str | None = None,
    session_env: Mapping[str, str] | None = None,
    extra_config: Sequence[str] = (),
    timeout: float = 10.0,
) -> SandboxSshd:
    """Start a loopback sshd for the current user with fresh keys under ``state_dir``.

    Returns the running SandboxSshd (its client key is ``key_path``). Without
    ``port`` a free one is picked (retried if another process takes it first).
    Raises SandboxError when no sshd binary exists or it does not start.
    """
    sshd = sshd_path or find_sshd()
    if sshd is None:
        raise SandboxError(
            "no OpenSSH sshd binary found",
            "install it (apt-get install openssh-server) or use the in-process fallback",
        )
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state_dir, 0o700)
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    host_key = state_dir / "ssh_host_ed25519_key"
    client_key = state_dir / "client_ed25519_key"
    authorized = state_dir / "authorized_keys"
    config = state_dir / "sshd_config"
    log = state_dir / "sshd.log"
    if not session_env or "HOME" not in session_env:
        # A home of the sandbox's own: the login shell (bash) then does not source the
        # user's real ~/.bashrc, whose start-up work (e.g. `pyenv rehash` taking a lock)
        # slows every session and can hang them all when a killed session leaves it behind.
        home = state_dir / "home"
        home.mkdir(exist_ok=True, mode=0o700)
        session_env = {**(session_env or {}), "HOME": str(home)}
    generate_ed25519_key(host_key, "mlctl-sandbox-host")
    authorized.write_text(generate_ed25519_key(client_key, "mlctl-sandbox-client") + "\n")
    os.chmod(authorized, 0o600)
    attempts = 1 if port is not None else 3
    error: SandboxError | None = None
    for _ in range(attempts):
        chosen = port if port is not None else _free_port()
        config.write_text(
            render_config(
                port=chosen,
                host_key=host_key,
                pid_file=state_dir / "sshd.pid",
                authorized_keys=authorized,
                session_env=session_env,
                extra=extra_config,
            ),
            encoding="utf-8",
        )
        try:
            pid = _launch(sshd, config, log, chosen, timeout)
        except SandboxError as exc:
            error = exc
            continue
        return SandboxSshd(
            host=_HOST,
            port=chosen,
            user=getpass.getuser(),
            key_path=client_key,
            host_key_path=host_key,
            pid=pid,
            config_path=config,
            state_dir=state_dir,
            sshd_path=sshd,
        )
    assert error is not None
    raise error
