"""Directories on the host that the user names (``--models-dir``), checked before use.

Pure. A path must be absolute or start with ``~/``: a relative one would depend on
the directory the SSH session starts in. ``~/`` becomes ``$HOME/`` for the shell
(``shell.quote`` leaves exactly that token unquoted) and stays ``~/`` for the facts
probe, which expands it itself.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from mlctl.errors import UsageError


@dataclass(frozen=True)
class ModelsDir:
    """A checkpoint directory on the host, in the two spellings mlctl needs."""

    given: str
    layout_path: str  # for shell commands: "$HOME/..." or an absolute path
    probe_path: str  # for the facts probe and the disk check: "~/..." or absolute


def models_dir(value: str, option: str = "--models-dir") -> ModelsDir:
    """Validate ``value``; raise UsageError naming ``option`` and the fix."""
    text = value.strip()
    fix = (
        f"Give {option} an absolute path on the host, or one under your home there "
        "(e.g. /workspace/models on RunPod, /data/models, ~/models)."
    )
    if not text:
        raise UsageError(f"{option} is empty.", fix)
    if any(ch in text for ch in "\x00\n\r") or "$" in text:
        raise UsageError(f"{option} {value!r} holds a newline, NUL or '$'.", fix)
    if text == "~" or text.startswith("~/"):
        rest = posixpath.normpath(text[2:]) if len(text) > 2 else ""
        if rest.startswith(".."):
            raise UsageError(f"{option} {value!r} leaves your home directory.", fix)
        rest = "" if rest == "." else rest
        return ModelsDir(
            value,
            "$HOME" + (f"/{rest}" if rest else ""),
            "~" + (f"/{rest}" if rest else ""),
        )
    if not text.startswith("/"):
        raise UsageError(f"{option} {value!r} is not an absolute path.", fix)
    path = posixpath.normpath(text)
    if path in ("/", "//"):
        raise UsageError(f"{option} cannot be the root directory.", fix)
    return ModelsDir(value, path, path)
