"""The deployed spec and its hash: what makes a re-deploy keep or restart the engine."""

from __future__ import annotations

import pytest

from mlctl import deploy_spec, profiles
from mlctl.backends.base import DownloadSpec
from mlctl.deploy_spec import download_fingerprint, sized_profile, spec_hash, spec_of
from mlctl.facts import assumed_facts
from mlctl.fit import GB
from mlctl.gpus import parse_gpu_spec
from mlctl.plan import Plan, build_plan


def _plan(name: str = "a100-nvfp4", max_model_len: int | None = None) -> Plan:
    count, gpu = parse_gpu_spec("8xA100-80GB")
    facts = assumed_facts(count, gpu, ram_bytes=512 * GB, disk_bytes=2000 * GB)
    return build_plan(profiles.load(name), facts, max_model_len=max_model_len)


def test_same_plan_same_hash_and_mlctls_version_does_not_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    profile = profiles.load("a100-nvfp4")
    spec = spec_of(_plan(), profile)
    assert spec["launch"] == _plan().launch.command()
    first = spec_hash(spec)
    assert first == spec_hash(spec_of(_plan(), profile))
    monkeypatch.setattr(deploy_spec, "__version__", "99.0")  # an upgrade alone: no restart
    assert spec_hash(spec_of(_plan(), profile)) == first


def test_a_changed_launch_or_profile_changes_the_hash() -> None:
    profile = profiles.load("a100-nvfp4")
    base = spec_hash(spec_of(_plan(), profile))
    assert spec_hash(spec_of(_plan(max_model_len=8192), profile)) != base
    data = profile.model_dump()
    data["serve"]["gpu_memory_utilization"] = 0.85
    changed = profiles.Profile.model_validate(data)
    assert spec_hash(spec_of(_plan(), changed)) != base


def test_sized_profile_uses_the_hubs_size_and_says_so() -> None:
    profile = profiles.load("a100-nvfp4")
    sized = sized_profile(profile, 400 * GB)
    assert sized.checkpoint.size_gb == 400
    assert sized.checkpoint.size_source == "Hub file list at deploy time"
    assert profile.checkpoint.size_gb != 400  # the original is untouched


def test_download_fingerprint_ignores_pattern_order_but_not_content() -> None:
    a = DownloadSpec("org/m", "abc", ["*.json", "*.safetensors"], "/m", 10)
    b = DownloadSpec("org/m", "abc", ["*.safetensors", "*.json"], "/other", 10)
    assert download_fingerprint(a) == download_fingerprint(b)
    for other in (
        DownloadSpec("org/m", "abd", a.include, "/m", 10),
        DownloadSpec("org/m", "abc", ["*.json"], "/m", 10),
        DownloadSpec("org/m", "abc", a.include, "/m", 11),
    ):
        assert download_fingerprint(other) != download_fingerprint(a)
