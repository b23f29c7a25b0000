"""The pure parts of the host key policy, and pin/forget on mlctl's own file."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest

from mlctl.errors import ConnectError
from mlctl.hosts import known_hosts
from mlctl.hosts.known_hosts import KnownKey, check_key, fingerprint, host_entry, names_match

# Two ed25519-shaped public key blobs (base64 of the wire format).
KEY_A = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
KEY_B = "AAAAC3NzaC1lZDI1NTE5AAAAIBq1Xo5TW0Ci6aQ0zhvvbPIBw9jMhSm4pddIcHz2uKoZ"


def _expected_fp(key_b64: str) -> str:
    digest = hashlib.sha256(base64.b64decode(key_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLCTL_HOME", str(tmp_path / "mlctl"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_fingerprint_is_openssh_sha256() -> None:
    fp = fingerprint(KEY_A)
    assert fp == _expected_fp(KEY_A)
    assert fp.startswith("SHA256:") and not fp.endswith("=")
    with pytest.raises(ValueError):
        fingerprint("not base64!")


@pytest.mark.parametrize(
    ("host", "port", "entry"),
    [("h", 22, "h"), ("h", 2222, "[h]:2222"), ("::1", 2200, "[::1]:2200")],
)
def test_host_entry(host: str, port: int, entry: str) -> None:
    assert host_entry(host, port) == entry


def _hashed(name: str, salt: bytes = b"0123456789abcdefghij") -> str:
    mac = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(mac).decode()}"


@pytest.mark.parametrize(
    ("field", "name", "matches"),
    [
        ("host", "host", True),
        ("HOST", "host", True),
        ("other,host", "host", True),
        ("[host]:2222", "[host]:2222", True),
        ("[host]:2222", "host", False),
        ("host", "[host]:2222", False),
        ("*.example.com", "gpu.example.com", True),
        ("*.example.com,!bad.example.com", "bad.example.com", False),
        ("gpu?", "gpu1", True),
        (_hashed("[10.0.0.1]:40022"), "[10.0.0.1]:40022", True),
        (_hashed("[10.0.0.1]:40022"), "10.0.0.1", False),
        ("|1|garbage", "host", False),
    ],
)
def test_names_match(field: str, name: str, matches: bool) -> None:
    assert names_match(field, name) is matches


def test_check_key_verdicts() -> None:
    src = Path("kh")
    pinned = [KnownKey("ssh-ed25519", KEY_A, src, 1)]
    assert check_key([], "ssh-ed25519", KEY_A).verdict == "unknown"
    assert check_key(pinned, "ssh-ed25519", KEY_A).verdict == "known"
    changed = check_key(pinned, "ssh-ed25519", KEY_B)
    assert changed.verdict == "changed" and changed.conflicting == pinned[0]
    # Another type pinned: still a change (OpenSSH refuses it too).
    assert check_key(pinned, "ecdsa-sha2-nistp256", KEY_B).verdict == "changed"


def test_keys_in_text_skips_comments_and_markers() -> None:
    text = (
        "# comment\n"
        f"@cert-authority * ssh-ed25519 {KEY_B}\n"
        f"[h]:2222 ssh-ed25519 {KEY_A} comment\n"
        "broken line\n"
        f"h ssh-ed25519 {KEY_B}\n"
    )
    keys = known_hosts.keys_in_text(text, "[h]:2222", Path("f"))
    assert keys == [KnownKey("ssh-ed25519", KEY_A, Path("f"), 3)]


def test_verify_accept_new_pins_then_refuses_change(isolated_home: Path) -> None:
    known_hosts.verify("10.0.0.9", 2222, "ssh-ed25519", KEY_A, "accept-new")
    path = known_hosts.mlctl_known_hosts_path()
    assert path.read_text() == f"[10.0.0.9]:2222 ssh-ed25519 {KEY_A}\n"
    assert path.stat().st_mode & 0o777 == 0o600
    known_hosts.verify("10.0.0.9", 2222, "ssh-ed25519", KEY_A, "strict")
    with pytest.raises(ConnectError) as info:
        known_hosts.verify("10.0.0.9", 2222, "ssh-ed25519", KEY_B, "accept-new")
    err = info.value
    assert "CHANGED" in err.message
    assert fingerprint(KEY_A) in err.message and fingerprint(KEY_B) in err.message
    assert err.hint is not None and "mlctl hosts forget-key 10.0.0.9:2222" in err.hint


def test_strict_refuses_unknown() -> None:
    with pytest.raises(ConnectError, match="not known") as info:
        known_hosts.verify("h", 22, "ssh-ed25519", KEY_A, "strict")
    assert fingerprint(KEY_A) in info.value.message
    assert not known_hosts.mlctl_known_hosts_path().exists()


def test_user_known_hosts_is_honoured_and_not_edited(isolated_home: Path) -> None:
    user_file = known_hosts.user_known_hosts_path()
    user_file.parent.mkdir(parents=True)
    user_file.write_text(f"{_hashed('gpu.example.com')} ssh-ed25519 {KEY_A}\n")
    known_hosts.verify("gpu.example.com", 22, "ssh-ed25519", KEY_A, "strict")
    with pytest.raises(ConnectError) as info:
        known_hosts.verify("gpu.example.com", 22, "ssh-ed25519", KEY_B, "accept-new")
    assert info.value.hint is not None and "ssh-keygen -R 'gpu.example.com'" in info.value.hint
    assert known_hosts.forget("gpu.example.com", 22) == 0
    assert user_file.read_text().count("\n") == 1


def test_forget_removes_only_that_entry() -> None:
    known_hosts.pin("h", 2222, "ssh-ed25519", KEY_A)
    known_hosts.pin("h", 22, "ssh-ed25519", KEY_B)
    known_hosts.pin("other", 2222, "ssh-ed25519", KEY_B)
    assert known_hosts.forget("h", 2222) == 1
    assert known_hosts.forget("h", 2222) == 0
    remaining = known_hosts.mlctl_known_hosts_path().read_text().splitlines()
    assert remaining == [f"h ssh-ed25519 {KEY_B}", f"[other]:2222 ssh-ed25519 {KEY_B}"]
    known_hosts.verify("h", 2222, "ssh-ed25519", KEY_B, "accept-new")


def test_preferred_key_types() -> None:
    src = Path("f")
    keys = [KnownKey("ssh-rsa", "x", src, 1), KnownKey("ssh-rsa", "y", src, 2)]
    assert known_hosts.preferred_key_types(keys) == ["ssh-rsa"]
