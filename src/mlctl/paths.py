"""Where mlctl keeps its files on this machine.

Pure path arithmetic: nothing here creates a directory. ``MLCTL_HOME``, when
set, replaces all three roots with ``$MLCTL_HOME/{config,state,cache}`` (tests
use it so nothing touches the real home); otherwise the XDG variables apply,
with their usual defaults under ``~``.
"""

from __future__ import annotations

import os
from pathlib import Path

_APP = "mlctl"


def _root(kind: str, xdg_var: str, default: str) -> Path:
    home = os.environ.get("MLCTL_HOME")
    if home:
        return Path(home).expanduser() / kind
    xdg = os.environ.get(xdg_var)
    base = Path(xdg).expanduser() if xdg else Path.home() / default
    return base / _APP


def config_dir() -> Path:
    """Return the directory of user configuration (saved hosts, profiles)."""
    return _root("config", "XDG_CONFIG_HOME", ".config")


def state_dir() -> Path:
    """Return the directory of local state (known_hosts, deployments, sandbox)."""
    return _root("state", "XDG_STATE_HOME", ".local/state")


def cache_dir() -> Path:
    """Return the directory of disposable caches."""
    return _root("cache", "XDG_CACHE_HOME", ".cache")
