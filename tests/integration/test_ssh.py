"""SSHConnector against a real OpenSSH sshd on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mlctl.errors import ConnectError, RemoteError
from mlctl.hosts import known_hosts, saved
from mlctl.hosts.ssh import ConnectOptions, SSHConnector, connect
from mlctl.hosts.target import SshTarget, parse_ssh_command
from mlctl.sandbox.sshd import SandboxSshd, generate_ed25519_key

NO_DEFAULT_KEYS = ConnectOptions(default_key_files=())


def target_of(server: SandboxSshd) -> SshTarget:
    return SshTarget(server.host, server.port, server.user, (str(server.key_path),))


def host_fp(server: SandboxSshd) -> str:
    return known_hosts.fingerprint(server.host_public_key().split()[1])


@pytest.fixture
def conn(sshd: SandboxSshd) -> Iterator[SSHConnector]:
    connector = connect(target_of(sshd))
    yield connector
    connector.close()


# ------------------------------------------------------------------ run


def test_run_exit_code_stdout_stderr(conn: SSHConnector) -> None:
    result = conn.run("echo out; echo err >&2; exit 7")
    assert (result.exit_code, result.stdout, result.stderr) == (7, "out\n", "err\n")
    assert not result.ok
    assert conn.run(["true"]).ok


def test_run_argv_is_quoted(conn: SSHConnector) -> None:
    argv = ["printf", "%s|", "a b", "it's", "$USER", "; rm -rf /", "ünï"]
    assert conn.run(argv).stdout == "a b|it's|$USER|; rm -rf /|ünï|"


def test_run_stdin_and_large_output(conn: SSHConnector) -> None:
    data = os.urandom(2_000_000).hex().encode()
    result = conn.run("cat; echo done >&2", stdin=data)
    assert result.stdout.encode() == data
    assert result.stderr == "done\n"
    # No stdin still sends EOF, so a reader does not hang.
    assert conn.run("cat", timeout=10).stdout == ""


def test_run_check_raises_remote_error(conn: SSHConnector) -> None:
    with pytest.raises(RemoteError, match="exit code 3") as info:
        conn.run("echo why >&2; exit 3", check=True)
    assert info.value.hint is not None and "why" in info.value.hint


def test_run_timeout(conn: SSHConnector) -> None:
    with pytest.raises(RemoteError, match="timed out after 0.5s"):
        conn.run("sleep 10", timeout=0.5)
    assert conn.run("echo still usable").stdout == "still usable\n"


def test_run_stream_lines_in_order(conn: SSHConnector) -> None:
    lines: list[str] = []
    code = conn.run_stream(
        "for i in 1 2 3; do echo line$i; done; echo oops >&2; printf 'no newline'; exit 4",
        lines.append,
    )
    assert code == 4
    assert lines == ["line1", "line2", "line3", "oops", "no newline"]


def test_run_stream_timeout(conn: SSHConnector) -> None:
    lines: list[str] = []
    with pytest.raises(RemoteError, match="timed out"):
        conn.run_stream("echo first; sleep 10", lines.append, timeout=0.5)
    assert lines == ["first"]


# ------------------------------------------------------------------ files


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o755])
def test_put_text_modes(conn: SSHConnector, tmp_path: Path, mode: int) -> None:
    path = tmp_path / "dir with space" / "secret.env"
    path.parent.mkdir()
    conn.put_text(str(path), "KEY=1\n", mode)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert os.listdir(path.parent) == ["secret.env"]


def test_put_text_default_is_0600_and_replaces(conn: SSHConnector, tmp_path: Path) -> None:
    path = tmp_path / "api_key"
    path.write_text("old")
    path.chmod(0o644)
    conn.put_text(str(path), "new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "new"


def test_put_and_read_text_round_trip(conn: SSHConnector, tmp_path: Path) -> None:
    text = "line 1\n'single' \"double\" `tick` $HOME \\ back\nünïcödé ✓ 模型\n\n  trailing  "
    path = tmp_path / "it's a file.txt"
    conn.put_text(str(path), text)
    assert path.read_text(encoding="utf-8") == text
    assert conn.read_text(str(path)) == text


def test_put_text_into_missing_dir_fails_cleanly(conn: SSHConnector, tmp_path: Path) -> None:
    with pytest.raises(RemoteError):
        conn.put_text(str(tmp_path / "missing" / "f"), "x")


def test_read_text_missing_file(conn: SSHConnector, tmp_path: Path) -> None:
    with pytest.raises(RemoteError, match="exit code 1"):
        conn.read_text(str(tmp_path / "nope"))


# ------------------------------------------------------------------ forwarding


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A TCP echo server on 127.0.0.1; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            with client:
                client.settimeout(None)
                while data := client.recv(4096):
                    client.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    listener.close()


def test_open_forward_echo(conn: SSHConnector, echo_server: int) -> None:
    channel = conn.open_forward("127.0.0.1", echo_server)
    try:
        for payload in (b"hello", b"x" * 100_000):
            channel.sendall(payload)
            got = b""
            while len(got) < len(payload):
                got += channel.recv(65536)
            assert got == payload
    finally:
        channel.close()


def test_open_forward_refused(conn: SSHConnector, closed_port: int) -> None:
    with pytest.raises(ConnectError, match="could not open 127.0.0.1"):
        conn.open_forward("127.0.0.1", closed_port)


# ------------------------------------------------------------------ host keys


def test_accept_new_pins_then_changed_key_is_refused(
    make_sshd: Callable[[], SandboxSshd],
) -> None:
    server = make_sshd()
    old_fp = host_fp(server)
    connect(target_of(server)).close()
    pinned = known_hosts.mlctl_known_hosts_path().read_text()
    assert pinned.startswith(f"[127.0.0.1]:{server.port} ssh-ed25519 ")

    connect(target_of(server), ConnectOptions(host_key_policy="strict")).close()

    server.regenerate_host_key()
    new_fp = host_fp(server)
    assert new_fp != old_fp
    with pytest.raises(ConnectError) as info:
        connect(target_of(server))
    err = info.value
    assert "CHANGED" in err.message and old_fp in err.message and new_fp in err.message
    assert err.hint is not None
    assert f"mlctl hosts forget-key 127.0.0.1:{server.port}" in err.hint
    assert known_hosts.mlctl_known_hosts_path().read_text() == pinned

    assert known_hosts.forget(server.host, server.port) == 1
    with connect(target_of(server)) as again:
        assert again.run("echo ok").stdout == "ok\n"
    assert new_fp.removeprefix("SHA256:") not in known_hosts.mlctl_known_hosts_path().read_text()
    assert (
        known_hosts.known_keys(server.host, server.port)[0].key_b64
        == (server.host_public_key().split()[1])
    )


def test_strict_refuses_unknown_host(sshd: SandboxSshd) -> None:
    with pytest.raises(ConnectError, match="not known") as info:
        connect(target_of(sshd), ConnectOptions(host_key_policy="strict"))
    assert host_fp(sshd) in info.value.message
    assert not known_hosts.mlctl_known_hosts_path().exists()


def test_user_known_hosts_is_honoured(sshd: SandboxSshd, isolated_home: Path) -> None:
    user_file = known_hosts.user_known_hosts_path()
    user_file.parent.mkdir(parents=True)
    key_type, key_b64 = sshd.host_public_key().split()[:2]
    user_file.write_text(f"[127.0.0.1]:{sshd.port} {key_type} {key_b64}\n")
    connect(target_of(sshd), ConnectOptions(host_key_policy="strict")).close()


# ------------------------------------------------------------------ failures


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_connection_refused(closed_port: int) -> None:
    with pytest.raises(ConnectError, match="connection refused by root@127.0.0.1") as info:
        connect(SshTarget("127.0.0.1", closed_port, "root"))
    assert info.value.hint is not None and "port" in info.value.hint


def test_dns_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dns(*args: object, **kwargs: object) -> object:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    # Never ask a real resolver: tests reach loopback only.
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(ConnectError, match="DNS failure.*no-such-host.invalid"):
        connect(SshTarget("no-such-host.invalid", 22, "root"))


def test_banner_timeout() -> None:
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        port = silent.getsockname()[1]
        with pytest.raises(ConnectError, match="timeout: .* sent no SSH banner"):
            connect(SshTarget("127.0.0.1", port, "root"), ConnectOptions(connect_timeout=0.5))
    finally:
        silent.close()


def test_auth_refused_lists_keys_tried(sshd: SandboxSshd, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong_key"
    generate_ed25519_key(wrong)
    missing = tmp_path / "missing_key"
    target = SshTarget(sshd.host, sshd.port, sshd.user, (str(wrong), str(missing)))
    with pytest.raises(ConnectError, match="authentication refused") as info:
        connect(target, NO_DEFAULT_KEYS)
    message = info.value.message
    assert str(wrong) in message and "ED25519 SHA256:" in message
    assert f"{missing} (file not found)" in message
    assert info.value.hint is not None and "authorized_keys" in info.value.hint


def test_auth_refused_without_any_key(sshd: SandboxSshd) -> None:
    with pytest.raises(ConnectError, match="no keys"):
        connect(SshTarget(sshd.host, sshd.port, sshd.user), NO_DEFAULT_KEYS)


# ------------------------------------------------------------------ resolution


def test_saved_host_from_pasted_ssh_line(sshd: SandboxSshd) -> None:
    line = f"ssh -p {sshd.port} -i {sshd.key_path} {sshd.user}@127.0.0.1 -L 8080:localhost:8080"
    saved.add("box", parse_ssh_command(line))
    assert stat.S_IMODE(saved.hosts_path().stat().st_mode) == 0o600
    with connect(saved.resolve("box")) as box:
        assert box.run("echo hi").stdout == "hi\n"


def test_ssh_config_alias_connects(sshd: SandboxSshd, isolated_home: Path) -> None:
    config = Path.home() / ".ssh" / "config"
    config.parent.mkdir(parents=True)
    config.write_text(
        f"Host sbx\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile {sshd.key_path}\n"
    )
    with connect(saved.resolve("sbx")) as box:
        assert box.run("echo alias").stdout == "alias\n"


def test_proxy_jump(sshd: SandboxSshd) -> None:
    target = SshTarget(
        sshd.host,
        sshd.port,
        sshd.user,
        (str(sshd.key_path),),
        proxy_jump=f"{sshd.user}@127.0.0.1:{sshd.port}",
    )
    with connect(target) as hopped:
        assert hopped.run("echo via jump").stdout == "via jump\n"
        assert len(hopped._hops) == 1


def test_prefers_aes_gcm(conn: SSHConnector) -> None:
    assert conn.transport.local_cipher.endswith("-gcm@openssh.com")


def test_keys_from_ssh_agent(
    sshd: SandboxSshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent_bin, add_bin = shutil.which("ssh-agent"), shutil.which("ssh-add")
    if agent_bin is None or add_bin is None:
        pytest.skip("no ssh-agent/ssh-add binary")
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen([agent_bin, "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if sock.exists():
                break
            time.sleep(0.01)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run([add_bin, "-q", str(sshd.key_path)], env=env, check=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        with connect(SshTarget(sshd.host, sshd.port, sshd.user), NO_DEFAULT_KEYS) as box:
            assert box.run("echo agent").stdout == "agent\n"
    finally:
        agent.terminate()
        agent.wait(timeout=5)
