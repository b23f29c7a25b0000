"""Shell strings are built from quoted parts; only $HOME expands."""

from __future__ import annotations

import subprocess

import pytest

from mlctl import shell

NASTY = [
    "plain",
    "with space",
    "quote'in",
    'dq"x',
    "$(touch /tmp/pwned)",
    "`id`",
    "a;b",
    "",
    "new\nline",
    "$HOME/x",
    "pre$HOME",
    '{"model":"$HOME/m"}',
    "$HOMEWORK",
]


@pytest.mark.parametrize("arg", NASTY)
def test_roundtrip_through_a_real_shell(arg: str) -> None:
    out = subprocess.run(
        ["sh", "-c", f"printf %s {shell.quote(arg)}"],
        capture_output=True,
        text=True,
        env={"HOME": "/home/u", "PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout
    assert out == arg.replace("$HOME", "/home/u")


def test_join_keeps_arguments_apart() -> None:
    argv = ["printf", "%s|", "a b", "c;d", "$HOME"]
    out = subprocess.run(
        ["sh", "-c", shell.join(argv)],
        capture_output=True,
        text=True,
        env={"HOME": "/h", "PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout
    assert out == "a b|c;d|/h|"
