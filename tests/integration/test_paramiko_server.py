"""mlctl's SSH client against the pure-Python sandbox SSH server (no system sshd needed)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko
import pytest

from mlctl.errors import ConnectError, RemoteError, SandboxError
from mlctl.hosts import known_hosts
from mlctl.hosts.ssh import ConnectOptions, SSHConnector, connect
from mlctl.hosts.target import SshTarget
from mlctl.sandbox.paramiko_server import (
    LOG_FILE,
    STATE_FILE,
    ParamikoSshd,
    sandbox_sshd_from_dict,
    start_paramiko_sshd,
)
from mlctl.sandbox.sshd import SandboxSshd, generate_ed25519_key, pid_alive

NO_DEFAULT_KEYS = ConnectOptions(default_key_files=(), connect_timeout=3.0)


def target_of(server: SandboxSshd, user: str | None = None) -> SshTarget:
    return SshTarget(server.host, server.port, user or server.user, (str(server.key_path),))


def host_fp(server: SandboxSshd) -> str:
    return known_hosts.fingerprint(server.host_public_key().split()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def pid_gone(pid: int) -> bool:
    return not pid_alive(pid)


@pytest.fixture(scope="module")
def standins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bin dir with a stand-in ``nvidia-smi``, put first on the sessions' PATH."""
    bindir = tmp_path_factory.mktemp("standins")
    tool = bindir / "nvidia-smi"
    tool.write_text("#!/bin/sh\necho 'stand-in nvidia-smi'\n")
    tool.chmod(0o755)
    return bindir


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, standins: Path) -> Iterator[ParamikoSshd]:
    """One server for the module (don't change its host key; use make_server)."""
    env = {"PATH": f"{standins}:/usr/local/bin:/usr/bin:/bin", "MLCTL_SANDBOX": "yes it is"}
    started = start_paramiko_sshd(tmp_path_factory.mktemp("psshd"), session_env=env)
    yield started
    started.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[[], ParamikoSshd]]:
    started: list[ParamikoSshd] = []

    def make() -> ParamikoSshd:
        one = start_paramiko_sshd(tmp_path / f"psshd{len(started)}")
        started.append(one)
        return one

    yield make
    for one in started:
        one.stop()


@pytest.fixture
def conn(server: ParamikoSshd) -> Iterator[SSHConnector]:
    connector = connect(target_of(server), NO_DEFAULT_KEYS)
    yield connector
    connector.close()


# ------------------------------------------------------------------ launcher


def test_start_writes_state_and_same_interface(server: ParamikoSshd) -> None:
    assert isinstance(server, SandboxSshd)
    state = json.loads((server.state_dir / STATE_FILE).read_text())
    assert (state["pid"], state["port"], state["host"]) == (server.pid, server.port, "127.0.0.1")
    assert server.log_path == server.state_dir / LOG_FILE
    assert "listening on 127.0.0.1" in server.log_path.read_text()
    assert stat.S_IMODE(server.key_path.stat().st_mode) == 0o600
    data = server.to_dict()
    json.dumps(data)
    again = sandbox_sshd_from_dict(data)
    assert isinstance(again, ParamikoSshd) and again == server
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
        assert sock.recv(64).startswith(b"SSH-2.0-")


def test_start_on_a_taken_port_fails_with_the_log_line(
    server: ParamikoSshd, tmp_path: Path
) -> None:
    with pytest.raises(SandboxError, match="Address already in use") as info:
        start_paramiko_sshd(tmp_path / "second", port=server.port, timeout=4)
    assert info.value.hint is not None and LOG_FILE in info.value.hint


# ------------------------------------------------------------------ run


def test_run_exit_code_stdout_stderr(conn: SSHConnector) -> None:
    result = conn.run("echo out; echo err >&2; exit 7", timeout=5)
    assert (result.exit_code, result.stdout, result.stderr) == (7, "out\n", "err\n")
    assert conn.run(["true"], timeout=5).ok
    assert (
        conn.run(["printf", "%s|", "a b", "it's", "$USER"], timeout=5).stdout == "a b|it's|$USER|"
    )


def test_run_stdin_2mb_and_eof(conn: SSHConnector) -> None:
    data = os.urandom(1_000_000).hex().encode()
    result = conn.run("cat; echo done >&2", stdin=data, timeout=5)
    assert result.stdout.encode() == data
    assert result.stderr == "done\n"
    assert conn.run("cat", timeout=5).stdout == ""  # EOF reaches the command


def test_run_in_home_with_session_env(conn: SSHConnector, standins: Path) -> None:
    out = conn.run(
        'echo "$PATH"; echo "$MLCTL_SANDBOX"; pwd; echo "$HOME|$USER|$LOGNAME|$SHELL|$LANG"; '
        "nvidia-smi",
        timeout=5,
    ).stdout.splitlines()
    assert out[0] == f"{standins}:/usr/local/bin:/usr/bin:/bin"
    assert out[1] == "yes it is"
    home, user, logname, shell, lang = out[3].split("|")
    assert out[2] == (home if os.path.isdir(home) else "/")
    assert user == logname != "" and shell and lang
    assert out[4] == "stand-in nvidia-smi"


def test_run_timeout_kills_the_command(conn: SSHConnector, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with pytest.raises(RemoteError, match="timed out after 0.5s"):
        conn.run(f"echo $$ > '{pidfile}'; exec sleep 30", timeout=0.5)
    pid = int(pidfile.read_text())
    assert wait_until(lambda: pid_gone(pid)), "the closed channel's command still runs"
    assert conn.run("echo still usable", timeout=5).stdout == "still usable\n"


def test_run_stream_lines_arrive_while_running(conn: SSHConnector, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        if line == "ready":  # the command waits for this: buffered output would hang it
            flag.touch()

    code = conn.run_stream(
        f"echo ready; while [ ! -e '{flag}' ]; do sleep 0.02; done; echo oops >&2; exit 4",
        on_line,
        timeout=4,
    )
    assert code == 4
    assert lines == ["ready", "oops"]


# ------------------------------------------------------------------ files


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o755])
def test_put_text_modes(conn: SSHConnector, tmp_path: Path, mode: int) -> None:
    path = tmp_path / "dir with space" / "secret.env"
    path.parent.mkdir()
    conn.put_text(str(path), "KEY=1\n", mode)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert os.listdir(path.parent) == ["secret.env"]


def test_put_text_default_0600_and_read_text(conn: SSHConnector, tmp_path: Path) -> None:
    text = "line 1\n'single' \"double\" `tick` $HOME \\ back\nünïcödé ✓ 模型\n\n  trailing  "
    path = tmp_path / "it's a file.txt"
    conn.put_text(str(path), text)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text(encoding="utf-8") == text
    assert conn.read_text(str(path)) == text
    with pytest.raises(RemoteError, match="exit code 1"):
        conn.read_text(str(tmp_path / "nope"))


# ------------------------------------------------------------------ pty


def test_pty_session_like_the_tunnel(conn: SSHConnector, tmp_path: Path) -> None:
    chan = conn.transport.open_session(timeout=5)
    chan.settimeout(5)
    chan.get_pty(term="xterm-256color", width=100, height=30)
    chan.exec_command("tty; echo $TERM; stty size; echo oops >&2; exit 3")
    out = b""
    while data := chan.recv(4096):
        out += data
    assert chan.recv_exit_status() == 3
    lines = out.decode().replace("\r", "").splitlines()
    assert lines[0].startswith("/dev/")  # a real terminal; stderr goes to it too
    assert lines[1:] == ["xterm-256color", "30 100", "oops"]
    chan.close()

    pidfile = tmp_path / "pid"
    held = conn.transport.open_session(timeout=5)
    held.get_pty()
    held.exec_command(f"echo $$ > '{pidfile}'; exec sleep 30")
    assert wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
    pid = int(pidfile.read_text())
    assert conn.run("echo beside", timeout=5).stdout == "beside\n"
    held.close()
    assert wait_until(lambda: pid_gone(pid)), "closing the pty session did not stop sleep"


def test_shell_request_runs_the_login_shell(conn: SSHConnector) -> None:
    chan = conn.transport.open_session(timeout=5)
    chan.settimeout(5)
    chan.invoke_shell()  # with a pty, like `ssh host`
    chan.sendall(b"echo shell-$((6 * 7)); exit 5\n")
    out = b""
    while data := chan.recv(4096):
        out += data
    assert chan.recv_exit_status() == 5
    assert b"shell-42" in out
    chan.close()


def test_keepalive_is_answered(conn: SSHConnector) -> None:
    assert conn.transport.global_request("keepalive@openssh.com", wait=True) is not None
    assert conn.transport.global_request("no-such@example.com", wait=True) is None


# ------------------------------------------------------------------ forwarding


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A TCP echo server on 127.0.0.1; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def handle(client: socket.socket) -> None:
        with client:
            client.settimeout(5)
            try:
                while data := client.recv(4096):
                    client.sendall(data)
            except OSError:
                pass

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(client,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    listener.close()


def _echo_round_trip(conn: SSHConnector, host: str, port: int) -> None:
    channel = conn.open_forward(host, port)
    channel.settimeout(5)
    try:
        for payload in (b"hello", b"x" * 200_000):
            channel.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = channel.recv(65536)
                assert chunk, "the forward closed early"
                got += chunk
            assert got == payload
        channel.shutdown(socket.SHUT_WR)  # half-close: the echo server closes, so do we
        assert channel.recv(10) == b""
    finally:
        channel.close()


def test_open_forward_echo(conn: SSHConnector, echo_server: int) -> None:
    _echo_round_trip(conn, "127.0.0.1", echo_server)
    _echo_round_trip(conn, "localhost", echo_server)


def test_open_forward_refuses_non_loopback(conn: SSHConnector) -> None:
    # Refused before any connection is tried: no packet leaves the machine.
    with pytest.raises(ConnectError, match=r"could not open 192\.0\.2\.1:80.*\(code 1\)"):
        conn.open_forward("192.0.2.1", 80)
    with pytest.raises(ConnectError, match=r"could not open example\.com:443.*\(code 1\)"):
        conn.open_forward("example.com", 443)


def test_open_forward_closed_port(conn: SSHConnector) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectError, match=r"could not open 127\.0\.0\.1.*\(code 2\)"):
        conn.open_forward("127.0.0.1", port)


# ------------------------------------------------------------------ concurrency


def test_many_concurrent_channels_on_one_connection(conn: SSHConnector, echo_server: int) -> None:
    def job(i: int) -> str:
        if i % 4 == 0:
            _echo_round_trip(conn, "127.0.0.1", echo_server)
            return f"fwd{i}"
        return conn.run(f"sleep 0.2; echo job{i}", timeout=5).stdout.strip()

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(job, range(24)))
    assert results == [f"fwd{i}" if i % 4 == 0 else f"job{i}" for i in range(24)]
    assert time.monotonic() - started < 3.0  # they ran side by side, not 18 x 0.2 s


# ------------------------------------------------------------------ auth and host keys


def test_wrong_key_wrong_user_and_passwords_are_refused(
    server: ParamikoSshd, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong_key"
    generate_ed25519_key(wrong)
    with pytest.raises(ConnectError, match="authentication refused"):
        connect(SshTarget(server.host, server.port, server.user, (str(wrong),)), NO_DEFAULT_KEYS)
    with pytest.raises(ConnectError, match="authentication refused"):
        connect(target_of(server, user="someone-else"), NO_DEFAULT_KEYS)

    with socket.create_connection((server.host, server.port), timeout=3) as sock:
        transport = paramiko.Transport(sock)
        try:
            transport.start_client(timeout=3)
            with pytest.raises(paramiko.BadAuthenticationType) as info:
                transport.auth_password(server.user, "secret")
            assert info.value.allowed_types == ["publickey"]
            with pytest.raises(paramiko.BadAuthenticationType):
                transport.auth_none(server.user)
        finally:
            transport.close()


def test_prefers_aes_gcm(conn: SSHConnector) -> None:
    assert conn.transport.local_cipher.endswith("-gcm@openssh.com")


def test_accept_new_pins_then_regenerated_key_is_refused(
    make_server: Callable[[], ParamikoSshd],
) -> None:
    one = make_server()
    old_fp = host_fp(one)
    connect(target_of(one), NO_DEFAULT_KEYS).close()
    pinned = known_hosts.mlctl_known_hosts_path().read_text()
    assert pinned.startswith(f"[127.0.0.1]:{one.port} ssh-ed25519 ")
    connect(target_of(one), ConnectOptions(host_key_policy="strict")).close()

    port, pid = one.port, one.pid
    one.regenerate_host_key()
    assert (one.port, one.pid != pid) == (port, True)
    new_fp = host_fp(one)
    assert new_fp != old_fp
    with pytest.raises(ConnectError) as info:
        connect(target_of(one), NO_DEFAULT_KEYS)
    assert "CHANGED" in info.value.message and old_fp in info.value.message
    assert new_fp in info.value.message
    assert known_hosts.mlctl_known_hosts_path().read_text() == pinned

    assert known_hosts.forget(one.host, one.port) == 1
    with connect(target_of(one), NO_DEFAULT_KEYS) as again:
        assert again.run("echo ok", timeout=5).stdout == "ok\n"


# ------------------------------------------------------------------ stopping


def test_sigterm_stops_server_connections_and_commands(
    make_server: Callable[[], ParamikoSshd], tmp_path: Path
) -> None:
    one = make_server()
    pidfile = tmp_path / "pid"
    box = connect(target_of(one), NO_DEFAULT_KEYS)
    try:
        chan = box.transport.open_session(timeout=5)
        chan.exec_command(f"echo $$ > '{pidfile}'; exec sleep 30")
        assert wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
        child = int(pidfile.read_text())
        os.kill(one.pid, signal.SIGTERM)
        assert wait_until(lambda: pid_gone(one.pid)), "the server ignored SIGTERM"
        assert wait_until(lambda: pid_gone(child)), "the server left its command running"
        assert wait_until(lambda: not box.transport.is_active())
    finally:
        box.close()
    assert not (one.state_dir / STATE_FILE).exists()
    assert one.log_path.read_text().rstrip().endswith("stopped")
    with pytest.raises(ConnectionRefusedError), socket.socket() as sock:
        sock.connect(("127.0.0.1", one.port))
    one.stop()  # a pid already gone is fine
