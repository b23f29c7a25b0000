"""Where profiles live: built-in ones, the user's, or a path. Discovery only, no parsing.

Kept apart from ``profiles.py`` (pydantic models) so that listing files costs
no pydantic import.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mlctl.errors import ProfileError


@dataclass(frozen=True)
class ProfileEntry:
    """Where a profile comes from, for listing without validating everything."""

    name: str
    path: Path
    origin: Literal["builtin", "user", "file"]


def builtin_dir() -> Path:
    """Return the directory of the built-in profiles (installed or source tree)."""
    packaged = Path(__file__).resolve().parent / "builtin_profiles"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "profiles"


def user_dir() -> Path:
    """Return the directory of the user's own profiles (``<config dir>/profiles``)."""
    from mlctl.paths import config_dir

    return config_dir() / "profiles"


def _scan(directory: Path, origin: Literal["builtin", "user"]) -> Iterator[ProfileEntry]:
    if directory.is_dir():
        for path in sorted(directory.glob("*.yaml")):
            yield ProfileEntry(path.stem, path, origin)


def list_entries() -> list[ProfileEntry]:
    """Return every profile by name; a user profile hides a built-in of the same name."""
    entries: dict[str, ProfileEntry] = {}
    for entry in _scan(builtin_dir(), "builtin"):
        entries[entry.name] = entry
    for entry in _scan(user_dir(), "user"):
        entries[entry.name] = entry
    return [entries[name] for name in sorted(entries)]


def find(name_or_path: str) -> ProfileEntry:
    """Resolve a profile name (user before built-in) or a path to a YAML file.

    Raises ProfileError naming the known profiles when there is none.
    """
    looks_like_path = name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path
    if looks_like_path:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ProfileError(
                f"Profile file {path} does not exist.",
                "Check the path, or pass a profile name from `mlctl profiles list`.",
            )
        return ProfileEntry(path.stem, path, "file")
    for entry in list_entries():
        if entry.name == name_or_path:
            return entry
    known = ", ".join(e.name for e in list_entries()) or "none"
    raise ProfileError(
        f"No profile named {name_or_path!r}.",
        f"Known profiles: {known}. Add your own as {user_dir()}/{name_or_path}.yaml.",
    )
