#!/usr/bin/env python3
"""Deploy speed on the sandbox host, as a ratio to one SSH round trip measured in the same run.

Measures, against a sandbox host on loopback (stand-in engine that is ready at
once, checkpoint already on the host):

- a first deploy (engine not running, files present),
- an identical re-deploy (must change nothing),
- how many SSH connections and round trips each made,
- how long the ready step takes with an engine that serves at once (the time mlctl
  needs to notice readiness: health, model listed, one chat through the tunnel).

The reference is the median of 20 ``run("true")`` round trips on the same
connection kind, so the ratios mean the same on a fast or a slow machine.
Targets (issue #4): first deploy <= 2 s, re-deploy <= 0.7 s, one SSH connection
each, readiness noticed <= 250 ms after the engine is ready.

    python benchmarks/deploy.py [--profile a100-nvfp4] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any


class Counting:
    """A Connector proxy that counts round trips."""

    def __init__(self, inner: Any, counts: dict[str, int]) -> None:
        self._inner = inner
        self._counts = counts
        counts["connections"] += 1

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name in ("run", "run_stream", "put_text", "read_text"):

            def counted(*args: Any, **kwargs: Any) -> Any:
                self._counts["round_trips"] += 1
                return attr(*args, **kwargs)

            return counted
        return attr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="a100-nvfp4")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ["MLCTL_HOME"] = tempfile.mkdtemp(prefix="mlctl-bench-")

    from mlctl import daytwo, profiles, state
    from mlctl.deploy import DeployOptions, run_deploy
    from mlctl.hosts import open as host_open
    from mlctl.sandbox import host as sandbox

    profile = profiles.load(args.profile)
    hw = profile.hardware
    sandbox.up("bench", f"{hw.gpus_per_node}x{hw.gpu}")
    real_open = host_open.open_connector
    counts = {"connections": 0, "round_trips": 0}

    def counting_open(spec: str, **kwargs: Any) -> Any:
        return Counting(real_open(spec, **kwargs), counts)

    host_open.open_connector = counting_open  # type: ignore[assignment]
    results: dict[str, Any] = {}
    try:
        conn = real_open("bench")
        try:
            trips = []
            for _ in range(20):
                start = time.perf_counter()
                conn.run("true")
                trips.append(time.perf_counter() - start)
        finally:
            conn.close()
        reference = statistics.median(trips)
        results["ssh_round_trip_ms"] = round(reference * 1000, 2)

        options = DeployOptions(name="bench", ready_timeout=60)
        run_deploy("bench", profile, options).close()  # warm-up: downloads the checkpoint
        record = state.load("bench")
        conn = real_open("bench")
        try:
            daytwo.stop(conn, record)  # the engine stops; the files stay
        finally:
            conn.close()

        for label in ("first_deploy", "redeploy"):
            counts.update(connections=0, round_trips=0)
            start = time.perf_counter()
            session = run_deploy("bench", profile, options)
            elapsed = time.perf_counter() - start
            session.close()
            ready_step = next(s for s in session.result.steps if s.id == "ready")
            results[label] = {
                "seconds": round(elapsed, 3),
                "x_round_trip": round(elapsed / reference, 1),
                "ssh_connections": counts["connections"],
                "round_trips": counts["round_trips"],
                # the stand-in engine serves at once, so this is how long mlctl takes to
                # notice readiness (health, model listed, one real chat through the tunnel)
                "ready_step_ms": round(ready_step.seconds * 1000, 1),
                "steps": {s.id.split(":")[0]: s.status for s in session.result.steps},
            }
    finally:
        host_open.open_connector = real_open
        try:
            conn = real_open("bench")
            try:
                daytwo.stop(conn, state.load("bench"), purge=True)
            finally:
                conn.close()
        except Exception:  # noqa: BLE001 - best-effort clean-up of a benchmark
            pass
        sandbox.down("bench", purge=True)

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"reference: one SSH round trip = {results['ssh_round_trip_ms']} ms (median of 20)")
    for label in ("first_deploy", "redeploy"):
        r = results[label]
        extra = f", ready step {r['ready_step_ms']} ms"
        print(
            f"{label:<13} {r['seconds']:>6.3f} s = {r['x_round_trip']:>6.1f} round trips' time; "
            f"{r['ssh_connections']} SSH connection(s), {r['round_trips']} round trips{extra}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
