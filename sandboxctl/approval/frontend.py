"""What the two front ends share: a thread of their own, woken through a pipe when the queue changes."""

from __future__ import annotations

import contextlib
import os
import threading


class ThreadedFrontEnd:
    """Subclasses open their channel in `_open` (raising SandboxError when they cannot serve),
    serve from `_serve` until `self.stopping`, and release it in `_close`."""

    name = "front end"

    def __init__(self) -> None:
        self.broker = None
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.wake_r, self.wake_w = -1, -1

    def start(self, broker) -> None:
        self.broker = broker
        self._open()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.thread = threading.Thread(target=self._serve, name=f"sandboxctl-approval-{self.name}", daemon=True)
        self.thread.start()

    def changed(self) -> None:
        if self.wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self.wake_w, b"x")

    def drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.wake_r, 512)

    def stop(self) -> None:
        self.stopping = True
        self.changed()
        if self.thread is not None:
            self.thread.join(timeout=2.0)
        self._close()
        for fd in (self.wake_r, self.wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.wake_r = self.wake_w = -1

    def _open(self) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError
