"""The socket front end: pending requests served on a UNIX socket for `sandboxctl approve`.

For full-screen agents that own the terminal. The socket lives in the user's runtime dir (0700,
masked inside every sandbox); a peer must be the same user, in our own user and PID namespaces
(a sandboxed process is in neither), or it is dropped before it reads anything.

Wire format: one JSON object per line. The server sends {"run": {...}, "pending": [...]} on
connect and {"pending": [...], "settled": [{"id", "answer", "via"}, ...]} whenever the queue
changes (settled: the last answers, so a client that shows a request learns how it ended); a client sends
{"answer": ID, "choice": once|run|always|deny} and gets {"answered": ID} or {"error": TEXT}.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import struct
from pathlib import Path

from sandboxctl import unixpath
from sandboxctl.approval.frontend import ThreadedFrontEnd
from sandboxctl.errors import SandboxError
from sandboxctl.paths import ensure_private_dir, runtime_dir

MAX_LINE = 1 << 16


def socket_path(run_id: str, directory: Path | None = None) -> Path:
    return Path(directory or runtime_dir()) / f"{run_id}.sock"


def peer_is_outside(conn: socket.socket) -> bool:
    """Same user, and not in a sandbox: a different PID or user namespace than ours is refused."""
    pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    if uid != os.getuid() or pid <= 0:
        return False
    try:
        return all(os.readlink(f"/proc/{pid}/ns/{ns}") == os.readlink(f"/proc/self/ns/{ns}")
                   for ns in ("pid", "user"))
    except OSError:
        return False


class SocketFrontEnd(ThreadedFrontEnd):
    name = "socket"

    def __init__(self, run_id: str, directory: Path | None = None):
        super().__init__()
        self.directory = Path(directory or runtime_dir())
        self.path = socket_path(run_id, self.directory)
        self.listener: socket.socket | None = None
        self.clients: dict[socket.socket, bytes] = {}

    def _open(self) -> None:
        try:
            ensure_private_dir(self.directory)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            old = os.umask(0o177)
            try:
                unixpath.bind(listener, str(self.path))
            finally:
                os.umask(old)
            listener.listen(8)
        except OSError as exc:
            raise SandboxError(f"approval via socket: cannot listen on {self.path}: {exc.strerror or exc}",
                               "check XDG_RUNTIME_DIR, or set approval.via: tty") from None
        self.listener = listener

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        for sock in [*self.clients, *([self.listener] if self.listener else [])]:
            sock.close()
        self.clients.clear()

    # ------------------------------------------------------------------ the thread
    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, "accept")
        sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self.stopping:
                for key, _ in sel.select(1.0):
                    if key.data == "accept":
                        self._accept(sel)
                    elif key.data == "wake":
                        self.drain_wakeups()
                        self._broadcast(sel)
                    else:
                        self._on_client(key.fileobj, sel)
            # the run is ending: an answer settled since the last wake-up is still told, so a live
            # view says how its request ended ("answered in another window") and not just "ended"
            self.drain_wakeups()
            self._broadcast(sel)
        finally:
            sel.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        if not peer_is_outside(conn):
            conn.close()
            return
        conn.setblocking(False)
        self.clients[conn] = b""
        sel.register(conn, selectors.EVENT_READ, "client")
        self._send(conn, {"run": self.broker.describe, "pending": self._pending()}, sel)

    def _pending(self) -> list[dict]:
        return [r.to_dict() for r in self.broker.pending()]

    def _broadcast(self, sel: selectors.BaseSelector) -> None:
        message = {"pending": self._pending(), "settled": self.broker.settled()}
        for conn in list(self.clients):
            self._send(conn, message, sel)

    def _send(self, conn: socket.socket, message: dict, sel: selectors.BaseSelector) -> None:
        try:
            conn.settimeout(2.0)  # a client that does not read is dropped, never waited on forever
            conn.sendall(json.dumps(message).encode() + b"\n")
            conn.setblocking(False)
        except OSError:
            self._drop(conn, sel)

    def _drop(self, conn: socket.socket, sel: selectors.BaseSelector) -> None:
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(conn)
        self.clients.pop(conn, None)
        conn.close()

    def _on_client(self, conn: socket.socket, sel: selectors.BaseSelector) -> None:
        try:
            data = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn, sel)
            return
        buffer = self.clients[conn] + data
        if len(buffer) > MAX_LINE:
            self._drop(conn, sel)
            return
        *lines, self.clients[conn] = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self._send(conn, self._handle(line), sel)

    def _handle(self, line: bytes) -> dict:
        try:
            message = json.loads(line)
            request_id, choice = str(message["answer"]), str(message["choice"])
        except (ValueError, KeyError, TypeError):
            return {"error": 'expected {"answer": ID, "choice": once|run|always|deny}'}
        problem = self.broker.answer(request_id, choice, "socket")
        return {"error": problem} if problem else {"answered": request_id, "choice": choice}
