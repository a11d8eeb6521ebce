"""Exec records match what ran: raced path buffers are flagged, failed lookups are no exec events.

Judged from outside: a canary file the evil script appends to counts its runs; the log says
what the supervisor recorded.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

RACE = r"""
import ctypes, os, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
evil, true = sys.argv[1].encode() + b"\0", b"/usr/bin/true\0"
buf = ctypes.create_string_buffer(max(len(evil), len(true)) + 8)
envp = (ctypes.c_char_p * 1)(None)
stop = threading.Event()
def flip():
    while not stop.is_set():
        for _ in range(200):
            ctypes.memmove(buf, evil, len(evil))
            ctypes.memmove(buf, true, len(true))
threading.Thread(target=flip, daemon=True).start()
pid = ctypes.c_int()
spawned = 0
for i in range(int(sys.argv[2])):
    argv = (ctypes.c_char_p * 3)(b"race-marker", str(i).encode(), None)  # which spawn: not raced
    if libc.posix_spawn(ctypes.byref(pid), buf, None, None, argv, envp) == 0:
        os.waitpid(pid.value, 0)
        spawned += 1
stop.set()
print("spawned", spawned, flush=True)
"""

CALM = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(sys.argv[1].encode())
argv = (ctypes.c_char_p * 2)(b"calm-marker", None)
envp = (ctypes.c_char_p * 1)(None)
pid = ctypes.c_int()
for _ in range(5):
    assert libc.posix_spawn(ctypes.byref(pid), buf, None, None, argv, envp) == 0
    os.waitpid(pid.value, 0)
"""


def _evil_script(workspace) -> tuple[str, object]:
    canary = workspace / "canary"
    evil = workspace / "evil.sh"
    evil.write_text(f"#!/bin/sh\necho \"$1\" >> {canary}\n")
    evil.chmod(evil.stat().st_mode | stat.S_IXUSR)
    return str(evil), canary


def test_a_raced_exec_path_is_logged_as_what_ran_or_flagged(sandbox):
    """The issue's attack: a thread flips the path buffer evil.sh <-> /usr/bin/true while the
    main thread posix_spawn()s (vfork: the child shares the memory) in a loop."""
    evil, canary = _evil_script(sandbox.workspace)
    result = sandbox.run("--", "python3", "-c", RACE, evil, "300", timeout=240)
    assert result.returncode == 0, result.stderr
    evil_runs = set(canary.read_text().split()) if canary.exists() else set()
    records = sandbox.records()
    raced = {r["argv"][1]: r for r in records if r["event"] == "exec" and r["argv"][:1] == ["race-marker"]}
    spawned = int(result.stdout.split()[-1])
    assert spawned > 200 and len(raced) >= spawned, "every spawn that ran has its record"
    tampered = {r["pid"] for r in records if r["event"] == "tamper"}
    # every run of evil.sh (judged by the canary) is logged as evil.sh, or its record is flagged
    lying = [raced[i] for i in evil_runs
             if raced[i]["path"] != evil and raced[i].get("verified") is not False and raced[i]["pid"] not in tampered]
    assert not lying, f"{len(lying)} of {len(evil_runs)} runs of evil.sh were logged as something else: {lying[:3]}"
    # and after the fact: evil.sh's canary write is a trapped call, where /proc/PID/exe betrays the swap
    mislabelled = [raced[i] for i in evil_runs if raced[i]["path"] != evil]
    assert all(r["pid"] in tampered for r in mislabelled), (len(mislabelled), len(tampered))
    shown = subprocess.run([sys.executable, "-m", "sandboxctl", "log", "--event", "tamper"],
                           env=sandbox.env({"COLUMNS": "300"}),
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and (not mislabelled or "but the process runs" in shown.stdout), shown
    # the flipping thread shares the spawner's memory with every vfork child: no record is "verified"
    assert all(r.get("verified") is False and "shares the caller's memory" in r["unverified"] for r in raced.values())

def test_an_exec_nobody_can_race_is_verified(sandbox):
    """The same posix_spawn from a single-threaded parent (blocked in vfork while its child
    execs), and a shell's fork+exec: nothing else can write what the supervisor read."""
    result = sandbox.run("--", "python3", "-c", CALM + "\nos.system('/usr/bin/true; /bin/echo ok')",
                         "/usr/bin/true")
    assert result.returncode == 0, result.stderr
    execs = [r for r in sandbox.records() if r["event"] == "exec"]
    calm = [r for r in execs if r["argv"][:1] == ["calm-marker"]]
    assert len(calm) == 5 and all(r["verified"] is True and r["path"] == "/usr/bin/true" for r in calm), calm
    shell = [r for r in execs if r["path"] in ("/usr/bin/true", "/bin/echo") and r["argv"][0] != "calm-marker"]
    assert shell and all(r["verified"] is True and r["result"] == "continued" for r in shell), shell
    assert not [r for r in sandbox.records() if r["event"] == "tamper"]


def test_failed_path_lookups_are_not_exec_events(sandbox):
    code = ("import os; os.environ['PATH'] = '/nowhere:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';"
            "os.execvp('true', ['true'])")
    result = sandbox.run("--", "python3", "-c", code)
    assert result.returncode == 0, result.stderr
    paths = [r["path"] for r in sandbox.records() if r["event"] == "exec"]
    assert paths[1:] == ["/usr/bin/true"], paths
    missing = sandbox.run("--", "python3", "-c", "import os; os.execv('/usr/bin/nosuch', ['x'])")
    assert "FileNotFoundError" in missing.stderr
    assert "/usr/bin/nosuch" not in [r["path"] for r in sandbox.records() if r["event"] == "exec"]


def test_writing_process_memory_through_proc_is_refused_and_logged(sandbox, tmp_path):
    """No Yama here: a sandboxed process could otherwise rewrite another's pending exec."""
    links = tmp_path / "links"  # a read-only host directory: the link is resolved by the supervisor
    links.mkdir()
    os.symlink("/proc/self/mem", links / "mem-link")
    os.chmod(tmp_path, 0o755)
    policy = sandbox.write_policy("links.yaml", f"version: 1\nextends: default\nfilesystem:\n  read: [{links}]\n")
    code = f"""
import errno, os
for path in ("/proc/self/mem", f"/proc/{{os.getpid()}}/task/{{os.getpid()}}/mem", "{links}/mem-link"):
    try:
        os.close(os.open(path, os.O_RDWR))
        print("opened", path)
    except OSError as exc:
        print("refused", path, errno.errorcode[exc.errno])
os.close(os.open("/proc/self/mem", os.O_RDONLY))
print("read ok")
"""
    result = sandbox.run("--", "python3", "-c", code, policy=str(policy))
    assert result.returncode == 0, result.stderr
    assert "opened" not in result.stdout and result.stdout.count("refused") == 3 and "read ok" in result.stdout
    denials = [r for r in sandbox.records() if r["event"] == "file" and r["decision"] == "deny"]
    assert len(denials) == 3 and all("/proc/PID/mem" in r["rule"] for r in denials), denials
    end = [r for r in sandbox.records() if r["event"] == "run.end"][-1]
    assert end["denied"] == 3
