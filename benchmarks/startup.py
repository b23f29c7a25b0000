#!/usr/bin/env python3
"""Start-up time of mlctl's fast commands, as a ratio to a bare interpreter.

Runs each command N times (default 15) in fresh processes and prints the
median wall time and its ratio to ``python -c pass`` measured in the same run,
so the number means the same on a slow or a busy machine. Target (issue #2):
``mlctl --help`` and ``mlctl profiles list`` <= 100 ms median on the project's
reference machine (2 cores, Python 3.11), where ``python -c pass`` is ~9 ms.

    python benchmarks/startup.py [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

COMMANDS: dict[str, list[str]] = {
    "python -c pass (reference)": [sys.executable, "-c", "pass"],
    "mlctl --help": [sys.executable, "-m", "mlctl", "--help"],
    "mlctl profiles list": [sys.executable, "-m", "mlctl", "profiles", "list"],
    "mlctl plan --json": [sys.executable, "-m", "mlctl", "plan", "--json"],
}


def median_ms(argv: list[str], runs: int) -> float:
    """Median wall time of ``argv`` over ``runs`` fresh processes, in milliseconds."""
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1"}
    times = []
    subprocess.run(argv, capture_output=True, env=env, check=True)  # warm the page cache
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, env=env, check=True)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {name: median_ms(argv, args.runs) for name, argv in COMMANDS.items()}
    reference = results["python -c pass (reference)"]
    rows = [
        {"command": name, "median_ms": round(ms, 1), "ratio_to_python": round(ms / reference, 2)}
        for name, ms in results.items()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'command':<30} {'median':>10} {'x python -c pass':>18}")
    for row in rows:
        print(f"{row['command']:<30} {row['median_ms']:>8.1f}ms {row['ratio_to_python']:>17.2f}x")


if __name__ == "__main__":
    main()
