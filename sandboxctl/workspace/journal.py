"""apply.jsonl: what `apply` did to the workspace, one line per change, written before making it.

    {"begin": NS}                                    an apply starts
    {"op": N, "path": P, "before": NODE, "after": NODE, "backup": NAME}   one change
    {"end": NS}                                      that apply ended
    {"undone": NS}                                   undo put back every change above

NODE is `tree.Node.describe()` (plus "tree"/"entries" for a kept directory), or null: absent.
A line is written before its change is made, so a killed apply leaves no change unrecorded:
undo reverses a line whose path holds `after`, skips one whose path still holds `before`.
The journal also says which paths sandboxctl itself wrote, and when: a conflict is a change by
someone else, so for those paths (and their directories) only what came after counts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sandboxctl.record import Record


class Op(Record):
    index: int
    path: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    backup: str | None


class Journal(Record):
    ops: list[Op]  # the changes of the applies since the last undo, in order
    own_writes: dict[str, int]  # path (or directory) -> when sandboxctl's last write to it ended
    next_index: int  # backup names are never reused


def read(path: Path) -> Journal:
    ops: list[Op] = []
    own: dict[str, int] = {}
    current: list[Op] = []  # the pass being read
    begun: int | None = None
    highest = -1
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return Journal([], {}, 0)

    def written(these: list[Op], when: int) -> None:
        for op in these:
            own[op.path] = own[os.path.dirname(op.path)] = when

    for raw in lines:
        try:
            entry = json.loads(raw)
        except ValueError:
            continue  # a line torn by a crash: its change was not made (lines come first)
        if "begin" in entry:
            begun, current = int(entry["begin"]), []
        elif "op" in entry:
            op = Op(int(entry["op"]), str(entry["path"]), entry.get("before"), entry.get("after"), entry.get("backup"))
            ops.append(op)
            current.append(op)
            highest = max(highest, op.index)
        elif "end" in entry:
            written(current, int(entry["end"]))
            begun, current = None, []
        elif "undone" in entry:
            written(ops, int(entry["undone"]))
            ops = []
    if begun is not None:  # an apply that never ended: what it wrote counts from its start
        written(current, begun)
    return Journal(ops, own, highest + 1)


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
