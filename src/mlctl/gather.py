"""Gather a host's facts in one round trip: send ``probe.sh`` over stdin, parse its JSON."""

from __future__ import annotations

from collections.abc import Sequence

from mlctl.errors import RemoteError
from mlctl.facts import HostFacts, parse_probe_output, probe_argv, probe_script
from mlctl.hosts.base import Connector

PROBE_TIMEOUT = 60.0


def gather_facts(
    conn: Connector, *, root: str | None = None, models_dirs: Sequence[str] = ()
) -> HostFacts:
    """Run the probe on ``conn`` and return the host's facts.

    Raises RemoteError when the probe prints no facts (no ``sh``, a shell that
    prints errors instead) and ConnectError when the connection drops.
    """
    result = conn.run(
        probe_argv(root, models_dirs), stdin=probe_script().encode(), timeout=PROBE_TIMEOUT
    )
    try:
        return parse_probe_output(result.stdout)
    except RemoteError as exc:
        detail = result.stderr.strip().splitlines()[-1:] or [f"exit code {result.exit_code}"]
        raise RemoteError(
            f"The facts probe failed on {conn.description}: {exc.message} ({detail[0]}).",
            "mlctl needs a POSIX `sh` on the host; run `mlctl doctor --host HOST` for details.",
        ) from None
