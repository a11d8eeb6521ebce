"""A process that outlives a killed supervisor just long enough to clean up after it.

It holds the read end of a pipe; the supervisor writes "done" once it cleaned up itself. End of
file without it means the supervisor died (SIGKILL, OOM): the watchdog then runs `cleanup`.
Forked before any thread exists; in a session of its own with the usual signals ignored, so a
terminal's Ctrl-C or a process group's signal misses it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable

IGNORED = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE,
           signal.SIGUSR1, signal.SIGUSR2)


class Watchdog:
    def __init__(self, cleanup: Callable[[], object]):
        read, self.write_fd = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(self.write_fd)
                os.setsid()
                for signum in IGNORED:
                    signal.signal(signum, signal.SIG_IGN)
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.closerange(3, read)
                os.closerange(read + 1, 65536)
                message = b""
                while chunk := os.read(read, 16):  # EINTR is retried by Python (PEP 475)
                    message += chunk
                if message != b"done":
                    cleanup()
            except BaseException:
                pass
            os._exit(0)
        os.close(read)

    def done(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.write_fd, b"done")
        with contextlib.suppress(OSError):
            os.close(self.write_fd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
