"""A pure-Python SSH server on 127.0.0.1 for the sandbox host, where no OpenSSH ``sshd`` exists.

``start_paramiko_sshd`` has the shape of :func:`mlctl.sandbox.sshd.start_sshd`: it writes
the same ed25519 host key, client key and authorized_keys into a state directory, starts
``python -m mlctl.sandbox.paramiko_server --state DIR --port N [--env K=V ...]`` detached
from this process, waits for its SSH banner, and returns a :class:`ParamikoSshd` (a
:class:`~mlctl.sandbox.sshd.SandboxSshd`, so ``stop``, ``regenerate_host_key`` and
``to_dict`` work the same).

The server (paramiko's server API, one thread per connection, many channels per
connection) offers what mlctl's client uses:

- public-key login only, for the current user, against ``DIR/authorized_keys``;
- ``exec`` (``/bin/sh -c CMD`` in $HOME with a base environment plus the ``--env`` pairs,
  like sshd's SetEnv), stdin streamed in, stdout and stderr streamed out separately, the
  exit status sent; a channel closed early kills the command's process group;
- ``pty-req`` with ``exec`` or ``shell`` (a real pseudo-terminal);
- ``direct-tcpip`` to 127.0.0.1, localhost and ::1 only;
- ``keepalive@openssh.com``.

It writes ``DIR/paramiko-sshd.json`` (pid, port), logs to ``DIR/paramiko-sshd.log`` and
exits cleanly on SIGTERM, killing the commands it started.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import json
import logging
import os
import pwd
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from mlctl.errors import SandboxError
from mlctl.sandbox.sshd import (
    SandboxSshd,
    _read_banner,
    generate_ed25519_key,
    pid_alive,
    terminate,
)

if TYPE_CHECKING:
    import paramiko

HOST = "127.0.0.1"
STATE_FILE = "paramiko-sshd.json"
LOG_FILE = "paramiko-sshd.log"
CONFIG_FILE = "paramiko-sshd.conf.json"
HOST_KEY_FILE = "ssh_host_ed25519_key"
CLIENT_KEY_FILE = "client_ed25519_key"
AUTHORIZED_KEYS_FILE = "authorized_keys"

LOOPBACK_DESTINATIONS = frozenset({"127.0.0.1", "localhost", "::1"})
BASE_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
_CHUNK = 32768
_KILL_GRACE = 2.0
_FORWARD_CONNECT_TIMEOUT = 5.0
_MODULE = "mlctl.sandbox.paramiko_server"

log = logging.getLogger(_MODULE)


# ====================================================================== launcher


@dataclass
class ParamikoSshd(SandboxSshd):
    """A running paramiko sandbox server; ``sshd_path`` is the Python interpreter running it.

    ``config_path`` is ``DIR/paramiko-sshd.conf.json`` (port and session environment),
    which ``regenerate_host_key`` reads to start the server again.
    """

    @property
    def log_path(self) -> Path:
        """Return the server's log file."""
        return self.state_dir / LOG_FILE

    def regenerate_host_key(self, timeout: float = 5.0) -> None:
        """Give the server a fresh host key: stop, write a new key, start on the same port.

        Raises SandboxError when the server does not come back.
        """
        self.stop(timeout)
        generate_ed25519_key(self.host_key_path, "mlctl-sandbox-host")
        env = read_config(self.config_path).get("env", {})
        self.pid, self.port = _launch(
            self.sshd_path, self.state_dir, self.port, env, max(timeout, 5.0)
        )


def read_config(path: Path) -> dict[str, Any]:
    """Return the launcher's config (``{"port": N, "env": {...}}``); {} when unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def sandbox_sshd_from_dict(data: Mapping[str, Any]) -> SandboxSshd:
    """Rebuild a SandboxSshd (a ParamikoSshd when it is one) from ``to_dict`` output."""
    paths = {"key_path", "host_key_path", "config_path", "state_dir"}
    values: dict[str, Any] = {k: Path(v) if k in paths else v for k, v in data.items()}
    cls = ParamikoSshd if Path(values["config_path"]).name == CONFIG_FILE else SandboxSshd
    return cls(**values)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _server_argv(python: str, state_dir: Path, port: int, env: Mapping[str, str]) -> list[str]:
    argv = [python, "-m", _MODULE, "--state", str(state_dir), "--port", str(port)]
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    return argv


def _launch(
    python: str, state_dir: Path, port: int, env: Mapping[str, str], timeout: float
) -> tuple[int, int]:
    """Start the server detached (port 0: it picks one); return (pid, port) once it answers."""
    state_file = state_dir / STATE_FILE
    log_file = state_dir / LOG_FILE
    state_file.unlink(missing_ok=True)
    try:
        log_start = log_file.stat().st_size
    except OSError:
        log_start = 0
    # The package may be importable only through this process's sys.path (not installed).
    package_root = str(Path(__file__).resolve().parents[2])
    pythonpath = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    # sh starts the server in the background and exits, so it is nobody's child here and
    # outlives this process; setsid keeps terminal signals away from it.
    starter = subprocess.run(
        [
            "/bin/sh",
            "-c",
            '"$0" "$@" </dev/null >>"$MLCTL_SSHD_LOG" 2>&1 & echo $!',
            *_server_argv(python, state_dir, port, env),
        ],
        env={**os.environ, "MLCTL_SSHD_LOG": str(log_file), "PYTHONPATH": pythonpath},
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
        start_new_session=True,
    )
    pid = int(starter.stdout.strip())
    deadline = time.monotonic() + timeout
    chosen = 0
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            break
        if not chosen:
            # Written once it listens: a banner before that may be another server's.
            state = read_config(state_file)
            if state.get("pid") == pid and isinstance(state.get("port"), int):
                chosen = state["port"]
        if chosen:
            try:
                if _read_banner(chosen, 1.0).startswith(b"SSH-2.0-"):
                    return pid, chosen
            except OSError:
                pass
        time.sleep(0.02)
    terminate(pid, 1.0)
    try:
        with log_file.open("rb") as handle:
            handle.seek(log_start)
            lines = handle.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        lines = []
    raise SandboxError(
        f"the paramiko SSH server did not start on {HOST}:{port or 'a free port'}: "
        + (" | ".join(lines[-5:]) or "no log output"),
        f"see {log_file}; run {python} -m {_MODULE} --state {state_dir} --port {port} "
        "to see it fail in the foreground",
    )


def start_paramiko_sshd(
    state_dir: Path,
    *,
    port: int | None = None,
    session_env: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> ParamikoSshd:
    """Start the loopback paramiko SSH server for the current user with fresh keys.

    Same contract as :func:`mlctl.sandbox.sshd.start_sshd`: the client key is
    ``key_path``; without ``port`` the server binds a free one itself. ``session_env``
    is added to every session's environment. Raises SandboxError when it does not start.
    """
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state_dir, 0o700)
    host_key = state_dir / HOST_KEY_FILE
    client_key = state_dir / CLIENT_KEY_FILE
    authorized = state_dir / AUTHORIZED_KEYS_FILE
    config = state_dir / CONFIG_FILE
    env = dict(session_env or {})
    for key in env:
        if not key or "=" in key:
            raise SandboxError(f"invalid session environment variable name {key!r}")
    generate_ed25519_key(host_key, "mlctl-sandbox-host")
    authorized.write_text(generate_ed25519_key(client_key, "mlctl-sandbox-client") + "\n")
    os.chmod(authorized, 0o600)
    python = sys.executable
    pid, chosen = _launch(python, state_dir, port or 0, env, timeout)
    _write_json(config, {"port": chosen, "env": env})
    return ParamikoSshd(
        host=HOST,
        port=chosen,
        user=getpass.getuser(),
        key_path=client_key,
        host_key_path=host_key,
        pid=pid,
        config_path=config,
        state_dir=state_dir,
        sshd_path=python,
    )


# ====================================================================== server


class _Shutdown(BaseException):
    """Raised in the main thread by the SIGTERM/SIGINT handler."""


@dataclass
class ServerConfig:
    """What the server needs: where its files are, whom it serves, the session environment."""

    state_dir: Path
    port: int
    session_env: dict[str, str] = field(default_factory=dict)
    user: str = field(default_factory=getpass.getuser)

    @property
    def host_key_path(self) -> Path:
        return self.state_dir / HOST_KEY_FILE

    @property
    def authorized_keys_path(self) -> Path:
        return self.state_dir / AUTHORIZED_KEYS_FILE

    def login_shell(self) -> str:
        try:
            shell = pwd.getpwuid(os.getuid()).pw_shell
        except KeyError:
            shell = ""
        return shell if shell and os.access(shell, os.X_OK) else "/bin/sh"

    def base_env(self) -> dict[str, str]:
        """Return PATH, HOME, USER, LOGNAME, SHELL, LANG, then the ``--env`` pairs over them."""
        home = os.environ.get("HOME") or _passwd_home() or "/"
        env = {
            "PATH": BASE_PATH,
            "HOME": home,
            "USER": self.user,
            "LOGNAME": self.user,
            "SHELL": self.login_shell(),
            "LANG": os.environ.get("LANG") or "C.UTF-8",
        }
        env.update(self.session_env)
        return env


def _passwd_home() -> str | None:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return None


def authorized_keys(path: Path) -> set[str]:
    """Return the base64 blobs of the keys in an authorized_keys file (options are skipped)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    blobs: set[str] = set()
    for line in text.splitlines():
        parts = line.strip().split()
        if not parts or parts[0].startswith("#"):
            continue
        for kind, blob in zip(parts, parts[1:], strict=False):
            if kind.startswith(("ssh-", "ecdsa-", "sk-")):
                blobs.add(blob)
                break
    return blobs


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _Registry:
    """Live connections and command process groups, for SIGTERM."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.transports: set[paramiko.Transport] = set()
        self.groups: set[int] = set()

    def shutdown(self) -> None:
        with self.lock:
            transports, groups = list(self.transports), list(self.groups)
        for pgid in groups:
            _kill_group(pgid, signal.SIGTERM)
        for transport in transports:
            with contextlib.suppress(Exception):
                transport.close()
        deadline = time.monotonic() + _KILL_GRACE
        while time.monotonic() < deadline:
            with self.lock:
                if not self.groups:
                    return
            time.sleep(0.02)
        with self.lock:
            groups = list(self.groups)
        for pgid in groups:
            _kill_group(pgid, signal.SIGKILL)


@dataclass
class _SessionState:
    # paramiko keeps channels in a WeakValueDictionary and a collected Channel closes
    # itself: the session must hold its channel until it ends.
    chan: paramiko.Channel | None = None
    pty: tuple[str, int, int, int, int] | None = None  # term, cols, rows, px width, px height
    master_fd: int | None = None
    started: bool = False


class _Connection:
    """One client connection: its transport, its sessions and pending forwards."""

    def __init__(self, config: ServerConfig, registry: _Registry, peer: tuple[str, int]) -> None:
        self.config = config
        self.registry = registry
        self.peer = peer
        self.lock = threading.Lock()
        self.sessions: dict[int, _SessionState] = {}
        self.forwards: dict[int, socket.socket] = {}
        self.after_reply: dict[int, Callable[[], None]] = {}
        self.deferring = False

    # ---------------------------------------------------------------- auth

    def check_publickey(self, username: str, key: paramiko.PKey) -> bool:
        ok = username == self.config.user and key.get_base64() in authorized_keys(
            self.config.authorized_keys_path
        )
        log.info(
            "%s: public key %s %s for %s %s",
            self._who(),
            key.get_name(),
            key.fingerprint,
            username,
            "accepted" if ok else "refused",
        )
        return ok

    def _who(self) -> str:
        return f"{self.peer[0]}:{self.peer[1]}"

    # ---------------------------------------------------------------- sessions

    def session(self, chan: paramiko.Channel) -> _SessionState:
        with self.lock:
            state = self.sessions.setdefault(chan.get_id(), _SessionState())
            state.chan = chan
            return state

    def end_session(self, chan: paramiko.Channel) -> None:
        with self.lock:
            self.sessions.pop(chan.get_id(), None)

    def pty_request(
        self, chan: paramiko.Channel, term: str, cols: int, rows: int, pxw: int, pxh: int
    ) -> bool:
        state = self.session(chan)
        if state.started:
            return False
        state.pty = (term, cols, rows, pxw, pxh)
        return True

    def window_change(
        self, chan: paramiko.Channel, cols: int, rows: int, pxw: int, pxh: int
    ) -> bool:
        state = self.session(chan)
        if state.pty is None:
            return False
        state.pty = (state.pty[0], cols, rows, pxw, pxh)
        if state.master_fd is not None:
            with contextlib.suppress(OSError):
                _set_winsize(state.master_fd, cols, rows, pxw, pxh)
        return True

    def start(self, chan: paramiko.Channel, command: str | None) -> bool:
        state = self.session(chan)
        if state.started:
            return False
        state.started = True
        log.info(
            "%s: channel %d %s%s",
            self._who(),
            chan.get_id(),
            "shell" if command is None else f"exec {command[:300]!r}",
            " (pty)" if state.pty else "",
        )

        def run() -> None:
            threading.Thread(
                target=self._run_session,
                args=(chan, command, state),
                name=f"session-{chan.get_id()}",
                daemon=True,
            ).start()

        # Start only after paramiko has sent the request's success reply: a fast command's
        # exit status and close must not overtake it (the client would see "Channel closed").
        if self.deferring:
            with self.lock:
                self.after_reply[chan.get_id()] = run
        else:
            run()
        return True

    def run_after_reply(self, chan: paramiko.Channel) -> None:
        with self.lock:
            hook = self.after_reply.pop(chan.get_id(), None)
        if hook is not None:
            hook()

    def _session_env(self, state: _SessionState) -> dict[str, str]:
        env = self.config.base_env()
        env["SSH_CLIENT"] = f"{self.peer[0]} {self.peer[1]} {self.config.port}"
        env["SSH_CONNECTION"] = f"{self.peer[0]} {self.peer[1]} {HOST} {self.config.port}"
        if state.pty is not None:
            env.setdefault("TERM", state.pty[0] or "xterm")
        return env

    def _run_session(
        self, chan: paramiko.Channel, command: str | None, state: _SessionState
    ) -> None:
        env = self._session_env(state)
        cwd = env["HOME"] if os.path.isdir(env["HOME"]) else "/"
        if command is None:
            shell = self.config.login_shell()
            argv, executable = ["-" + os.path.basename(shell)], shell
        else:
            argv, executable = ["/bin/sh", "-c", command], "/bin/sh"
        try:
            proc, outputs, stdin_fd, to_close = self._spawn(argv, executable, cwd, env, state)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:  # ValueError: a NUL
            log.warning("%s: cannot start %s: %s", self._who(), executable, exc)
            with contextlib.suppress(Exception):
                message = f"mlctl paramiko sshd: cannot run {executable}: {exc}\n"
                chan.sendall_stderr(message.encode())
                chan.send_exit_status(127)
            chan.close()
            self.end_session(chan)
            return
        pgid = proc.pid
        with self.registry.lock:
            self.registry.groups.add(pgid)
        exited = threading.Event()
        senders = {"out": chan.sendall, "err": chan.sendall_stderr}
        pumps = [
            threading.Thread(target=_pump_out, args=(fd, senders[name]), daemon=True)
            for fd, name in outputs
        ]
        for pump in pumps:
            pump.start()
        feeder = threading.Thread(
            target=_pump_in, args=(chan, stdin_fd, state.pty is not None), daemon=True
        )
        feeder.start()
        threading.Thread(
            target=_kill_when_closed, args=(chan, pgid, exited, self._who()), daemon=True
        ).start()
        code = proc.wait()
        exited.set()
        for pump in pumps:
            pump.join()
        with self.registry.lock:
            self.registry.groups.discard(pgid)
        log.info("%s: channel %d exited %d", self._who(), chan.get_id(), code)
        if not chan.closed:
            with contextlib.suppress(Exception):
                chan.shutdown_write()
                if code >= 0:  # killed by a signal: no exit-status, the client reports -1
                    chan.send_exit_status(code)
            chan.close()
        feeder.join()  # the close ends its recv; only then may the fds go
        state.master_fd = None
        for fd in to_close:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.end_session(chan)

    def _spawn(
        self,
        argv: list[str],
        executable: str,
        cwd: str,
        env: dict[str, str],
        state: _SessionState,
    ) -> tuple[subprocess.Popen[bytes], list[tuple[int, str]], int, list[int]]:
        """Start the command; return it, its (fd, stream) outputs, its stdin fd, fds to close."""
        if state.pty is not None:
            master, slave = os.openpty()
            try:
                _, cols, rows, pxw, pxh = state.pty
                with contextlib.suppress(OSError):
                    _set_winsize(master, cols, rows, pxw, pxh)
                proc = subprocess.Popen(
                    argv,
                    executable=executable,
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                )
            except BaseException:
                os.close(master)
                raise
            finally:
                os.close(slave)
            state.master_fd = master
            return proc, [(master, "out")], master, [master]
        proc = subprocess.Popen(
            argv,
            executable=executable,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        streams: list[IO[bytes]] = [s for s in (proc.stdin, proc.stdout, proc.stderr) if s]
        fds = [os.dup(s.fileno()) for s in streams]
        for stream in streams:
            stream.close()
        stdin_fd, out_fd, err_fd = fds
        return proc, [(out_fd, "out"), (err_fd, "err")], stdin_fd, [out_fd, err_fd]

    # ---------------------------------------------------------------- forwarding

    def direct_tcpip(self, chanid: int, origin: tuple[str, int], dest: tuple[str, int]) -> int:
        from paramiko import common

        host, port = dest
        where = f"{host}:{port}"
        if host not in LOOPBACK_DESTINATIONS:
            log.warning("%s: refused forward to %s (not loopback)", self._who(), where)
            return common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        try:
            sock = socket.create_connection((host, port), timeout=_FORWARD_CONNECT_TIMEOUT)
        except OSError as exc:
            log.info("%s: forward to %s failed: %s", self._who(), where, exc)
            return common.OPEN_FAILED_CONNECT_FAILED
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.lock:
            self.forwards[chanid] = sock
        log.info("%s: channel %d forward to %s", self._who(), chanid, where)
        return common.OPEN_SUCCEEDED

    def adopt(self, chan: paramiko.Channel) -> None:
        """Start the pump of an accepted direct-tcpip channel (sessions need nothing)."""
        with self.lock:
            sock = self.forwards.pop(chan.get_id(), None)
        if sock is not None:
            _start_forward(chan, sock)
        elif not chan.closed:
            self.session(chan)

    def close_pending(self) -> None:
        with self.lock:
            socks, self.forwards = list(self.forwards.values()), {}
        for sock in socks:
            sock.close()


def _set_winsize(fd: int, cols: int, rows: int, pxw: int, pxh: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, pxw, pxh))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _pump_out(fd: int, send: Callable[[bytes], None]) -> None:
    """Send what the command writes to ``fd`` as it comes, until EOF (EIO on a pty)."""
    while True:
        try:
            data = os.read(fd, _CHUNK)
        except OSError:
            return
        if not data:
            return
        try:
            send(data)
        except Exception:
            # The channel is gone: keep draining so the command is never blocked on a full
            # pipe before _kill_when_closed stops it.
            send = _discard


def _discard(data: bytes) -> None:
    pass


def _pump_in(chan: paramiko.Channel, fd: int, pty: bool) -> None:
    """Feed channel data to the command; EOF (or a close) closes its stdin (not a pty's)."""
    broken = False
    while True:
        try:
            data = chan.recv(_CHUNK)
        except Exception:
            data = b""
        if not data:
            break
        if not broken:
            try:
                _write_all(fd, data)
            except OSError:
                broken = True  # the command closed its stdin: drain the rest
    if not pty:
        with contextlib.suppress(OSError):
            os.close(fd)


def _kill_when_closed(chan: paramiko.Channel, pgid: int, exited: threading.Event, who: str) -> None:
    chan.status_event.wait()  # set when the channel closes (or the connection drops)
    if exited.is_set():
        return
    log.info("%s: channel %d closed early: killing process group %d", who, chan.get_id(), pgid)
    _kill_group(pgid, signal.SIGHUP)
    _kill_group(pgid, signal.SIGTERM)
    if not exited.wait(_KILL_GRACE):
        _kill_group(pgid, signal.SIGKILL)


def _start_forward(chan: paramiko.Channel, sock: socket.socket) -> None:
    client_eof = threading.Event()

    def upstream() -> None:  # channel -> socket
        try:
            while data := chan.recv(_CHUNK):
                sock.sendall(data)
        except Exception:
            chan.close()
        client_eof.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        chan.status_event.wait()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        down.join()
        sock.close()

    def downstream() -> None:  # socket -> channel
        try:
            while data := sock.recv(_CHUNK):
                chan.sendall(data)
        except Exception:
            chan.close()
            return
        with contextlib.suppress(Exception):
            chan.shutdown_write()
        client_eof.wait()
        chan.close()

    down = threading.Thread(target=downstream, daemon=True)
    down.start()
    threading.Thread(target=upstream, daemon=True).start()


def _server_interface(conn: _Connection) -> paramiko.ServerInterface:
    import paramiko
    from paramiko import common

    class Server(paramiko.ServerInterface):
        def get_allowed_auths(self, username: str) -> str:
            return "publickey"

        def check_auth_none(self, username: str) -> int:
            return common.AUTH_FAILED

        def check_auth_password(self, username: str, password: str) -> int:
            return common.AUTH_FAILED

        def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
            if conn.check_publickey(username, key):
                return common.AUTH_SUCCESSFUL
            return common.AUTH_FAILED

        def check_channel_request(self, kind: str, chanid: int) -> int:
            if kind == "session":
                return common.OPEN_SUCCEEDED
            return common.OPEN_FAILED_UNKNOWN_CHANNEL_TYPE

        def check_channel_direct_tcpip_request(
            self, chanid: int, origin: tuple[str, int], destination: tuple[str, int]
        ) -> int:
            return conn.direct_tcpip(chanid, origin, destination)

        def check_channel_pty_request(
            self,
            channel: paramiko.Channel,
            term: bytes,
            width: int,
            height: int,
            pixelwidth: int,
            pixelheight: int,
            modes: bytes,
        ) -> bool:
            name = term.decode("ascii", "replace") if isinstance(term, bytes) else str(term)
            return conn.pty_request(channel, name, width, height, pixelwidth, pixelheight)

        def check_channel_window_change_request(
            self,
            channel: paramiko.Channel,
            width: int,
            height: int,
            pixelwidth: int,
            pixelheight: int,
        ) -> bool:
            return conn.window_change(channel, width, height, pixelwidth, pixelheight)

        def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
            return conn.start(channel, None)

        def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
            text = (
                command.decode("utf-8", "surrogateescape")
                if isinstance(command, bytes)
                else str(command)
            )
            return conn.start(channel, text)

        def check_channel_env_request(
            self, channel: paramiko.Channel, name: bytes, value: bytes
        ) -> bool:
            return False  # like sshd without AcceptEnv; the server's --env pairs apply

        def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
            return False

        def check_port_forward_request(self, address: str, port: int) -> int:
            return False

        def check_global_request(
            self, kind: str, msg: paramiko.Message
        ) -> bool | tuple[bool | int | str, ...]:
            return kind == "keepalive@openssh.com"

    return Server()


def _defer_until_replied(transport: paramiko.Transport, conn: _Connection) -> bool:
    """Run ``conn``'s start hooks right after paramiko answers a channel request.

    paramiko sends the reply after ``check_channel_exec_request`` returns, from its own
    thread; wrapping its (instance-overridable) handler table orders our output after it.
    Returns False (start at once) if this paramiko lacks the table.
    """
    from paramiko.common import MSG_CHANNEL_REQUEST

    table = getattr(transport, "_channel_handler_table", None)
    if not isinstance(table, dict) or MSG_CHANNEL_REQUEST not in table:
        return False
    original = table[MSG_CHANNEL_REQUEST]

    def handle_request(chan: paramiko.Channel, m: paramiko.Message) -> None:
        try:
            original(chan, m)
        finally:
            conn.run_after_reply(chan)

    patched: Any = transport
    patched._channel_handler_table = {**table, MSG_CHANNEL_REQUEST: handle_request}
    return True


def _serve_connection(
    sock: socket.socket,
    peer: tuple[str, int],
    config: ServerConfig,
    host_key: paramiko.PKey,
    registry: _Registry,
    stopping: threading.Event,
) -> None:
    import paramiko

    conn = _Connection(config, registry, peer)
    who = f"{peer[0]}:{peer[1]}"
    transport = paramiko.Transport(sock)
    with registry.lock:
        registry.transports.add(transport)
    try:
        transport.add_server_key(host_key)
        security = transport.get_security_options()
        gcm = [c for c in security.ciphers if c.endswith("-gcm@openssh.com")]
        security.ciphers = gcm + [c for c in security.ciphers if c not in gcm]
        conn.deferring = _defer_until_replied(transport, conn)
        try:
            transport.start_server(server=_server_interface(conn))
        except (paramiko.SSHException, EOFError, OSError) as exc:
            # A port probe (no banner) is routine; anything else is worth a line.
            level = logging.DEBUG if "banner" in str(exc).lower() else logging.INFO
            log.log(level, "%s: handshake failed: %s", who, exc or type(exc).__name__)
            return
        while transport.is_active() and not stopping.is_set():
            chan = transport.accept(1.0)
            if chan is not None:
                conn.adopt(chan)
    finally:
        conn.close_pending()
        transport.close()
        with registry.lock:
            registry.transports.discard(transport)
        log.info("%s: connection closed", who)


def _listen(port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, port))
        listener.listen(128)
    except OSError:
        listener.close()
        raise
    return listener


def _setup_logging(state_dir: Path) -> None:
    handler = logging.FileHandler(state_dir / LOG_FILE, encoding="utf-8")
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # paramiko logs every dropped connection (e.g. a banner probe) with a traceback.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)


def serve(config: ServerConfig) -> int:
    """Run the server in the foreground until SIGTERM/SIGINT; return the exit code."""
    import paramiko

    state_dir = config.state_dir
    if not config.host_key_path.exists():
        generate_ed25519_key(config.host_key_path, "mlctl-sandbox-host")
    host_key = paramiko.Ed25519Key.from_private_key_file(str(config.host_key_path))
    try:
        listener = _listen(config.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", HOST, config.port, exc)
        return 1
    config.port = listener.getsockname()[1]
    state_file = state_dir / STATE_FILE
    _write_json(state_file, {"pid": os.getpid(), "host": HOST, "port": config.port})
    if not authorized_keys(config.authorized_keys_path):
        log.warning("no keys in %s: nobody can log in", config.authorized_keys_path)
    log.info(
        "listening on %s:%d for %s (host key %s)",
        HOST,
        config.port,
        config.user,
        host_key.fingerprint,
    )
    registry = _Registry()
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _Shutdown(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        while True:
            try:
                sock, addr = listener.accept()
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                time.sleep(0.1)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            threading.Thread(
                target=_serve_connection,
                args=(sock, (addr[0], addr[1]), config, host_key, registry, stopping),
                name=f"conn-{addr[0]}:{addr[1]}",
                daemon=True,
            ).start()
    except _Shutdown as exc:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        log.info("%s: stopping", exc)
    finally:
        stopping.set()
        listener.close()
        registry.shutdown()
        if read_config(state_file).get("pid") == os.getpid():
            state_file.unlink(missing_ok=True)
    log.info("stopped")
    return 0


def _parse_env(pairs: Iterable[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--env wants KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mlctl.sandbox.paramiko_server --state DIR --port N [--env K=V ...]``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {_MODULE}",
        description="Loopback SSH server (paramiko) for mlctl's sandbox host.",
    )
    parser.add_argument("--state", required=True, type=Path, help="state directory (keys, log)")
    parser.add_argument("--port", required=True, type=int, help="port on 127.0.0.1 (0: any)")
    parser.add_argument(
        "--env", action="append", default=[], metavar="K=V", help="session environment"
    )
    args = parser.parse_args(argv)
    try:
        env = _parse_env(args.env)
    except ValueError as exc:
        parser.error(str(exc))
    state_dir = args.state.resolve()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _setup_logging(state_dir)
    try:
        return serve(ServerConfig(state_dir=state_dir, port=args.port, session_env=env))
    except Exception:
        log.exception("the server failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
