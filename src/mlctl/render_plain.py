"""Plain-text output for the commands that must start fast (no rich import)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def profiles_table(rows: Sequence[dict[str, Any]]) -> None:
    """Print the profiles list, one line each (plain text: this command must start fast)."""
    show_origin = any(row["origin"] != "builtin" for row in rows)
    header = ["name", "engine", "gpus", "checkpoint", "context"] + (
        ["origin"] if show_origin else []
    )
    table: list[list[str]] = [header]
    for row in rows:
        origin = [row["origin"]] if show_origin else []
        if "error" in row:
            table.append([row["name"], "INVALID", "", "", "", *origin])
            continue
        table.append(
            [
                row["name"],
                row["engine"],
                row["gpus"],
                f"{row['quant']} {row['size_gb']:g} GB",
                _tokens(row["max_model_len"]),
                *origin,
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    import sys

    out = sys.stdout
    for line in table:
        out.write(
            "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n"
        )
    for row in rows:
        if "error" in row:
            out.write(f"✗ {row['error']}\n")


def _tokens(value: int) -> str:
    return f"{value // 1024}K" if value % 1024 == 0 else f"{value:,}"
