"""Red team rt6: O_TRUNC done by the supervisor after judging (rt5) must truncate exactly where
the kernel would. Judged from outside: the file's bytes on the host."""

from __future__ import annotations

import os

PATH_OPEN = """
import fcntl, os
fd = os.open('data', os.O_PATH | os.O_WRONLY | os.O_TRUNC)
print('flags', fcntl.fcntl(fd, fcntl.F_GETFL) & (os.O_PATH | os.O_ACCMODE))
"""


def test_an_o_path_open_with_o_trunc_truncates_nothing(sandbox):
    """open(O_PATH|O_WRONLY|O_TRUNC): the kernel ignores every flag but O_PATH (and O_DIRECTORY,
    O_NOFOLLOW, O_CLOEXEC) — no write access, nothing truncated. The supervisor performed it as
    a write open, took O_PATH off and truncated the file (its bytes gone on the host), and handed
    back a writable descriptor. An O_PATH open is the kernel's."""
    data = sandbox.workspace / "data"
    data.write_bytes(b"keep me\n")
    os.chmod(data, 0o666)
    result = sandbox.py(PATH_OPEN, timeout=60)
    assert result.returncode == 0, result.stderr
    assert data.read_bytes() == b"keep me\n"
    assert result.stdout.split() == ["flags", str(os.O_PATH | os.O_RDONLY)], result.stdout
