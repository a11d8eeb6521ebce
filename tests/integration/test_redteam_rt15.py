"""Red team 15: what the action log shows of an exec is what ran.

Judged from outside: canary files the payloads write say what really ran; the host-side log
and `sandboxctl log` say what the supervisor recorded.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys


def test_a_scripts_interpreter_is_in_its_exec_record(sandbox):
    """`./build.sh` whose #! line names a binary the sandbox wrote: the kernel runs that binary,
    which no execve names. The record (and the human view) must say so, not only "build.sh"."""
    ws = sandbox.workspace
    payload = ws / "payload"
    shutil.copy("/bin/sh", payload)  # any ELF the command could have written
    payload.chmod(payload.stat().st_mode | stat.S_IXUSR)
    script = ws / "build.sh"
    script.write_text(f"#!{payload}\necho ran > {ws}/canary\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    result = sandbox.run("--", "python3", "-c", "import os; os.execv('./build.sh', ['./build.sh'])")
    assert result.returncode == 0, result.stderr
    assert (ws / "canary").read_text() == "ran\n", "the payload ran (judged from outside)"
    records = [r for r in sandbox.records() if r["event"] == "exec" and r["path"] == str(script)]
    assert len(records) == 1, sandbox.records()
    assert records[0]["interpreter"] == str(payload), records[0]
    shown = subprocess.run([sys.executable, "-m", "sandboxctl", "log", "--event", "exec"],
                           env=sandbox.env({"COLUMNS": "300"}), capture_output=True, text=True, timeout=60)
    line = next(text for text in shown.stdout.splitlines() if "build.sh" in text and "python3" not in text)
    assert str(payload) in line, shown.stdout


LONG_NAMES = r"""
import errno, sys
for path in sys.argv[1:]:
    try:
        open(path, "w")
        print(path[:8], "opened")
    except OSError as exc:
        print(path[:8], errno.errorcode[exc.errno])
"""


def test_a_name_too_long_is_the_kernels_error_and_no_false_record(sandbox):
    """A path component past NAME_MAX was refused with EACCES and logged as a refused write of
    /proc/PID/mem ("where it leads through /proc could not be established"), in the workspace
    too: a false alarm in the log and the table, and a wrong errno for tools that probe name
    lengths. The host's own answer (ENAMETOOLONG) is what the sandbox must see, with no denial."""
    long = "N" * 300
    paths = [f"/usr/{long}", f"/usr/{long}/x", f"{sandbox.workspace}/{long}", f"{sandbox.workspace}/{long}/x"]
    host = []
    for path in paths:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        except OSError as exc:
            host.append(exc.errno)
    assert host == [errno.ENAMETOOLONG] * 4  # the host's own kernel, outside any sandbox
    result = sandbox.run("--", "python3", "-c", LONG_NAMES, *paths)
    assert result.returncode == 0, result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines()] == ["ENAMETOOLONG"] * 4, result.stdout
    records = sandbox.records()
    assert not [r for r in records if "/proc/PID/mem" in str(r.get("rule", ""))], records
    assert not [r for r in records if r.get("decision") == "deny"], records
    assert "denied" not in result.stderr


def test_a_symlink_loop_is_eloop_and_no_false_record(sandbox):
    """Two links naming each other in the workspace: the /proc/PID/mem walk gave up after 40
    links as "unsure", so `open("loop/x", "w")` was EACCES and a logged refusal to write process
    memory. The kernel's answer (ELOOP, judged on the host) is what the sandbox must get."""
    ws = sandbox.workspace
    os.symlink("loop-b", ws / "loop-a")
    os.symlink("loop-a", ws / "loop-b")
    paths = [f"{ws}/loop-a/x", f"{ws}/loop-a"]
    for path in paths:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        except OSError as exc:
            assert exc.errno == errno.ELOOP  # the host's own kernel
        else:
            raise AssertionError(f"{path} opened on the host")
    result = sandbox.run("--", "python3", "-c", LONG_NAMES, *paths)
    assert result.returncode == 0, result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines()] == ["ELOOP"] * 2, result.stdout
    records = sandbox.records()
    assert not [r for r in records if "/proc/PID/mem" in str(r.get("rule", ""))], records
    assert not [r for r in records if r.get("decision") == "deny"], records


PROC_FD_EXEC = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
pid = os.fork()
if pid == 0:
    os.execv(f"/proc/self/fd/{fd}", ["innocent", "-c", f"echo ran > {sys.argv[2]}"])
os.waitpid(pid, 0)
"""


def test_an_exec_through_proc_self_fd_names_the_file_that_ran(sandbox):
    """`execv("/proc/self/fd/3")` was logged as path /proc/self/fd/3 and nothing else: which
    program ran was not in the log at all. The record must name what the magic link leads to."""
    ws = sandbox.workspace
    payload = ws / "payload"
    shutil.copy("/bin/sh", payload)
    payload.chmod(payload.stat().st_mode | stat.S_IXUSR)
    canary = ws / "canary"
    result = sandbox.run("--", "python3", "-c", PROC_FD_EXEC, str(payload), str(canary))
    assert result.returncode == 0, result.stderr
    assert canary.read_text() == "ran\n", "the payload ran (judged from outside)"
    records = [r for r in sandbox.records() if r["event"] == "exec" and r["argv"][:1] == ["innocent"]]
    assert len(records) == 1 and records[0]["path"].startswith("/proc/self/fd/"), records
    assert records[0]["resolved"] == str(payload), records[0]
    shown = subprocess.run([sys.executable, "-m", "sandboxctl", "log", "--event", "exec"],
                           env=sandbox.env({"COLUMNS": "300"}), capture_output=True, text=True, timeout=60)
    line = next(text for text in shown.stdout.splitlines() if "exec       innocent" in text)
    assert str(payload) in line, shown.stdout
