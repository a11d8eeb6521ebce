"""The state dir's cache forgets what nobody used for a month.

Its entries (a workspace's tree index, a parsed policy, a compiled seccomp program) only save
time: a missing one is made again. They were never removed, and one workspace's index can weigh
tens of megabytes (58 MB for a /tmp holding 2000 repositories). A reader marks the entry it used
(its mtime, at most once a day: one utime), and a writer, at most once a day, removes the entries
left unused for UNUSED_S. Remembered launches (launch/headstart.py) are pruned by count instead,
with the same prune() as each one is written, and the compiled shim is never removed here (a run
binds it into its sandbox).
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
    prune(cache_dir, PRUNED_PREFIXES, unused_before=now - UNUSED_S)


def prune(cache_dir: str | os.PathLike, prefixes: tuple[str, ...], *, keep: int | None = None,
          unused_before: float | None = None) -> None:
    """Remove the entries named by prefixes (past leading dots: a writer's leftover temporaries)
    beyond the `keep` last used, and those not used (mtime) since `unused_before`. Entries are
    only saved time: one that vanished or cannot be removed is simply left (to the next prune)."""
    try:
        with os.scandir(cache_dir) as listing:
            named = [entry for entry in listing if entry.name.lstrip(".").startswith(prefixes)]
    except OSError:
        return
    if unused_before is None and (keep is None or len(named) <= keep):
        return  # nothing to look at: not even a stat (the head start prunes as it writes)
    entries: list[tuple[float, str]] = []
    for entry in named:
        with contextlib.suppress(OSError):
            entries.append((entry.stat(follow_symlinks=False).st_mtime, entry.path))
    entries.sort()  # least recently used first
    excess = max(0, len(entries) - keep) if keep is not None else 0
    doomed = [path for at, (mtime, path) in enumerate(entries)
              if at < excess or (unused_before is not None and mtime < unused_before)]
    for path in doomed:
        with contextlib.suppress(OSError):
            os.unlink(path)
