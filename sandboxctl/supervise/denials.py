"""The run's denials as people read them: identical ones collapsed into one row with a count.

The supervisor keeps every denial in time order (the library's `result.denials` and the log's
`run.end` count are complete); the end-of-run table, the CI annotations and --summary-json show
each distinct (kind, target, rule) once, with how many times it happened.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def collapse(denials: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per distinct (kind, target, rule), in order of first appearance, with `count`."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for denial in denials:
        key = (str(denial.get("kind")), str(denial.get("target")), str(denial.get("rule")))
        row = rows.get(key)
        if row is None:
            rows[key] = {"kind": denial.get("kind"), "target": denial.get("target"), "rule": denial.get("rule"),
                         "count": int(denial.get("count", 1))}
        else:
            row["count"] += int(denial.get("count", 1))
    return list(rows.values())


def total(denials: Iterable[dict[str, Any]]) -> int:
    """How many denials the entries stand for (a collapsed proxy burst counts each connection)."""
    return sum(int(d.get("count", 1)) for d in denials)
