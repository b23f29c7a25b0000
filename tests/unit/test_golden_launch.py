"""Golden cases in pyinfra's style: (profile, facts) JSON -> expected argv and env.

Each file under tests/fixtures/golden/ holds a profile name, host facts (the
shape the probe produces) and the launch that must come out. Regenerate after a
deliberate change with ``MLCTL_UPDATE_GOLDEN=1 pytest tests/unit/test_golden_launch.py``
and review the diff line by line: these files are the spec of the engine flags.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from mlctl import profiles
from mlctl.errors import FitError
from mlctl.facts import HostFacts
from mlctl.plan import build_plan

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"
CASES = sorted(GOLDEN.glob("*.json"))


def _outcome(case: dict[str, Any]) -> dict[str, Any]:
    profile = profiles.load(case["profile"])
    facts = HostFacts.model_validate(case["facts"])
    try:
        plan = build_plan(
            profile, facts, name=case.get("name"), max_model_len=case.get("max_model_len")
        )
    except FitError as exc:
        return {"error": "FitError", "message": exc.message}
    return {
        "argv": plan.launch.argv,
        "env": plan.launch.env,
        "secret_env": plan.launch.secret_env,
        "health_path": plan.launch.health_path,
        "after_start": plan.launch.after_start,
        "max_model_len": plan.fit.chosen_context,
    }


def test_there_are_cases_for_every_engine() -> None:
    engines = {profiles.load(json.loads(p.read_text())["profile"]).engine.kind for p in CASES}
    assert engines == {"vllm", "llamacpp", "ollama"}


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_golden(path: Path) -> None:
    case = json.loads(path.read_text())
    got = _outcome(case)
    if os.environ.get("MLCTL_UPDATE_GOLDEN") == "1":
        case["expected"] = got
        path.write_text(json.dumps(case, indent=2) + "\n")
    assert got == case["expected"]
