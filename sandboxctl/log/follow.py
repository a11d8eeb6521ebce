"""Follow the log as it grows (`sandboxctl log --follow`), across rotations, without gaps."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sandboxctl.log.files import CHUNK, Record, Snap, close_all, log_files, open_snap, parse_line, rotation_lock


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
        self._pending: list[Snap] = []  # rotated files still to read, held open (names keep shifting)
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
                rotated = [snap for snap in map(open_snap, log_files(self.path)[:-1]) if snap is not None]
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
            chunk = os.pread(fd, min(CHUNK * 16, size - pos), pos)
            if not chunk:
                break
            count += chunk.count(b"\n")
            pos += len(chunk)
        return count

    def _lines_from_fd(self) -> Iterator[bytes]:
        assert self._fd is not None
        while True:
            chunk = os.read(self._fd, CHUNK)
            if not chunk:
                return
            self._buf += chunk
            *complete, self._buf = self._buf.split(b"\n")
            yield from complete

    def _record(self, file: Path, raw: bytes) -> Record | None:
        self._line += 1
        data = parse_line(raw)
        return Record(file, self._line, raw, data) if data is not None else None

    def drain(self) -> Iterator[Record]:
        """Everything appended since the last call (history first, with from_start)."""
        while True:
            while self._pending:
                snap = self._pending.pop(0)
                try:
                    for number, raw, _ in snap.lines():
                        data = parse_line(raw)
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
