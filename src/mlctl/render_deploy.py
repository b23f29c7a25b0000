"""Live output of ``mlctl deploy``: one line per step, a download bar, engine phases."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from mlctl.deploy import DeployResult, StepResult

_STYLE = {"ok": "green", "changed": "yellow", "failed": "red", "skipped": "dim"}
GB = 1_000_000_000


class ConsoleReporter:
    """Ansible-style step lines on the console; a progress bar while downloading."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)
        self._progress: Any = None
        self._task: Any = None

    def step_started(self, step_id: str, title: str) -> None:
        """Nothing until the step ends (its line says how long it took)."""

    def step_done(self, result: StepResult) -> None:
        """Print the step's status, title, time and detail."""
        self._close_progress()
        style = _STYLE[result.status]
        self.console.print(
            f"[{style}]{result.status:>7}[/] {escape(result.title)} "
            f"[dim]({result.seconds:.2f} s)[/]"
        )
        if result.detail:
            self.console.print(f"        [dim]{escape(result.detail)}[/]", soft_wrap=True)

    def progress(self, label: str, done: int, total: int) -> None:
        """Bytes, rate and ETA against the expected total."""
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        if self._progress is None:
            self._progress = Progress(
                "        [progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(label, total=max(total, 1))
        self._progress.update(self._task, completed=done, total=max(total, 1))

    def phase(self, name: str, elapsed: float) -> None:
        """An engine startup phase seen in its log."""
        self._close_progress()
        self.console.print(f"        [cyan]·[/] {escape(name)} [dim](+{elapsed:.2f} s)[/]")

    def _close_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def handover(result: DeployResult, console: Console | None = None) -> None:
    """How to use the endpoint: URL, key file, curl and the OpenAI SDK."""
    out = console or Console(highlight=False)
    key = result.api_key_file or "API_KEY_FILE"
    model = result.served_model
    out.print()
    out.print(f"[bold green]Ready:[/] {escape(model)} at [bold]{result.endpoint}[/]")
    out.print(f"  API key: in {escape(key)} (mode 0600)")
    out.print("  curl:", soft_wrap=True)
    out.print(
        escape(
            f"    curl -s {result.endpoint}/chat/completions "
            f'-H "Authorization: Bearer $(cat {key})" -H "Content-Type: application/json" '
            f'-d \'{{"model": "{model}", "messages": '
            '[{"role": "user", "content": "Hello!"}]}\''
        ),
        soft_wrap=True,
    )
    out.print("  OpenAI SDK (Python):")
    out.print(
        escape(
            "    from openai import OpenAI\n"
            f'    client = OpenAI(base_url="{result.endpoint}", '
            f'api_key=open("{key}").read().strip())\n'
            f'    client.chat.completions.create(model="{model}", '
            'messages=[{"role": "user", "content": "Hello!"}])'
        ),
        soft_wrap=True,
    )
