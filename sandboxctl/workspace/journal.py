"""apply.jsonl: what `apply` did to the workspace, one line per change, written before making it.

    {"begin": NS}                                    an apply starts
    {"op": N, "path": P, "before": NODE, "after": NODE, "backup": NAME}   one change
    {"end": NS, "dirs": [D, ...]}                   it ended; the directories it wrote into

NODE is `tree.Node.describe()` (plus "tree"/"entries" for a kept directory), or null: absent.
A line is written before its change is made, so a killed apply leaves no change unrecorded:
undo reverses a line whose path holds `after`, skips one whose path still holds `before`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple


class Op(NamedTuple):
    index: int
    path: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    backup: str | None


class Journal(NamedTuple):
    ops: list[Op]
    applied_dirs: dict[str, int]  # directory -> when the apply that wrote into it ended


def read(path: Path) -> Journal:
    ops: list[Op] = []
    dirs: dict[str, int] = {}
    begun: int | None = None
    touched: set[str] = set()
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return Journal([], {})
    for raw in lines:
        try:
            entry = json.loads(raw)
        except ValueError:
            continue  # a line torn by a crash: its change was not made (lines come first)
        if "begin" in entry:
            begun, touched = int(entry["begin"]), set()
        elif "op" in entry:
            op = Op(int(entry["op"]), str(entry["path"]), entry.get("before"), entry.get("after"), entry.get("backup"))
            ops.append(op)
            touched.add(os.path.dirname(op.path))
        elif "end" in entry:
            for directory in entry.get("dirs", []):
                dirs[str(directory)] = int(entry["end"])
            begun = None
        if begun is not None:  # an apply that never ended: its directories count from its start
            for directory in touched:
                dirs[directory] = begun
    return Journal(ops, dirs)


class Writer:
    """Appends lines; each is one write() so a crash tears at most the last."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def write(self, entry: dict[str, Any]) -> None:
        data = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        if os.write(self.fd, data) != len(data):
            raise OSError(28, "short write to the apply journal")

    def close(self) -> None:
        os.close(self.fd)
