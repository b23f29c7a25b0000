"""Offline log diagnosis: engine log text in, root cause and concrete fix out.

Pure: no I/O except reading the rules table shipped beside this module
(``mlctl/data/diagnose_rules.yaml``, one row per known failure pattern).

How a log is read:

* lines are scanned in order; each line matches at most one rule, the first
  one in (descending ``priority``, then table) order;
* only the first occurrence of each cause becomes a finding, and findings are
  ordered by the line they were found on, so ``findings[0]`` is the root cause;
* generic consequences (vLLM's "EngineCore failed to start", "Engine core
  initialization failed", "Engine process failed to start") have no rule and
  never produce a finding: they only say that *something* above went wrong.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

import yaml

from mlctl.errors import MlctlError

CAUSES: tuple[str, ...] = (
    "cuda-oom",
    "kv-cache-insufficient",
    "gpu-mem-util-startup",
    "mistral-format-mismatch",
    "hf-gated-or-auth",
    "hf-repo-not-found",
    "disk-full",
    "port-in-use",
    "nccl",
    "driver-too-old",
    "quant-unsupported-gpu",
    "tp-divisibility",
    "ollama-memory",
    "model-file-missing",
    "engine-bad-flag",
)

ENGINES: tuple[str, ...] = ("vllm", "ollama", "llamacpp", "hub", "cuda", "nccl", "any")

EVIDENCE_MAX_CHARS = 300

_RULES_PACKAGE = "mlctl.data"
_RULES_FILE = "diagnose_rules.yaml"
_ROW_KEYS = frozenset({"id", "cause", "engines", "pattern", "summary", "fix", "priority"})
_REQUIRED_KEYS = _ROW_KEYS - {"priority"}
_RULES_HINT = "Fix the row in the rules table; every row needs a known cause and a valid regex."


@dataclass(frozen=True)
class Rule:
    """One row of the rules table: a per-line regex and what its match means.

    Construction validates the row and raises :class:`MlctlError` naming it when
    the cause is unknown, an engine is unknown, the regex does not compile, or
    the summary or fix is empty.
    """

    id: str
    cause: str
    engines: tuple[str, ...]
    pattern: str
    summary: str
    fix: str
    priority: int = 0

    def __post_init__(self) -> None:
        where = f"diagnose rule {self.id!r}" if self.id else "diagnose rule with an empty id"
        if not self.id.strip():
            raise MlctlError(f"{where}: the id is empty", _RULES_HINT)
        if self.cause not in CAUSES:
            raise MlctlError(
                f"{where}: unknown cause {self.cause!r} (known: {', '.join(CAUSES)})",
                _RULES_HINT,
            )
        if not self.engines:
            raise MlctlError(f"{where}: no engines listed", _RULES_HINT)
        unknown = [engine for engine in self.engines if engine not in ENGINES]
        if unknown:
            raise MlctlError(
                f"{where}: unknown engine(s) {', '.join(unknown)} (known: {', '.join(ENGINES)})",
                _RULES_HINT,
            )
        if not self.pattern:
            raise MlctlError(f"{where}: the pattern is empty", _RULES_HINT)
        try:
            _compiled(self.pattern)
        except re.error as exc:
            raise MlctlError(
                f"{where}: the pattern is not a valid regex ({exc})", _RULES_HINT
            ) from exc
        if not self.summary.strip():
            raise MlctlError(f"{where}: the summary is empty", _RULES_HINT)
        if not self.fix.strip():
            raise MlctlError(f"{where}: the fix is empty", _RULES_HINT)


@dataclass(frozen=True)
class Finding:
    """One diagnosed cause: the first log line that showed it, and what to do."""

    cause: str
    evidence: str
    line: int
    summary: str
    fix: str
    rule_id: str


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    """Compile a rule pattern once per process; raises ``re.error`` if invalid."""
    return re.compile(pattern)


def parse_rules(data: object, source: str = _RULES_FILE) -> tuple[Rule, ...]:
    """Return the validated rules of a parsed rules document (``{"rules": [row, ...]}``).

    Raises :class:`MlctlError` naming ``source`` and the row (its index and id) when
    the document is malformed, a row misses a field or has one of the wrong type,
    two rows share an id, or a row fails :class:`Rule` validation.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("rules"), list):
        raise MlctlError(f"{source}: expected a mapping with a 'rules' list", _RULES_HINT)
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, row in enumerate(data["rules"], start=1):
        rule = _parse_row(row, f"{source}: row {index}")
        if rule.id in seen:
            raise MlctlError(f"{source}: row {index}: duplicate rule id {rule.id!r}", _RULES_HINT)
        seen.add(rule.id)
        rules.append(rule)
    if not rules:
        raise MlctlError(f"{source}: the rules list is empty", _RULES_HINT)
    return tuple(rules)


def _parse_row(row: object, where: str) -> Rule:
    """Build one :class:`Rule` from a YAML mapping; raises MlctlError naming the row."""
    if not isinstance(row, Mapping):
        raise MlctlError(f"{where}: expected a mapping, got {type(row).__name__}", _RULES_HINT)
    rule_id = row.get("id")
    named = f"{where} ({rule_id!r})" if isinstance(rule_id, str) else where
    missing = sorted(_REQUIRED_KEYS - set(row))
    if missing:
        raise MlctlError(f"{named}: missing field(s) {', '.join(missing)}", _RULES_HINT)
    extra = sorted(str(key) for key in set(row) - _ROW_KEYS)
    if extra:
        raise MlctlError(f"{named}: unknown field(s) {', '.join(extra)}", _RULES_HINT)
    for key in ("id", "cause", "pattern", "summary", "fix"):
        if not isinstance(row[key], str):
            raise MlctlError(f"{named}: field {key!r} must be a string", _RULES_HINT)
    engines = row["engines"]
    if not isinstance(engines, list) or not all(isinstance(e, str) for e in engines):
        raise MlctlError(f"{named}: field 'engines' must be a list of strings", _RULES_HINT)
    priority = row.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise MlctlError(f"{named}: field 'priority' must be an integer", _RULES_HINT)
    try:
        return Rule(
            id=row["id"],
            cause=row["cause"],
            engines=tuple(engines),
            pattern=row["pattern"],
            summary=" ".join(row["summary"].split()),
            fix=" ".join(row["fix"].split()),
            priority=priority,
        )
    except MlctlError as exc:
        raise MlctlError(f"{where}: {exc.message}", exc.hint) from exc


@functools.cache
def load_rules() -> tuple[Rule, ...]:
    """Return the packaged rules table, validated, read once per process.

    Raises :class:`MlctlError` naming the row when a row is invalid, or when the
    file is missing or is not valid YAML.
    """
    try:
        text = resources.files(_RULES_PACKAGE).joinpath(_RULES_FILE).read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise MlctlError(
            f"the diagnose rules table {_RULES_PACKAGE}/{_RULES_FILE} is missing",
            "Reinstall mlctl; the rules file ships as package data.",
        ) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MlctlError(f"{_RULES_FILE}: not valid YAML ({exc})", _RULES_HINT) from exc
    return parse_rules(data, _RULES_FILE)


def _evidence(line: str) -> str:
    """The stripped line, cut to :data:`EVIDENCE_MAX_CHARS` characters."""
    text = line.strip()
    if len(text) > EVIDENCE_MAX_CHARS:
        return text[: EVIDENCE_MAX_CHARS - 3] + "..."
    return text


def diagnose(text: str, rules: Sequence[Rule] | None = None) -> list[Finding]:
    """Return one finding per cause seen in ``text``, ordered by line (root cause first).

    ``rules`` defaults to :func:`load_rules`. Each line is matched against the
    rules in descending priority, then table order; the first match claims the
    line. Returns ``[]`` for empty text or a log with no known failure. Raises
    :class:`MlctlError` only when the packaged rules table is invalid.
    """
    table = load_rules() if rules is None else tuple(rules)
    ordered = sorted(enumerate(table), key=lambda item: (-item[1].priority, item[0]))
    matchers = [(rule, _compiled(rule.pattern)) for _, rule in ordered]
    found: dict[str, Finding] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        for rule, regex in matchers:
            if regex.search(line):
                if rule.cause not in found:
                    found[rule.cause] = Finding(
                        cause=rule.cause,
                        evidence=_evidence(line),
                        line=number,
                        summary=rule.summary,
                        fix=rule.fix,
                        rule_id=rule.id,
                    )
                break
    return sorted(found.values(), key=lambda finding: finding.line)


def to_json(findings: Sequence[Finding]) -> dict[str, object]:
    """Return the findings as a JSON-ready ``{"findings": [...]}`` mapping, order kept."""
    return {
        "findings": [
            {
                "cause": finding.cause,
                "evidence": finding.evidence,
                "fix": finding.fix,
                "summary": finding.summary,
                "line": finding.line,
                "rule_id": finding.rule_id,
            }
            for finding in findings
        ]
    }
