"""The action log: writer (locking, rotation, write failures), chain verification, reader, CLI."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sandboxctl.errors import SandboxError
from sandboxctl.log import files as logfiles
from sandboxctl.log import follow, query, render, verify
from sandboxctl.log.chain import GENESIS, encode_record, line_hash, verify_lines
from sandboxctl.log.writer import ActionLog, LogWriteError

RUN_A = "20240101T000000-aaaaaa"
RUN_B = "20240101T000100-bbbbbb"


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def write_run(path: Path, run_id: str, *, end: bool = True, denials: int = 1, **kw) -> ActionLog:
    log = ActionLog(str(path), run_id, **kw)
    log.write("run.start", argv=["python", "-m", "pytest"], workspace="/w", policy="default",
              policy_sha256="ab" * 32, layers={"bwrap": True}, limits={"timeout": 60})
    log.write("exec", pid=10, path="/usr/bin/python", argv=["python", "-m", "pytest"])
    log.write("file", pid=10, path="/etc/shadow", op="read", decision="deny", rule="filesystem.deny")
    log.write("net", host="pypi.org", port=443, decision="allow", rule="network.allow",
              bytes_in=10, bytes_out=5, duration_s=0.1)
    for _ in range(denials - 1):
        log.write("syscall", pid=10, name="ptrace", decision="deny", rule="seccomp")
    log.write("approval", kind="net", target="example.com:443", answer="timeout", via="tty")
    log.write("secret", name="TOKEN", **{"as": "env"}, action="inject")
    if end:
        log.write("run.end", exit_code=0, signal=None, duration_s=1.25, denied=denials + 1, timed_out=False)
    return log


@pytest.fixture
def logfile(tmp_path: Path) -> Path:
    return tmp_path / "state" / "actions.jsonl"


# -- writer basics -----------------------------------------------------------------------------


def test_records_chain_and_permissions(logfile: Path):
    write_run(logfile, RUN_A).close()
    raw = lines_of(logfile)
    records = [json.loads(line) for line in raw]
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert records[0]["prev"] == GENESIS
    for before, record in zip(raw, records[1:], strict=False):
        assert record["prev"] == line_hash(before)
    assert records[0]["ts"].endswith("Z") and len(records[0]["ts"]) == len("2024-01-01T00:00:00.000000Z")
    assert oct(logfile.stat().st_mode & 0o777) == oct(0o600)
    assert oct(logfile.parent.stat().st_mode & 0o777) == oct(0o700)
    assert verify_lines(iter(raw)) == (len(raw), None)


def test_records_are_encoded_as_json_dumps_encodes_them():
    """The writer calls json's C encoder itself (the json package stays off a run's imports): the
    line is byte for byte what json.dumps(separators=(",", ":"), default=str) gives."""
    class Odd:
        def __str__(self) -> str:
            return "odd \x1b[31m"

    records = [{}, {"a": 1, "b": [1, 2.5, None, True, False], "c": {"d": "é\u2028\n\"\\"}},
               {"path": "/tmp/\udcff", "nan": float("nan"), "inf": float("-inf"), 3: "int key", None: 1.0},
               {"odd": Odd(), "nested": [{"x": (1, 2)}, []], "big": 10 ** 30, "neg": -0.0}]
    for record in records:
        assert encode_record(record) == json.dumps(record, separators=(",", ":"), default=str)
    shared = [1]
    assert encode_record({"a": shared, "b": shared}) == '{"a":[1],"b":[1]}'  # not a cycle
    looped: dict = {}
    looped["self"] = looped
    with pytest.raises(ValueError, match="Circular"):
        encode_record(looped)
    assert encode_record({"again": 1}) == '{"again":1}'  # a failed record leaves nothing behind


def test_redaction(logfile: Path):
    with ActionLog(str(logfile), RUN_A, redact=("hunter2",)) as log:
        log.write("exec", pid=1, path="/bin/sh", argv=["sh", "-c", "echo hunter2"])
    assert b"hunter2" not in logfile.read_bytes()


def test_write_failure_raises_log_write_error(logfile: Path, monkeypatch: pytest.MonkeyPatch):
    log = ActionLog(str(logfile), RUN_A)
    log.write("run.start", argv=["true"])

    def full(fd, data):
        raise OSError(errno.ENOSPC)

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(LogWriteError) as info:
        log.write("exec", pid=1, path="/bin/true", argv=["true"])
    assert isinstance(info.value, SandboxError)
    assert "No space left on device" in info.value.message and info.value.hint
    monkeypatch.undo()
    log.write("run.end", exit_code=0)  # the seq that failed is reused; the chain is intact
    log.close()
    assert verify.verify(logfile).ok
    assert [json.loads(x)["seq"] for x in lines_of(logfile)] == [0, 1]


def test_short_write_is_rolled_back(logfile: Path, monkeypatch: pytest.MonkeyPatch):
    log = ActionLog(str(logfile), RUN_A)
    log.write("run.start", argv=["true"])
    size = logfile.stat().st_size
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:10]))
    with pytest.raises(LogWriteError):
        log.write("exec", pid=1, path="/bin/true", argv=["true"])
    monkeypatch.undo()
    assert logfile.stat().st_size == size  # no torn line left behind
    log.write("run.end", exit_code=0)
    log.close()
    assert verify.verify(logfile).ok


def test_write_after_a_torn_line_starts_a_new_line(logfile: Path):
    write_run(logfile, RUN_A, end=False).close()
    with open(logfile, "ab") as handle:
        handle.write(b'{"ts":"2024-01-01T00:00:00.000000Z","run":"x"')  # a crash mid-write
    with ActionLog(str(logfile), RUN_B) as log:
        log.write("run.start", argv=["true"])
    raw = lines_of(logfile)
    assert json.loads(raw[-1])["run"] == RUN_B  # its own line, not glued to the torn one
    result = verify.verify(logfile)
    assert not result.ok and result.broken_line == len(raw) - 1 and "not a JSON record" in result.reason


# -- chain verification ------------------------------------------------------------------------


@pytest.fixture
def chain(logfile: Path) -> list[bytes]:
    write_run(logfile, RUN_A, denials=3).close()
    raw = lines_of(logfile)
    assert len(raw) >= 8
    return raw


def put(path: Path, lines: list[bytes], newline: bool = True) -> None:
    path.write_bytes(b"\n".join(lines) + (b"\n" if newline else b""))


def test_verify_intact(logfile: Path, chain: list[bytes]):
    result = verify.verify(logfile)
    assert result.ok and result.records == len(chain) and result.files == 1


def test_verify_detects_edited_line(logfile: Path, chain: list[bytes]):
    edited = list(chain)
    edited[3] = edited[3].replace(b"pypi.org", b"evil.org")
    put(logfile, edited)
    result = verify.verify(logfile)
    assert not result.ok and result.broken_file == logfile and result.broken_line == 5
    assert "actions.jsonl:4 was edited" in result.reason
    assert result.records == 4 and result.where == f"{logfile}:5"


def test_verify_detects_deleted_line(logfile: Path, chain: list[bytes]):
    put(logfile, chain[:4] + chain[5:])
    result = verify.verify(logfile)
    assert not result.ok and result.broken_line == 5 and "removed" in result.reason


def test_verify_detects_deleted_first_line(logfile: Path, chain: list[bytes]):
    put(logfile, chain[1:])
    result = verify.verify(logfile)
    assert not result.ok and result.broken_line == 1 and "start the chain" in result.reason


def test_verify_detects_inserted_line(logfile: Path, chain: list[bytes]):
    forged = json.loads(chain[2])
    forged.update(path="/innocent", prev=line_hash(chain[2]))  # even with a correct prev of its own
    forged_line = json.dumps(forged, separators=(",", ":")).encode()
    put(logfile, [*chain[:3], forged_line, *chain[3:]])
    result = verify.verify(logfile)
    assert not result.ok and result.broken_line == 5 and "actions.jsonl:4 was inserted" in result.reason


def test_verify_detects_reordered_lines(logfile: Path, chain: list[bytes]):
    swapped = list(chain)
    swapped[3], swapped[4] = swapped[4], swapped[3]
    put(logfile, swapped)
    result = verify.verify(logfile)
    assert not result.ok and result.broken_line == 4 and "reordered" in result.reason


def test_verify_detects_torn_last_line(logfile: Path, chain: list[bytes]):
    put(logfile, [*chain[:-1], chain[-1][: len(chain[-1]) // 2]], newline=False)
    result = verify.verify(logfile)
    assert not result.ok and result.broken_line == len(chain) and "incomplete" in result.reason
    # a last line whose newline alone is missing is torn as well
    put(logfile, chain, newline=False)
    result = verify.verify(logfile)
    assert not result.ok and result.broken_line == len(chain) and "incomplete" in result.reason


def test_verify_detects_garbage_and_empty_lines(logfile: Path, chain: list[bytes]):
    put(logfile, [*chain[:2], b"", *chain[2:]])
    assert "empty line" in verify.verify(logfile).reason
    put(logfile, [*chain[:2], b"not json", *chain[2:]])
    result = verify.verify(logfile)
    assert result.broken_line == 3 and "not a JSON record" in result.reason


def test_chain_verify_lines_still_works(chain: list[bytes]):
    assert verify_lines(iter(chain)) == (len(chain), None)
    count, broken = verify_lines(iter([chain[0], chain[2]]))
    assert count == 2 and broken is not None and broken.line == 2


# -- parallel writers --------------------------------------------------------------------------


def _writer(path: str, run_id: str, count: int, max_bytes: int | None, keep: int) -> None:
    log = ActionLog(path, run_id, max_bytes=max_bytes, keep=keep)
    for i in range(count):
        log.write("exec", pid=os.getpid(), path="/bin/true", argv=["true", str(i)])
    log.close()


def _run_parallel(path: Path, workers: int, count: int, max_bytes: int | None = None, keep: int = 5) -> float:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), f"run-{n}", count, max_bytes, keep))
             for n in range(workers)]
    started = time.monotonic()
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    return time.monotonic() - started


def test_parallel_writers_keep_the_chain(logfile: Path):
    elapsed = _run_parallel(logfile, workers=8, count=1000)
    data = logfile.read_bytes()
    assert data.endswith(b"\n")
    raw = data.splitlines()
    assert len(raw) == 8000
    records = [json.loads(line) for line in raw]  # no torn or interleaved line
    result = verify.verify(logfile)
    assert result.ok and result.records == 8000 and result.files == 1
    for n in range(8):
        assert [r["seq"] for r in records if r["run"] == f"run-{n}"] == list(range(1000))
    print(f"8 x 1000 parallel appends: {elapsed:.2f}s")
    assert elapsed < 15


def test_threads_sharing_one_log(logfile: Path):
    log = ActionLog(str(logfile), RUN_A, max_bytes=20_000, keep=100)

    def work() -> None:
        for i in range(250):
            log.write("exec", pid=1, path="/bin/true", argv=["true", str(i)])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    result = verify.verify(logfile)
    assert result.ok and result.records == 1000
    assert [r.data["seq"] for r in logfiles.iter_records(logfile)] == list(range(1000))


# -- rotation ----------------------------------------------------------------------------------


def test_rotation_keeps_the_chain_across_files(logfile: Path):
    with ActionLog(str(logfile), RUN_A, max_bytes=2000) as log:
        for i in range(60):
            log.write("exec", pid=1, path="/bin/true", argv=["true", str(i)])
    files = logfiles.log_files(logfile)
    assert len(files) == 6 and files[-1] == logfile.resolve()
    assert [f.name for f in files[:-1]] == [f"actions.jsonl.{n}" for n in (5, 4, 3, 2, 1)]
    for file in files:
        assert file.stat().st_size <= 2000 and oct(file.stat().st_mode & 0o777) == oct(0o600)
    first_new = json.loads(lines_of(logfile)[0])
    assert first_new["prev"] == line_hash(lines_of(files[-2])[-1])
    result = verify.verify(logfile)
    assert result.ok and result.files == 6
    assert result.note and "no longer kept" in result.note  # the oldest file continues a dropped one
    seqs = [r.data["seq"] for r in logfiles.iter_records(logfile)]
    assert seqs == list(range(60 - len(seqs), 60))  # consecutive, newest kept
    assert not (logfile.parent / "actions.jsonl.new").exists()


def test_rotation_detects_a_removed_rotated_file(logfile: Path):
    with ActionLog(str(logfile), RUN_A, max_bytes=1500, keep=10) as log:
        for i in range(30):
            log.write("exec", pid=1, path="/bin/true", argv=["true", str(i)])
    assert verify.verify(logfile).ok and verify.verify(logfile).note is None
    middle = Path(f"{logfile}.2")
    middle.unlink()
    result = verify.verify(logfile)
    assert not result.ok and result.broken_file.name == "actions.jsonl.1" and result.broken_line == 1
    Path(f"{logfile}.1").unlink()
    for n in range(3, 20):
        Path(f"{logfile}.{n}").unlink(missing_ok=True)
    result = verify.verify(logfile)
    assert not result.ok and result.broken_file == logfile.resolve() and "start the chain" in result.reason


def test_writer_holding_a_rotated_file_reopens_the_path(logfile: Path):
    a = ActionLog(str(logfile), RUN_A, max_bytes=1000)
    b = ActionLog(str(logfile), RUN_B, max_bytes=1000)
    b.write("run.start", argv=["b"])
    inode = os.fstat(b.fd).st_ino
    while not Path(f"{logfile}.1").exists():
        a.write("exec", pid=1, path="/bin/true", argv=["true"])
    assert os.stat(f"{logfile}.1").st_ino == inode  # b's descriptor now names the rotated file
    b.write("exec", pid=2, path="/bin/b", argv=["b"])
    assert os.fstat(b.fd).st_ino == logfile.stat().st_ino
    assert json.loads(lines_of(logfile)[-1])["run"] == RUN_B
    a.close()
    b.close()
    assert verify.verify(logfile).ok


def test_rotation_with_parallel_writers(logfile: Path):
    # two processes cross the rotation boundary many times; keep enough files to see every record
    _run_parallel(logfile, workers=2, count=400, max_bytes=4096, keep=1000)
    files = logfiles.log_files(logfile)
    assert len(files) > 10
    result = verify.verify(logfile)
    assert result.ok and result.records == 800 and result.note is None
    records = list(logfiles.iter_records(logfile))
    for n in range(2):
        assert [r.data["seq"] for r in records if r.run == f"run-{n}"] == list(range(400))
    for file in files:
        assert file.stat().st_size <= 4096


def test_rotation_drops_the_oldest_with_parallel_writers(logfile: Path):
    _run_parallel(logfile, workers=2, count=300, max_bytes=2048, keep=3)
    assert len(logfiles.log_files(logfile)) == 4
    assert verify.verify(logfile).ok


def test_verify_while_writers_rotate(logfile: Path):
    ActionLog(str(logfile), RUN_A).write("run.start", argv=["x"])
    ctx = multiprocessing.get_context("fork")
    writer = ctx.Process(target=_writer, args=(str(logfile), RUN_B, 3000, 4000, 5))
    writer.start()
    checks = 0
    while writer.is_alive() or checks < 3:
        result = verify.verify(logfile)  # a consistent set of files, never a false alarm
        assert result.ok, (result.where, result.reason)
        checks += 1
    writer.join(30)
    assert writer.exitcode == 0 and checks >= 3


def test_rotation_write_failure(logfile: Path, monkeypatch: pytest.MonkeyPatch):
    log = ActionLog(str(logfile), RUN_A, max_bytes=600)
    log.write("exec", pid=1, path="/bin/true", argv=["true"])
    log.write("exec", pid=1, path="/bin/true", argv=["true"])
    monkeypatch.setattr(os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(LogWriteError):
        for _ in range(10):
            log.write("exec", pid=1, path="/bin/true", argv=["true"])
    monkeypatch.undo()
    assert not Path(f"{logfile}.new").exists()
    for _ in range(10):
        log.write("exec", pid=1, path="/bin/true", argv=["true"])
    log.close()
    assert verify.verify(logfile).ok


# -- reader ------------------------------------------------------------------------------------


@pytest.fixture
def two_runs(logfile: Path) -> Path:
    write_run(logfile, RUN_A, denials=2).close()
    b = write_run(logfile, RUN_B, end=False, denials=1)
    b.close()
    return logfile


def test_filters(two_runs: Path):
    def events(**kw) -> list[tuple[str, str]]:
        return [(r.run[-1], r.event) for r in query.select(two_runs, **kw)]

    assert {run for run, _ in events(run="20240101T0001")} == {"b"}
    assert events(event="net") == [("a", "net"), ("b", "net")]
    assert events(event="run") == [("a", "run.start"), ("a", "run.end"), ("b", "run.start")]
    assert events(event="file,syscall", run=RUN_A) == [("a", "file"), ("a", "syscall")]
    # denials: decision deny, approval deny/timeout; run.end with denied > 0 is not one itself
    assert events(denied=True) == [("a", "file"), ("a", "syscall"), ("a", "approval"),
                                   ("b", "file"), ("b", "approval")]
    assert query.is_denial({"event": "approval", "answer": "deny"})
    assert not query.is_denial({"event": "approval", "answer": "once"})
    assert not query.is_denial({"event": "run.end", "denied": 3})
    assert events(since=datetime.now(UTC) - timedelta(hours=1)) == events()
    assert events(since=datetime.now(UTC) + timedelta(seconds=5)) == []
    assert query.last_run_id(two_runs) == RUN_B


def test_since_cutoff():
    now = datetime(2024, 1, 1, 12, tzinfo=UTC)
    assert query.since_cutoff("1h", now) == datetime(2024, 1, 1, 11, tzinfo=UTC)
    assert query.since_cutoff("1h30m", now) == datetime(2024, 1, 1, 10, 30, tzinfo=UTC)
    with pytest.raises(ValueError):
        query.since_cutoff("yesterday", now)


def test_list_runs(two_runs: Path):
    runs = query.list_runs(logfiles.iter_records(two_runs))
    assert [r.run for r in runs] == [RUN_A, RUN_B]
    a, b = runs
    assert a.finished and a.exit_code == 0 and a.duration_s == 1.25 and a.status == "exit 0"
    assert a.argv == ["python", "-m", "pytest"] and a.policy == "default" and a.denied == 3  # from run.end
    assert not b.finished and b.status == "running/crashed" and b.denied == 2  # counted: file + approval
    assert b.start and b.start.endswith("Z")


def test_reader_reads_across_rotation(logfile: Path):
    with ActionLog(str(logfile), RUN_A, max_bytes=1500, keep=20) as log:
        for i in range(40):
            log.write("exec", pid=1, path="/bin/true", argv=["true", str(i)])
    assert len(logfiles.log_files(logfile)) > 2
    assert [r.data["seq"] for r in logfiles.iter_records(logfile)] == list(range(40))


def test_summaries_never_show_secret_values_and_escape_control_characters():
    assert render.summarize({"event": "secret", "name": "TOKEN", "action": "inject"}) == "TOKEN (inject)"
    assert render.summarize({"event": "net", "host": "pypi.org", "port": 443}) == "pypi.org:443"
    assert render.summarize({"event": "file", "op": "write", "path": "/w/x"}) == "write /w/x"
    assert render.summarize({"event": "approval", "kind": "net", "target": "a.b:443"}) == "net a.b:443"
    assert render.summarize({"event": "syscall", "name": "ptrace"}) == "ptrace"
    assert render.summarize({"event": "http", "method": "GET", "host": "api.github.com", "port": 443,
                             "path": "/repos/acme/x", "status": 200, "secrets": ["GITHUB_TOKEN"]}) == \
        "GET api.github.com/repos/acme/x -> 200 (secrets: GITHUB_TOKEN)"
    assert render.summarize({"event": "http", "method": "POST", "host": "h", "port": 8443, "path": "/p",
                             "status": 403, "leak": "T"}) == "POST h:8443/p -> 403 (leak: T)"
    assert render.summarize({"event": "http", "method": "GET", "host": "h", "port": 443,
                             "path": "/\x1b[2J"}) == "GET h/\\x1b[2J"
    assert render.summarize({"event": "limit", "kind": "memory", "action": "kill"}) == "memory (kill)"
    assert render.summarize({"event": "run.start", "argv": ["ls", "a b"], "policy": "ci"}) == "ls 'a b' (policy ci)"
    assert render.summarize({"event": "run.end", "exit_code": 137, "signal": 9, "duration_s": 75}) == \
        "exit 137 after 1m15s (signal 9)"
    assert render.clean("a\x1b[31mb\u202e") == "a\\x1b[31mb\\u202e"


# -- follow ------------------------------------------------------------------------------------


def test_follow_survives_rotation(logfile: Path):
    log = ActionLog(str(logfile), RUN_A, max_bytes=1200, keep=50)
    log.write("exec", pid=1, path="/bin/true", argv=["true", "old"])
    stop = threading.Event()
    follower = follow.Follower(logfile, poll=0.01, stop=stop)  # from the end: "old" is not shown
    seen: list[int] = []

    def consume() -> None:
        for record in follower:
            seen.append(record.data["seq"])
            if len(seen) == 100:
                stop.set()

    thread = threading.Thread(target=consume)
    thread.start()
    for i in range(100):
        log.write("exec", pid=1, path="/bin/true", argv=["true", str(i)])
        if i % 7 == 0:
            time.sleep(0.005)
    thread.join(10)
    stop.set()
    log.close()
    assert not thread.is_alive()
    assert len(logfiles.log_files(logfile)) > 5
    assert seen == list(range(1, 101))


def test_follow_sees_every_record_once_while_two_processes_rotate(logfile: Path):
    ActionLog(str(logfile), RUN_A).write("run.start", argv=["x"])
    stop = threading.Event()
    seen: list[tuple[str, int]] = []

    def consume() -> None:
        for record in follow.Follower(logfile, from_start=True, poll=0.002, stop=stop):
            seen.append((record.run, record.data["seq"]))
            if len(seen) == 1 + 2 * 1500:
                stop.set()

    thread = threading.Thread(target=consume)
    thread.start()
    _run_parallel(logfile, workers=2, count=1500, max_bytes=3000, keep=10_000)
    thread.join(20)
    stop.set()
    assert len(logfiles.log_files(logfile)) > 50
    assert sorted(seen) == sorted([(RUN_A, 0)] + [(f"run-{n}", i) for n in range(2) for i in range(1500)])


def test_follow_from_start_and_rotation_between_polls(logfile: Path):
    log = ActionLog(str(logfile), RUN_A, max_bytes=800, keep=50)
    for i in range(10):
        log.write("exec", pid=1, path="/bin/true", argv=["true", str(i)])
    follower = follow.Follower(logfile, from_start=True)
    assert [r.data["seq"] for r in follower.drain()] == list(range(10))
    for i in range(40):  # several rotations before the next poll
        log.write("exec", pid=1, path="/bin/true", argv=["true", str(i)])
    assert [r.data["seq"] for r in follower.drain()] == list(range(10, 50))
    assert list(follower.drain()) == []
    follower.close()
    log.close()


def test_follow_waits_for_the_log(logfile: Path):
    follower = follow.Follower(logfile)
    assert list(follower.drain()) == []
    write_run(logfile, RUN_A).close()
    assert next(r.event for r in follower.drain()) == "run.start"
    follower.close()


# -- CLI ---------------------------------------------------------------------------------------


def sbx(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg"), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "sandboxctl", "log", *args], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)


@pytest.fixture
def cli_log(tmp_path: Path) -> Path:
    path = tmp_path / "xdg" / "sandboxctl" / "actions.jsonl"
    write_run(path, RUN_A, denials=2).close()
    write_run(path, RUN_B, end=False).close()
    return path


def test_cli_verify(tmp_path: Path, cli_log: Path):
    result = sbx(tmp_path, "--verify")
    assert result.returncode == 0 and result.stdout.startswith("chain intact: 14 records in 1 file")
    raw = lines_of(cli_log)
    put(cli_log, [*raw[:2], raw[3], raw[2], *raw[4:]])
    result = sbx(tmp_path, "--verify")
    assert result.returncode == 1
    assert f"chain broken at {cli_log}:3" in result.stdout
    result = sbx(tmp_path, "--verify", "--json")
    assert result.returncode == 1 and json.loads(result.stdout)["line"] == 3


def test_cli_json_and_filters(tmp_path: Path, cli_log: Path):
    result = sbx(tmp_path, "--json")  # the last run, raw lines
    assert result.returncode == 0
    out = result.stdout.splitlines()
    assert out == [line.decode() for line in lines_of(cli_log) if RUN_B.encode() in line]
    result = sbx(tmp_path, "--json", "--all", "--denied")
    assert [json.loads(x)["event"] for x in result.stdout.splitlines()] == \
        ["file", "syscall", "approval", "file", "approval"]
    result = sbx(tmp_path, "--json", "--run", "20240101T0000", "--event", "net")
    assert [json.loads(x)["run"] for x in result.stdout.splitlines()] == [RUN_A]
    result = sbx(tmp_path, "--json", "--since", "1h", "--event", "run.start")
    assert len(result.stdout.splitlines()) == 2


def test_cli_unknown_event_type_is_an_error_not_an_empty_answer(tmp_path: Path, cli_log: Path):
    result = sbx(tmp_path, "--all", "--event", "file,nett")
    assert result.returncode == 125 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "sandboxctl: error: --event 'nett': no such event type",
        "  hint: did you mean 'net'? event types: " + ", ".join(query.EVENT_TYPES)]
    for known in ("net", "run.start", "command", "command.end", "log.forward", "file,net"):
        assert sbx(tmp_path, "--all", "--json", "--event", known).returncode == 0, known


def test_cli_nothing_in_the_last_run_says_it_looked_at_the_last_run_only(tmp_path: Path, cli_log: Path):
    result = sbx(tmp_path, "--event", "protect")
    assert result.returncode == 0 and result.stdout == ""
    assert result.stderr.splitlines() == [f"no matching records in run {RUN_B}",
                                          "  (the last run only: --all for every run, --run ID for another)"]
    assert sbx(tmp_path, "--run", RUN_A, "--event", "protect").stderr == f"no matching records in run {RUN_A}\n"


def test_cli_records_through_a_pipe_are_whole_lines(tmp_path: Path):
    """Piped, `log` prints one whole record per line: a table of 80 columns folded paths mid-name."""
    path = tmp_path / "xdg" / "sandboxctl" / "actions.jsonl"
    log = ActionLog(str(path), RUN_A)
    deep = "/home/ann/proj/node_modules/some-package/lib/a-rather-long-file-name.js"
    log.write("run.start", argv=["npm", "install"], workspace="/w", policy="default", policy_sha256="ab" * 32,
              layers={}, limits={})
    log.write("file", pid=10, path=deep, op="create", decision="allow", rule="writable grant")
    log.close()
    lines = sbx(tmp_path).stdout.splitlines()
    assert lines[0] == f"run {RUN_A} — {path}"
    assert [line for line in lines if deep in line] == [lines[2]] and lines[2].endswith("rule: writable grant")


def test_cli_table(tmp_path: Path, cli_log: Path):
    result = sbx(tmp_path)
    assert result.returncode == 0
    assert f"run {RUN_B}" in result.stdout and "python -m pytest (policy default)" in result.stdout
    assert "read /etc/shadow" in result.stdout and "example.com:443" in result.stdout
    assert RUN_A not in result.stdout


def test_cli_runs(tmp_path: Path, cli_log: Path):
    result = sbx(tmp_path, "runs")
    assert result.returncode == 0, result.stderr
    assert RUN_A in result.stdout and RUN_B in result.stdout and "running/crashed" in result.stdout
    result = sbx(tmp_path, "runs", "--json")
    runs = [json.loads(x) for x in result.stdout.splitlines()]
    assert [(r["run"], r["exit_code"], r["denied"], r["status"]) for r in runs] == \
        [(RUN_A, 0, 3, "exit 0"), (RUN_B, None, 2, "running/crashed")]


def test_cli_runs_through_a_pipe_is_one_whole_line_per_run(tmp_path: Path):
    """Piped, `log runs` is not a table squeezed into 80 columns: nothing folded, nothing cut."""
    path = tmp_path / "xdg" / "sandboxctl" / "actions.jsonl"
    log = ActionLog(str(path), RUN_A)
    log.write("run.start", argv=["python", "-c", "print('a fairly long command line that no table of 80 columns "
                                 "holds')"], workspace="/w", policy="claude-code", policy_sha256="ab" * 32,
              layers={}, limits={})
    log.write("run.end", exit_code=0, signal=None, duration_s=1.25, denied=3, timed_out=False)
    log.close()
    write_run(path, RUN_B, end=False).close()
    lines = sbx(tmp_path, "runs").stdout.splitlines()
    assert len(lines) == 3 and lines[0].split() == ["run", "started", "command", "policy", "exit", "duration",
                                                    "denied"]
    assert lines[1].startswith(RUN_A) and "claude-code" in lines[1].split() and lines[1].endswith(" 3")
    assert "a fairly long command" in lines[1] and len(lines[1]) > 80
    assert lines[2].startswith(RUN_B) and "running/crashed" in lines[2].split()
    assert lines[0].index("policy") == lines[1].index("claude-code") == lines[2].index("default")


def test_cli_errors(tmp_path: Path, cli_log: Path):
    result = sbx(tmp_path, "--since", "soon")
    assert result.returncode == 125 and "Traceback" not in result.stderr
    assert result.stderr.startswith("sandboxctl: error: --since") and "hint:" in result.stderr
    result = sbx(tmp_path, "--log", str(tmp_path / "missing.jsonl"))
    assert result.returncode == 125 and "no action log" in result.stderr and "hint:" in result.stderr
    result = sbx(tmp_path, "--log", str(tmp_path / "missing.jsonl"), "--verify")
    assert result.returncode == 125
    result = sbx(tmp_path, "bogus")
    assert result.returncode == 125 and "unknown log view" in result.stderr


def test_cli_follow(tmp_path: Path, cli_log: Path):
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg")}
    proc = subprocess.Popen([sys.executable, "-m", "sandboxctl", "log", "--follow", "--json", "--event", "net"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(30, proc.kill)  # never hang the suite on a readline
    watchdog.start()
    try:
        assert json.loads(proc.stdout.readline())["run"] == RUN_B  # the backlog: the last run
        with ActionLog(str(cli_log), "20240101T000200-cccccc", max_bytes=cli_log.stat().st_size + 10) as log:
            log.write("net", host="a.example", port=443, decision="allow", rule="x")  # rotates
            log.write("file", pid=1, path="/x", op="write", decision="allow", rule="x")
            log.write("net", host="b.example", port=80, decision="deny", rule="x")
        assert json.loads(proc.stdout.readline())["host"] == "a.example"
        assert json.loads(proc.stdout.readline())["host"] == "b.example"
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)  # a loaded CI machine: it once took over 10 s
        watchdog.cancel()
    assert proc.returncode == -signal.SIGINT and "Traceback" not in err  # as a shell expects (output.die_of_sigint)
    assert Path(f"{cli_log}.1").exists()


def test_log_of_a_run_whose_beginning_was_rotated_out_says_so(tmp_path: Path):
    """A long (or flooding) run can push its own first records out of the kept files: the view of
    the run must say that it is a part, not the whole."""
    path = tmp_path / "xdg" / "sandboxctl" / "actions.jsonl"
    with ActionLog(str(path), RUN_A, max_bytes=2000, keep=2) as log:
        log.write("run.start", argv=["true"], workspace="/w", policy="default")
        for i in range(60):
            log.write("exec", pid=1, path="/bin/true", argv=["true", str(i)])
    result = sbx(tmp_path, "--run", RUN_A)
    assert result.returncode == 0, result.stderr
    first = min(r.data["seq"] for r in logfiles.iter_records(path))
    assert first > 0 and f"the first {first} records of run {RUN_A} were rotated out" in result.stderr
    whole = tmp_path / "whole.jsonl"
    write_run(whole, RUN_B).close()
    assert "rotated out" not in sbx(tmp_path, "--log", str(whole), "--run", RUN_B).stderr


def test_verify_says_which_runs_have_no_end(tmp_path: Path):
    """Lines cut off at the end leave a chain intact as far as it goes: the last run's run.end
    removed (with the records before it) must not read as a plain "chain intact"."""
    path = tmp_path / "xdg" / "sandboxctl" / "actions.jsonl"
    write_run(path, RUN_A, denials=2).close()
    write_run(path, RUN_B).close()
    raw = lines_of(path)
    assert verify.verify(path).unended == ()
    assert "no run.end" not in sbx(tmp_path, "--verify").stdout
    put(path, raw[:-2])  # the last run's final record and its run.end gone
    result = verify.verify(path)
    assert result.ok and result.unended == (RUN_B,)
    shown = sbx(tmp_path, "--verify")
    assert shown.returncode == 0 and shown.stdout.startswith("chain intact")
    assert f"note: 1 run has no run.end: {RUN_B}" in shown.stdout
    assert json.loads(sbx(tmp_path, "--verify", "--json").stdout)["unended"] == [RUN_B]
