"""What a deploy put on the host, as data: the spec it compares on re-deploy, the
profile resized to the Hub's real checkpoint size, and the finished-download marker.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mlctl import __version__
from mlctl.backends.base import DownloadSpec
from mlctl.fit import GB
from mlctl.plan import Plan
from mlctl.profiles import Profile


def spec_of(plan: Plan, profile: Profile) -> dict[str, Any]:
    """What was deployed: enough to tell whether a re-deploy must restart the engine."""
    return {
        "mlctl": __version__,
        "name": plan.name,
        "profile": profile.model_dump(mode="json"),
        "launch": plan.launch.command(),
        "max_model_len": plan.fit.chosen_context,
    }


def spec_hash(spec: dict[str, Any]) -> str:
    """A stable hash of a spec (the profile's content and the exact launch)."""
    canonical = dict(spec)
    canonical.pop("mlctl", None)
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:16]


def sized_profile(profile: Profile, total_bytes: int) -> Profile:
    """The profile with the checkpoint's real size from the Hub instead of the recorded one."""
    data = profile.model_dump()
    data["checkpoint"]["size_gb"] = total_bytes / GB
    data["checkpoint"]["size_source"] = "Hub file list at deploy time"
    return Profile.model_validate(data)


def download_fingerprint(spec: DownloadSpec) -> str:
    """What the finished-download marker holds: repo, revision, patterns and size."""
    return hashlib.sha256(
        json.dumps([spec.repo, spec.revision, sorted(spec.include), spec.size_bytes]).encode()
    ).hexdigest()[:16]
