"""Append records to the action log: one write() per record under an exclusive flock.

The lock covers reading the previous line's hash and appending the new line, so parallel runs
sharing a log never interleave and the chain stays intact. The file is 0600 in a 0700 dir and is
masked inside every sandbox.

Rotation by size happens under the same lock (log/rotation.py, imported only when a file is full).

Every writer checks, while it holds the lock, that its descriptor is still the file the path
names; a writer whose file was rotated away (by another process or another ActionLog) re-opens
the path before appending. The lock is per open file description, so an ActionLog must not be
shared across fork(): each process opens its own.

`write_soon` is for a caller that must not wait for the disk: the exec path answers the kernel,
queues the record and goes back to the kernel for the next call (on a 2-CPU machine the
sandboxed process was woken on the supervisor's CPU and would otherwise wait there while the
record is encoded, hashed and written). The log's own thread writes what is queued, in order;
every write() and flush() first writes whatever is still queued, so no record is ever reordered
and nothing is left behind a later one (run.end). A record's `ts` is when it was queued.

run.end is the run's last record: `write_last` writes what is queued, then it, and seals the log
under the same mutex; from then on (and after close()) every record is refused and counted
(`refused`, `on_refused`), never appended after it — a thread that outlived the run's end (a
notification still being answered, a proxy connection, a collector coming back) cannot add to it.

The queue is bounded: past `soon_limit` (estimated) bytes waiting, write_soon writes the record
itself, as write() would — the exec path then waits for the disk. Unbounded, a storm of execs with
1 MB argvs outran the thread: the supervisor's memory grew, and what was still queued when the
flood guard stopped the run was written after, rotating the run's first records out of the log.
"""

from __future__ import annotations

import _json  # the secrets' last pass: json's C escaping (the json package compiles regexes at import)
import contextlib
import fcntl
import os
import threading
import time
from collections import deque

from sandboxctl.errors import SandboxError
from sandboxctl.log.chain import GENESIS, encode_record, last_line, line_hash, run_head, timestamp
from sandboxctl.paths import make_dirs, parent

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

DEFAULT_MAX_BYTES = 64 << 20
SOON_BYTES = 1 << 20  # at most this much (estimated) waits for the log's thread, and never 1/16 of a file
DEFAULT_KEEP = 5
_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
BATCH_PAUSE_S = 0.01  # the log's thread pauses this long after writing what was queued
MAX_BATCH = 8  # records queued during a pause that cut it short
PAUSE_RECORD_BYTES = (256 + 1) * 4096 * 2  # the largest exec record, argv escaped (see _may_pause)


class LogWriteError(SandboxError):
    pass


class _RunHead:
    """write_last's `head=RUN_HEAD`: the run's head as it is when run.end is written, under the
    mutex and after what is queued. Read by the caller before the call, it missed whatever another
    thread wrote in between (a proxy connection, a queued exec record), and run.end then carried a
    head that `log --verify --against` finds wrong: a false alarm of removed records."""

    def __repr__(self) -> str:
        return "RUN_HEAD"


RUN_HEAD = _RunHead()


def _estimate(fields: dict[str, Any]) -> int:
    """About how many bytes a record's line takes (strings and lists of strings: an exec's path
    and argv), cheaply: what bounds the queue of write_soon."""
    size = 128
    for value in fields.values():
        if isinstance(value, str):
            size += len(value)
        elif isinstance(value, list):
            try:
                size += sum(map(len, value)) + 4 * len(value)
            except TypeError:
                size += 64 * len(value)
    return size


def _why(exc: OSError) -> str:
    if exc.strerror:
        return exc.strerror
    if exc.args and isinstance(exc.args[0], int):
        return os.strerror(exc.args[0])
    return str(exc) or type(exc).__name__


class ActionLog:
    def __init__(self, path: str, run_id: str, redact: tuple[str, ...] = (),
                 max_bytes: int | None = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP):
        self.path = str(path)
        self._real = os.path.realpath(self.path)  # a symlinked log rotates where it really lives
        self.run_id = run_id
        self.seq = 0
        self.first_file: tuple[int, int] | None = None  # (dev, ino) of the file holding our first record
        self.rotations = 0  # rotations this writer made or saw (supervise/flood.py then asks where it is)
        self.redact = tuple(v for v in redact if v)
        self.scrubber = None
        if self.redact:  # only runs with secrets pay for it (import included)
            from sandboxctl.log.scrub import Scrubber

            self.scrubber = Scrubber(self.redact)
        self.max_bytes = max_bytes if max_bytes and max_bytes > 0 else None
        self.keep = max(1, keep)
        self._known: tuple[int, str] | None = None  # (file size, hash of last line) after our write
        self.head = GENESIS  # this run's own chain over the lines it wrote (run.end carries it)
        self.forward = None  # log.forward.Forwarder: copies of every line, sent as it is written
        self.fd = -1
        self._mutex = threading.Lock()  # flock does not exclude threads sharing one descriptor
        # (time_ns, event, fields, size): write_soon's
        self._pending: deque[tuple[int, str, dict[str, Any], int]] = deque()
        self.soon_limit = min(SOON_BYTES, self.max_bytes // 16) if self.max_bytes else SOON_BYTES
        self._queued_bytes = 0  # estimated sizes ever queued (write_soon's callers are serialized)
        self._taken_bytes = 0  # ... and of those written (under the mutex)
        self._rotated_unchecked = False  # write_soon rotated the log itself: the thread calls after_queued
        self._wake = threading.Lock()  # released: something is queued (or _stopping); the thread acquires it
        self._wake.acquire()
        self._idle = False  # the thread waits on _wake: the next write_soon must wake it
        self._nap = threading.Lock()  # the thread's pause between batches; close() cuts it short
        self._nap.acquire()
        self._stopping = False
        self._writer: threading.Thread | None = None
        self.on_error: Callable[[LogWriteError], None] | None = None  # a queued record could not be written
        self.sealed = False  # run.end written (write_last) or closed: every later record is refused
        self.refused: dict[str, int] = {}  # records refused after the seal, by event
        self.on_refused: Callable[[str], None] | None = None  # told of each (with the mutex held)
        self.after_queued: Callable[[], None] | None = None  # the thread's write of a queued record rotated
        try:
            make_dirs(parent(self._real), 0o700)
        except OSError as exc:
            raise LogWriteError(f"cannot open the action log {self.path}: {_why(exc)}",
                                "pass --log PATH to a writable place") from None
        self.fd = self._open()

    def _open(self) -> int:
        try:
            fd = os.open(self._real, _OPEN_FLAGS, 0o600)
        except OSError as exc:
            raise LogWriteError(f"cannot open the action log {self.path}: {_why(exc)}",
                                "pass --log PATH to a writable place") from None
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            os.close(fd)
            raise LogWriteError(f"the action log {self.path} belongs to another user", "pass --log PATH")
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
        return fd

    def _lock_current(self) -> os.stat_result:
        """Take the lock on the file the path names now, re-opening it if it was rotated away."""
        for _ in range(100):
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            mine = os.fstat(self.fd)
            try:
                now = os.stat(self._real)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                return mine
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            fd = self._open()
            os.close(self.fd)
            self.fd, self._known = fd, None
            self.rotations += 1  # another writer rotated (or the file was replaced)
        raise LogWriteError(f"the action log {self.path} keeps being replaced", "pass --log PATH")

    def _prev(self, size: int) -> tuple[str, bool]:
        """The hash of the file's last line, and whether the file ends in a torn (unterminated) line."""
        if self._known and self._known[0] == size:
            return self._known[1], False
        if size == 0:
            return GENESIS, False
        line = last_line(self.fd)
        torn = os.pread(self.fd, 1, size - 1) != b"\n"
        return (GENESIS if line is None else line_hash(line)), torn

    def _scrub(self, text: str) -> str:
        """The last pass, over the encoded line: the value and its JSON-escaped form anywhere
        (the Scrubber has already taken split and encoded forms out of each field)."""
        for value in self.redact:
            text = text.replace(_json.encode_basestring_ascii(value)[1:-1], "***").replace(value, "***")
        return text

    def _encode(self, record: dict[str, Any], prev: str) -> bytes:
        if self.scrubber is not None:
            record = self.scrubber.record(record)
        record["prev"] = prev
        return (self._scrub(encode_record(record)) + "\n").encode()

    def write(self, event: str, **fields: Any) -> None:
        with self._mutex:
            self._drain()
            self._write(event, fields)

    def write_last(self, event: str, **fields: Any) -> None:
        """The run's last record (run.end): what is queued first, then this one; then the log is
        sealed (see the module docstring), also when this write fails."""
        with self._mutex:
            try:
                self._drain()
                if fields.get("head") is RUN_HEAD:
                    fields["head"] = self.head
                self._write(event, fields)
            finally:
                self.sealed = True

    def _refuse(self, event: str) -> None:
        """With the mutex held: a record after the seal is counted and told, never written."""
        self.refused[event] = self.refused.get(event, 0) + 1
        if self.on_refused is not None:
            with contextlib.suppress(Exception):
                self.on_refused(event)

    def write_soon(self, event: str, **fields: Any) -> None:
        """Queue a record for the log's thread (see the module docstring); `fields` must not be
        changed after. A record the thread cannot write goes to `on_error` (the run is stopped).
        Past `soon_limit` bytes waiting, the record is written here and now (the queue is bounded)."""
        if self.sealed:
            with self._mutex:
                self._refuse(event)
            return
        size = _estimate(fields)
        if self._queued_bytes - self._taken_bytes + size > self.soon_limit:
            self._write_now(event, fields)
            return
        self._queued_bytes += size
        self._pending.append((time.time_ns(), event, fields, size))  # formatted by the log's thread
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_queued, name="sandboxctl-log", daemon=True)
            self._writer.start()
        if self._idle:  # else the thread is writing or pausing, and looks at the queue next
            self._signal()
        elif len(self._pending) >= MAX_BATCH:  # a pause never holds back more than a batch
            self._end_pause()

    def _write_now(self, event: str, fields: dict[str, Any]) -> None:
        """write_soon's record when the thread is behind. A rotation is left for the thread to
        report (after_queued takes the caller's own lock: the supervisor's log_lock)."""
        try:
            with self._mutex:
                rotations = self.rotations
                self._drain()
                self._write(event, fields)
                rotated = self.rotations != rotations
        except LogWriteError as exc:
            if self.on_error is None:
                raise
            self.on_error(exc)
            return
        if rotated and self.after_queued is not None:
            self._rotated_unchecked = True
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_queued, name="sandboxctl-log", daemon=True)
                self._writer.start()
            self._signal()

    def _signal(self) -> None:
        """Wake the thread: a binary semaphore (a released lock is a wake-up not yet taken, and
        the thread takes everything queued when it takes one), a C call on the exec path."""
        try:  # noqa: SIM105 -- contextlib.suppress costs a Python context manager on every exec
            self._wake.release()
        except RuntimeError:  # released already: the thread will see this record too
            pass

    def flush(self) -> None:
        """Write what is queued now (LogWriteError if that fails); before reading seq or head."""
        with self._mutex:
            self._drain()

    def _drain(self) -> None:
        """With the mutex held: the queued records, oldest first (popped only under the mutex, so
        a write() from another thread never slips in between two of them)."""
        while self._pending:
            queued_ns, event, fields, size = self._pending.popleft()
            self._taken_bytes += size
            self._write(event, fields, queued_ns)

    def _write_queued(self) -> None:
        """The log's thread: one record at a time under the mutex, and `after_queued` after each
        one that rotated the log (the flood guard looks at every rotation, as after a write())."""
        while True:
            self._idle = True  # before looking at the queue: a record queued after that look wakes us
            if not self._pending and not self._stopping:
                self._wake.acquire()
            self._idle = False
            while True:
                try:
                    with self._mutex:
                        if not self._pending:
                            break
                        rotations = self.rotations
                        queued_ns, event, fields, size = self._pending.popleft()
                        self._taken_bytes += size
                        self._write(event, fields, queued_ns)
                except LogWriteError as exc:
                    if self.on_error is not None:
                        self.on_error(exc)
                    break
                if self.rotations != rotations and self.after_queued is not None:
                    self.after_queued()
            if self._rotated_unchecked and self.after_queued is not None:
                self._rotated_unchecked = False
                self.after_queued()
            if self._stopping:  # close() writes whatever came after, itself
                return
            # a pause, so the records of the next BATCH_PAUSE_S come in one wake-up: waking this
            # thread for each one cost the exec path a futex wake-up of the other CPU per exec
            if self._may_pause():
                self._nap.acquire(timeout=BATCH_PAUSE_S)

    def _may_pause(self) -> bool:
        """A pause holds back at most MAX_BATCH records, all written past whatever the flood guard
        decides at a rotation among them (supervise/flood.py keeps one rotation of margin, shared
        with other runs' rotations): so only a log whose files take two batches of the largest
        records (256 arguments of 4 KiB, escaped) pauses — the default 64 MiB does; a smaller
        max_bytes writes every record as it comes, as without the pause."""
        return self.max_bytes is None or self.max_bytes >= 2 * MAX_BATCH * PAUSE_RECORD_BYTES

    def _end_pause(self) -> None:
        try:  # noqa: SIM105 -- contextlib.suppress costs a Python context manager on the exec path
            self._nap.release()
        except RuntimeError:  # not pausing, or cut short already: its next look sees the queue
            pass

    def _write(self, event: str, fields: dict[str, Any], queued_ns: int | None = None) -> None:
        if self.sealed:
            self._refuse(event)
            return
        record = {"ts": timestamp(queued_ns), "run": self.run_id, "seq": self.seq, "event": event, **fields}
        try:
            st = self._lock_current()
            try:
                prev, torn = self._prev(st.st_size)
                data = self._encode(record, prev)
                if torn:  # a crash left half a line: end it, so this record stays a line of its own
                    data = b"\n" + data
                if self.max_bytes and st.st_size > 0 and st.st_size + len(data) > self.max_bytes:
                    self._rotate(data.lstrip(b"\n"))
                else:
                    self._append(data, st.st_size)
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        except OSError as exc:
            raise LogWriteError(f"cannot write the action log {self.path}: {_why(exc)}",
                                "free some space or pass --log PATH; the run was stopped") from None
        self.seq += 1
        if self.first_file is None:
            mine = os.fstat(self.fd)  # after a rotation, the fresh file
            self.first_file = (mine.st_dev, mine.st_ino)
        line = data.strip(b"\n")
        own = self._known[1] if not torn and self._known and self._known[0] == st.st_size + len(data) else None
        self.head = run_head(self.head, line, own)
        if self.forward is not None:  # a queue put: a collector never slows or fails the run
            self.forward.send(line, event, fields.get("decision") == "deny" or event == "tamper")

    def _append(self, data: bytes, size: int) -> None:
        try:
            written = os.write(self.fd, data)
            if written != len(data):
                raise OSError(28, "short write (disk full?)")
        except OSError:
            # Never leave half a record behind: we hold the lock, so nobody appended after us.
            with contextlib.suppress(OSError):
                if os.fstat(self.fd).st_size > size:
                    os.ftruncate(self.fd, size)
            raise
        self._known = (size + len(data), line_hash(data))

    def _rotate(self, data: bytes) -> None:
        """Called with the lock held on the current file; `data` chains onto its last line."""
        from sandboxctl.log.rotation import rotate

        fd = rotate(self._real, self.keep, data)
        old = self.fd
        self.fd, self._known = fd, (len(data), line_hash(data))
        self.rotations += 1
        fcntl.flock(old, fcntl.LOCK_UN)
        os.close(old)
        # the caller unlocks self.fd (the new file), which we never locked: harmless

    def first_record_age(self) -> int | None:
        """How many rotations back the file holding this writer's first record is (0: the current
        file, `keep`: the oldest kept), None when it is no longer kept (or nothing was written)."""
        from sandboxctl.log.rotation import file_age

        return None if self.first_file is None else file_age(self._real, self.keep, self.first_file)

    def close(self) -> None:
        if self._writer is not None:
            self._stopping = True
            self._signal()
            self._end_pause()
            self._writer.join()
            self._writer = None
        with self._mutex:
            with contextlib.suppress(LogWriteError):  # normally flushed before run.end already
                self._drain()
            self.sealed = True  # a write after close is refused and counted, as after run.end
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def __enter__(self) -> ActionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
