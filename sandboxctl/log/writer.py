"""Append records to the action log: one write() per record under an exclusive flock.

The lock covers reading the previous line's hash and appending the new line, so parallel runs
sharing a log never interleave and the chain stays intact. The file is 0600 in a 0700 dir and is
masked inside every sandbox.
"""

from __future__ import annotations

import fcntl
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sandboxctl.errors import SandboxError
from sandboxctl.log.chain import GENESIS, last_line, line_hash


class LogWriteError(SandboxError):
    pass


def timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ActionLog:
    def __init__(self, path: str, run_id: str, redact: tuple[str, ...] = ()):
        self.path = path
        self.run_id = run_id
        self.seq = 0
        self.redact = tuple(v for v in redact if v)
        self._known: tuple[int, str] | None = None  # (file size, hash of last line) after our write
        directory = Path(path).parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise LogWriteError(f"cannot open the action log {path}: {exc.strerror}",
                                "pass --log PATH to a writable place") from None
        st = os.fstat(self.fd)
        if st.st_uid != os.getuid():
            raise LogWriteError(f"the action log {path} belongs to another user", "pass --log PATH")
        if st.st_mode & 0o077:
            os.fchmod(self.fd, 0o600)

    def _prev(self) -> str:
        size = os.fstat(self.fd).st_size
        if self._known and self._known[0] == size:
            return self._known[1]
        line = last_line(self.fd)
        return GENESIS if line is None else line_hash(line)

    def _scrub(self, text: str) -> str:
        for value in self.redact:
            text = text.replace(json.dumps(value)[1:-1], "***").replace(value, "***")
        return text

    def write(self, event: str, **fields: Any) -> None:
        record = {"ts": timestamp(), "run": self.run_id, "seq": self.seq, "event": event, **fields}
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            try:
                record["prev"] = self._prev()
                data = (self._scrub(json.dumps(record, separators=(",", ":"), default=str)) + "\n").encode()
                written = os.write(self.fd, data)
                if written != len(data):
                    raise OSError(28, "short write (disk full?)")
                self._known = (os.fstat(self.fd).st_size, line_hash(data))
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        except OSError as exc:
            raise LogWriteError(f"cannot write the action log {self.path}: {exc.strerror}",
                                "free some space or pass --log PATH; the run was stopped") from None
        self.seq += 1

    def close(self) -> None:
        os.close(self.fd)
