"""Red team (late changes): the per-user runtime dir in /tmp, judged from outside (a canary, the
registry's own listing), and the mediated calls after the mediate.py split."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sandboxctl.errors import SandboxError
from sandboxctl.supervise import session_registry


@pytest.fixture
def tmp_runtime(tmp_path, monkeypatch):
    """No XDG_RUNTIME_DIR: the runtime dir is $TMPDIR/sandboxctl-UID, as on a bare login."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    return tmp_path / f"sandboxctl-{os.getuid()}"


def _plant(sessions, canary):
    """What another user leaves in a sessions dir while it is writable by others: a symlink at
    every name the next write's temporary file can have, a live-looking entry, a forged ending."""
    for pid in {os.getpid(), *range(1, 400)}:
        os.symlink(canary, sessions / f"demo.json.{pid}.tmp")
    (sessions / "evil.json").write_text(json.dumps({"run": "x", "pid": 1, "policy": "EVIL", "workspace": "/them"}))
    (sessions / "ghost.ended").write_text(json.dumps({"reason": "forged by another user", "run": "zzz"}))


@pytest.mark.parametrize("writable", ["runtime", "sessions"])
def test_a_runtime_dir_others_could_write_is_refused_not_adopted(tmp_runtime, tmp_path, writable):
    """A victim's own dir that was group/other-writable (a loose umask, a hand-made dir) may hold
    another user's plants; chmod 0700 closes it but keeps them. It is refused, and nothing planted
    is ever written through, listed, or shown."""
    sessions = tmp_runtime / "sessions"
    sessions.mkdir(parents=True, mode=0o700)
    os.chmod(tmp_runtime, 0o700)
    os.chmod(tmp_runtime if writable == "runtime" else sessions, 0o777)
    canary = tmp_path / "canary"
    canary.write_text("ORIGINAL")
    _plant(sessions, canary)
    with pytest.raises(SandboxError, match="others"):
        session_registry.claim("demo")
    with pytest.raises(SandboxError):
        session_registry.sessions_dir(create=True)
    assert canary.read_text() == "ORIGINAL"
    assert [i for i in session_registry.running() if i.get("policy") == "EVIL"] == []


def test_a_session_record_is_never_written_through_a_planted_symlink(tmp_runtime, tmp_path):
    """The record's temporary file is created afresh (O_EXCL|O_NOFOLLOW, an unguessable name): a
    symlink already at a pid-named path is never followed into one of the user's own files."""
    sessions = tmp_runtime / "sessions"
    sessions.mkdir(parents=True, mode=0o700)
    os.chmod(tmp_runtime, 0o700)
    canary = tmp_path / "canary"
    canary.write_text("ORIGINAL")
    os.symlink(canary, sessions / f"demo.json.{os.getpid()}.tmp")
    session_registry.write_info("demo", {"run": "r", "pid": os.getpid()})
    assert canary.read_text() == "ORIGINAL"
    assert json.loads((sessions / "demo.json").read_text())["run"] == "r"


# ------------------------------------------------------------------ mediate.py + mediate_calls.py, after the split
FLIP = r"""
import ctypes, os, threading
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(64)
ok, bad = b"ok.txt\0", b".git/hooks/pre-commit\0"
stop = False
def flip():
    while not stop:
        ctypes.memmove(buf, bad, len(bad)); ctypes.memmove(buf, ok, len(ok))
threading.Thread(target=flip, daemon=True).start()
for _ in range(3000):
    fd = libc.open(buf, os.O_WRONLY | os.O_CREAT, 0o755)
    if fd >= 0:
        os.write(fd, b"#!/bin/sh\necho PWNED\n"); os.close(fd)
stop = True
print("end")
"""


def test_mediated_renames_links_and_races_keep_protected_paths(sandbox):
    """Under the default policy: a rename onto .envrc, a symlinked .claude, a hardlink of
    .git/config, and a racing thread flipping an open()'s path onto .git/hooks/pre-commit. Judged
    by the host's own files after the run."""
    from tests.integration.test_protected_paths import repo

    ws = repo(sandbox.workspace, sandbox.home)
    config = (ws / ".git" / "config").read_bytes()
    (ws / "flip.py").write_text(FLIP)
    script = ("echo 'echo PWNED' > t; mv t .envrc; mkdir decoy; ln -s decoy .claude; "
              "echo '{\"hooks\":1}' > .claude/settings.json; ln .git/config hl; echo '[core] x = 1' >> hl; "
              "mkdir d2; echo '{\"hooks\":1}' > d2/settings.json; mv d2 .claude; "
              "ln -s .git/hooks h; printf '#!/bin/sh\\necho PWNED\\n' > h/post-checkout; "
              "python3 flip.py; echo done")
    result = sandbox.sh(script, timeout=120)
    assert "done" in result.stdout, result.stderr
    assert not (ws / ".envrc").exists()
    assert not (ws / "decoy" / "settings.json").exists() and not (ws / ".claude" / "settings.json").exists()
    assert (ws / ".git" / "config").read_bytes() == config
    for name in ("pre-commit", "post-checkout"):
        hook = ws / ".git" / "hooks" / name
        assert not hook.exists() or b"PWNED" not in hook.read_bytes()
    assert (ws / "ok.txt").exists()  # the race really ran: its harmless side was written


# ====================================================================== the log, flooded
FLOOD = ("/bin/echo evidence > first.txt; i=0; while [ $i -lt 3000 ]; do /bin/true; i=$((i+1)); done; "
         "/bin/echo done > last.txt")


@pytest.mark.parametrize("forwarded", [False, True])
def test_a_run_cannot_flood_its_own_first_records_out_of_the_log(sandbox, monkeypatch, forwarded):
    """A command does something, then execs /bin/true in a loop: allowed records are not
    throttled, so enough of them would rotate the record of what it did first (and run.start)
    out of the kept files. The run is stopped when its records reach half of what the log keeps;
    judged from outside: the loop never finished, and the kept files still hold the run's first
    records. With log.forward every record is kept outside too, and the run goes on."""
    from sandboxctl import Sandbox
    from sandboxctl.log import files as logfiles
    from sandboxctl.log.writer import ActionLog

    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(ActionLog.__init__, "__defaults__", ((), 40_000, 2))  # keeps 3 x 40 kB
    policy = "default"
    if forwarded:
        policy = str(sandbox.write_policy("fwd.yaml", "version: 1\nextends: default\n"
                                                      "log:\n  forward: ['syslog+udp://127.0.0.1:9']\n"))
    box = Sandbox(policy, sandbox.workspace)
    if forwarded:
        result = box.run(["/bin/sh", "-c", FLOOD])
        assert result.exit_code == 0 and (sandbox.workspace / "last.txt").exists()
        return
    with pytest.raises(SandboxError) as raised:
        box.run(["/bin/sh", "-c", FLOOD])
    assert raised.value.exit_code == 125 and "before the log's rotation could drop" in raised.value.message
    assert (sandbox.workspace / "first.txt").exists() and not (sandbox.workspace / "last.txt").exists()
    records = [r.data for r in logfiles.iter_records(sandbox.log_path)]
    run = next(r["run"] for r in records if r["event"] == "limit" and r.get("kind") == "log")
    mine = [r for r in records if r["run"] == run]
    assert mine[0]["event"] == "run.start" and mine[0]["seq"] == 0  # nothing of the run was rotated out
    assert any(r["event"] == "exec" and "evidence" in r.get("argv", []) for r in mine)
    assert mine[-1]["event"] == "run.end"
    assert Path(f"{sandbox.log_path}.1").exists()  # the log did rotate meanwhile


TWO_RUNS = r"""
import sys
from sandboxctl.log.writer import ActionLog
ActionLog.__init__.__defaults__ = ((), 40_000, 2)
from sandboxctl import Sandbox
tag, workspace, prefill = sys.argv[1], sys.argv[2], int(sys.argv[3])
if prefill:  # the current file already holds other runs' records
    with ActionLog(sys.argv[4], "20240101T000000-ffffff") as other:
        while other.fd >= 0 and __import__("os").fstat(other.fd).st_size < prefill:
            other.write("exec", pid=1, path="/bin/true", argv=["x" * 500])
big = " ".join(["y" * 3000] * 6) if prefill else ""
script = (f"/bin/echo evidence-{tag} > first-{tag}.txt; i=0; while [ $i -lt 400 ]; do /bin/true {big}; "
          f"i=$((i+1)); done; /bin/echo done > last-{tag}.txt")
try:
    result = Sandbox("default", workspace).run(["/bin/sh", "-c", script])
    print(tag, "exit", result.exit_code)
except Exception as exc:
    print(tag, "error", exc)
"""


@pytest.mark.parametrize("case", ["two runs at once", "a log already full of others' records, big records"])
def test_neither_concurrent_floods_nor_a_full_log_rotate_a_runs_first_records_out(sandbox, case):
    """Red team: a byte budget per run let two flooding runs together, or one run on a log whose
    current file other runs had filled (with records of half a file each), rotate its own first
    records out while it said it had stopped in time. Judged from the kept files: every run that
    was stopped still has its run.start and its first exec."""
    import subprocess
    import sys

    from sandboxctl.log import files as logfiles

    tags = "AB" if case == "two runs at once" else "C"
    prefill = "0" if case == "two runs at once" else "30000"
    procs = [subprocess.Popen([sys.executable, "-c", TWO_RUNS, tag, str(sandbox.workspace), prefill,
                               str(sandbox.log_path)], env=sandbox.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for tag in tags]
    outs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert all("before the log's rotation could drop" in out for out in outs), outs
    records = [r.data for r in logfiles.iter_records(sandbox.log_path)]
    stopped = {r["run"] for r in records if r["event"] == "limit" and r.get("kind") == "log"}
    assert len(stopped) == len(tags), outs
    for run in stopped:
        mine = [r for r in records if r["run"] == run]
        assert mine[0]["event"] == "run.start" and mine[0]["seq"] == 0, (case, mine[0])
        assert any(r["event"] == "exec" and any("evidence" in a for a in r.get("argv", [])) for r in mine)
    assert not any((sandbox.workspace / f"last-{tag}.txt").exists() for tag in tags)
