"""The terminal front end: one prompt at a time on /dev/tty, single-key answers.

One thread owns the terminal, so concurrent requests queue instead of garbling the screen. The
terminal's mode is saved before each prompt and restored after it (a full-screen program's raw
mode included). Keys come from the controlling terminal, which the supervisor reads itself: the
sandboxed command shares the terminal but cannot answer on our behalf by writing to it — output
never turns into our input. (It can read keys typed while a prompt waits: `approval.via: socket`
keeps the prompt off a terminal that a full-screen agent owns.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import termios
import time

from sandboxctl.approval.frontend import ThreadedFrontEnd
from sandboxctl.approval.keys import QUIET_AFTER, QUIET_BEFORE, KeyReader
from sandboxctl.approval.view import KEYS
from sandboxctl.errors import SandboxError


class TtyFrontEnd(ThreadedFrontEnd):
    name = "tty"

    def __init__(self, device: str = "/dev/tty"):
        super().__init__()
        self.device = device
        self.fd: int | None = None

    def _open(self) -> None:
        try:
            self.fd = os.open(self.device, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as exc:
            raise SandboxError(f"approval via tty: cannot open {self.device}: {exc.strerror}",
                               "run in a terminal, set approval.via: socket, or pass --approve deny") from None

    def _close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        self.fd = None

    # ------------------------------------------------------------------ the thread
    def _serve(self) -> None:
        while not self.stopping:
            pending = self.broker.pending()
            if not pending:
                self._wait(None)
                continue
            try:
                self._prompt(pending[0], len(pending) - 1)
            except OSError as exc:  # the terminal went away: nobody can answer any more
                self.broker.unavailable = f"terminal lost ({exc.strerror})"
                for request in self.broker.pending():
                    self.broker.answer(request.id, "deny", f"tty: {self.broker.unavailable}")
                return

    def _wait(self, timeout: float | None) -> list[int]:
        ready, _, _ = select.select([self.wake_r, self.fd] if timeout is not None else [self.wake_r], [], [],
                                    timeout)
        if self.wake_r in ready:
            self.drain_wakeups()
        return ready

    def _prompt(self, request, others: int) -> None:
        saved = termios.tcgetattr(self.fd)
        try:
            quiet = list(saved)
            quiet[3] &= ~(termios.ICANON | termios.ECHO)
            quiet[6] = list(saved[6])
            quiet[6][termios.VMIN], quiet[6][termios.VTIME] = 1, 0
            termios.tcsetattr(self.fd, termios.TCSANOW, quiet)
            termios.tcflush(self.fd, termios.TCIFLUSH)  # keys typed before the question are no answer
            self._show(request, others)
            reader = KeyReader()
            last_input = float("-inf")  # what came before the question was flushed
            while request.answer is None and not self.stopping:
                left = request.deadline - time.monotonic()
                if left <= 0:
                    break
                if self.fd in self._wait(min(left, 0.5)):
                    chunk = os.read(self.fd, 4096)
                    if not chunk:
                        raise OSError(errno.EIO, "end of input")
                    now, alone = time.monotonic(), len(chunk) == 1 and reader.idle
                    quiet_before = now - last_input >= QUIET_BEFORE
                    reader.feed(chunk)
                    last_input = now
                    key = KEYS.get(chunk.decode("latin-1").lower()) if alone and reader.idle else None
                    if key and quiet_before and not self._more_input(QUIET_AFTER):
                        self.broker.answer(request.id, key, "tty")
            if request.answer is None:  # the broker times it out; do not leave the screen waiting
                request.done.wait(max(0.0, request.deadline - time.monotonic()) + 1.0)
            self._write(f"  -> {_outcome(request)}\r\n")
        finally:
            termios.tcsetattr(self.fd, termios.TCSANOW, saved)

    def _more_input(self, timeout: float) -> bool:
        """Whether more input arrives within `timeout` (it is left for the next read)."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        return bool(ready)

    def _show(self, request, others: int) -> None:
        from sandboxctl.approval.view import render

        text = render(request.to_dict(), others, self.broker.describe.get("policy", ""), _width(self.fd))
        self._write("\r\n" + text.replace("\n", "\r\n"))

    def _write(self, text: str) -> None:
        data = text.encode()
        while data:
            written = os.write(self.fd, data)
            data = data[written:]


def _outcome(request) -> str:
    from sandboxctl.approval.view import outcome

    return outcome(request.answer)


def _width(fd: int) -> int:
    try:
        return max(40, min(100, os.get_terminal_size(fd).columns))
    except OSError:
        return 80
