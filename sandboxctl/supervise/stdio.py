"""The command's standard streams: the caller's own descriptors, or pipes served by a loop.

The CLI hands the command its own stdin, stdout and stderr (the command shares the terminal).
The library captures instead: input is fed through a pipe, output is read from pipes, kept for
the result and passed to stream callbacks as it arrives. The supervisor's event loop (or the
library's, for a session command) registers the parent ends and calls `handle` when one is ready.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import time
from collections.abc import Callable

CHUNK = 65536
Sink = Callable[[bytes], None]


class CommandIO:
    """One command's stdio. `inherit=True`: the caller's 0, 1, 2, nothing to serve."""

    def __init__(self, *, input: bytes | None = None, on_stdout: Sink | None = None,
                 on_stderr: Sink | None = None, capture: bool = True, inherit: bool = False):
        self.inherit = inherit
        self.input = memoryview(input) if input is not None else None
        self.sinks = {1: on_stdout, 2: on_stderr}
        self.capture = capture
        self.chunks: dict[int, list[bytes]] = {1: [], 2: []}
        self.child: dict[int, int] = {}  # 0/1/2 -> the descriptor the command gets
        self.parent: dict[int, int] = {}  # our end -> which stream (0: we write, 1/2: we read)

    # ------------------------------------------------------------------ descriptors
    def child_fds(self) -> tuple[int, int, int]:
        """The descriptors the command gets as 0, 1, 2 (made on first call)."""
        if self.inherit:
            return 0, 1, 2
        if not self.child:
            if self.input is None:
                self.child[0] = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            else:
                read, write = os.pipe2(os.O_CLOEXEC)
                os.set_blocking(write, False)
                self.child[0], self.parent[write] = read, 0
            for stream in (1, 2):
                if self.capture or self.sinks[stream] is not None:
                    read, write = os.pipe2(os.O_CLOEXEC)
                    self.child[stream], self.parent[read] = write, stream
                else:
                    self.child[stream] = os.dup(stream)  # not kept: the caller's own stream
                    os.set_inheritable(self.child[stream], False)
        return self.child[0], self.child[1], self.child[2]

    def close_child_ends(self) -> None:
        """After the command has its copies: otherwise our copy of a write end keeps EOF away."""
        for fd in self.child.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.child = {}

    def register(self, sel: selectors.BaseSelector) -> None:
        for fd, stream in self.parent.items():
            sel.register(fd, selectors.EVENT_WRITE if stream == 0 else selectors.EVENT_READ, "io")

    # ------------------------------------------------------------------ serving
    def handle(self, fd: int, sel: selectors.BaseSelector | None) -> None:
        """One ready descriptor: feed input, or take output."""
        stream = self.parent.get(fd)
        if stream is None:
            return
        if stream == 0:
            self._feed(fd, sel)
        else:
            self._take(fd, stream, sel)

    def _feed(self, fd: int, sel: selectors.BaseSelector | None) -> None:
        try:
            written = os.write(fd, self.input[:CHUNK]) if self.input else 0
        except BlockingIOError:
            return
        except OSError:  # the command closed its stdin (EPIPE): the rest is not wanted
            written = len(self.input or b"")
        self.input = self.input[written:] if self.input is not None else None
        if not self.input:
            self._done(fd, sel)

    def _take(self, fd: int, stream: int, sel: selectors.BaseSelector | None) -> bool:
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self._done(fd, sel)
            return False
        self.emit(stream, data)
        return True

    def emit(self, stream: int, data: bytes) -> None:
        """Output of the command's stream 1 or 2 (also bubblewrap's own late messages, for 2)."""
        if self.inherit:
            os.write(stream, data)
            return
        if self.capture:
            self.chunks[stream].append(data)
        sink = self.sinks[stream]
        if sink is not None:
            sink(data)

    def _done(self, fd: int, sel: selectors.BaseSelector | None) -> None:
        if sel is not None:
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(fd)
        self.parent.pop(fd, None)
        with contextlib.suppress(OSError):
            os.close(fd)

    def drain(self, grace: float = 2.0, wait_for_eof: bool = True) -> None:
        """After the command ended: the rest of its output. With wait_for_eof, until every writer
        is gone (a dead sandbox: quick); without, only what is already in the pipes (a session
        command whose background children may hold the pipe open)."""
        import select

        self.input = None
        for fd, stream in list(self.parent.items()):
            if stream == 0:
                self._done(fd, None)
        end = time.monotonic() + grace
        while self.parent:
            readers = list(self.parent)
            timeout = max(0.0, end - time.monotonic()) if wait_for_eof else 0.0
            ready, _, _ = select.select(readers, [], [], timeout)
            if not ready or time.monotonic() > end:
                break
            for fd in ready:
                os.set_blocking(fd, False)
                self._take(fd, self.parent[fd], None)
        for fd in list(self.parent):
            self._done(fd, None)

    def close(self) -> None:
        self.close_child_ends()
        for fd in list(self.parent):
            self._done(fd, None)

    def output(self, stream: int) -> bytes:
        return b"".join(self.chunks[stream])
