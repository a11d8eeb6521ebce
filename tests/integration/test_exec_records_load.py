"""Exec records under load: queued by the notification thread, written by the log's thread.

However fast the sandbox execs, and however the run ends, the log holds one record per exec the
supervisor let through, in order, in an intact chain, with run.end last and its head over every
line the run wrote. Judged from outside: the log file, `sandboxctl log --verify`, and counts the
command leaves in the workspace.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sandboxctl.log.chain import GENESIS, run_head

LOOP = 'i=0; while [ "$i" -lt {n} ]; do /bin/true; i=$((i+1)); done; echo "$i" > done'


def _verify(sandbox) -> None:
    result = subprocess.run([sys.executable, "-m", "sandboxctl", "log", "--verify"], env=sandbox.env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "chain intact" in result.stdout, (result.stdout, result.stderr)


def _runs(log: Path) -> dict[str, list[tuple[bytes, dict]]]:
    runs: dict[str, list[tuple[bytes, dict]]] = {}
    for line in log.read_bytes().splitlines():
        record = json.loads(line)
        runs.setdefault(record["run"], []).append((line, record))
    return runs


def _whole(lines: list[tuple[bytes, dict]]) -> list[dict]:
    """The run's records are seq 0..n, run.start first, run.end last with the head of the rest."""
    records = [record for _line, record in lines]
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert records[0]["event"] == "run.start" and records[-1]["event"] == "run.end"
    head = GENESIS
    for line, _record in lines[:-1]:
        head = run_head(head, line)
    assert records[-1]["head"] == head
    stamps = [r["ts"] for r in records]
    assert stamps == sorted(stamps)
    return records


def test_an_exec_storm_is_logged_whole(sandbox):
    """4000 execs as fast as a shell can make them (hundreds of the log thread's batches): every one
    has its record, none twice."""
    result = sandbox.sh(LOOP.format(n=4000), timeout=300)
    assert result.returncode == 0, result.stderr
    assert (sandbox.workspace / "done").read_text().strip() == "4000"
    _verify(sandbox)
    (records,) = [_whole(lines) for lines in _runs(sandbox.log_path).values()]
    execs = [r for r in records if r["event"] == "exec"]
    assert len([r for r in execs if r["path"] == "/bin/true"]) == 4000
    assert len({r["pid"] for r in execs if r["path"] == "/bin/true"}) == 4000
    assert all(r["result"] == "continued" and r["argv"] == ["/bin/true"] for r in execs if r["path"] == "/bin/true")


def test_two_runs_sharing_the_log_keep_both_chains(sandbox):
    """Two runs exec at once into the same log file: both chains and the file's chain hold."""
    script = 'i=0; while [ "$i" -lt 1500 ]; do /bin/true; i=$((i+1)); done'
    runs = [subprocess.Popen(sandbox.argv("--", "/bin/sh", "-c", script), cwd=sandbox.workspace, env=sandbox.env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for run in runs:
        _out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    _verify(sandbox)
    by_run = _runs(sandbox.log_path)
    assert len(by_run) == 2
    for lines in by_run.values():
        records = _whole(lines)
        assert len([r for r in records if r["event"] == "exec" and r["path"] == "/bin/true"]) == 1500


def test_a_run_stopped_in_the_middle_of_a_storm_loses_no_record(sandbox):
    """The timeout kills the sandbox while it execs as fast as it can: each /bin/true the
    counter says has run has its record, and run.end still closes the run's chain."""
    script = 'i=0; while :; do /bin/true; i=$((i+1)); echo "$i" >> count; done'
    result = sandbox.run("--timeout", "3s", "--", "/bin/sh", "-c", script, timeout=120)
    assert result.returncode == 124, result.stderr
    lines = (sandbox.workspace / "count").read_bytes().split(b"\n")[:-1]  # whole lines: the kill may cut one
    counted = len(lines)
    assert counted > 100 and lines[-1] == str(counted).encode()
    _verify(sandbox)
    (records,) = [_whole(lines) for lines in _runs(sandbox.log_path).values()]
    logged = len([r for r in records if r["event"] == "exec" and r["path"] == "/bin/true"])
    assert logged >= counted  # the one killed between its exec and its count is logged, not counted
    assert any(r["event"] == "limit" and r.get("kind") == "timeout" for r in records)


FAILING_LISTENER = r"""
import errno, sys
from sandboxctl.supervise import notify
real, calls = notify.Dispatcher.handle, []
def handle(self):
    calls.append(1)
    if len(calls) == 3:  # the listener itself breaks (not one call: the next NOTIF_RECV)
        raise OSError(errno.EBADF, "Bad file descriptor")
    return real(self)
notify.Dispatcher.handle = handle
sys.argv = ["sandboxctl", *sys.argv[1:]]
from sandboxctl.cli.main import main
main()
"""


def test_a_broken_listener_stops_the_run_and_says_so(sandbox):
    """Nothing the sandbox calls could be answered any more: it is killed, not left hanging, and
    the run fails as sandboxctl's own failure (125) with one line, run.end still last."""
    result = subprocess.run([sys.executable, "-c", FAILING_LISTENER, "run", "-q", "-p", "default", "--timeout", "60s",
                             "--", "/bin/sh", "-c", 'while :; do /bin/true; done'], cwd=sandbox.workspace,
                            env=sandbox.env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 125, (result.returncode, result.stderr)
    assert "could no longer answer the sandbox's system calls (OSError)" in result.stderr
    assert "Traceback" not in result.stderr
    _verify(sandbox)
    (records,) = [_whole(lines) for lines in _runs(sandbox.log_path).values()]
    assert not any(r["event"] == "limit" for r in records)  # it was not the timeout
