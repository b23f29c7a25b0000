"""Host strings, ssh_config aliases and pasted ssh command lines → SshTarget."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mlctl.errors import StateError, UsageError
from mlctl.hosts import saved
from mlctl.hosts.target import (
    SshTarget,
    openssh_forward_argv,
    parse_ssh_command,
    parse_target,
    split_host_string,
)


@pytest.fixture
def no_config(tmp_path: Path) -> Path:
    return tmp_path / "no-such-config"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("host", (None, "host", None)),
        ("root@1.2.3.4", ("root", "1.2.3.4", None)),
        ("root@ssh4.vast.ai:40022", ("root", "ssh4.vast.ai", 40022)),
        ("box:2222", (None, "box", 2222)),
        ("ssh://ubuntu@example.com:2200", ("ubuntu", "example.com", 2200)),
        ("ssh://example.com", (None, "example.com", None)),
        ("ssh://example.com/", (None, "example.com", None)),
        ("[::1]:22", (None, "::1", 22)),
        ("root@[fe80::1%eth0]:2222", ("root", "fe80::1%eth0", 2222)),
        ("ssh://root@[::1]:2022", ("root", "::1", 2022)),
        ("::1", (None, "::1", None)),
        ("a@b@host", ("a@b", "host", None)),
    ],
)
def test_split_host_string(spec: str, expected: tuple[str | None, str, int | None]) -> None:
    assert split_host_string(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "   ",
        "host:0",
        "host:65536",
        "host:abc",
        "@host",
        "user@",
        "-oProxyCommand=evil",
        "http://host",
        "ssh://host/path",
        "[::1",
        "[::1]x",
        "ho st",
        "host;rm",
    ],
)
def test_split_host_string_refuses_garbage(spec: str) -> None:
    with pytest.raises(UsageError):
        split_host_string(spec)


def test_parse_target_defaults(no_config: Path) -> None:
    target = parse_target("root@1.2.3.4:40022", ssh_config_path=no_config)
    assert target == SshTarget("1.2.3.4", 40022, "root")
    assert target.display() == "root@1.2.3.4:40022"
    assert parse_target("::1", ssh_config_path=no_config).display() == "[::1]:22"


def test_saved_host_resolves_before_anything(no_config: Path) -> None:
    saved = {"gpu": SshTarget("10.0.0.5", 2222, "ubuntu")}
    assert parse_target("gpu", saved=saved, ssh_config_path=no_config) == saved["gpu"]


def test_ssh_config_alias(tmp_path: Path) -> None:
    key = tmp_path / "key"
    config = tmp_path / "config"
    config.write_text(
        f"""
Host gpubox
    HostName 203.0.113.7
    User ubuntu
    Port 2222
    IdentityFile {key}
    ProxyJump jump@198.51.100.1:22

Host plain
    HostName plain.example.com
"""
    )
    target = parse_target("gpubox", ssh_config_path=config)
    assert target == SshTarget(
        host="203.0.113.7",
        port=2222,
        user="ubuntu",
        identity_files=(str(key),),
        proxy_jump="jump@198.51.100.1:22",
        alias="gpubox",
    )
    # What the string says wins over the config.
    overridden = parse_target("root@gpubox:22", ssh_config_path=config)
    assert (overridden.user, overridden.port, overridden.host) == ("root", 22, "203.0.113.7")
    plain = parse_target("plain", ssh_config_path=config)
    assert (plain.host, plain.port, plain.user, plain.alias) == (
        "plain.example.com",
        22,
        None,
        "plain",
    )
    assert parse_target("other", ssh_config_path=config).alias is None


def test_ssh_config_proxyjump_none(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host direct\n    HostName 192.0.2.1\n    ProxyJump none\n")
    assert parse_target("direct", ssh_config_path=config).proxy_jump is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "ssh -p 40022 -i ~/.ssh/key -J jump@1.2.3.4 root@ssh4.vast.ai -L 8080:localhost:8080",
            SshTarget("ssh4.vast.ai", 40022, "root", ("~/.ssh/key",), "jump@1.2.3.4"),
        ),
        ("ssh -o Port=22 -o User=x host", SshTarget("host", 22, "x")),
        ("ssh -o 'Port 2200' -oUser=y host", SshTarget("host", 2200, "y")),
        ("ssh -p40022 root@1.2.3.4", SshTarget("1.2.3.4", 40022, "root")),
        (
            "ssh -tt -NL 8000:localhost:8000 -v -C -o StrictHostKeyChecking=no root@h",
            SshTarget("h", 22, "root"),
        ),
        ("ssh -l admin -p 2 -p 3 -l other host", SshTarget("host", 2, "admin")),
        ("ssh -l admin root@host", SshTarget("host", 22, "admin")),
        ("/usr/bin/ssh root@host -p 2222 nvidia-smi", SshTarget("host", 22, "root")),
        (
            "ssh -i a -i b -o IdentityFile=c -o ProxyJump=j1,j2 ssh://u@h:9",
            SshTarget("h", 9, "u", ("a", "b", "c"), "j1,j2"),
        ),
        ("ssh -o HostName=10.1.1.1 alias", SshTarget("10.1.1.1", 22, None)),
        ("ssh -- root@host", SshTarget("host", 22, "root")),
        ("ssh -J none root@host", SshTarget("host", 22, "root")),
    ],
)
def test_parse_ssh_command(line: str, expected: SshTarget) -> None:
    assert parse_ssh_command(line) == expected


def test_parse_ssh_command_takes_argv() -> None:
    argv = ["ssh", "-p", "40022", "root@ssh4.vast.ai", "-L", "8080:localhost:8080"]
    assert parse_ssh_command(argv) == SshTarget("ssh4.vast.ai", 40022, "root")


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("ssh", "no destination"),
        ("ssh -p 22", "no destination"),
        ("ssh -p", "needs a value"),
        ("ssh -Z host", "unknown ssh option"),
        ("ssh -p notaport host", "invalid port"),
        ("ssh -o ProxyCommand='nc %h %p' host", "ProxyCommand"),
        ("ssh -F other_config host", "-F"),
        ("ssh -W host:22 jump", "-W"),
        ("ssh 'bad host'", "cannot read"),
    ],
)
def test_parse_ssh_command_refuses(line: str, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        parse_ssh_command(line)


def test_round_trip_dict() -> None:
    target = SshTarget("h", 2, "u", ("k",), "j", "alias")
    assert SshTarget.from_dict(target.to_dict()) == target


def test_importing_target_does_not_import_paramiko() -> None:
    code = "import sys, mlctl.hosts.target, mlctl.hosts.saved; print('paramiko' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ saved hosts


@pytest.fixture
def mlctl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLCTL_HOME", str(tmp_path / "mlctl"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_saved_hosts_add_get_list_remove(mlctl_home: Path) -> None:
    box = SshTarget("1.2.3.4", 40022, "root", ("~/.ssh/key",), "jump@5.6.7.8")
    assert saved.list_hosts() == {}
    saved.add("box", box)
    saved.add("another", SshTarget("h"))
    assert saved.get("box") == box
    assert list(saved.list_hosts()) == ["another", "box"]
    path = saved.hosts_path()
    assert path == mlctl_home / "mlctl" / "config" / "hosts.json"
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(UsageError, match="already saved"):
        saved.add("box", SshTarget("other"))
    saved.add("box", SshTarget("other"), replace=True)
    assert saved.get("box") == SshTarget("other")
    assert saved.remove("box") is True
    assert saved.remove("box") is False
    assert saved.get("box") is None


@pytest.mark.parametrize("name", ["", "-x", "a b", "a/b", "x" * 65])
def test_saved_host_names_are_checked(mlctl_home: Path, name: str) -> None:
    with pytest.raises(UsageError, match="invalid host name"):
        saved.add(name, SshTarget("h"))


def test_corrupt_saved_hosts_file(mlctl_home: Path) -> None:
    path = saved.hosts_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(StateError, match="cannot read saved hosts"):
        saved.list_hosts()


def test_saved_name_wins_over_ssh_config_alias(mlctl_home: Path) -> None:
    config = Path.home() / ".ssh" / "config"
    config.parent.mkdir(parents=True)
    config.write_text("Host gpu\n  HostName 192.0.2.10\n")
    assert saved.resolve("gpu").host == "192.0.2.10"
    saved.add("gpu", SshTarget("198.51.100.3", 2200, "root"))
    assert saved.resolve("gpu") == SshTarget("198.51.100.3", 2200, "root")
    assert saved.resolve("root@gpu").host == "192.0.2.10"


def test_openssh_forward_argv_round_trips_the_provider_line() -> None:
    target = parse_ssh_command("ssh -p 40022 -i ~/k -J jump@bastion root@ssh4.vast.ai")
    argv = openssh_forward_argv(target, 8001, 8000, ["/s/mlctl known_hosts", "~/.ssh/known_hosts"])
    assert argv[:4] == ["ssh", "-tt", "-L", "127.0.0.1:8001:127.0.0.1:8000"]
    assert argv[-2:] == ["root@ssh4.vast.ai", "sleep 2147483647"]
    assert parse_ssh_command(argv[:-1]) == target  # the same host, port, key and jump
    assert 'UserKnownHostsFile="/s/mlctl known_hosts" ~/.ssh/known_hosts' in argv
    assert "ExitOnForwardFailure=yes" in argv


def test_openssh_forward_argv_defaults() -> None:
    argv = openssh_forward_argv(SshTarget(host="gpu1"), 8000, 8000)
    assert argv == [
        "ssh", "-tt", "-L", "127.0.0.1:8000:127.0.0.1:8000",
        "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=15",
        "gpu1", "sleep 2147483647",
    ]  # fmt: skip
