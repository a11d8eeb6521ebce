"""A run may not write more records than the action log keeps of it.

The log keeps `keep` rotated files of `max_bytes` beside the current one; a run that writes more
pushes its own first records out (log/writer.py) — the run.start, and whatever it did before it
started to flood. Denials are throttled (denials.py), but allowed records are not: a loop of
execs or writes is one record each, so a command could erase the record of what it did a
minute ago by doing something harmless a million times. A run is stopped when its records reach
half of what the log keeps (the other half leaves room for other runs writing meanwhile), unless
every record is also forwarded (`log.forward`): a copy outside keeps them all, and the run may go
on.
"""

from __future__ import annotations

SHARE = 2  # one run may fill 1/SHARE of the kept files


def budget(log: object) -> int | None:
    """Bytes of records this run may write; None: no bound (no rotation, or forwarded records)."""
    if getattr(log, "forward", None) is not None or not getattr(log, "max_bytes", None):
        return None
    return (getattr(log, "keep", 0) + 1) * getattr(log, "max_bytes", 0) // SHARE
