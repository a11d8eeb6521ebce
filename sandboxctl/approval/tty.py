"""The terminal front end: one prompt at a time on /dev/tty, single-key answers.

One thread owns the terminal, so concurrent requests queue instead of garbling the screen. The
terminal's mode is saved before each prompt and restored after it (a full-screen program's raw
mode included). The sandboxed command shares the terminal, so what counts as an answer is narrow:

- keys are read only by a helper whose process group is the terminal's foreground one while the
  prompt waits (approval/tty_keys.py): the command cannot read the human's key, nor read a
  terminal report up to its last letter and leave that letter for us;
- a key is one byte read alone, outside every escape sequence, with quiet before and after it
  (approval/keys.py): a terminal's reports, mouse reports and pastes are never an answer;
- before the panel is drawn, the terminal's rendering state and its input reports are reset
  (approval/screen.py), so what the command wrote before cannot hide or restyle the panel.

- while a panel is shown, every process of the sandbox is stopped (supervise/freeze.py, when the
  kernel keeps a request pending through a stop): nothing it writes reaches the screen between the
  panel and the answer, so it cannot draw over the panel. One freeze is held across queued panels.

Without the freeze (a kernel before 5.19: run.start's layers say so) the command may write to the
terminal while the prompt waits and draw over the panel; `approval.via: socket` keeps the prompt
off a shared terminal.
"""

from __future__ import annotations

import contextlib
import os
import select
import termios
import time

from sandboxctl.approval.frontend import ThreadedFrontEnd
from sandboxctl.approval.keys import QUIET_AFTER, QUIET_BEFORE, KeyReader
from sandboxctl.approval.screen import RESET
from sandboxctl.approval.tty_keys import KeySource
from sandboxctl.approval.view import KEYS
from sandboxctl.errors import SandboxError

CTRL_C = 0x03  # with ISIG off during the prompt, Ctrl-C is a key: deny
TAKEN = "tty: the command took the terminal"
UNFROZEN = "tty: the sandbox could not be stopped while it was asked"
READ_TIME = 0.5  # s after a panel appears before a key answers it: nobody reads a panel faster


class TtyFrontEnd(ThreadedFrontEnd):
    name = "tty"

    def __init__(self, device: str = "/dev/tty"):
        super().__init__()
        self.device = device
        self.fd: int | None = None
        self.freeze_with = None  # (init pid, PID namespace, listener): set by the supervisor once the sandbox runs
        self.freezer = None  # supervise.freeze.Freeze, made at the first panel (a run without one pays nothing)

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
        try:
            while not self.stopping:
                pending = self.broker.pending()
                if not pending:
                    self._thaw()  # the queue is empty: the sandbox goes on
                    self._wait(None)
                    continue
                if not self._freeze(pending[0]):
                    continue
                try:
                    self._prompt(pending[0], len(pending) - 1)
                except (OSError, termios.error) as exc:  # the terminal went away: nobody can answer any more
                    reason = exc.strerror if isinstance(exc, OSError) else str(exc.args[-1])
                    self.broker.unavailable = f"terminal lost ({reason})"
                    for request in self.broker.pending():
                        self.broker.answer(request.id, "deny", f"tty: {self.broker.unavailable}")
                    return
        finally:
            self._thaw()  # whatever ended the prompts, nothing stays stopped

    def _freeze(self, request) -> bool:
        """Stop the sandbox before a panel (kept stopped while requests queue). A sandbox that
        cannot be stopped in time is not asked about: what it writes could cover the panel."""
        if self.freezer is None and self.freeze_with is not None:
            from sandboxctl.supervise.freeze import Freeze

            self.freezer = Freeze(*self.freeze_with)
        if self.freezer is None:
            return True
        if self.freezer.hold():
            return True
        self.broker.answer(request.id, "deny", UNFROZEN)
        return False

    def _thaw(self) -> None:
        if self.freezer is not None:
            self.freezer.release()

    def stop(self) -> None:
        super().stop()
        self._thaw()  # the thread did already, unless it is stuck; continuing twice is harmless

    def _wait(self, timeout: float | None) -> list[int]:
        ready, _, _ = select.select([self.wake_r], [], [], timeout)
        if self.wake_r in ready:
            self.drain_wakeups()
        return ready

    def _prompt(self, request, others: int) -> None:
        saved = termios.tcgetattr(self.fd)
        keys = KeySource(self.fd)
        try:
            quiet = list(saved)
            # no echo, no line editing, no signals: Ctrl-C is a key (deny), Ctrl-Z stops nothing
            quiet[3] &= ~(termios.ICANON | termios.ECHO | termios.ISIG)
            quiet[6] = list(saved[6])
            quiet[6][termios.VMIN], quiet[6][termios.VTIME] = 1, 0
            keys.open(saved)  # our key reader holds the terminal: the command's reads stop or fail now
            termios.tcsetattr(self.fd, termios.TCSANOW, quiet)
            termios.tcflush(self.fd, termios.TCIFLUSH)  # keys typed before the question are no answer
            self._show(request, others)
            self._read_answer(request, keys, quiet, time.monotonic())
            if request.answer is None:  # the broker times it out; do not leave the screen waiting
                request.done.wait(max(0.0, request.deadline - time.monotonic()) + 1.0)
            why = " (the command took the terminal while it was asked)" if request.via == TAKEN else ""
            self._write(f"  -> {_outcome(request)}{why}\r\n")
        finally:
            with contextlib.suppress(OSError, termios.error):
                termios.tcsetattr(self.fd, termios.TCSANOW, saved)
            keys.close(continue_groups=self.freezer is None)

    def _read_answer(self, request, keys: KeySource, quiet: list, shown: float) -> None:
        """Until answered or due. A key counts when it is one byte read alone, outside every
        sequence, with quiet before and after it, while our reader held the terminal throughout,
        and not in the first READ_TIME after the panel appeared (it was meant for the one before:
        a key pressed twice or held, or pressed just as the previous request timed out)."""
        reader = KeyReader()
        last_input = float("-inf")  # what came before the question was flushed
        while request.answer is None and not self.stopping:
            left = request.deadline - time.monotonic()
            if left <= 0:
                break
            self._wait(0)  # queue changes (answered elsewhere, the run ends) are seen at the loop's top
            chunk = keys.read(min(left, 0.25))
            if keys.taken:  # the command fights the prompt for the terminal: no answer is trustworthy
                self.broker.answer(request.id, "deny", TAKEN)
                return
            if termios.tcgetattr(self.fd) != quiet:  # the command changed the mode under us
                termios.tcsetattr(self.fd, termios.TCSANOW, quiet)
            if chunk is None:
                keys.ours()
                continue
            now, alone = time.monotonic(), len(chunk) == 1 and reader.idle
            quiet_before = now - last_input >= QUIET_BEFORE
            reader.feed(chunk)
            last_input = now
            if not (alone and reader.idle and quiet_before and now - shown >= READ_TIME):
                continue
            key = "deny" if chunk[0] == CTRL_C else KEYS.get(chunk.decode("latin-1").lower())
            if key and not keys.pending(QUIET_AFTER) and keys.ours():
                self.broker.answer(request.id, key, "tty")

    def _show(self, request, others: int) -> None:
        from sandboxctl.approval.view import render

        text = render(request.to_dict(), others, self.broker.describe.get("policy", ""), _width(self.fd))
        self._write(RESET + "\r\n" + text.replace("\n", "\r\n"))

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
