"""The supervisor's descriptor budget: what it reserves so that a flood never costs a record.

Every log record, every look into a caller's memory (/proc/PID/mem, /proc/PID/root) and every
approval needs a descriptor; so do proxy connections, which a sandbox can open at will. The
supervisor raises its soft RLIMIT_NOFILE to the hard limit at start, and caps concurrent proxy
connections well below it: each may hold six descriptors (client, upstream and a splice pipe
each way), and RESERVE stays free for the log, its forwarders, seccomp notifications, the
approval front ends and the run's own files. A connection beyond the cap gets HTTP 503 (or the
SOCKS failure reply) at once, and is counted, never paid for with a lost record.
"""

from __future__ import annotations

import resource

RESERVE = 256
FDS_PER_CONNECTION = 6
MAX_CONNECTIONS = 256  # enough for any build; more would only be a flood
MIN_CONNECTIONS = 16


def raise_nofile() -> int:
    """Raise the soft descriptor limit to the hard one; returns the limit now in force.
    (The sandboxed command gets its own limit from the plan: the shim sets it.)"""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_cap(limit: int) -> int:
    """Concurrent proxy connections the budget allows under a descriptor limit."""
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, (limit - RESERVE) // FDS_PER_CONNECTION))
