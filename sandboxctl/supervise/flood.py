"""A run may not write so many records that its own first ones leave the action log.

The log keeps `keep` rotated files beside the current one; whoever writes past that pushes the
oldest file out (log/writer.py) — with it a run's run.start, and whatever the run did before it
started to flood. Denials are throttled (denials.py), but allowed records are not: a loop of
execs or writes is one record each, so a command could erase the record of what it did a minute
ago by doing something harmless a million times (or in two runs at once). So after every
rotation the supervisor asks where the file holding its run's first record is now, and stops the
run while that file is still kept: when it has become the oldest kept file but one (one rotation
of margin, for rotations made by other runs between two of ours). A byte count would not do: the
current file may already be full of other runs' records, and concurrent runs add up. With
`log.forward` every record is also kept outside, and the run may go on.
"""

from __future__ import annotations


def guarded(log: object) -> bool:
    """Is there a rotation that could drop this run's first records, and no copy outside?"""
    return getattr(log, "forward", None) is None and bool(getattr(log, "max_bytes", None))


def endangered(age: int | None, keep: int) -> bool:
    """`age`: how many rotations back the file with the run's first record is (None: gone)."""
    return age is None or age >= keep - 1
