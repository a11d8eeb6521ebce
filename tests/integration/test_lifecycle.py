"""Lifecycle: exit codes, limits, signals, and nothing surviving the run, whatever way it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from sandboxctl.supervise.processes import wait_for
from tests.integration.conftest import processes_with

_wait_for = wait_for


@pytest.mark.parametrize("script,code", [("exit 0", 0), ("exit 7", 7), ("kill -9 $$", 137), ("kill -15 $$", 143)])
def test_exit_codes_follow_the_command(sandbox, script, code):
    assert sandbox.sh(script).returncode == code


def test_command_not_found_is_127(sandbox):
    result = sandbox.run("--", "no-such-command-xyz")
    assert result.returncode == 127
    assert "not found" in result.stderr and "Traceback" not in result.stderr


def test_not_executable_is_126(sandbox):
    (sandbox.workspace / "script.sh").write_text("#!/bin/sh\necho hi\n")
    assert sandbox.run("--", "./script.sh").returncode == 126


def test_timeout_kills_the_whole_sandbox_with_124(sandbox):
    marker = "7.31415"
    started = time.monotonic()
    result = sandbox.run("--timeout", "1s", "--", "/bin/sh", "-c",
                         f"trap '' TERM; sleep {marker} & sleep {marker}")
    assert result.returncode == 124
    assert time.monotonic() - started < 6
    assert not processes_with(f"sleep {marker}")
    limits = [r for r in sandbox.records() if r["event"] == "limit"]
    assert limits and limits[0]["kind"] == "timeout"
    end = [r for r in sandbox.records() if r["event"] == "run.end"][-1]
    assert end["exit_code"] == 124


def test_a_daemonized_grandchild_does_not_outlive_the_run(sandbox):
    marker = "8.27182"
    result = sandbox.sh(f"setsid sh -c 'sleep {marker} &' ; (setsid sleep {marker} &) ; "
                        f"nohup sleep {marker} >/dev/null 2>&1 & echo started")
    assert result.returncode == 0 and "started" in result.stdout
    assert _wait_for(lambda: not processes_with(f"sleep {marker}"), 3)


def test_killing_the_supervisor_leaves_nothing(sandbox):
    marker = "9.16180"
    proc = subprocess.Popen(sandbox.argv("--", "/bin/sh", "-c", f"sleep {marker} & sleep {marker}"),
                            cwd=sandbox.workspace, env=sandbox.env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: len(processes_with(f"sleep {marker}")) >= 2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _wait_for(lambda: not processes_with(f"sleep {marker}"), 5), processes_with(marker)
    finally:
        proc.kill()


def test_sigterm_is_forwarded_and_the_exit_status_returned(sandbox):
    proc = subprocess.Popen(sandbox.argv("--", "/bin/sh", "-c",
                                         "trap 'echo got-term; exit 42' TERM; sleep 6.5 & wait"),
                            cwd=sandbox.workspace, env=sandbox.env(), stdout=subprocess.PIPE, text=True)
    assert _wait_for(lambda: bool(processes_with("sleep 6.5")))
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 42
    assert "got-term" in out
    assert _wait_for(lambda: not processes_with("sleep 6.5"), 3)


def test_fork_bomb_is_contained_by_the_pids_limit(sandbox):
    policy = sandbox.write_policy("pids.yaml", "version: 1\nextends: default\nlimits:\n  pids: 40\n")
    code = ("import os, time\nkids = 0\ntry:\n    while kids < 500:\n        if os.fork() == 0:\n"
            "            time.sleep(3); os._exit(0)\n        kids += 1\nexcept OSError as e:\n"
            "    print('stopped at', kids, e.errno)\n")
    result = sandbox.run("--", "python3", "-c", code, policy=str(policy), timeout=60)
    assert "stopped at" in result.stdout, result.stdout + result.stderr
    assert int(result.stdout.split()[2]) < 40


def test_memory_limit_stops_a_memory_bomb(sandbox):
    code = ("try:\n    blocks = [bytearray(64 << 20) for _ in range(32)]\n    print('allocated 2G')\n"
            "except MemoryError:\n    print('memory refused')")
    result = sandbox.run("--memory", "512M", "--", "python3", "-c", code)
    assert "allocated 2G" not in result.stdout
    start = next(r for r in sandbox.records() if r["event"] == "run.start")
    if start["limits"]["memory_method"] == "cgroup":  # the OOM killer ends it: 137 and a limit event
        assert result.returncode == 137
        assert any(r["event"] == "limit" and r["kind"] == "memory" for r in sandbox.records())
    else:  # RLIMIT_AS: the allocation fails inside
        assert start["limits"]["memory_method"] == "rlimit-as"
        assert "memory refused" in result.stdout, result.stdout + result.stderr


def test_limits_leave_no_cgroup_behind(sandbox):
    from sandboxctl.supervise.cgroups import PREFIX, detect

    layout = detect()
    if layout is None:
        pytest.skip("no writable cgroup tree: limits use rlimits here")
    policy = sandbox.write_policy("pids.yaml", "version: 1\nextends: default\nlimits:\n  pids: 64\n")
    assert sandbox.run("--memory", "256M", "--", "true", policy=str(policy)).returncode == 0
    run_id = next(r["run"] for r in sandbox.records() if r["event"] == "run.start")
    for parent in layout.parents.values():  # other runs on this machine may hold their own
        assert not [e for e in os.listdir(parent) if e.startswith(PREFIX) and e.endswith(run_id)]


def test_file_size_limit(sandbox):
    policy = sandbox.write_policy("fsize.yaml", "version: 1\nextends: default\nlimits:\n  file_size: 1M\n")
    result = sandbox.run("--", "/bin/sh", "-c", "head -c 4M /dev/zero > big; echo rc=$?", policy=str(policy))
    assert "rc=0" not in result.stdout
    assert (sandbox.workspace / "big").stat().st_size <= 1 << 20


def test_stdin_and_stdout_pass_through(sandbox):
    result = sandbox.run("--", "/bin/sh", "-c", "tr a-z A-Z", input="hello sandbox\n")
    assert result.stdout == "HELLO SANDBOX\n"


def test_run_leaves_no_temporary_files(sandbox, tmp_path):
    before = set(os.listdir("/tmp"))
    assert sandbox.run("--", "true").returncode == 0
    after = set(os.listdir("/tmp"))
    assert not {name for name in after - before if "sandboxctl" in name or name.startswith("tmp")}


def test_log_records_start_and_end_with_a_valid_chain(sandbox):
    from sandboxctl.log.chain import verify_lines

    sandbox.sh("exit 3")
    sandbox.sh("exit 0")
    lines = sandbox.log_path.read_bytes().splitlines()
    count, broken = verify_lines(iter(lines))
    assert broken is None and count == len(lines)
    records = sandbox.records()
    assert [r["event"] for r in records if r["event"].startswith("run.")] == [
        "run.start", "run.end", "run.start", "run.end"]
    assert [r["exit_code"] for r in records if r["event"] == "run.end"] == [3, 0]
    assert [r["path"] for r in records if r["event"] == "exec"] == ["/bin/sh", "/bin/sh"]
    assert [r["seq"] for r in records[:3]] == [0, 1, 2]
    assert oct(sandbox.log_path.stat().st_mode & 0o777) == "0o600"


def test_unwritable_log_fails_before_the_command_starts(sandbox):
    log_dir = sandbox.home / "ro-logs"
    log_dir.mkdir()
    log_dir.chmod(0o500)
    try:
        if os.access(log_dir, os.W_OK):
            pytest.skip("running with privileges that ignore directory permissions")
        result = sandbox.run("--log", str(log_dir / "a.jsonl"), "--", "/bin/sh", "-c", "touch ran")
        assert result.returncode == 125
        assert not (sandbox.workspace / "ran").exists()
    finally:
        log_dir.chmod(0o700)


def test_full_disk_log_fails_before_the_command_starts(sandbox):
    result = sandbox.run("--log", "/dev/full", "--", "/bin/sh", "-c", "touch ran")
    assert result.returncode == 125
    assert not (sandbox.workspace / "ran").exists()


def test_the_command_gets_default_sigpipe_and_sigxfsz(sandbox):
    """The launcher is Python, which ignores both; a command must not inherit that."""
    result = sandbox.sh("grep SigIgn /proc/self/status; yes | head -1")
    mask = int(result.stdout.split()[1], 16)
    assert not mask & (1 << (13 - 1)) and not mask & (1 << (25 - 1))
    assert "Broken pipe" not in result.stderr


def test_the_run_writes_no_bytecode_into_sandboxctls_own_protected_code(workspace, monkeypatch):
    """sandboxctl's code is a protected path checked at the run's end: a module imported late in
    the run must not leave a fresh .pyc there (reported as changed during the run; under gVisor
    put back to the stale one, so changed again by every run)."""
    import sys

    from sandboxctl import Sandbox
    from sandboxctl.supervise.runner import Supervisor

    seen = []
    launch = Supervisor.launch

    def watched(self):
        seen.append(sys.dont_write_bytecode)
        return launch(self)

    monkeypatch.setattr(Supervisor, "launch", watched)
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    result = Sandbox(workspace=workspace).run(["true"])
    assert result.exit_code == 0 and seen == [True]
    assert sys.dont_write_bytecode is False  # the caller's own setting back once no run is on
