"""The run's denials as people read them: identical ones collapsed into one row with a count.

The supervisor keeps every denial in time order (the library's `result.denials` and the log's
`run.end` count are complete); the end-of-run table, the CI annotations and --summary-json show
each distinct (kind, target, rule) once, with how many times it happened.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any


def collapse(denials: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per distinct (kind, target, rule), in order of first appearance, with `count`."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for denial in denials:
        key = (str(denial.get("kind")), str(denial.get("target")), str(denial.get("rule")))
        row = rows.get(key)
        if row is None:
            rows[key] = {"kind": denial.get("kind"), "target": denial.get("target"), "rule": denial.get("rule"),
                         "count": int(denial.get("count", 1))}
        else:
            row["count"] += int(denial.get("count", 1))
    return list(rows.values())


def total(denials: Iterable[dict[str, Any]]) -> int:
    """How many denials the entries stand for (a collapsed proxy burst counts each connection)."""
    return sum(int(d.get("count", 1)) for d in denials)


KEEP = 20  # identical denials kept (and logged) one by one before they are only counted
MAX_KEYS = 4096  # distinct denials kept apart before the rest are counted by kind and rule


def _key(denial: dict[str, Any]) -> tuple[str, str, str]:
    return (str(denial.get("kind")), str(denial.get("target")), str(denial.get("rule")))


class DenialList(list):
    """The run's denials, bounded: the first KEEP of each distinct denial one by one, then one
    entry that counts the rest (a loop refusing thousands of calls a second must not grow the
    supervisor without bound). `total()` of it is still every denial. Appended from several
    threads at once (the notification thread, file-escape and proxy threads, FIFO waiters): each
    append is one step under a lock, or two could count one denial, or both add the repeat row."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[tuple[str, str, str], int] = {}
        self.repeats: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.lock = threading.Lock()

    def append(self, denial: dict[str, Any]) -> None:  # type: ignore[override]
        with self.lock:
            self._append(denial)

    def _append(self, denial: dict[str, Any]) -> None:
        key = _key(denial)
        if key not in self.seen and len(self.seen) >= MAX_KEYS:
            key = (key[0], "… (many more targets)", key[2])
            denial = {"kind": key[0], "target": key[1], "rule": key[2], "count": int(denial.get("count", 1))}
        seen = self.seen.get(key, 0)
        self.seen[key] = seen + 1
        if seen < KEEP:
            super().append(denial)
            return
        repeat = self.repeats.get(key)
        if repeat is None:
            repeat = self.repeats[key] = {"kind": key[0], "target": key[1], "rule": key[2], "count": 0,
                                          "repeated": True}
            super().append(repeat)
        repeat["count"] += int(denial.get("count", 1))


class LogThrottle:
    """Identical denial records after the first KEEP are counted, not written; `pending()` gives
    one summary record per such denial (written before run.end), so the log stays bounded and
    still says how many there were."""

    def __init__(self) -> None:
        self.seen: dict[tuple, int] = {}
        self.suppressed: dict[tuple, tuple[str, dict[str, Any], int]] = {}

    def admit(self, event: str, fields: dict[str, Any]) -> bool:
        # an approval answered deny (mode: deny, or a timeout) is a denial too: unthrottled, a loop
        # of denied opens wrote one record each and could rotate every earlier record out of the log
        refused = fields.get("decision") == "deny" or (event == "approval" and fields.get("answer") in DENYING)
        if not refused:
            return True
        key = (event, fields.get("path") or fields.get("host") or fields.get("name") or fields.get("target"),
               fields.get("op"), fields.get("port"), fields.get("rule"))
        if key not in self.seen and len(self.seen) >= MAX_KEYS:
            key = (event, *OVERFLOW[1:-1], fields.get("rule"))
        count = self.seen.get(key, 0)
        self.seen[key] = count + 1
        if count < KEEP:
            return True
        first = self.suppressed.get(key)
        if first is None:  # what the summary record will say: past MAX_KEYS, not whose target it is
            kept = dict(fields)
            if key[1] == OVERFLOW[1]:
                for name in TARGET_FIELDS:
                    if name in kept:
                        kept[name] = OVERFLOW[1]
                kept.pop("op", None)
                kept.pop("port", None)
            first = (event, kept, 0)
        self.suppressed[key] = (event, first[1], first[2] + 1)
        return False

    def pending(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for event, fields, count in self.suppressed.values():
            if any(fields.get(name) == OVERFLOW[1] for name in TARGET_FIELDS):
                note = (f"{count} more denials of other targets (past {MAX_KEYS} distinct ones the targets are not "
                        "kept), not written one by one")
            else:
                note = f"{count} more identical denials, not written one by one"
            out.append((event, {**fields, "repeated": count, "note": note}))
        self.suppressed.clear()
        return out


DENYING = ("deny", "timeout")  # approval answers that refuse
TARGET_FIELDS = ("path", "host", "name", "target")
OVERFLOW = ("", "… (many more targets)", None, None, "")  # the key, and the target shown, past MAX_KEYS
