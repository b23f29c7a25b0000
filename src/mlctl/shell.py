"""Building shell strings from quoted parts.

Every string mlctl sends to a remote shell is made here from an argv list.
Each part is ``shlex.quote``-d; the one exception is the literal token
``$HOME`` (the prefix of mlctl's own paths when the remote home is not yet
known), left outside the quotes so the remote shell expands it.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping

HOME = "$HOME"


def quote(arg: str) -> str:
    """Quote one argument for a POSIX shell; each literal ``$HOME`` in it still expands.

    Only the exact token ``$HOME`` is left outside the quotes (as ``"$HOME"``);
    expanding it cannot run anything. Everything else is ``shlex.quote``-d.
    """
    if HOME not in arg:
        return shlex.quote(arg)
    pieces = arg.split(HOME)
    return '"$HOME"'.join(shlex.quote(p) if p else "" for p in pieces)


def join(argv: Iterable[str]) -> str:
    """Quote and join an argv list into one shell command."""
    return " ".join(quote(a) for a in argv)


def env_assignments(env: Mapping[str, str]) -> str:
    """Render ``NAME=value`` assignments (names are validated identifiers)."""
    return " ".join(f"{name}={quote(value)}" for name, value in env.items())


def and_then(*commands: str) -> str:
    """Chain already-quoted commands with ``&&``."""
    return " && ".join(c for c in commands if c)
