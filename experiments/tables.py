"""Results tables that keep the rows of runs not on this machine. A benchmark script rewrites its
table (experiments/results/NAME/results.md) from the results.json files under outputs/bench/,
which a fresh machine does not have: the rows of the table as it was stand in for them."""

from __future__ import annotations

from pathlib import Path


def cells(line: str) -> list[str]:
    """The cells of one row of a markdown table."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def earlier_rows(table: Path, header: str) -> dict[str, list[str]]:
    """The rows of ``table`` by the text of their first cell, each with the indented rows under it
    ("|   round 1: ..."). Rows with another number of columns than ``header`` (an older layout) are
    dropped, with the indented rows under them; no table, no rows."""
    blocks: dict[str, list[str]] = {}
    name = None
    for line in table.read_text().splitlines()[2:] if table.is_file() else []:
        if line.count("|") != header.count("|"):
            name = None
        elif line.startswith("|   "):
            if name is not None:
                blocks[name].append(line)
        else:
            name = cells(line)[0]
            blocks[name] = [line]
    return blocks
