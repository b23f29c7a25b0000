"""LocalConnector: the same protocol on this machine (no sshd needed)."""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlctl.errors import ConnectError, RemoteError
from mlctl.hosts.base import Connector
from mlctl.hosts.local import LocalConnector


@pytest.fixture
def local() -> LocalConnector:
    return LocalConnector()


def test_is_a_connector(local: LocalConnector) -> None:
    connector: Connector = local
    assert connector.description == "local"


def test_run(local: LocalConnector) -> None:
    result = local.run("echo out; echo err >&2; exit 5")
    assert (result.exit_code, result.stdout, result.stderr) == (5, "out\n", "err\n")
    assert local.run(["printf", "%s|", "a b", "it's", "$USER"]).stdout == "a b|it's|$USER|"
    assert local.run("cat", stdin=b"piped \xe2\x9c\x93").stdout == "piped ✓"
    assert local.run("cat", timeout=5).stdout == ""


def test_run_check(local: LocalConnector) -> None:
    with pytest.raises(RemoteError, match="exit code 2 on local"):
        local.run("exit 2", check=True)


def test_run_timeout_kills_the_group(local: LocalConnector) -> None:
    start = time.monotonic()
    with pytest.raises(RemoteError, match="timed out"):
        local.run("sleep 10 & sleep 10", timeout=0.3)
    assert time.monotonic() - start < 5


def test_run_stream(local: LocalConnector) -> None:
    lines: list[str] = []
    code = local.run_stream("echo a; echo b >&2; printf c; exit 3", lines.append)
    assert (code, lines) == (3, ["a", "b", "c"])
    with pytest.raises(RemoteError, match="timed out"):
        local.run_stream("echo x; sleep 10", lines.append, timeout=0.3)


def test_put_and_read_text(local: LocalConnector, tmp_path: Path) -> None:
    path = tmp_path / "a dir" / "it's.txt"
    path.parent.mkdir()
    text = "quotes ' \" $HOME `x`\nünï ✓\n"
    local.put_text(str(path), text)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert local.read_text(str(path)) == text
    local.put_text(str(path), "x", 0o644)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(path.parent) == ["it's.txt"]
    with pytest.raises(RemoteError):
        local.read_text(str(tmp_path / "missing"))


@pytest.fixture
def echo_port() -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        client, _ = listener.accept()
        with client:
            client.sendall(client.recv(100))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    thread.join(timeout=5)
    listener.close()


def test_open_forward(local: LocalConnector, echo_port: int) -> None:
    channel = local.open_forward("127.0.0.1", echo_port)
    try:
        channel.sendall(b"ping")
        assert channel.recv(100) == b"ping"
    finally:
        channel.close()


def test_open_forward_refused(local: LocalConnector) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectError, match="cannot open"):
        local.open_forward("127.0.0.1", port)
