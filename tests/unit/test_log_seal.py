"""run.end is a run's last record: write_last seals the log, and whatever comes after is refused,
counted and told — never appended after it, never dropped without a word (log/late.py)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from sandboxctl.log import verify
from sandboxctl.log.late import MAX_LINES, LateRecords, close_forwarder, unfinished_text
from sandboxctl.log.writer import ActionLog

RUN = "20240101T000000-aaaaaa"


def events(path: Path) -> list[str]:
    return [json.loads(line)["event"] for line in path.read_bytes().splitlines()]


def test_what_was_queued_comes_before_run_end_and_nothing_after_it(tmp_path: Path):
    path = tmp_path / "actions.jsonl"
    log = ActionLog(str(path), RUN)
    told: list[str] = []
    log.on_refused = told.append
    log.write("run.start", argv=["sh"])
    for i in range(50):
        log.write_soon("exec", pid=i, path="/bin/true", argv=["true"])
    log.write_last("run.end", exit_code=0, head=log.head)
    head = log.head
    log.write("net", host="late.example", port=443)
    log.write_soon("exec", pid=99, path="/bin/true", argv=["true"])
    log.flush()
    log.close()
    log.write("file", path="/after/close")  # refused as well: no LogWriteError from a closed file
    assert events(path) == ["run.start", *["exec"] * 50, "run.end"]
    assert log.refused == {"net": 1, "exec": 1, "file": 1} and told == ["net", "exec", "file"]
    assert log.head == head and log.seq == 52 and verify.verify(path).ok


def test_a_writer_racing_the_end_never_lands_after_run_end(tmp_path: Path):
    """Threads that keep writing and queueing while run.end is written: each of their records is
    either before run.end or refused, and the two add up to what they tried."""
    path = tmp_path / "actions.jsonl"
    log = ActionLog(str(path), RUN)
    log.write("run.start", argv=["sh"])
    tried = [0, 0]
    go = threading.Event()

    def writer(slot: int) -> None:
        go.wait()
        for i in range(400):
            tried[slot] += 1
            if slot:
                log.write_soon("exec", pid=i, path="/bin/true", argv=["true"])
            else:
                log.write("net", host="h", port=i)

    threads = [threading.Thread(target=writer, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    go.set()
    while sum(tried) < 200:
        pass
    log.write_last("run.end", exit_code=0, head=log.head)
    for thread in threads:
        thread.join()
    log.close()
    written = events(path)
    assert written[-1] == "run.end" and written.count("run.end") == 1
    assert len(written) - 2 + sum(log.refused.values()) == sum(tried)
    assert verify.verify(path).ok


def test_late_records_are_told_one_by_one_then_once_for_the_rest():
    said: list[str] = []
    late = LateRecords(RUN, said.append)
    for _ in range(MAX_LINES + 5):
        late.refused("net")
    assert len(said) == MAX_LINES and late.count == MAX_LINES + 5
    assert all("`net` record came after run.end and was refused" in line for line in said)
    assert "further late records of this run are refused without a line each" in said[-1]
    assert "proxy connection threads (2)" in unfinished_text({"proxy_connections": 2})


class _Forwarder:
    """Stands in for log.forward.Forwarder: close() is when a collector comes back or fails."""

    def __init__(self) -> None:
        self.on_state = lambda **fields: None

    def close(self, timeout: float) -> None:
        self.on_state(target="syslog+tcp://h:1", state="up", reason=None, lost=None)
        self.on_state(target="syslog+tcp://h:1\x1b[2J", state="down", reason="refused", lost=None)

    def losses(self, pending: bool = False) -> list[dict]:
        assert pending
        return [{"target": "syslog+tcp://h:1", "state": "unsent", "reason": "refused", "lost": 3}]


def test_a_collector_that_comes_back_or_fails_after_run_end_is_said_not_recorded():
    said: list[str] = []
    close_forwarder(_Forwarder(), 0.1, said.append)
    assert said[0] == "sandboxctl: log.forward syslog+tcp://h:1: came back, its backlog sent, after run.end"
    assert "\x1b" not in said[1] and "failed (refused) after run.end" in said[1]
    assert "3 records, the last ones of the run, had not reached it" in said[2]
