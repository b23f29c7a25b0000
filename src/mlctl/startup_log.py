"""An engine's start-up log, read while a deploy waits for it: the phases it reached
(loading weights, CUDA graphs, serving) and, when it fails, the error to raise with
the diagnosed root cause first.

Pure: the deploy feeds it the log text it fetched.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mlctl import diagnose
from mlctl.errors import DeployError, HealthError, MlctlError


class PhaseTracker:
    """Turns engine log text into startup phases, and the first diagnosis into an error."""

    def __init__(self, patterns: Sequence[tuple[str, str]], started: float) -> None:
        self._patterns = [(name, re.compile(rx)) for name, rx in patterns]
        self._seen: set[str] = set()
        self._partial = ""
        self._text: list[str] = []
        self.started = started
        self.phases: list[tuple[str, float]] = []

    def feed(self, chunk: str, now: float) -> list[tuple[str, float]]:
        """Add new log text; return the phases first seen in it."""
        data = self._partial + chunk
        lines = data.split("\n")
        self._partial = lines.pop()
        new: list[tuple[str, float]] = []
        for line in lines:
            self._text.append(line)
            for name, rx in self._patterns:
                if name not in self._seen and rx.search(line):
                    self._seen.add(name)
                    item = (name, now - self.started)
                    self.phases.append(item)
                    new.append(item)
        return new

    def text(self) -> str:
        """All complete log lines fed so far."""
        return "\n".join(self._text + ([self._partial] if self._partial else []))

    def findings(self) -> list[diagnose.Finding]:
        """The diagnosis of the log so far."""
        return diagnose.diagnose(self.text())


def failure_from_log(tracker: PhaseTracker, exit_code: int | None, name: str) -> DeployError:
    """The error a deploy raises when the engine died or its log names a failure."""
    findings = tracker.findings()
    state = f"exited with code {exit_code}" if exit_code is not None else "is failing"
    if findings:
        root = findings[0]
        return DeployError(
            f"The engine {state}: {root.cause} — {root.summary} "
            f"(server.log line {root.line}: {root.evidence})",
            f"{root.fix} Full log: `mlctl logs {name}`.",
        )
    tail = " | ".join(tracker.text().strip().splitlines()[-3:]) or "empty log"
    return DeployError(
        f"The engine {state} and its log names no known cause (last lines: {tail}).",
        f"Read the whole log with `mlctl logs {name}`; `mlctl doctor --host HOST` checks the host.",
    )


def failure_or(exc: HealthError, tracker: PhaseTracker) -> MlctlError:
    """Prefer the log's diagnosis over a bare readiness timeout."""
    findings = tracker.findings()
    if findings:
        root = findings[0]
        return DeployError(
            f"{exc.message} The engine's log says: {root.cause} ({root.evidence}).", root.fix
        )
    return exc
