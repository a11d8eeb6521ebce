"""ActionLog.write_soon: records queued by the exec path, written by the log's own thread.

What must hold whatever the timing: every queued record is written, once, in the order it was
queued relative to every other record of the log (a write() from any thread first writes what
is queued), seq and the chain stay exact, run.end can be last, and a failure reaches on_error.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from pathlib import Path

import pytest

from sandboxctl.log import files as logfiles
from sandboxctl.log import verify
from sandboxctl.log.writer import ActionLog, LogWriteError

RUN = "20240101T000000-aaaaaa"


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def logfile(tmp_path: Path) -> Path:
    return tmp_path / "state" / "actions.jsonl"


def test_queued_and_direct_records_keep_the_order_they_were_made_in(logfile: Path):
    log = ActionLog(str(logfile), RUN)
    log.write("run.start", argv=["sh"])
    made = []
    for i in range(300):
        if i % 7 == 3:
            log.write("file", pid=i, path=f"/w/{i}", op="write", decision="allow", rule="rw")
        else:
            log.write_soon("exec", pid=i, path="/bin/true", argv=["true", str(i)])
        made.append(i)
    log.flush()
    log.write("run.end", exit_code=0, head=log.head)
    log.close()
    written = records(logfile)
    assert written[0]["event"] == "run.start" and written[-1]["event"] == "run.end"
    assert [r["pid"] for r in written[1:-1]] == made
    assert [r["seq"] for r in written] == list(range(len(written)))
    assert verify.verify(logfile).ok
    timestamps = [r["ts"] for r in written]
    assert timestamps == sorted(timestamps)


def test_a_queued_record_carries_the_time_it_was_queued(logfile: Path):
    log = ActionLog(str(logfile), RUN)
    log._mutex.acquire()  # hold the writer back: the record waits in the queue
    try:
        log.write_soon("exec", pid=1, path="/bin/true", argv=["true"])
        queued = time.time()
        time.sleep(0.05)
    finally:
        log._mutex.release()
    log.write("run.end", exit_code=0)
    log.close()
    exec_record, end = records(logfile)
    assert exec_record["event"] == "exec" and end["event"] == "run.end"
    assert exec_record["ts"] < end["ts"]
    seconds = exec_record["ts"][:19]
    assert seconds == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(queued)) or \
        seconds == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(queued - 1))


def queue_while_held(log: ActionLog, count: int):
    """Queue count exec records while holding the log's mutex, so its thread writes none yet;
    the thread that will write them."""
    log._mutex.acquire()
    try:
        for i in range(count):
            log.write_soon("exec", pid=i, path="/bin/true", argv=["true"])
        return log._writer
    finally:
        log._mutex.release()


def test_run_end_after_flush_has_the_head_of_every_queued_record(logfile: Path):
    """lifecycle flushes before it reads head: run.end's head covers the queued exec records."""
    from sandboxctl.log.chain import run_head

    log = ActionLog(str(logfile), RUN)
    queue_while_held(log, 50)
    log.flush()
    log.write("run.end", exit_code=0, head=log.head)
    log.close()
    lines = logfile.read_bytes().splitlines()
    head = "0" * 64
    for line in lines[:-1]:
        head = run_head(head, line)
    assert json.loads(lines[-1])["head"] == head and len(lines) == 51


def test_close_writes_what_is_still_queued_and_stops_the_thread(logfile: Path):
    log = ActionLog(str(logfile), RUN)
    thread = queue_while_held(log, 20)
    log.close()
    assert thread is not None and not thread.is_alive()
    assert [r["pid"] for r in records(logfile)] == list(range(20))


def test_threads_queueing_and_writing_at_once_lose_nothing(logfile: Path):
    """The exec path queues while proxy threads write directly, and the log rotates meanwhile."""
    log = ActionLog(str(logfile), RUN, max_bytes=30_000, keep=200)
    rotations_seen = []
    log.after_queued = lambda: rotations_seen.append(log.rotations)
    start = threading.Barrier(3)

    def queue_execs() -> None:
        start.wait()
        for i in range(2000):
            log.write_soon("exec", pid=1, path="/bin/true", argv=["true", str(i)])

    def write_nets(tag: int) -> None:
        start.wait()
        for i in range(500):
            log.write("net", host=f"h{tag}", port=i, decision="allow", rule="r")

    threads = [threading.Thread(target=queue_execs), threading.Thread(target=write_nets, args=(1,)),
               threading.Thread(target=write_nets, args=(2,))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.flush()
    log.close()
    result = verify.verify(logfile)
    assert result.ok and result.records == 3000 and result.files > 1
    data = [r.data for r in logfiles.iter_records(logfile)]
    assert [r["seq"] for r in data] == list(range(3000))
    assert [r["argv"][1] for r in data if r["event"] == "exec"] == [str(i) for i in range(2000)]
    for tag in (1, 2):
        assert [r["port"] for r in data if r.get("host") == f"h{tag}"] == list(range(500))
    assert rotations_seen == sorted(rotations_seen)


def test_the_thread_reports_every_rotation_it_makes(logfile: Path):
    """The flood guard (supervise/flood.py) looks at every rotation, also the thread's."""
    log = ActionLog(str(logfile), RUN, max_bytes=1200, keep=50)
    log.soon_limit = 1 << 20  # all 40 wait in the queue (the bound would have write_soon write them)
    seen = []
    log.after_queued = lambda: seen.append(log.rotations)
    log._mutex.acquire()
    try:
        for i in range(40):  # queued at once: one pass of the thread writes them all
            log.write_soon("exec", pid=i, path="/bin/true", argv=["true", str(i)])
    finally:
        log._mutex.release()
    log.close()
    assert log.rotations > 3 and seen == list(range(1, log.rotations + 1))


def test_a_failed_queued_write_reaches_on_error_and_later_records_still_chain(logfile: Path,
                                                                             monkeypatch: pytest.MonkeyPatch):
    log = ActionLog(str(logfile), RUN)
    log.write("run.start", argv=["sh"])
    failures = []
    failed = threading.Event()
    log.on_error = lambda exc: (failures.append(exc), failed.set())
    real_write = os.write

    def full(fd, data):
        if fd == log.fd:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    log.write_soon("exec", pid=1, path="/bin/true", argv=["true"])
    assert failed.wait(10)
    monkeypatch.undo()
    assert isinstance(failures[0], LogWriteError) and "No space left" in failures[0].message
    log.write("run.end", exit_code=125)
    log.close()
    assert [r["event"] for r in records(logfile)] == ["run.start", "run.end"]
    assert verify.verify(logfile).ok


def test_the_queue_is_bounded_and_rotations_made_past_it_still_reach_the_flood_guard(logfile: Path):
    """With the thread held back (a slow disk), write_soon queues at most soon_limit bytes and
    writes the rest itself, in order; a rotation it makes so is still reported (after_queued),
    by the thread, since the caller holds the supervisor's lock that after_queued takes."""
    log = ActionLog(str(logfile), RUN, max_bytes=200_000, keep=50)
    seen = []
    log.after_queued = lambda: seen.append(log.rotations)
    big = ["x" * 4000] * 20  # 80 kB of argv
    blocked = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with log._mutex:
            blocked.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    blocked.wait(5)
    writer = threading.Thread(target=lambda: [log.write_soon("exec", pid=i, path="/bin/true", argv=["true", *big])
                                              for i in range(12)])
    writer.start()
    time.sleep(0.3)
    assert len(log._pending) * 80_000 <= log.soon_limit + 80_000  # it waits for the disk, not memory
    release.set()
    holder.join()
    writer.join()
    log.close()
    data = [r.data for r in logfiles.iter_records(logfile)]
    assert [r["pid"] for r in data] == list(range(12)) and verify.verify(logfile).ok
    assert log.rotations > 2 and seen and seen[-1] == log.rotations


def test_records_queued_while_the_thread_pauses_are_written_without_another_wake_up(logfile: Path):
    """write_soon wakes the thread only when it waits for work (_idle): records queued while it
    writes or pauses between batches are found by its next look at the queue, never left behind."""
    log = ActionLog(str(logfile), RUN)
    log.write_soon("exec", pid=0, path="/bin/true", argv=["true"])  # starts the thread, which then pauses
    deadline = time.monotonic() + 30
    while log._pending and time.monotonic() < deadline:
        time.sleep(0.001)
    queued_while_busy = 0
    for i in range(1, 200):
        queued_while_busy += not log._idle
        log.write_soon("exec", pid=i, path="/bin/true", argv=["true"])
    assert queued_while_busy, "the thread was never busy or pausing: nothing here tested the pause"
    while log._pending and time.monotonic() < deadline:  # no flush: the thread alone must get them out
        time.sleep(0.005)
    assert not log._pending
    with log._mutex:  # the last one popped is written under the mutex
        pass
    assert [r["pid"] for r in records(logfile)] == list(range(200))
    log.close()
    assert verify.verify(logfile).ok


def test_close_does_not_wait_out_the_threads_pause(logfile: Path, monkeypatch):
    from sandboxctl.log import writer

    monkeypatch.setattr(writer, "BATCH_PAUSE_S", 30.0)
    log = ActionLog(str(logfile), RUN)
    log.write_soon("exec", pid=1, path="/bin/true", argv=["true"])
    deadline = time.monotonic() + 30
    while log._pending and time.monotonic() < deadline:  # written: the thread now pauses for 30 s
        time.sleep(0.001)
    log.write_soon("exec", pid=2, path="/bin/true", argv=["true"])
    started = time.monotonic()
    log.close()
    assert time.monotonic() - started < 10  # the pause is cut short, not waited out
    assert [r["pid"] for r in records(logfile)] == [1, 2]


def test_a_pause_holds_back_at_most_a_batch_and_only_where_a_batch_cannot_rotate_twice(logfile: Path, monkeypatch):
    """The flood guard decides at a rotation; what a pause held back is written after that
    decision. So a pause ends once MAX_BATCH records wait, and a log whose files could not take
    two batches of the largest records never pauses (every record is written as it comes)."""
    from sandboxctl.log import writer

    assert ActionLog(str(logfile), RUN)._may_pause()  # the default 64 MiB files
    small = ActionLog(str(logfile.with_name("small.jsonl")), RUN, max_bytes=40_000, keep=2)
    assert not small._may_pause()
    small.close()
    monkeypatch.setattr(writer, "BATCH_PAUSE_S", 30.0)
    log = ActionLog(str(logfile), RUN)
    log.write_soon("exec", pid=0, path="/bin/true", argv=["true"])
    deadline = time.monotonic() + 30
    while log._pending and time.monotonic() < deadline:  # written: the thread now pauses for 30 s
        time.sleep(0.001)
    for i in range(1, writer.MAX_BATCH + 1):
        log.write_soon("exec", pid=i, path="/bin/true", argv=["true"])
    while log._pending and time.monotonic() < deadline:  # the batch ended the pause: no flush needed
        time.sleep(0.005)
    assert time.monotonic() < deadline - 20 and not log._pending
    log.close()
    assert [r["pid"] for r in records(logfile)] == list(range(writer.MAX_BATCH + 1))


def test_a_timestamp_is_the_text_of_the_time_given_whichever_second_was_formatted_last():
    """write_soon keeps time_ns and the log's thread makes it text; the second's text is cached
    (one strftime a second) as one (seconds, text) pair, so a time of another second than the
    cached one is never given that one's text."""
    from sandboxctl.log.chain import timestamp

    day = 1796256000  # 2026-12-03T00:00:00Z
    for ns, text in [(day * 10**9 + 123_456_789, "2026-12-03T00:00:00.123456Z"),
                     ((day - 1) * 10**9 + 999_999_999, "2026-12-02T23:59:59.999999Z"),
                     (day * 10**9, "2026-12-03T00:00:00.000000Z"),
                     ((day + 61) * 10**9 + 5_000, "2026-12-03T00:01:01.000005Z")]:
        assert timestamp(ns) == text
    now = timestamp()
    assert now.endswith("Z") and now[:4].isdecimal()
