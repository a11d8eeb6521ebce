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
"""

import errno
import os
import select
import signal
import struct


def main() -> None:
    for sig in (signal.SIGTTIN, signal.SIGTTOU, signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_IGN)  # a background read then fails with EIO, never stops us
    epoch, reading = 0, False
    while True:
        ready, _, _ = select.select([0, 3] if reading else [3], [], [])
        if 3 in ready:
            control = os.read(3, 64)
            if not control:
                return  # the supervisor is gone
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


if __name__ == "__main__":
    main()
