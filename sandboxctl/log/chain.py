"""The log's lines: how a record is encoded and stamped, and the hash chain — each record's
`prev` is the SHA-256 of the previous line of the file, and a run's own head chains its lines."""

from __future__ import annotations

import _json  # json's C encoder: the json package compiles regular expressions at import (~2 ms a run)
import os
import time
from collections.abc import Iterator

from sandboxctl.digest import sha256
from sandboxctl.record import Record

GENESIS = "0" * 64


def line_hash(line: bytes) -> str:
    return sha256(line.rstrip(b"\n")).hexdigest()


def encode_record(record: dict) -> str:
    """One record as json.dumps(record, separators=(",", ":"), default=str) writes it: what
    JSONEncoder.encode runs for a dict, the C encoder with the same arguments (a markers dict of
    its own for the circular check: records are encoded on two threads; ensure_ascii, no indent,
    no sorting or skipping, NaN allowed), its chunks joined as encode() joins them."""
    return "".join(_json.make_encoder({}, str, _json.encode_basestring_ascii, None, ":", ",",
                                      False, False, True)(record, 0))


# the last second formatted, (seconds, text): one strftime per second, not per record. One tuple,
# replaced whole: the log's thread and the supervisor's formatted records at once, and a reader of
# the two halves of a list updated one after the other could pair a second with the next one's text
_second: tuple[int, str] = (-1, "")


def timestamp(now_ns: int | None = None) -> str:
    """RFC 3339, UTC, microseconds (time.strftime: datetime costs start-up time); of `now_ns`
    (time.time_ns() taken earlier: write_soon's records are formatted by the log's thread)."""
    global _second
    seconds, micros = divmod((time.time_ns() if now_ns is None else now_ns) // 1000, 1_000_000)
    known = _second
    if known[0] != seconds:
        known = _second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{known[1]}.{micros:06d}Z"


def run_head(head: str, line: bytes, hashed: str | None = None) -> str:
    """One step of a run's own chain: SHA-256 of the previous head and the line's hash (hex text;
    `hashed`: that hash, already computed). run.end's `head` is this over every line the run wrote
    before it, from 64 zeros."""
    return sha256((head + (hashed or line_hash(line))).encode()).hexdigest()


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
