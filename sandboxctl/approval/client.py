"""The other end of the approval sockets: what `sandboxctl approve` uses to list and answer."""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path
from typing import Any

from sandboxctl import unixpath
from sandboxctl.paths import runtime_dir


class RunConnection:
    """One running sandbox's approval socket: its description and its pending requests."""

    def __init__(self, path: Path, timeout: float = 2.0):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        unixpath.connect_own(self.sock, str(path))  # another user's socket is never listed nor answered
        self.buffer = b""
        first = self.read()
        if first is None:
            raise ConnectionError("the run closed the connection")
        self.run: dict[str, Any] = first.get("run") or {}
        self.pending: list[dict[str, Any]] = first.get("pending") or []
        self.settled: dict[str, dict[str, Any]] = {}  # request id -> how it was answered (the last few)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> dict[str, Any] | None:
        """The next message (blocking up to the timeout); None when the run is gone."""
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        message = json.loads(line)
        if "pending" in message:
            self.pending = message["pending"]
        for item in message.get("settled") or ():
            if isinstance(item, dict) and "id" in item:
                self.settled[str(item["id"])] = item
        return message

    def answer(self, request_id: str, choice: str) -> str | None:
        """Send an answer; returns the run's error message, or None when it was taken."""
        self.sock.sendall(json.dumps({"answer": request_id, "choice": choice}).encode() + b"\n")
        while True:
            message = self.read()
            if message is None:
                return "the run ended"
            if "answered" in message:
                return None
            if "error" in message:
                return str(message["error"])

    def close(self) -> None:
        self.sock.close()


def connect_all(directory: Path | None = None) -> list[RunConnection]:
    """Every live run's socket; a stale one (its run was killed) is removed on the way."""
    found = []
    base = Path(directory or runtime_dir())
    try:
        paths = sorted(base.glob("*.sock"))
    except OSError:
        paths = []
    for path in paths:
        try:
            found.append(RunConnection(path))
        except ConnectionRefusedError:
            with contextlib.suppress(OSError):
                path.unlink()
        except (OSError, ValueError):
            continue
    return found
