"""The files of an action log and the records in them, read as one consistent snapshot.

A log is `<log>.N` ... `<log>.1` (oldest first, as the writer rotates them) and then `<log>`.
Readers take a shared flock on `<log>` only for the moment they list and open the files (see
`rotation_lock`), so a writer rotating meanwhile can never make them skip or repeat a file; the
reading itself is lock-free, from descriptors held open.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK = 1 << 16


def log_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files of a log, oldest first: `<log>.N` (highest N first) ... `<log>.1`, `<log>`."""
    base = Path(os.path.realpath(path))
    rotated: list[tuple[int, Path]] = []
    try:
        names = os.listdir(base.parent)
    except OSError:
        names = []
    prefix = base.name + "."
    for name in names:
        suffix = name[len(prefix):] if name.startswith(prefix) else ""
        if suffix.isdigit() and suffix.isascii():
            rotated.append((int(suffix), base.parent / name))
    files = [p for _, p in sorted(rotated, reverse=True)]
    if base.exists():
        files.append(base)
    return files


@contextlib.contextmanager
def rotation_lock(path: str | os.PathLike[str]) -> Iterator[int | None]:
    """Hold a shared flock on the current `<log>`, so that no writer can rotate meanwhile.

    Writers rotate only while they hold the exclusive lock on the current file, so under this lock
    the names `<log>`, `<log>.1` ... stay put. Yields the locked descriptor, or None if there is no
    `<log>` (then nothing can rotate either). Hold it briefly: writers wait for it.
    """
    base = os.path.realpath(path)
    for _attempt in range(100):
        try:
            fd = os.open(base, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            yield None
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            mine = os.fstat(fd)
            try:
                now = os.stat(base)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                try:
                    yield fd
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                return
        finally:
            os.close(fd)
    raise OSError(errno.EAGAIN, "the log kept being rotated while it was read", str(path))


@dataclass(frozen=True)
class Snap:
    """One file of the log, held open: renames by a rotating writer do not change what we read."""

    file: Path
    fd: int
    limit: int  # bytes to read: the size when we looked (whole records only, see snapshot)

    def lines(self) -> Iterator[tuple[int, bytes, bool]]:
        """(number, line without newline, whether it had a newline)."""
        pos, number, pending = 0, 0, b""
        while pos < self.limit:  # pread: no shared file offset, so walks may nest
            chunk = os.pread(self.fd, min(CHUNK * 4, self.limit - pos), pos)
            if not chunk:
                break
            pos += len(chunk)
            *complete, pending = (pending + chunk).split(b"\n")
            for raw in complete:
                number += 1
                yield number, raw, True
        if pending:
            yield number + 1, pending, False

    def close(self) -> None:
        os.close(self.fd)


def open_snap(file: Path) -> Snap | None:
    try:
        fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    return Snap(file, fd, os.fstat(fd).st_size)


def snapshot(path: str | os.PathLike[str]) -> list[Snap]:
    """Every file of the log, opened as one consistent set (under `rotation_lock`), oldest first.

    The current file is read up to its size under the lock, so a record being appended is either
    wholly in the snapshot or not at all. Close them with `close_all`.
    """
    with rotation_lock(path):
        snaps = [snap for snap in map(open_snap, log_files(path)) if snap is not None]
    return snaps


def close_all(snaps: list[Snap]) -> None:
    for snap in snaps:
        snap.close()


@dataclass(frozen=True)
class Record:
    """One parsed line: where it is, its raw bytes (no newline) and its JSON object."""

    file: Path
    line: int | None
    raw: bytes
    data: dict[str, Any]

    @property
    def event(self) -> str:
        return str(self.data.get("event", ""))

    @property
    def run(self) -> str:
        return str(self.data.get("run", ""))

    def text(self) -> str:
        return self.raw.decode("utf-8", "replace")


def parse_line(raw: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _run_needles(prefix: str) -> tuple[bytes, ...]:
    """Byte strings one of which a line of that run must contain: a cheap test before json.loads."""
    value = json.dumps(prefix)[:-1].encode()  # the opening quote and the escaped prefix
    return b'"run":' + value, b'"run": ' + value


def iter_lines(path: str | os.PathLike[str]) -> Iterator[tuple[Path, int, bytes]]:
    """Every line of every file, oldest first, without its newline (one consistent snapshot)."""
    snaps = snapshot(path)
    try:
        for snap in snaps:
            for number, raw, _ in snap.lines():
                yield snap.file, number, raw
    finally:
        close_all(snaps)


def iter_records(path: str | os.PathLike[str], run: str | None = None) -> Iterator[Record]:
    """Parsed records oldest first; unparsable lines are skipped (`verify` reports them)."""
    needles = _run_needles(run) if run else None
    for file, number, raw in iter_lines(path):
        if needles and not any(n in raw for n in needles):
            continue
        data = parse_line(raw)
        if data is not None and (run is None or str(data.get("run", "")).startswith(run)):
            yield Record(file, number, raw, data)
