"""A write-intent open the supervisor performs hands back the file status flags the caller asked
for: it opens O_NONBLOCK (a FIFO swapped in must not hold the listener) and clears it with one
F_SETFL of the flags it opened with, so O_APPEND must survive that and O_NONBLOCK be gone unless
asked. Judged from outside where it can be: the file's bytes on the host."""

from __future__ import annotations

import os

FLAGS = """
import fcntl, os
fd = os.open('log.txt', os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.lseek(fd, 0, os.SEEK_SET)
os.write(fd, b'appended\\n')
flags = fcntl.fcntl(fd, fcntl.F_GETFL)
print('append', bool(flags & os.O_APPEND), 'nonblock', bool(flags & os.O_NONBLOCK))
os.close(fd)
fd = os.open('other.txt', os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK, 0o644)
flags = fcntl.fcntl(fd, fcntl.F_GETFL)
print('asked', bool(flags & os.O_NONBLOCK), 'append', bool(flags & os.O_APPEND))
"""


def test_a_mediated_open_keeps_o_append_and_drops_its_own_o_nonblock(sandbox):
    log = sandbox.workspace / "log.txt"
    log.write_bytes(b"first\n")
    os.chmod(log, 0o666)
    result = sandbox.py(FLAGS, timeout=60)
    assert result.returncode == 0, result.stderr
    assert log.read_bytes() == b"first\nappended\n"  # O_APPEND held: the write went to the end, not offset 0
    assert result.stdout.split() == ["append", "True", "nonblock", "False", "asked", "True", "append", "False"], \
        result.stdout
    records = [r for r in sandbox.records() if r["event"] == "file" and r.get("path", "").endswith("log.txt")]
    assert records and records[0]["rule"] == "writable grant; opened by the supervisor", records
