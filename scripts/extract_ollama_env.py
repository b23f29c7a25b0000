#!/usr/bin/env python3
"""List the environment variables Ollama's ``envconfig/config.go`` reads.

Usage::

    git -C ollama show v0.13.1:envconfig/config.go > /tmp/config.go
    python scripts/extract_ollama_env.py /tmp/config.go --version 0.13.1 \\
        --source "ollama/ollama v0.13.1 envconfig/config.go" \\
        > src/mlctl/data/ollama-0.13.1-env.txt

A name counts when it is the string argument of one of envconfig's readers
(``Var``, ``String``, ``Bool``, ``BoolWithDefault``, ``Uint``, ``Uint64``,
``os.Getenv``, ``os.LookupEnv``) or the name column of its documented-variables
table (``AsMap``/``all``: ``{enabled, "NAME", "usage", value, default}``).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import re
import sys
from pathlib import Path

NAME = r"[A-Za-z_][A-Za-z0-9_]*"
READER = re.compile(
    rf'\b(?:Var|String|Bool|BoolWithDefault|Uint|Uint64|Getenv|LookupEnv)\(\s*"({NAME})"'
)
# {true, "OLLAMA_DEBUG", "usage", ...}  and  "OLLAMA_DEBUG": {"OLLAMA_DEBUG", ...}
TABLE_ROW = re.compile(rf'\{{\s*(?:[^{{}},"]|"[^"]*")+,\s*"({NAME})",\s*"')
MAP_ENTRY = re.compile(rf'"({NAME})":\s*\{{\s*"\1"')


def env_names(source: str) -> set[str]:
    """Every environment variable name the Go source reads or documents."""
    names = set(READER.findall(source)) | set(TABLE_ROW.findall(source))
    names |= set(MAP_ENTRY.findall(source))
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config_go", type=Path, help="envconfig/config.go of the release")
    parser.add_argument("--version", required=True, help="the Ollama version it belongs to")
    parser.add_argument("--source", required=True, help="where the file came from (for the header)")
    parser.add_argument(
        "--note", action="append", default=[], help="a caveat line for the header (repeatable)"
    )
    args = parser.parse_args(argv)
    data = args.config_go.read_bytes()
    names = env_names(data.decode("utf-8"))
    if not names:
        print(f"extract_ollama_env: no variables found in {args.config_go}", file=sys.stderr)
        return 1
    header = [
        f"# Ollama {args.version}: environment variables read by envconfig/config.go.",
        f"# source: {args.source}",
        f"# sha256 of the file read: {hashlib.sha256(data).hexdigest()}",
        "# produced by: python scripts/extract_ollama_env.py "
        f"{args.config_go.name} --version {args.version} ...",
        f"# date: {datetime.date.today().isoformat()}",
        *(f"# {note}" for note in args.note),
        f"# {len(names)} names:",
    ]
    sys.stdout.write("\n".join(header + sorted(names)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
