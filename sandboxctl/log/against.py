"""Check a local log against a collector's copy (`sandboxctl log --verify --against FILE`).

The hash chain shows that a local file is whole, but whoever can write the file can also rewrite
it and compute a new chain. The forwarded copy (log/forward.py) lives where the sandboxed user
cannot write; comparing the two shows what changed locally after it was written:

- every record in the copy must be in the local log, byte for byte (same run and seq): one that
  is missing was removed, one that differs was edited (a copy that is only a prefix of the local
  line was truncated by the collector: said, not counted as tampering);
- every run.end in the copy carries `head`, its run's own chain over the lines before it
  (chain.run_head): the local records of that run must hash to it, so a record removed, edited
  or inserted locally is found even if the copy lost the record itself (UDP);
- a local record of such a run after its run.end was added afterwards.

Lines of the collector's file are matched by their JSON object, wherever the collector's own
format puts it (`<time> <host> sandboxctl[pid]: {...}` or the bare line).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sandboxctl.log.chain import GENESIS, run_head
from sandboxctl.log.files import iter_lines, parse_line

MAX_PROBLEMS = 20


@dataclass
class AgainstResult:
    compared: int = 0  # records of the copy found in the local log, identical
    heads: int = 0  # run.end heads checked
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "compared": self.compared, "heads": self.heads, "problems": self.problems,
                "notes": self.notes}

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)
        elif len(self.problems) == MAX_PROBLEMS:
            self.problems.append("… (more)")


def copied_lines(path: str | os.PathLike[str]) -> Iterator[bytes]:
    """The records in a collector's file: the JSON object on each line, as bytes."""
    with open(path, "rb") as handle:
        for raw in handle:
            start = raw.find(b'{"ts":')
            if start < 0:
                continue
            line = raw[start:].rstrip(b"\r\n")
            data = parse_line(line)
            if data is not None and "run" in data and "seq" in data:
                yield line


def check(local: str | os.PathLike[str], copy: str | os.PathLike[str]) -> AgainstResult:
    result = AgainstResult()
    mine: dict[tuple[str, int], bytes] = {}
    runs: dict[str, list[tuple[int, bytes]]] = {}
    oldest_ts: str | None = None
    for _file, _number, raw in iter_lines(local):
        data = parse_line(raw)
        if data is None or not isinstance(data.get("seq"), int):
            continue
        oldest_ts = oldest_ts or str(data.get("ts", ""))
        key = (str(data.get("run")), data["seq"])
        mine.setdefault(key, raw)
        runs.setdefault(key[0], []).append((key[1], raw))
    ends: dict[str, dict[str, Any]] = {}
    truncated = rotated = 0
    for line in copied_lines(copy):
        data = parse_line(line) or {}
        key = (str(data.get("run")), int(data.get("seq", -1)))
        local_line = mine.get(key)
        if local_line is None:
            if oldest_ts and str(data.get("ts", "")) < oldest_ts:
                rotated += 1  # older than anything the local log still keeps
                continue
            result.problem(f"run {key[0]} seq {key[1]} ({data.get('event')}) is in the copy but not in the "
                           "local log: removed")
            continue
        if local_line != line:
            if local_line.startswith(line):
                truncated += 1
                continue
            result.problem(f"run {key[0]} seq {key[1]} ({data.get('event')}) differs from the copy: edited")
            continue
        result.compared += 1
        if data.get("event") == "run.end" and isinstance(data.get("head"), str):
            ends[key[0]] = data
    for run, end in ends.items():
        result.heads += 1
        head, expected = GENESIS, 0
        for seq, raw in sorted(runs.get(run, [])):
            if seq >= end["seq"]:
                if seq > end["seq"]:
                    result.problem(f"run {run} seq {seq} comes after the run's end: added afterwards")
                continue
            if seq != expected:
                result.problem(f"run {run}: seq {expected} is missing locally: removed")
                expected = seq
            head = run_head(head, raw)
            expected += 1
        if head != end["head"]:
            result.problem(f"run {run}: its local records do not hash to the head its forwarded run.end "
                           "carries: records were edited, removed or inserted")
    if truncated:
        result.notes.append(f"{truncated} records were cut short by the collector (raise its maximum message "
                            "size): they could not be compared")
    if rotated:
        result.notes.append(f"{rotated} records of the copy are older than the local log's oldest file "
                            "(rotated away)")
    if not result.compared:
        result.notes.append("no record of the copy was found in the local log")
    return result
