"""Start-up phases and failures read from real engine logs, fed in arbitrary pieces."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlctl.backends import vllm
from mlctl.errors import DeployError, HealthError
from mlctl.startup_log import PhaseTracker, failure_from_log, failure_or

LOGS = Path(__file__).parent.parent / "fixtures" / "logs"


def _feed_in_pieces(tracker: PhaseTracker, text: str, size: int) -> list[str]:
    seen: list[str] = []
    for k in range(0, len(text), size):
        seen += [name for name, _ in tracker.feed(text[k : k + size], now=100.0 + k)]
    return seen


@pytest.mark.parametrize("size", [1, 7, 4096, 10**9])
def test_phases_of_a_real_vllm_start_whatever_the_chunking(size: int) -> None:
    # real vLLM start-up lines from three public logs, in the order vLLM prints them
    text = "".join((LOGS / f"healthy-vllm-{k}.log").read_text() for k in (4, 2, 3))
    tracker = PhaseTracker(vllm.phases(), started=100.0)
    seen = _feed_in_pieces(tracker, text, size)
    assert seen == [name for name, _ in tracker.phases]
    assert seen == ["loading weights", "profiling memory", "serving"]
    assert all(t >= 0 for _, t in tracker.phases)
    assert tracker.findings() == []


def test_a_line_split_across_chunks_counts_once_complete() -> None:
    tracker = PhaseTracker([("serving", r"Application startup complete")], started=0.0)
    assert tracker.feed("INFO: Application start", now=1.0) == []
    assert tracker.feed("up complete.\n", now=2.5) == [("serving", 2.5)]
    assert tracker.feed("INFO: Application startup complete.\n", now=3.0) == []  # once


def test_failure_names_the_root_cause_line_and_fix() -> None:
    tracker = PhaseTracker(vllm.phases(), started=0.0)
    tracker.feed((LOGS / "cuda-oom-vllm-1.log").read_text(), now=1.0)
    error = failure_from_log(tracker, 1, "big")
    assert isinstance(error, DeployError)
    finding = tracker.findings()[0]
    assert error.message.startswith(f"The engine exited with code 1: {finding.cause}")
    assert f"server.log line {finding.line}" in error.message
    assert error.hint is not None and error.hint.endswith("Full log: `mlctl logs big`.")


def test_failure_without_a_known_cause_shows_the_last_lines() -> None:
    tracker = PhaseTracker(vllm.phases(), started=0.0)
    tracker.feed("one\ntwo\nthree\nfour\n", now=1.0)
    error = failure_from_log(tracker, None, "x")
    assert "is failing and its log names no known cause" in error.message
    assert "two | three | four" in error.message


def test_a_readiness_timeout_prefers_the_logs_diagnosis() -> None:
    timeout = HealthError("vllm did not answer /health within 1800 s.", "See the log.")
    quiet = PhaseTracker(vllm.phases(), started=0.0)
    assert failure_or(timeout, quiet) is timeout
    failing = PhaseTracker(vllm.phases(), started=0.0)
    failing.feed((LOGS / "cuda-oom-vllm-2.log").read_text(), now=1.0)
    error = failure_or(timeout, failing)
    assert isinstance(error, DeployError)
    assert error.message.startswith(timeout.message + " The engine's log says: ")
    assert error.hint == failing.findings()[0].fix
