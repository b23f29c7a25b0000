"""What mlctl's deployments on a host are doing: one shell round trip, a pure parser.

The script walks ``ROOT/deployments/*/`` and, for each, prints whether the pid
in ``server.pid`` is alive, the recorded ``exit_code`` if any, and the tail of
``server.log``, between marker lines that carry a per-call nonce so that no
log line can fake them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from mlctl import shell, supervise

LOG_TAIL_LINES = 300


@dataclass(frozen=True)
class RemoteDeployment:
    """One deployment directory on the host, as last seen."""

    name: str
    pid: int | None
    alive: bool
    exit_code: int | None
    log_tail: str = ""
    files: tuple[str, ...] = field(default_factory=tuple)


def new_nonce() -> str:
    """A marker nonce for one call."""
    return secrets.token_hex(8)


def status_script(root: str, nonce: str, tail_lines: int = LOG_TAIL_LINES) -> str:
    """The shell script that reports every deployment under ``root``."""
    mark = f"@@mlctl-{nonce}"
    q = shell.quote
    return "\n".join(
        [
            supervise.OURS_FUNCTION,
            f"root={q(root)}",
            'for d in "$root"/deployments/*/; do',
            '  [ -d "$d" ] || continue',
            '  name=$(basename "$d")',
            f'  printf "%s %s\\n" {q(mark + "-name")} "$name"',
            '  pid=$(cat "$d/server.pid" 2>/dev/null | tr -dc 0-9)',
            # alive only if the pid is still OUR wrapper (see supervise.OURS_FUNCTION)
            f'  alive=0; ours "$pid" "$d" {supervise.DEPLOYMENT_MARK} && alive=1',
            f'  printf "%s %s %s\\n" {q(mark + "-pid")} "$alive" "${{pid:--}}"',
            '  if [ -f "$d/exit_code" ]; then',
            f'    printf "%s %s\\n" {q(mark + "-exit")} "$(cat "$d/exit_code" | tr -dc 0-9-)"',
            "  fi",
            f'  printf "%s %s\\n" {q(mark + "-files")} "$(ls "$d" | tr "\\n" " ")"',
            f"  printf '%s\\n' {q(mark + '-log')}",
            f'  tail -n {int(tail_lines)} "$d/server.log" 2>/dev/null',
            f"  printf '\\n%s\\n' {q(mark + '-end')}",
            "done",
            "exit 0",
        ]
    )


@dataclass
class _Builder:
    name: str
    pid: int | None = None
    alive: bool = False
    exit_code: int | None = None
    files: str = ""
    log: list[str] = field(default_factory=list)

    def build(self) -> RemoteDeployment:
        return RemoteDeployment(
            name=self.name,
            pid=self.pid,
            alive=self.alive,
            exit_code=self.exit_code,
            log_tail="\n".join(self.log).rstrip("\n"),
            files=tuple(self.files.split()),
        )


def parse_status(text: str, nonce: str) -> list[RemoteDeployment]:
    """Parse the output of :func:`status_script` into deployments, in the order seen."""
    mark = f"@@mlctl-{nonce}"
    found: list[RemoteDeployment] = []
    current: _Builder | None = None
    in_log = False
    for line in text.splitlines():
        if line.startswith(mark + "-name "):
            if current is not None:
                found.append(current.build())
            current, in_log = _Builder(line.split(" ", 1)[1]), False
        elif current is None:
            continue
        elif line == mark + "-end":
            in_log = False
        elif line == mark + "-log":
            in_log = True
        elif in_log:
            current.log.append(line)
        elif line.startswith(mark + "-pid "):
            _, alive, pid = line.split(" ", 2)
            current.alive = alive == "1"
            current.pid = int(pid) if pid.isdigit() else None
        elif line.startswith(mark + "-exit "):
            value = line.split(" ", 1)[1].strip()
            current.exit_code = int(value) if value.lstrip("-").isdigit() else None
        elif line.startswith(mark + "-files "):
            current.files = line.split(" ", 1)[1]
    if current is not None:
        found.append(current.build())
    return found
