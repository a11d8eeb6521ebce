"""The run's records: one lock for every writer, the throttle, the flood guard, fail closed.

Part of the Supervisor (runner.py). The loop, the notification thread, the proxy's threads and
the log's own thread (queued exec records) all write here; a record that cannot be written, or
a run whose records would push its own first ones out of the rotated log (flood.py), stops the
sandbox rather than letting it go on unobserved.
"""

from __future__ import annotations

from sandboxctl.errors import SandboxError
from sandboxctl.log.writer import LogWriteError
from sandboxctl.supervise import flood

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any


class RunLog:
    """Writing the run's records (a mixin of runner.Supervisor)."""

    def _write_log(self, event: str, **fields: Any) -> None:
        """Proxy threads and the loop share the log; one lock keeps seq and the chain in order.
        A write failure stops the sandbox rather than letting it go on unobserved."""
        self._annotate(event, fields)
        try:
            with self.log_lock:
                if self.throttle.admit(event, fields):
                    self.log.write(event, **fields)
                self._check_flood()
        except LogWriteError:
            self._log_failed()

    def _write_record(self, event: str, **fields: Any) -> None:
        """A record that must be written, not throttled (run.start, secret injections, the OOM
        kill), under the same lock as every other writer of the run: between a record's `ts` and
        its place in the file no other record comes (a queued exec record keeps the `ts` of when
        it was queued, under this lock). LogWriteError is the caller's to handle."""
        with self.log_lock:
            self.log.write(event, **fields)

    def _write_log_soon(self, event: str, **fields: Any) -> None:
        """The exec path's records: queued for the log's thread (ActionLog.write_soon), so the
        kernel's next call is not kept waiting for the disk; order and chain are the log's care.
        When the log's thread is behind, write_soon writes the record here (its queue is bounded):
        a rotation that made is looked at at once, as after a write()."""
        self._annotate(event, fields)
        try:
            with self.log_lock:
                if self.throttle.admit(event, fields):
                    self.log.write_soon(event, **fields)
                self._check_flood()
        except LogWriteError:
            self._log_failed()

    def _annotate(self, event: str, fields: dict[str, Any]) -> None:
        """Fields a record gets while what it names is still there (a session: the command)."""

    def _after_queued(self) -> None:
        """The log's thread wrote a queued record that rotated the log (see flood.py)."""
        try:
            with self.log_lock:
                self._check_flood()
        except LogWriteError:
            self._log_failed()

    def _check_flood(self) -> None:
        """With log_lock held, after a write."""
        if self.log_guarded and self.log_flooded is None and self.log.rotations != self.log_rotations:
            self.log_rotations = self.log.rotations
            age = self.log.first_record_age()
            if flood.endangered(age, self.log.keep):  # before rotations push its first records out
                self.log_flooded = -1 if age is None else age
                self.log.write("limit", kind="log", action="kill", first_record_rotations=age,
                               kept_rotations=self.log.keep)
                self._kill()

    def _log_failed(self) -> None:
        self.log_failed = True
        self._kill()

    def flush_throttled(self) -> None:
        """One record per denial that repeated past what is written one by one (before run.end);
        with log_lock held (supervise/lifecycle.py)."""
        for event, fields in self.throttle.pending():
            self.log.write(event, **fields)

    def log_stop_error(self) -> SandboxError | None:
        """Why the log stopped the run, if it did: a record could not be written, or the run's
        records reached its budget (flood.py)."""
        if self.log_failed:
            return SandboxError("the action log could not be written; the sandbox was stopped",
                                "free some space or pass --log PATH")
        if self.log_flooded is not None:
            when = ("after its first records had already been rotated out (other runs write to the same log)"
                    if self.log_flooded < 0 else "before the log's rotation could drop its first records")
            return SandboxError(f"the run wrote so many action-log records that it was stopped {when}",
                                "with log.forward in the policy every record is kept outside too and a run may "
                                "write more; or split the work into several runs, or give it --log PATH")
        return None
