"""The terminal's keys while a prompt waits, read so that the sandboxed command cannot take them.

The command shares the terminal and, by default, the supervisor's process group: it could read
the key the human types for the prompt, or read a terminal report up to its last byte and leave
that letter ("R", "y") for the prompt. While a prompt waits, a helper process in a group of its
own (approval/key_helper.py) is the terminal's foreground group and its only reader: the
command's reads stop it (SIGTTIN) or fail (EIO).

A command that ignores SIGTTOU can still make a group of its own the foreground one. It cannot
hand the terminal back (our groups have no number in its PID namespace), so what the helper reads
counts only while the helper's group is the foreground one. Each time the supervisor takes the
terminal back, it throws away what is queued and starts a new epoch; whatever was read before
(possibly the tail of a report the command read the head of) is dropped with its epoch.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import struct
import sys
import termios
import time

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "key_helper.py")
JOB_SIGNALS = {signal.SIGTTOU, signal.SIGTTIN}


class KeySource:
    """The helper of one prompt: started in `open`, ended (terminal handed back) in `close`."""

    def __init__(self, tty: int):
        self.tty = tty
        self.pid = 0
        self.frames = -1  # the helper's output
        self.control = -1  # our epoch messages to it
        self.buffer = b""
        self.epoch = 0
        self.before = 0  # the foreground group before the prompt: handed back after it
        self.groups: set[int] = set()  # every foreground group seen: continued after the prompt
        self.job_control = True  # the terminal is our controlling one (always, for /dev/tty)
        self.taken = 0  # how many times the command took the terminal while the prompt waited

    def open(self, saved: list | None = None) -> None:
        """`saved`: the terminal's mode before the prompt, which the helper puts back should we be
        killed before close() (key_helper._restore)."""
        # a thread of ours may change the terminal from a background group (SIGTTOU blocked: the
        # kernel lets it); the command's own tcsetpgrp does not stop this thread then
        signal.pthread_sigmask(signal.SIG_BLOCK, JOB_SIGNALS)
        try:
            self.before = os.tcgetpgrp(self.tty)
            self.groups.add(self.before)
        except OSError as exc:  # not our controlling terminal (a device named for tests): no job control on it
            if exc.errno != errno.ENOTTY:
                raise
            self.job_control = False
        restore: list[str] = []
        if saved is not None:
            cc = [c if isinstance(c, int) else ord(c) for c in (saved[6][termios.VMIN], saved[6][termios.VTIME])]
            restore = [str(self.before), str(saved[3]), *map(str, cc), "job-control" if self.job_control else "none"]
        frames_r, frames_w = os.pipe2(os.O_CLOEXEC)
        control_r, control_w = os.pipe2(os.O_CLOEXEC)
        try:
            self.pid = os.posix_spawn(
                sys.executable, [sys.executable, "-I", "-S", HELPER, *restore], {},
                file_actions=[(os.POSIX_SPAWN_DUP2, self.tty, 0), (os.POSIX_SPAWN_DUP2, frames_w, 1),
                              (os.POSIX_SPAWN_DUP2, control_r, 3)],
                setpgroup=0, setsigmask=())
        finally:
            os.close(frames_w)
            os.close(control_r)
        self.frames, self.control = frames_r, control_w
        self.take_back()

    def take_back(self) -> None:
        """Make the helper's group the foreground one, drop what is queued, start a new epoch."""
        if self.job_control:
            os.tcsetpgrp(self.tty, self.pid)
        termios.tcflush(self.tty, termios.TCIFLUSH)
        self.epoch = (self.epoch + 1) % 256
        os.write(self.control, bytes((self.epoch,)))

    def ours(self) -> bool:
        """Whether the helper's group holds the terminal (else the command took it: taken back)."""
        if not self.job_control:
            return True
        group = os.tcgetpgrp(self.tty)
        if group == self.pid:
            return True
        self.groups.add(group)
        self.taken += 1
        self.take_back()
        return False

    def read(self, timeout: float) -> bytes | None:
        """The next chunk the helper read in the current epoch while it held the terminal; None
        when there was none within `timeout` (or it was dropped). Raises OSError when it is gone."""
        end = time.monotonic() + timeout
        while True:
            frame = self._frame()
            if frame is None:
                left = end - time.monotonic()
                if left <= 0 or not select.select([self.frames], [], [], left)[0]:
                    return None
                data = os.read(self.frames, 65536)
                if not data:
                    raise OSError(5, "the key reader ended")
                self.buffer += data
                continue
            kind, epoch, chunk = frame
            if not self.ours() or epoch != self.epoch:
                continue  # read while the command held the terminal, or before we took it back
            if kind == b"L":  # the helper was refused a read, yet holds the terminal: go on
                self.take_back()
                continue
            return chunk

    def pending(self, timeout: float) -> bool:
        """Whether the helper reads more within `timeout` (left for the next `read`)."""
        if self.buffer:
            return True
        return bool(select.select([self.frames], [], [], timeout)[0])

    def _frame(self) -> tuple[bytes, int, bytes] | None:
        if len(self.buffer) < 4:
            return None
        (length,) = struct.unpack(">H", self.buffer[2:4])
        if len(self.buffer) < 4 + length:
            return None
        frame = (self.buffer[:1], self.buffer[1], self.buffer[4:4 + length])
        self.buffer = self.buffer[4 + length:]
        return frame

    def close(self, continue_groups: bool = True) -> None:
        """Hand the terminal back to the group that had it, and continue every group that held
        it meanwhile (a command stopped by SIGTTIN/SIGTTOU while the prompt waited goes on).
        `continue_groups` False: the sandbox was frozen throughout (supervise/freeze.py), so none
        of it was stopped by the prompt; what is stopped stays so until the freeze ends, and a
        process the command stopped itself is not continued."""
        if self.job_control:
            with contextlib.suppress(OSError):
                os.tcsetpgrp(self.tty, self.before)
        if self.pid:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.waitpid(self.pid, 0)
        for group in self.groups | {os.getpgrp()} if continue_groups else ():
            if group > 0:
                with contextlib.suppress(OSError):
                    os.killpg(group, signal.SIGCONT)
        for fd in (self.frames, self.control):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.frames = self.control = -1
        self.pid = 0
