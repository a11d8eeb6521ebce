"""Check the hash chain of a log across its rotated files, naming the first broken file:line."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandboxctl.log.chain import GENESIS, line_hash
from sandboxctl.log.files import Snap, close_all, parse_line, snapshot


@dataclass(frozen=True)
class VerifyResult:
    records: int
    files: int
    broken_file: Path | None = None
    broken_line: int | None = None
    reason: str | None = None
    note: str | None = None  # e.g. the oldest kept file continues one that was rotated out
    # runs with a run.start here and no run.end: still running, their supervisor killed, or the
    # log cut after their last records (a chain intact as far as it goes cannot tell which)
    unended: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def where(self) -> str:
        return f"{self.broken_file}:{self.broken_line}" if self.broken_file else ""

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "files": self.files,
                "file": str(self.broken_file) if self.broken_file else None, "line": self.broken_line,
                "reason": self.reason, "note": self.note, "unended": list(self.unended)}


def _find_hash(snaps: list[Snap], wanted: str) -> tuple[Path, int] | None:
    for snap in snaps:
        for number, raw, _ in snap.lines():
            if line_hash(raw) == wanted:
                return snap.file, number
    return None


def _diagnose(snaps: list[Snap], prev: str, before: list[tuple[Path, int, str]]) -> str:
    """Why a line's `prev` does not match: which line it really followed, if that line is here."""
    base = "'prev' does not match the line before"
    previous = f"{before[-1][0].name}:{before[-1][1]}"
    if len(before) >= 2 and before[-2][2] == prev:
        return f"{base}: it follows {before[-2][0].name}:{before[-2][1]}, so {previous} was inserted"
    found = _find_hash(snaps, prev)
    if found is not None:
        return f"{base}: it follows {found[0].name}:{found[1]} (lines were reordered or inserted)"
    return f"{base}: {previous} was edited, or lines after it were removed"


def verify(path: str | os.PathLike[str]) -> VerifyResult:
    """Walk the chain through every file, oldest to newest; name the first broken file:line.

    Safe while writers append and rotate: it checks one consistent set of files (see snapshot),
    up to the last whole record. FileNotFoundError if there is no log at all.
    """
    snaps = snapshot(path)
    if not snaps:
        raise FileNotFoundError(errno.ENOENT, "no action log", str(path))
    try:
        return _verify(snaps, Path(os.path.realpath(path)))
    finally:
        close_all(snaps)


def _verify(snaps: list[Snap], base: Path) -> VerifyResult:
    prev: str | None = None
    count = 0
    note = None
    recent: list[tuple[Path, int, str]] = []  # the last two lines: (file, number, hash)
    open_runs: dict[str, None] = {}  # run.start seen, run.end not yet: in the order they started

    def broken(file: Path, number: int, reason: str) -> VerifyResult:
        return VerifyResult(count, len(snaps), file, number, reason, note, tuple(open_runs))

    for index, snap in enumerate(snaps):
        file = snap.file
        newest = index == len(snaps) - 1
        empty = True
        for number, raw, terminated in snap.lines():
            empty = False
            if not terminated:
                where = "the last line" if newest else "the last line of a rotated file"
                return broken(file, number, f"{where} is incomplete (a torn write, or a crash while writing)")
            if not raw.strip():
                return broken(file, number, "empty line (the log was edited)")
            data = parse_line(raw)
            if data is None:
                return broken(file, number, "not a JSON record (the line was edited or torn)")
            claimed = data.get("prev")
            if prev is None:  # the first line of the oldest file
                if claimed != GENESIS:
                    if file != base and isinstance(claimed, str) and len(claimed) == 64:
                        note = f"{file.name} continues an older file that is no longer kept"
                    else:
                        reason = ("the first line of the log must start the chain (an earlier rotated "
                                  "file was removed, or lines were removed from the start)")
                        return broken(file, number, reason)
            elif claimed != prev:
                return broken(file, number, _diagnose(snaps, str(claimed), recent))
            count += 1
            event, run = data.get("event"), data.get("run")
            if event == "run.start" and isinstance(run, str):
                open_runs[run] = None
            elif event == "run.end" and isinstance(run, str):
                open_runs.pop(run, None)
            prev = line_hash(raw)
            recent = [*recent[-1:], (file, number, prev)]
        if empty and not newest:
            return broken(file, 0, "a rotated file is empty (the log was edited)")
    return VerifyResult(count, len(snaps), note=note, unended=tuple(open_runs))
