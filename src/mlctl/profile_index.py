"""A cache of validated profile summaries, so ``mlctl profiles list`` stays fast.

Validating a profile costs a pydantic and YAML import (~70 ms together); the
list needs only a few fields. Each file's summary (or its error) is cached in
``<cache dir>/profile-index.json`` keyed by path, size and mtime, and by a
fingerprint of mlctl's version and of the profile schema's source, so an edited
profile or a new mlctl re-validates. The cache is disposable: a missing or
corrupt file is rebuilt silently.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlctl import __version__
from mlctl.errors import MlctlError
from mlctl.profile_files import ProfileEntry, list_entries

if TYPE_CHECKING:
    from mlctl.profiles import Profile

_FILE = "profile-index.json"


def _fingerprint() -> str:
    schema = Path(__file__).with_name("profiles.py").read_bytes()
    return hashlib.sha256(__version__.encode() + schema).hexdigest()[:16]


def summary(profile: Profile, origin: str, path: str) -> dict[str, Any]:
    """One profile as a flat row for ``profiles list``."""
    hw = profile.hardware
    gpus = (f"{hw.nodes}x" if hw.nodes > 1 else "") + f"{hw.gpus_per_node}x{hw.gpu}"
    return {
        "name": profile.name,
        "model": profile.model.name,
        "quant": profile.checkpoint.quant,
        "size_gb": profile.checkpoint.size_gb,
        "engine": f"{profile.engine.kind} {profile.engine.version}",
        "gpus": gpus,
        "max_model_len": profile.serve.max_model_len,
        "origin": origin,
        "path": path,
        "description": profile.description,
    }


def _validate(entry: ProfileEntry) -> dict[str, Any]:
    from mlctl import profiles

    try:
        return summary(profiles.load_file(entry.path), entry.origin, str(entry.path))
    except MlctlError as exc:
        return {
            "name": entry.name,
            "origin": entry.origin,
            "path": str(entry.path),
            "error": exc.message,
        }


def _load_cache(path: Path, fingerprint: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("fingerprint") != fingerprint:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _store_cache(path: Path, fingerprint: str, entries: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "entries": entries}))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache dir only costs speed


def rows(cache_dir: Path | None = None) -> list[dict[str, Any]]:
    """Summaries of every profile (user before built-in), validated or from the cache."""
    from mlctl.paths import cache_dir as default_cache_dir

    path = (cache_dir or default_cache_dir()) / _FILE
    fingerprint = _fingerprint()
    cached = _load_cache(path, fingerprint)
    fresh: dict[str, Any] = {}
    out: list[dict[str, Any]] = []
    for entry in list_entries():
        try:
            stat = entry.path.stat()
        except OSError:
            continue
        key = f"{entry.origin}:{entry.path}"
        stamp = [stat.st_size, stat.st_mtime_ns]
        hit = cached.get(key)
        if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("row"), dict):
            row = hit["row"]
        else:
            row = _validate(entry)
        fresh[key] = {"stamp": stamp, "row": row}
        out.append(row)
    if fresh != cached:
        _store_cache(path, fingerprint, fresh)
    return out
