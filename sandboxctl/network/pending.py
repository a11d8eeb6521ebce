"""Blocking connects the supervisor makes for a caller, finished without blocking it.

The caller's socket is blocking, the supervisor's loop must never be: connect_now makes the
connect with O_NONBLOCK set for the duration (on the open file the caller shares), and a connect
still under way (a slow handshake, a UNIX listener's full backlog) goes to one waiter thread
that polls until it is done and only then answers the caller, with what a blocking connect would
have returned — honouring the caller's SO_SNDTIMEO.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import socket
import struct
import threading
import time

from sandboxctl.network import native
from sandboxctl.record import Record
from sandboxctl.supervise import notify

MAX_PENDING = 256  # blocking connects in progress at once; beyond, EAGAIN


def connect_now(sock: int, raw: bytes, flags: int) -> int:
    """A blocking socket's connect, made without blocking: 0 or the errno, or EINPROGRESS/EALREADY
    while the handshake is under way. On the loopback it is usually done by the time connect
    returns; the second call says so (0 once established: what a blocking connect returns)."""
    fcntl.fcntl(sock, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        result = native.connect(sock, raw)
        if result in (errno.EINPROGRESS, errno.EALREADY):
            result = native.connect(sock, raw)
        return 0 if result == errno.EISCONN else result
    finally:
        fcntl.fcntl(sock, fcntl.F_SETFL, flags)


def _getsockopt(fd: int, option: int, size: int) -> bytes:
    holder = socket.socket(fileno=os.dup(fd))
    try:
        return holder.getsockopt(socket.SOL_SOCKET, option, size)
    finally:
        holder.close()


class _Pending(Record):
    notification_id: int
    sock: int
    raw: bytes
    keep: int  # the socket file raw names (/proc/self/fd/N), or -1
    retry: bool  # a UNIX backlog was full: try again; else wait for the handshake (POLLOUT)
    deadline: float | None  # the caller's SO_SNDTIMEO


class PendingConnects:
    """Finishes blocking connects that could not complete at once, off the supervisor's loop."""

    RETRY_S = 0.02
    SWEEP_S = 1.0

    def __init__(self, listener: int):
        self.listener = listener
        self.entries: dict[int, _Pending] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.wake_r = self.wake_w = -1
        self.stopping = False

    def add(self, notification_id: int, sock: int, raw: bytes, keep: int, *, retry: bool) -> bool:
        """True: the waiter owns sock and keep now. False (too many in flight): the caller got EAGAIN."""
        seconds, micros = struct.unpack("<qq", _getsockopt(sock, socket.SO_SNDTIMEO, 16))
        timeout = seconds + micros / 1e6
        with self.lock:
            if len(self.entries) >= MAX_PENDING or self.stopping:
                notify.respond(self.listener, notification_id, error=errno.EAGAIN)
                return False
            self.entries[sock] = _Pending(notification_id, sock, raw, keep, retry,
                                          time.monotonic() + timeout if timeout > 0 else None)
            if self.thread is None:
                self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                self.thread = threading.Thread(target=self._run, name="sandboxctl-connects", daemon=True)
                self.thread.start()
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"\0")
        return True

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            thread = self.thread
        if thread is not None:
            with contextlib.suppress(OSError):
                os.write(self.wake_w, b"\0")
            thread.join(timeout=5)
            for fd in (self.wake_r, self.wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
        with self.lock:
            for entry in self.entries.values():
                _close(entry)
            self.entries.clear()

    def _run(self) -> None:
        last_sweep = time.monotonic()
        while True:
            with self.lock:
                if self.stopping:
                    return
                entries = list(self.entries.values())
            poller = select.poll()
            poller.register(self.wake_r, select.POLLIN)
            for entry in entries:
                if not entry.retry:
                    poller.register(entry.sock, select.POLLOUT)
            waits = [self.SWEEP_S] + [self.RETRY_S for e in entries if e.retry]
            waits += [max(0.0, e.deadline - time.monotonic()) for e in entries if e.deadline]
            events = dict(poller.poll(min(waits) * 1000))
            if self.wake_r in events:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 512)
            now = time.monotonic()
            for entry in entries:
                if entry.sock in events or entry.retry:
                    try:
                        self._retry(entry)
                    except OSError:  # never leave a caller waiting on us
                        self._finish(entry, errno.EPERM)
                elif entry.deadline is not None and now >= entry.deadline:
                    self._finish(entry, errno.EINPROGRESS)  # what a timed-out blocking connect says
            if now - last_sweep >= self.SWEEP_S:
                last_sweep = now
                for entry in entries:
                    if entry.sock in self.entries and not notify.still_valid(self.listener, entry.notification_id):
                        self._drop(entry)  # the caller was interrupted or killed

    def _retry(self, entry: _Pending) -> None:
        result = connect_now(entry.sock, entry.raw, fcntl.fcntl(entry.sock, fcntl.F_GETFL))
        if result not in (errno.EAGAIN, errno.EINPROGRESS, errno.EALREADY):
            self._finish(entry, result)
        elif entry.deadline is not None and time.monotonic() >= entry.deadline:
            self._finish(entry, errno.EAGAIN if entry.retry else errno.EINPROGRESS)

    def _finish(self, entry: _Pending, result: int) -> None:
        notify.respond(self.listener, entry.notification_id, error=result)
        self._drop(entry)

    def _drop(self, entry: _Pending) -> None:
        with self.lock:
            if self.entries.get(entry.sock) is entry:  # not a newer entry that reuses the number
                del self.entries[entry.sock]
                _close(entry)


def _close(entry: _Pending) -> None:
    os.close(entry.sock)
    if entry.keep >= 0:
        os.close(entry.keep)
