"""The prompt's key reader, a process of its own: the only reader of the terminal while it asks.

Run as `python -I -S key_helper.py` with the terminal as fd 0, a pipe to the supervisor as fd 1
and the supervisor's control pipe as fd 3, in a process group of its own that the supervisor
makes the terminal's foreground group. The sandboxed command is then in a background group: the
kernel stops it (SIGTTIN) or fails its read (EIO) instead of letting it read the human's key or
the head of a terminal report.

Control: one byte N on fd 3 means "read, tagging what you read with epoch N". Each read is sent
as b"D" + epoch + 2-byte length + the bytes; a read refused because this group is no longer in
the foreground (the command took it back) as b"L" + epoch + b"\\0\\0", and nothing more is read
until the next control byte. Imports nothing of sandboxctl: it starts in a few milliseconds.

Arguments: the foreground group before the prompt and the terminal's mode then (ICANON, ECHO and
ISIG, VMIN, VTIME: what the prompt changes). The supervisor hands both back itself, then kills
this helper; the control pipe ending first means it was killed (SIGKILL) during the prompt, and
the terminal stayed with no echo, no line editing and no Ctrl-C, its foreground a dead group:
the program that ran sandboxctl was stopped at its next read (review rev). The helper then puts
both back before it ends.
"""

import errno
import os
import select
import signal
import struct
import sys
import termios


def main() -> None:
    for sig in (signal.SIGTTIN, signal.SIGTTOU, signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_IGN)  # a background read then fails with EIO, never stops us
    epoch, reading = 0, False
    while True:
        ready, _, _ = select.select([0, 3] if reading else [3], [], [])
        if 3 in ready:
            control = os.read(3, 64)
            if not control:
                _restore(sys.argv[1:])  # the supervisor is gone without handing the terminal back
                return
            epoch, reading = control[-1], True
            continue
        try:
            data = os.read(0, 4096)
        except OSError as exc:
            if exc.errno != errno.EIO:
                return
            os.write(1, b"L" + bytes((epoch,)) + b"\0\0")
            reading = False
            continue
        if not data:
            return
        os.write(1, b"D" + bytes((epoch,)) + struct.pack(">H", len(data)) + data)


def _restore(args: list[str]) -> None:
    """The terminal as it was before the prompt, and its foreground group, if ours still has it."""
    if len(args) != 5:
        return
    group, lflag, vmin, vtime = int(args[0]), int(args[1]), int(args[2]), int(args[3])
    asked = termios.ICANON | termios.ECHO | termios.ISIG
    try:
        mode = termios.tcgetattr(0)
        mode[3] = (mode[3] & ~asked) | (lflag & asked)
        mode[6][termios.VMIN], mode[6][termios.VTIME] = vmin, vtime
        termios.tcsetattr(0, termios.TCSANOW, mode)
    except (OSError, termios.error):
        pass
    if args[4] == "job-control" and group > 0:
        try:
            if os.tcgetpgrp(0) == os.getpgrp():
                os.tcsetpgrp(0, group)
        except OSError:
            pass


if __name__ == "__main__":
    main()
