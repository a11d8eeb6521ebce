"""Rotating the action log by size (log/writer.py calls it under the log's exclusive lock).

The record that would push the file past `max_bytes` is written first into a fresh file
(`<log>.new`), whose `prev` is the hash of the old file's last line; then `<log>.N` shift up (at
most `keep` are kept), the old file is hard-linked to `<log>.1` and the fresh file is renamed over
`<log>`. The path therefore always names a complete log, and the chain verifies across files
(log.verify walks `<log>.N` ... `<log>.1`, `<log>`). Readers take a shared flock on `<log>` while
they list and open the files, so they never see the names half-shifted. Imported only when a file
is full: a run seldom rotates.
"""

from __future__ import annotations

import contextlib
import os

from sandboxctl.log.writer import _OPEN_FLAGS


def rotated_name(path: str, n: int) -> str:
    return f"{path}.{n}"


def rotate(path: str, keep: int, data: bytes) -> int:
    """With the lock held on the file `path` names: `data` (chaining onto its last line) becomes
    the first line of a fresh file that takes the path; returns the fresh file's descriptor."""
    fresh = f"{path}.new"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(fresh)  # left over from a writer that died mid-rotation
    fd = os.open(fresh, _OPEN_FLAGS | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(28, "short write (disk full?)")
        # shift .1 .. .m up by one, where .m+1 is free or the one dropped (.keep is overwritten)
        top = 0
        while top < keep - 1 and os.path.lexists(rotated_name(path, top + 1)):
            top += 1
        for n in range(top, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.rename(rotated_name(path, n), rotated_name(path, n + 1))
        first = rotated_name(path, 1)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(first)  # only when keep == 1
        try:
            os.link(path, first)
            linked = True
        except OSError:
            linked = False  # no hard links here (some FUSE/network filesystems)
        try:
            if not linked:  # then the path is briefly missing; writers opening it then lose a race
                os.rename(path, first)
            os.rename(fresh, path)  # with the link first, this is atomic: the path never goes missing
        except OSError:
            with contextlib.suppress(OSError):
                if linked:
                    os.unlink(first)
                elif not os.path.exists(path):
                    os.rename(first, path)
            raise
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(fresh)
        raise
    return fd


def file_age(path: str, keep: int, identity: tuple[int, int]) -> int | None:
    """How many rotations back the file `identity` (dev, ino) is: 0 the current file, `keep` the
    oldest kept; None when it is no longer kept."""
    for age in range(keep + 1):
        try:
            st = os.stat(rotated_name(path, age) if age else path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == identity:
            return age
    return None
