"""Questions asked of the log: which records match, which run came last, what each run did."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sandboxctl.log.files import Record, iter_lines, iter_records, parse_line

DENY_ANSWERS = ("deny", "timeout")


# -- filters -----------------------------------------------------------------------------------


def is_denial(data: dict[str, Any]) -> bool:
    """A denied action or a denied/unanswered approval; run.end's `denied` count is not one."""
    return data.get("decision") == "deny" or data.get("answer") in DENY_ANSWERS


def parse_ts(ts: Any) -> datetime | None:
    if not isinstance(ts, str):
        return None
    try:
        value = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# What `--event` selects (SPEC "Action log"); `run` stands for run.start and run.end.
EVENT_TYPES: dict[str, str] = {
    "run": "run.start and run.end",
    "exec": "programs executed inside",
    "file": "file opens and changes (writes, or all with file_events: all)",
    "net": "network connections through the proxy",
    "http": "requests on inspected hosts",
    "syscall": "system calls the seccomp baseline denied",
    "approval": "answers to boundary escapes",
    "secret": "secrets injected or expired (names only)",
    "limit": "timeouts and resource limits",
    "protect": "protected paths found changed after the run",
    "create": "paths filesystem.create made on the host before the run",
    "tamper": "exec records contradicted by what ran",
    "log.forward": "the syslog copy: outages and what a collector did not receive",
    "workspace": "an overlay run's changes applied, undone or discarded",
    "command": "a session's commands: command.start and command.end",
}


def unknown_events(spec: str | None) -> list[str]:
    """The names of an --event list that select nothing any sandboxctl writes: a typo there
    (`--event nett`) would otherwise show "no matching records", as if the run had none."""
    wanted = [w.strip() for w in (spec or "").split(",") if w.strip()]
    return [w for w in wanted if w not in EVENT_TYPES and w.partition(".")[0] not in EVENT_TYPES]


def event_matcher(spec: str | None) -> Callable[[str], bool]:
    """'net' or 'file,net' (exact names), 'run' matches run.start and run.end."""
    if not spec:
        return lambda _event: True
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    return lambda event: any(event == w or event.startswith(w + ".") for w in wanted)


@dataclass
class Filter:
    run: str | None = None  # run id prefix
    event: str | None = None
    denied: bool = False
    since: datetime | None = None
    _event: Callable[[str], bool] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._event = event_matcher(self.event)

    def __call__(self, record: Record) -> bool:
        data = record.data
        if self.run and not str(data.get("run", "")).startswith(self.run):
            return False
        if self.event and not self._event(str(data.get("event", ""))):
            return False
        if self.denied and not is_denial(data):
            return False
        if self.since is not None:
            ts = parse_ts(data.get("ts"))
            if ts is None or ts < self.since:
                return False
        return True


def since_cutoff(text: str, now: datetime | None = None) -> datetime:
    """'1h' -> the moment one hour ago (UTC). ValueError for a malformed duration."""
    from datetime import timedelta

    from sandboxctl.units import parse_duration

    return (now or datetime.now(UTC)) - timedelta(seconds=parse_duration(text))


def select(path: str | os.PathLike[str], *, run: str | None = None, event: str | None = None,
           denied: bool = False, since: datetime | None = None) -> Iterator[Record]:
    keep = Filter(run, event, denied, since)
    return (r for r in iter_records(path, run=run) if keep(r))


def last_run_id(path: str | os.PathLike[str]) -> str | None:
    """The run that started last (by its run.start), else the run of the last record."""
    started: str | None = None
    last_raw = b""
    for _file, _number, raw in iter_lines(path):
        if raw.strip():
            last_raw = raw
        if b'"run.start"' in raw:
            data = parse_line(raw)
            if data is not None and data.get("event") == "run.start" and "run" in data:
                started = str(data["run"])
    if started is not None:
        return started
    data = parse_line(last_raw) if last_raw else None
    return str(data["run"]) if data is not None and "run" in data else None


# -- runs --------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    run: str
    start: str | None = None  # ts of run.start (or of the first record seen, if run.start is gone)
    argv: list[str] = field(default_factory=list)
    policy: str | None = None
    end: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    duration_s: float | None = None
    timed_out: bool = False
    denied: int = 0
    records: int = 0
    changes: str | None = None  # workspace: overlay — held | applied | partly applied | discarded | undone
    _counted: int = 0

    @property
    def finished(self) -> bool:
        return self.end is not None

    @property
    def status(self) -> str:
        if not self.finished:
            return "running/crashed"
        if self.timed_out:
            return "timed out"
        return f"exit {self.exit_code}"

    def as_dict(self) -> dict[str, Any]:
        return {"run": self.run, "start": self.start, "argv": self.argv, "policy": self.policy,
                "end": self.end, "exit_code": self.exit_code, "signal": self.signal,
                "duration_s": self.duration_s, "timed_out": self.timed_out, "denied": self.denied,
                "records": self.records, "status": self.status, "changes": self.changes}


def list_runs(records: Iterable[Record]) -> list[RunSummary]:
    """One summary per run id, in order of first appearance, from run.start/run.end pairs."""
    runs: dict[str, RunSummary] = {}
    for record in records:
        data = record.data
        run_id = record.run
        summary = runs.get(run_id)
        if summary is None:
            summary = runs[run_id] = RunSummary(run_id, start=data.get("ts"))
        summary.records += 1
        event = record.event
        if event == "run.start":
            summary.start = data.get("ts")
            argv = data.get("argv")
            summary.argv = [str(a) for a in argv] if isinstance(argv, list) else []
            summary.policy = data.get("policy")
            layers = data.get("layers")
            if isinstance(layers, dict) and isinstance(layers.get("workspace"), dict) \
                    and layers["workspace"].get("mode") == "overlay":
                summary.changes = "held"
        elif event == "run.end":
            summary.end = data.get("ts")
            summary.exit_code = data.get("exit_code")
            summary.signal = data.get("signal")
            summary.duration_s = data.get("duration_s")
            summary.timed_out = bool(data.get("timed_out"))
            if isinstance(data.get("denied"), int):
                summary.denied = data["denied"]
                summary._counted = -1  # the supervisor's own count wins
        elif event == "workspace" and data.get("action") in ("apply", "discard", "undo"):
            summary.changes = "discarded" if data["action"] == "discard" else str(data.get("state") or "?")
        elif is_denial(data) and summary._counted >= 0:
            summary._counted += 1
            summary.denied = summary._counted
    return list(runs.values())
