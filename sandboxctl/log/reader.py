"""Read the action log: records across rotated files, filters, the runs in it, chain checks, follow.

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
import shlex
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sandboxctl.log.chain import GENESIS, line_hash

DENY_ANSWERS = ("deny", "timeout")
_CHUNK = 1 << 16


# -- files and records -------------------------------------------------------------------------


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
class _Snap:
    """One file of the log, held open: renames by a rotating writer do not change what we read."""

    file: Path
    fd: int
    limit: int  # bytes to read: the size when we looked (whole records only, see snapshot)

    def lines(self) -> Iterator[tuple[int, bytes, bool]]:
        """(number, line without newline, whether it had a newline)."""
        pos, number, pending = 0, 0, b""
        while pos < self.limit:  # pread: no shared file offset, so walks may nest
            chunk = os.pread(self.fd, min(_CHUNK * 4, self.limit - pos), pos)
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


def _open_snap(file: Path) -> _Snap | None:
    try:
        fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    return _Snap(file, fd, os.fstat(fd).st_size)


def snapshot(path: str | os.PathLike[str]) -> list[_Snap]:
    """Every file of the log, opened as one consistent set (under `rotation_lock`), oldest first.

    The current file is read up to its size under the lock, so a record being appended is either
    wholly in the snapshot or not at all. Close them with `close_all`.
    """
    with rotation_lock(path):
        snaps = [snap for snap in map(_open_snap, log_files(path)) if snap is not None]
    return snaps


def close_all(snaps: list[_Snap]) -> None:
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


def _parse(raw: bytes) -> dict[str, Any] | None:
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
        data = _parse(raw)
        if data is not None and (run is None or str(data.get("run", "")).startswith(run)):
            yield Record(file, number, raw, data)


# -- filters -----------------------------------------------------------------------------------


def is_denial(data: dict[str, Any]) -> bool:
    """A denied action or a denied/unanswered approval; run.end's `denied` count is not one."""
    return data.get("decision") == "deny" or data.get("answer") in DENY_ANSWERS


def parse_ts(ts: Any) -> datetime | None:
    if not isinstance(ts, str):
        return None
    try:
        value = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def event_matcher(spec: str | None) -> Callable[[str], bool]:
    """'net' or 'file,net' (exact names), 'run' matches run.start and run.end."""
    if not spec:
        return lambda _event: True
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    return lambda event: any(event == w or event.startswith(w + ".") for w in wanted)


@dataclass
class Filter:
    run: str | None = None  # run id prefix
    event: str | None = None
    denied: bool = False
    since: datetime | None = None
    _event: Callable[[str], bool] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._event = event_matcher(self.event)

    def __call__(self, record: Record) -> bool:
        data = record.data
        if self.run and not str(data.get("run", "")).startswith(self.run):
            return False
        if self.event and not self._event(str(data.get("event", ""))):
            return False
        if self.denied and not is_denial(data):
            return False
        if self.since is not None:
            ts = parse_ts(data.get("ts"))
            if ts is None or ts < self.since:
                return False
        return True


def since_cutoff(text: str, now: datetime | None = None) -> datetime:
    """'1h' -> the moment one hour ago (UTC). ValueError for a malformed duration."""
    from datetime import timedelta

    from sandboxctl.units import parse_duration

    return (now or datetime.now(UTC)) - timedelta(seconds=parse_duration(text))


def select(path: str | os.PathLike[str], *, run: str | None = None, event: str | None = None,
           denied: bool = False, since: datetime | None = None) -> Iterator[Record]:
    keep = Filter(run, event, denied, since)
    return (r for r in iter_records(path, run=run) if keep(r))


def last_run_id(path: str | os.PathLike[str]) -> str | None:
    """The run that started last (by its run.start), else the run of the last record."""
    started: str | None = None
    last_raw = b""
    for _file, _number, raw in iter_lines(path):
        if raw.strip():
            last_raw = raw
        if b'"run.start"' in raw:
            data = _parse(raw)
            if data is not None and data.get("event") == "run.start" and "run" in data:
                started = str(data["run"])
    if started is not None:
        return started
    data = _parse(last_raw) if last_raw else None
    return str(data["run"]) if data is not None and "run" in data else None


# -- runs --------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    run: str
    start: str | None = None  # ts of run.start (or of the first record seen, if run.start is gone)
    argv: list[str] = field(default_factory=list)
    policy: str | None = None
    end: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    duration_s: float | None = None
    timed_out: bool = False
    denied: int = 0
    records: int = 0
    _counted: int = 0

    @property
    def finished(self) -> bool:
        return self.end is not None

    @property
    def status(self) -> str:
        if not self.finished:
            return "running/crashed"
        if self.timed_out:
            return "timed out"
        return f"exit {self.exit_code}"

    def as_dict(self) -> dict[str, Any]:
        return {"run": self.run, "start": self.start, "argv": self.argv, "policy": self.policy,
                "end": self.end, "exit_code": self.exit_code, "signal": self.signal,
                "duration_s": self.duration_s, "timed_out": self.timed_out, "denied": self.denied,
                "records": self.records, "status": self.status}


def list_runs(records: Iterable[Record]) -> list[RunSummary]:
    """One summary per run id, in order of first appearance, from run.start/run.end pairs."""
    runs: dict[str, RunSummary] = {}
    for record in records:
        data = record.data
        run_id = record.run
        summary = runs.get(run_id)
        if summary is None:
            summary = runs[run_id] = RunSummary(run_id, start=data.get("ts"))
        summary.records += 1
        event = record.event
        if event == "run.start":
            summary.start = data.get("ts")
            argv = data.get("argv")
            summary.argv = [str(a) for a in argv] if isinstance(argv, list) else []
            summary.policy = data.get("policy")
        elif event == "run.end":
            summary.end = data.get("ts")
            summary.exit_code = data.get("exit_code")
            summary.signal = data.get("signal")
            summary.duration_s = data.get("duration_s")
            summary.timed_out = bool(data.get("timed_out"))
            if isinstance(data.get("denied"), int):
                summary.denied = data["denied"]
                summary._counted = -1  # the supervisor's own count wins
        elif is_denial(data) and summary._counted >= 0:
            summary._counted += 1
            summary.denied = summary._counted
    return list(runs.values())


# -- verification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyResult:
    records: int
    files: int
    broken_file: Path | None = None
    broken_line: int | None = None
    reason: str | None = None
    note: str | None = None  # e.g. the oldest kept file continues one that was rotated out

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def where(self) -> str:
        return f"{self.broken_file}:{self.broken_line}" if self.broken_file else ""

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "files": self.files,
                "file": str(self.broken_file) if self.broken_file else None, "line": self.broken_line,
                "reason": self.reason, "note": self.note}


def _find_hash(snaps: list[_Snap], wanted: str) -> tuple[Path, int] | None:
    for snap in snaps:
        for number, raw, _ in snap.lines():
            if line_hash(raw) == wanted:
                return snap.file, number
    return None


def _diagnose(snaps: list[_Snap], prev: str, before: list[tuple[Path, int, str]]) -> str:
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


def _verify(snaps: list[_Snap], base: Path) -> VerifyResult:
    prev: str | None = None
    count = 0
    note = None
    recent: list[tuple[Path, int, str]] = []  # the last two lines: (file, number, hash)

    def broken(file: Path, number: int, reason: str) -> VerifyResult:
        return VerifyResult(count, len(snaps), file, number, reason, note)

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
            data = _parse(raw)
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
            prev = line_hash(raw)
            recent = [*recent[-1:], (file, number, prev)]
        if empty and not newest:
            return broken(file, 0, "a rotated file is empty (the log was edited)")
    return VerifyResult(count, len(snaps), note=note)


# -- follow ------------------------------------------------------------------------------------


class Follower:
    """`tail -f` for the log: yields new records as they are appended, across rotations.

    Poll-based (no inotify), so it works on any filesystem. `drain()` returns what is there now;
    iterating blocks, polling every `poll` seconds, until `stop` is set (a threading.Event or a
    callable returning true) or `close()` is called. With `from_start`, the existing history
    (rotated files too) comes first, without gaps or duplicates against what follows.
    """

    def __init__(self, path: str | os.PathLike[str], *, from_start: bool = False, poll: float = 0.25,
                 stop: threading.Event | Callable[[], bool] | None = None):
        self.path = Path(os.path.realpath(path))
        self.poll = poll
        self._stop = stop
        self._closed = False
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None
        self._file: Path = self.path
        self._line = 0
        self._buf = b""
        self._pending: list[_Snap] = []  # rotated files still to read, held open (names keep shifting)
        self._history = from_start  # read the rotated files before the first file we open
        self._after: tuple[int, int] | None = None  # the file we finished, until we open the next
        self._open(from_start)

    def _open(self, from_start: bool) -> bool:
        """Open the file the path names now; False if there is none (yet).

        Under the rotation lock, also open the rotated files to read before it: all of them for
        history, or those rotated after the file we finished reading.
        """
        with rotation_lock(self.path) as locked:
            if locked is None:
                return False
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)  # the locked file: nothing rotates now
            st = os.fstat(fd)
            ident = (st.st_dev, st.st_ino)
            after = self._after
            if self._history or after is not None:
                rotated = [snap for snap in map(_open_snap, log_files(self.path)[:-1]) if snap is not None]
                idents = [(st.st_dev, st.st_ino) for st in (os.fstat(snap.fd) for snap in rotated)]
                # without `after` in the list it was dropped already (older than `keep`): all are newer
                start = idents.index(after) + 1 if not self._history and after in idents else 0
                close_all(rotated[:start])
                self._pending, self._history, self._after = rotated[start:], False, None
        self._fd, self._ident, self._file, self._buf = fd, ident, self.path, b""
        self._line = 0
        if not from_start:
            self._line = self._count_lines(fd, st.st_size)
            os.lseek(fd, st.st_size, os.SEEK_SET)
        return True

    @staticmethod
    def _count_lines(fd: int, size: int) -> int:
        count = pos = 0
        while pos < size:
            chunk = os.pread(fd, min(_CHUNK * 16, size - pos), pos)
            if not chunk:
                break
            count += chunk.count(b"\n")
            pos += len(chunk)
        return count

    def _lines_from_fd(self) -> Iterator[bytes]:
        assert self._fd is not None
        while True:
            chunk = os.read(self._fd, _CHUNK)
            if not chunk:
                return
            self._buf += chunk
            *complete, self._buf = self._buf.split(b"\n")
            yield from complete

    def _record(self, file: Path, raw: bytes) -> Record | None:
        self._line += 1
        data = _parse(raw)
        return Record(file, self._line, raw, data) if data is not None else None

    def drain(self) -> Iterator[Record]:
        """Everything appended since the last call (history first, with from_start)."""
        while True:
            while self._pending:
                snap = self._pending.pop(0)
                try:
                    for number, raw, _ in snap.lines():
                        data = _parse(raw)
                        if data is not None:
                            yield Record(snap.file, number, raw, data)
                finally:
                    snap.close()
            if self._fd is None:
                if not self._open(from_start=True):
                    return
                continue
            for raw in self._lines_from_fd():
                record = self._record(self._file, raw)
                if record is not None:
                    yield record
            try:
                st = os.stat(self.path)
                now: tuple[int, int] | None = (st.st_dev, st.st_ino)
            except FileNotFoundError:
                now = None
            if now == self._ident:
                if st.st_size < os.lseek(self._fd, 0, os.SEEK_CUR):  # truncated in place: start over
                    os.lseek(self._fd, 0, os.SEEK_SET)
                    self._buf, self._line = b"", 0
                    continue
                return
            # rotated (or replaced): finish our file, then the files rotated after it, then the new one
            for raw in self._lines_from_fd():
                record = self._record(self._file, raw)
                if record is not None:
                    yield record
            if self._buf:
                record = self._record(self._file, self._buf)
                if record is not None:
                    yield record
            self._after = self._ident
            os.close(self._fd)
            self._fd = None
            if not self._open(from_start=True):
                return

    def stopped(self) -> bool:
        if self._closed:
            return True
        if self._stop is None:
            return False
        if isinstance(self._stop, threading.Event):
            return self._stop.is_set()
        return bool(self._stop())

    def _sleep(self) -> None:
        if isinstance(self._stop, threading.Event):
            self._stop.wait(self.poll)
        else:
            time.sleep(self.poll)

    def __iter__(self) -> Iterator[Record]:
        try:
            while not self.stopped():
                yield from self.drain()
                if self.stopped():
                    return
                self._sleep()
        finally:
            self.close()

    def close(self) -> None:
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        close_all(self._pending)
        self._pending = []


def follow(path: str | os.PathLike[str], *, from_start: bool = False, poll: float = 0.25,
           stop: threading.Event | Callable[[], bool] | None = None) -> Iterator[Record]:
    return iter(Follower(path, from_start=from_start, poll=poll, stop=stop))


# -- one-line summaries for people -------------------------------------------------------------

_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}
_CONTROL.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"})


def clean(text: Any, limit: int | None = 120) -> str:
    """Printable text: control characters escaped (log content comes from sandboxed processes)."""
    value = str(text).translate(_CONTROL)
    value = "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in value)
    if limit and len(value) > limit:
        value = value[: limit - 1] + "…"
    return value


def format_argv(argv: Any) -> str:
    if isinstance(argv, list):
        return shlex.join(str(a) for a in argv)
    return str(argv) if argv is not None else ""


def format_seconds(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


_STANDARD = ("ts", "run", "seq", "event", "prev")


def summarize(data: dict[str, Any]) -> str:
    """What a record is about, in a few words (never a secret value: only names are logged)."""
    event = data.get("event")
    g = data.get
    if event == "run.start":
        text = format_argv(g("argv"))
        return f"{text} (policy {g('policy')})" if g("policy") else text
    if event == "exec":
        return format_argv(g("argv")) or str(g("path", ""))
    if event == "file":
        return f"{g('op', '?')} {g('path', '')}"
    if event == "net":
        return f"{g('host', '?')}:{g('port', '?')}"
    if event == "http":
        port = g("port")
        host = f"{g('host', '?')}" + ("" if port in (80, 443, None) else f":{port}")
        text = f"{g('method', '?')} {host}{g('path', '')}"
        if g("status") is not None:
            text += f" -> {g('status')}"
        if g("secrets"):
            text += f" (secrets: {', '.join(str(n) for n in g('secrets'))})"
        if g("leak"):
            text += f" (leak: {g('leak')})"
        return text
    if event == "syscall":
        return str(g("name", "?"))
    if event == "approval":
        return f"{g('kind', '?')} {g('target', '')}".rstrip()
    if event == "secret":
        return f"{g('name', '?')} ({g('action')})" if g("action") else str(g("name", "?"))
    if event == "limit":
        return f"{g('kind', '?')} ({g('action')})" if g("action") else str(g("kind", "?"))
    if event == "run.end":
        text = f"exit {g('exit_code')} after {format_seconds(g('duration_s'))}"
        if g("signal"):
            text += f" (signal {g('signal')})"
        if g("timed_out"):
            text += ", timed out"
        return text
    rest = {k: v for k, v in data.items() if k not in _STANDARD}
    return json.dumps(rest, separators=(",", ":"), default=str)


def decision(data: dict[str, Any]) -> str:
    value = data.get("decision") or data.get("answer") or ""
    return str(value)


def local_time(ts: Any, with_date: bool = False) -> str:
    moment = parse_ts(ts)
    if moment is None:
        return str(ts or "?")
    local = moment.astimezone()
    return local.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S.%f")[: 19 if with_date else 12]
