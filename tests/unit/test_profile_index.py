"""The profile summary cache: hits when nothing changed, re-validates when a file did."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mlctl import profile_index, profiles


def _user_profile(text: str) -> Path:
    user = profiles.user_dir()
    user.mkdir(parents=True, exist_ok=True)
    path = user / "mine.yaml"
    path.write_text(text)
    return path


def _base() -> str:
    return profiles.find("a100-nvfp4").path.read_text().replace("name: a100-nvfp4", "name: mine")


def test_rows_match_validation_and_are_cached(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = profile_index.rows(cache)
    assert {r["name"] for r in first} >= {"a100-nvfp4", "4090-gguf"}
    stored = json.loads((cache / "profile-index.json").read_text())
    assert len(stored["entries"]) == len(first)
    assert profile_index.rows(cache) == first


def test_an_edited_profile_is_revalidated(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    path = _user_profile(_base())
    rows = {r["name"]: r for r in profile_index.rows(cache)}
    assert rows["mine"]["max_model_len"] == 65536 and rows["mine"]["origin"] == "user"
    path.write_text(_base().replace("max_model_len: 65536", "max_model_len: 1048576"))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    rows = {r["name"]: r for r in profile_index.rows(cache)}
    assert "error" in rows["mine"] and "max_context" in rows["mine"]["error"]


def test_a_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "profile-index.json").write_text("{not json")
    assert profile_index.rows(cache)
    json.loads((cache / "profile-index.json").read_text())


def test_a_stale_cached_row_is_not_trusted_across_schema_versions(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    profile_index.rows(cache)
    data = json.loads((cache / "profile-index.json").read_text())
    for entry in data["entries"].values():
        entry["row"]["max_model_len"] = -1
    data["fingerprint"] = "other-version"
    (cache / "profile-index.json").write_text(json.dumps(data))
    assert all(r["max_model_len"] > 0 for r in profile_index.rows(cache))
