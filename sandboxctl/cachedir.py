"""The state dir's cache forgets what nobody used for a month.

Its entries (a workspace's tree index, a parsed policy, a compiled seccomp program) only save
time: a missing one is made again. They were never removed, and one workspace's index can weigh
tens of megabytes (58 MB for a /tmp holding 2000 repositories). A reader marks the entry it used
(its mtime, at most once a day: one utime), and a writer, at most once a day, removes the entries
left unused for UNUSED_S. Remembered launches prune themselves (launch/headstart.py), and the
compiled shim is never removed here (a run binds it into its sandbox).
"""

from __future__ import annotations

import contextlib
import os
import time

UNUSED_S = 30 * 86400
DAY_S = 86400
STAMP = ".pruned"
PRUNED_PREFIXES = ("tree-", "policy-", "seccomp-")


def mark_used(path: str | os.PathLike, mtime: float) -> None:
    if mtime < time.time() - DAY_S:
        with contextlib.suppress(OSError):
            os.utime(path)


def prune_daily(cache_dir: str | os.PathLike) -> None:
    """Remove the entries (and leftover temporaries) unused for UNUSED_S, once a day at most."""
    now = time.time()
    stamp = os.path.join(cache_dir, STAMP)
    try:
        if os.stat(stamp).st_mtime > now - DAY_S:
            return
    except FileNotFoundError:
        pass
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.close(os.open(stamp, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
        os.utime(stamp)
    with contextlib.suppress(OSError), os.scandir(cache_dir) as listing:
        for entry in listing:
            if not entry.name.lstrip(".").startswith(PRUNED_PREFIXES):
                continue
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if st.st_mtime < now - UNUSED_S:
                    os.unlink(entry.path)
