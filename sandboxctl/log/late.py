"""After run.end: whatever still tries to write is refused by the sealed log, and said, never silent.

run.end is a run's last record (log/writer.py `write_last`). What was still running when it was
written is named in run.end itself (`unfinished`); a record such a thread makes afterwards is
refused and counted by the log, and told here: to the run's notice while the run is being
finished (the CLI's stderr, the library's warnings), on stderr once the run has returned. Copies
sent to log.forward targets after run.end are not local records either: a collector that goes
down or comes back then, and what a target never received, are told the same way.
"""

from __future__ import annotations

import sys
import threading

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

MAX_LINES = 20  # then one line says that the rest are refused without a line each


class LateRecords:
    """ActionLog.on_refused for one run: one line per refused record, at most MAX_LINES."""

    def __init__(self, run_id: str, notice: Callable[[str], None] | None = None):
        self.run_id = run_id
        self.notice = notice
        self.count = 0
        self._lock = threading.Lock()

    def refused(self, event: str) -> None:
        with self._lock:
            self.count += 1
            count = self.count
        if count > MAX_LINES:
            return
        text = (f"sandboxctl: run {self.run_id}: a `{event}` record came after run.end and was refused "
                "(it is not in the action log)")
        if count == MAX_LINES:
            text += "; further late records of this run are refused without a line each"
        self.say(text)

    def say(self, text: str) -> None:
        notice = self.notice
        if notice is None:
            print(text, file=sys.stderr, flush=True)
        else:
            notice(text)

    def returned(self) -> None:
        """The run has returned: what comes from now on goes to stderr (nobody reads the notices)."""
        self.notice = None


def unfinished_text(unfinished: dict[str, int]) -> str:
    """One line for what was still running when run.end was written."""
    names = {"notification_thread": "the seccomp notification thread (busy with a call)",
             "proxy_connections": "proxy connection threads", "approval_workers": "file-approval workers"}
    parts = [names.get(key, key) + (f" ({count})" if count > 1 else "") for key, count in unfinished.items()]
    return ("sandboxctl: the run ended while " + ", ".join(parts) + " still ran; run.end is its last record, "
            "so anything they record from now on is refused and reported here")


def close_forwarder(forwarder: Any, timeout: float, say: Callable[[str], None]) -> None:
    """Close a log.forward Forwarder after run.end: its state changes from now on, and what a
    target never received (run.end included), are said instead of recorded."""
    from sandboxctl.inert import inert

    def state(target: str, state: str, reason: str | None = None, lost: int | None = None) -> None:
        said = "came back, its backlog sent," if state == "up" else f"failed ({inert(reason or '')})"
        say(f"sandboxctl: log.forward {inert(target)}: {said} after run.end")

    forwarder.on_state = state
    forwarder.close(timeout)
    for loss in forwarder.losses(pending=True):
        why = f" ({inert(loss['reason'])})" if loss.get("reason") else ""
        say(f"sandboxctl: log.forward {inert(loss['target'])}: {loss['lost']} records, the last ones of the run, "
            f"had not reached it when the run ended{why}; the local action log has them")
