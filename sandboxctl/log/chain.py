"""The hash chain: each record's `prev` is the SHA-256 of the previous line of the file."""

from __future__ import annotations

import os
from collections.abc import Iterator

from sandboxctl.digest import sha256
from sandboxctl.record import Record

GENESIS = "0" * 64


def line_hash(line: bytes) -> str:
    return sha256(line.rstrip(b"\n")).hexdigest()


def last_line(fd: int) -> bytes | None:
    """The last complete line of an open file, read backwards in chunks."""
    end = os.lseek(fd, 0, os.SEEK_END)
    if end == 0:
        return None
    chunk = 8192
    pos = end
    tail = b""
    while pos > 0:
        step = min(chunk, pos)
        pos -= step
        tail = os.pread(fd, step, pos) + tail
        stripped = tail[:-1] if tail.endswith(b"\n") else tail
        cut = stripped.rfind(b"\n")
        if cut >= 0:
            return stripped[cut + 1 :]
    return tail.rstrip(b"\n")


class Break(Record):
    line: int
    reason: str


def verify_lines(lines: Iterator[bytes], start: str = GENESIS) -> tuple[int, Break | None]:
    """Walk the chain; return how many lines were read and the first break, if any."""
    import json  # not at import: the json package compiles regular expressions (~2 ms of every run)

    prev = start
    count = 0
    for count, raw in enumerate(lines, 1):
        try:
            record = json.loads(raw)
        except ValueError:
            return count, Break(count, "not a JSON record (edited or torn)")
        if not isinstance(record, dict) or record.get("prev") != prev:
            return count, Break(count, "chain broken: 'prev' does not match the line before "
                                       "(a line was edited, removed, inserted or reordered)")
        prev = line_hash(raw)
    return count, None
