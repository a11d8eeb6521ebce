"""What several supervisor threads share stays whole: the denial list, and the log's story.

The notification thread, the file-escape workers, proxy threads and FIFO waiters all append
denials; file-escape workers also write records, which must all come before run.end (the log is
hash-chained and a record after its run's end breaks the story `sandboxctl log` tells).
"""

from __future__ import annotations

import json
import sys
import threading
import time

from sandboxctl.approval.broker import Broker
from sandboxctl.log.verify import verify
from sandboxctl.log.writer import ActionLog
from sandboxctl.plan.model import WriteVerdict
from sandboxctl.supervise import file_escape, notify
from sandboxctl.supervise.denials import KEEP, DenialList, total


def test_denials_appended_from_many_threads_are_all_counted_once():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can: races show at once
    try:
        kept = DenialList()
        threads, per_thread = 8, 3000

        def hammer(number: int) -> None:
            for i in range(per_thread):
                kept.append({"kind": "file", "target": "write /ws/.git/config", "rule": "protected"})
                kept.append({"kind": "net", "target": f"host{number}-{i % 50}:443", "rule": "not allowed"})

        workers = [threading.Thread(target=hammer, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(old)
    assert total(kept) == 2 * threads * per_thread
    repeats = [d for d in kept if d.get("repeated") and d["target"] == "write /ws/.git/config"]
    assert len(repeats) == 1 and repeats[0]["count"] == threads * per_thread - KEEP
    assert kept.seen[("file", "write /ws/.git/config", "protected")] == threads * per_thread


class Silent:
    """An approval front end nobody answers: requests wait until the run ends."""

    name = "silent"

    def start(self, broker) -> None:
        pass

    def changed(self) -> None:
        pass

    def stop(self) -> None:
        pass


def test_every_file_escape_record_comes_before_run_end(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    log = ActionLog(str(path), "run-1")
    log_lock = threading.Lock()

    def write(event: str, **fields) -> None:
        with log_lock:
            log.write(event, **fields)

    def slow_respond(fd, notification_id, **kwargs):  # the caller is gone; the answer takes a moment
        time.sleep(0.05)
        return False

    monkeypatch.setattr(notify, "respond", slow_respond)
    write("run.start", argv=["true"])
    broker = Broker("ask", 60.0, write, run_id="run-1")
    broker.attach(Silent())
    denied = DenialList()
    escapes = file_escape.FileEscapes(-1, broker, write, denied)
    verdict = WriteVerdict(False, "read-only", host_source=str(tmp_path), relative="x")
    for number in range(8):
        escapes(file_escape.FileEscape(number, 999_999_999, f"/ro/x{number}", "create", 0, 0o644, verdict))
    assert len(escapes.workers) == 8
    assert notify_wait(lambda: len(broker.pending()) == 8)
    broker.stop()  # the run is over: what waits is denied ...
    escapes.close()  # ... and its workers finish their records now
    late = threading.active_count()
    escapes(file_escape.FileEscape(99, 999_999_999, "/ro/late", "create", 0, 0o644, verdict))
    assert threading.active_count() == late and len(escapes.workers) == 8  # settled here, on the caller's thread
    write("run.end", exit_code=0, head=log.head)
    log.close()
    events = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    assert events[-1] == "run.end", events
    assert events.count("file") == 9 and total(denied) == 9
    assert verify(path).ok


def notify_wait(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_a_worker_still_busy_past_the_deadline_is_refused_after_run_end_and_counted(tmp_path, monkeypatch):
    """A worker that outlives close() and the run's end: its record is not appended after run.end
    (the sealed log refuses it) and is not lost silently either (counted, and told)."""
    release = threading.Event()
    path = tmp_path / "actions.jsonl"
    log = ActionLog(str(path), "run-1")
    told: list[str] = []
    log.on_refused = told.append

    def stuck_respond(fd, notification_id, **kwargs):
        release.wait(10)
        return False

    monkeypatch.setattr(notify, "respond", stuck_respond)
    broker = Broker("ask", 60.0, lambda event, **fields: None, run_id="run-1")
    broker.attach(Silent())
    escapes = file_escape.FileEscapes(-1, broker, log.write, DenialList())
    verdict = WriteVerdict(False, "read-only", host_source=str(tmp_path), relative="x")
    log.write("run.start", argv=["true"])
    escapes(file_escape.FileEscape(1, 999_999_999, "/ro/x", "create", 0, 0o644, verdict))
    assert notify_wait(lambda: len(broker.pending()) == 1)
    broker.stop()
    escapes.close(timeout=0.05)
    assert escapes.unfinished() == 1  # run.end names it
    log.write_last("run.end", exit_code=0, head=log.head)
    release.set()
    for worker in escapes.workers:
        worker.join(10)
    log.close()
    events = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    assert events == ["run.start", "run.end"]
    assert log.refused == {"file": 1} and told == ["file"]
    assert escapes.unfinished() == 0 and verify(path).ok
