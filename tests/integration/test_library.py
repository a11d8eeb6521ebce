"""The library: Sandbox.run / arun, on_approval, sessions — the CLI's walls, called from Python.

Judged from outside like the CLI's tests: host files, processes on the host, the action log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from sandboxctl import Sandbox, SandboxError
from sandboxctl.supervise.processes import descendants, wait_for
from tests.integration.conftest import processes_with

WRITE = "import sys\nopen(sys.argv[1], 'w').write('from the sandbox')\nprint('wrote')\n"


def records(home: Path) -> list[dict]:
    import json

    log = home.parent / "state" / "sandboxctl" / "actions.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def box(workspace):
    return Sandbox(workspace=workspace)


def _policy(tmp_path: Path, outside: Path) -> str:
    path = tmp_path / "lib-policy.yaml"
    path.write_text(f"""
version: 1
name: lib-test
extends: default
filesystem:
  read: [{outside}]
network:
  mode: proxy
  allow_private: true
approval: {{mode: ask, timeout: 20s}}
""")
    return str(path)


# ------------------------------------------------------------------ run
def test_run_captures_output_feeds_input_and_returns_the_exit_code(box, workspace, home):
    (workspace / "sub").mkdir()
    result = box.run(["sh", "-c", 'cat; echo "$GREETING" >&2; pwd; exit 7'], input="from stdin\n",
                     env={"GREETING": "hello"}, cwd="sub")
    assert result.exit_code == 7 and not result.ok
    assert result.stdout == f"from stdin\n{workspace / 'sub'}\n"
    assert result.stderr == "hello\n"
    assert result.denials == [] and result.timed_out is False
    raw = box.run(["printf", "\\377"], text=False)
    assert raw.stdout == b"\xff"
    events = [r["event"] for r in records(home) if r["run"] == result.run_id]
    assert events[0] == "run.start" and events[-1] == "run.end"
    [start] = [r for r in records(home) if r["run"] == result.run_id and r["event"] == "run.start"]
    assert start["argv"] == ["sh", "-c", 'cat; echo "$GREETING" >&2; pwd; exit 7'] and start["policy"] == "default"


def test_stream_callbacks_get_output_while_the_command_runs(box):
    seen: list[tuple[float, str]] = []
    started = time.monotonic()
    result = box.run(["sh", "-c", "echo first; sleep 1; echo second"],
                     on_stdout=lambda chunk: seen.append((time.monotonic() - started, chunk)))
    assert "".join(chunk for _, chunk in seen) == result.stdout == "first\nsecond\n"
    assert seen[0][1] == "first\n" and seen[0][0] < result.duration_s - 0.5


def test_denials_and_the_walls_are_the_clis(box, home):
    secret = home / ".ssh"
    secret.mkdir()
    (secret / "id_rsa").write_text("PRIVATE KEY")
    result = box.run(["sh", "-c", f"cat {secret}/id_rsa; touch /etc/lib-probe; echo done"])
    assert "PRIVATE KEY" not in result.stdout and "done" in result.stdout
    assert not Path("/etc/lib-probe").exists()
    assert {"kind": "file", "target": "create /etc/lib-probe"}.items() <= result.denials[0].items()


def test_timeout_kills_the_whole_sandbox(box):
    marker = "3.14159"
    result = box.run(["sh", "-c", f"trap '' TERM; sleep {marker} & sleep {marker}"], timeout="1s")
    assert result.exit_code == 124 and result.timed_out
    assert wait_for(lambda: not processes_with(f"sleep {marker}"), 5)


def test_failures_raise_with_the_clis_message_and_exit_code(box, workspace, home, tmp_path):
    with pytest.raises(SandboxError) as missing:
        box.run(["no-such-command-xyz"])
    assert missing.value.exit_code == 127
    assert str(missing.value) == "no-such-command-xyz: command not found inside the sandbox"
    before = len(records(home))
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: bad\nnetwork: {mode: sideways}\n")
    for build in (lambda: Sandbox(policy="no-such-policy", workspace=workspace),
                  lambda: Sandbox(policy=str(bad), workspace=workspace),
                  lambda: Sandbox(workspace=workspace, timeout="soon"),
                  lambda: Sandbox(workspace=workspace, allow_read="/etc"),
                  lambda: Sandbox(workspace=workspace, net="sideways"),
                  lambda: box.run("ls -l"),
                  lambda: box.run([]),
                  lambda: box.run(["ls"], timeout=[1]),
                  lambda: box.run(["ls"], env={"1BAD": "x"}),
                  lambda: box.run(["ls"], input=3)):
        with pytest.raises(SandboxError) as failure:
            build()
        assert failure.value.exit_code == 125
    assert len(records(home)) == before  # nothing started
    with pytest.raises(SandboxError, match="no built-in policy named 'no-such-policy'"):
        Sandbox(policy="no-such-policy", workspace=workspace)
    with pytest.raises(SandboxError, match=r"--timeout: 'soon': not a duration"):
        Sandbox(workspace=workspace, timeout="soon")


def test_a_run_that_widens_the_policy_needs_yes(workspace, outside):
    target = outside / "widened.txt"
    with pytest.raises(SandboxError, match="this run widens the policy"):
        Sandbox(workspace=workspace, allow_write=[outside]).run(["touch", str(target)])
    assert not target.exists()
    Sandbox(workspace=workspace, allow_write=[outside], yes=True).run(["touch", str(target)])
    assert target.exists()


def test_on_approval_decides_file_writes(workspace, outside, tmp_path, home):
    asked = []

    def answer(request):
        asked.append(request)
        return "once" if request.target.endswith("yes.txt") else "deny"

    box = Sandbox(policy=_policy(tmp_path, outside), workspace=workspace, on_approval=answer)
    allowed = box.run(["python3", "-c", WRITE, str(outside / "yes.txt")])
    assert allowed.exit_code == 0 and (outside / "yes.txt").read_text() == "from the sandbox"
    refused = box.run(["python3", "-c", WRITE, str(outside / "no.txt")])
    assert refused.exit_code == 1 and not (outside / "no.txt").exists()
    assert [(r.kind, r.target) for r in asked] == [("file", str(outside / n)) for n in ("yes.txt", "no.txt")]
    assert asked[0].pid and "python3" in asked[0].command and asked[0].run_id == allowed.run_id
    vias = [r["via"] for r in records(home) if r["event"] == "approval"]
    assert vias == ["library", "library"]


def test_a_failing_or_odd_on_approval_denies(workspace, outside, tmp_path, home):
    def broken(request):
        raise RuntimeError("bug in the caller")

    Sandbox(policy=_policy(tmp_path, outside), workspace=workspace, on_approval=broken).run(
        ["python3", "-c", WRITE, str(outside / "a.txt")])
    Sandbox(policy=_policy(tmp_path, outside), workspace=workspace, on_approval=lambda r: "sure").run(
        ["python3", "-c", WRITE, str(outside / "b.txt")])
    assert not (outside / "a.txt").exists() and not (outside / "b.txt").exists()
    vias = [r["via"] for r in records(home) if r["event"] == "approval"]
    assert vias[0] == "library: on_approval raised RuntimeError" and "'sure'" in vias[1]


def test_on_approval_decides_network_escapes(workspace, outside, tmp_path):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    connect = ("import socket, sys\ns = socket.create_connection(('127.0.0.1', 3128))\n"
               f"s.sendall(b'CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\n\\r\\n')\nprint(s.recv(100).split(b'\\r\\n')[0])\n")
    try:
        box = Sandbox(policy=_policy(tmp_path, outside), workspace=workspace,
                      on_approval=lambda r: "once" if r.kind == "network" else "deny")
        assert " 200 " in box.run(["python3", "-c", connect]).stdout
        denying = Sandbox(policy=_policy(tmp_path, outside), workspace=workspace, on_approval=lambda r: "deny")
        result = denying.run(["python3", "-c", connect])
        assert " 403 " in result.stdout and result.denials[0]["kind"] == "net"
    finally:
        server.close()


# ------------------------------------------------------------------ arun
def test_arun_runs_concurrently_calls_back_on_the_loop_and_cancels(box):
    async def main():
        loop_thread = threading.get_ident()
        threads = []
        first, second = await asyncio.gather(
            box.arun(["sh", "-c", "sleep 1; echo one"], on_stdout=lambda c: threads.append(threading.get_ident())),
            box.arun(["sh", "-c", "sleep 1; echo two"]))
        assert (first.stdout, second.stdout) == ("one\n", "two\n")
        assert threads and set(threads) == {loop_thread}
        task = asyncio.create_task(box.arun(["sh", "-c", "sleep 7.38905"]))
        await asyncio.sleep(1.5)
        assert processes_with("sleep 7.38905")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert wait_for(lambda: not processes_with("sleep 7.38905"), 5)

    started = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - started < 6  # the two runs overlapped


# ------------------------------------------------------------------ sessions
def _server_pid() -> int:
    for pid in descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"/run/sandboxctl/shim.py" in handle.read():
                    return pid
        except OSError:
            continue
    raise AssertionError("no session server")


def test_a_session_keeps_state_and_gives_each_command_its_own_result(box, home, runtime_dir):
    with box.session() as s:
        first = s.run(["sh", "-c", "echo kept > /tmp/lib-state; touch /etc/lib-session-probe; echo out"])
        second = s.run(["cat", "/tmp/lib-state"])
        assert (first.command, second.command) == (1, 2)
        assert first.exit_code == 0 and first.stdout == "out\n"
        assert [d["target"] for d in first.denials] == ["create /etc/lib-session-probe"]
        assert second.stdout == "kept\n" and second.denials == []
        with pytest.raises(SandboxError) as missing:
            s.run(["no-such-command-xyz"])
        assert missing.value.exit_code == 127
        with pytest.raises(SandboxError) as missing_in_run:
            box.run(["no-such-command-xyz"])
        assert missing.value.hint == missing_in_run.value.hint  # run's own hint, not a guess at exec.allow
        assert "exec.allow" not in missing.value.hint
        with pytest.raises(SandboxError, match="argv: expected a list"):
            s.run("ls")
        timed = s.run(["sleep", "5.4321"], timeout=1)
        assert timed.exit_code == 124 and timed.timed_out
        assert wait_for(lambda: not processes_with("sleep 5.4321"), 5)
        results = {}

        def one(n: int) -> None:
            results[n] = s.run(["sh", "-c", f"sleep 0.5; echo {n}"]).stdout

        threads = [threading.Thread(target=one, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == {n: f"{n}\n" for n in range(4)}
        s.run(["sh", "-c", "sleep 6.2831 >/dev/null 2>&1 &"])
        assert wait_for(lambda: bool(processes_with("sleep 6.2831")))
        run_id = s.run_id
    assert not processes_with("sleep 6.2831")
    assert list(runtime_dir.iterdir()) == []  # a library session has nothing on disk
    mine = [r for r in records(home) if r["run"] == run_id]
    [denial] = [r for r in mine if r["event"] == "file" and r["decision"] == "deny"]
    assert denial["command_id"] == 1
    assert mine[-1]["event"] == "run.end" and mine[-1]["commands"] >= 8


def test_a_session_ends_when_idle_and_says_so(box):
    with box.session(idle_timeout="3s") as s:
        s.run(["sh", "-c", "sleep 34.6692 >/dev/null 2>&1 &"])
        assert wait_for(lambda: bool(processes_with("sleep 34.6692")))
        assert wait_for(lambda: not processes_with("sleep 34.6692"), 10)
        with pytest.raises(SandboxError, match="ended: idle"):
            s.run(["true"])


def test_a_session_timeout_ends_it(box):
    with box.session(timeout="4s") as s:
        s.run(["sh", "-c", "sleep 32.7182 >/dev/null 2>&1 &"])
        assert wait_for(lambda: bool(processes_with("sleep 32.7182")))
        assert wait_for(lambda: not processes_with("sleep 32.7182"), 10)
        with pytest.raises(SandboxError, match="ended: timeout"):
            s.run(["true"])


def test_a_dead_server_is_reported_at_once(box):
    with box.session() as s:
        s.run(["true"])
        os.kill(_server_pid(), signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(SandboxError, match="ended"):
            for _ in range(50):  # the first call may still be accepted while the supervisor learns it
                s.run(["true"])
                time.sleep(0.1)
        assert time.monotonic() - started < 10


@pytest.fixture
def runtime_dir(monkeypatch, tmp_path):
    path = tmp_path / "rt"
    path.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    return path


@pytest.mark.skipif(not __import__("shutil").which("runsc"), reason="runsc (gVisor) is not installed")
def test_the_gvisor_backend_captures_and_cancels_too(workspace):
    box = Sandbox(policy="base", workspace=workspace, backend="gvisor")
    result = box.run(["sh", "-c", "cat; echo err >&2; exit 5"], input="through gVisor\n")
    assert (result.exit_code, result.stdout, result.stderr) == (5, "through gVisor\n", "err\n")
    assert "gvisor backend" in result.warnings[0]

    async def cancelled():
        task = asyncio.create_task(box.arun(["sleep", "8.5309"]))
        await asyncio.sleep(3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    from sandboxctl.launch.runsc import RUN_DIR_PREFIX, pids_using, runtime_base

    def ours() -> list[str]:
        mine = f"{RUN_DIR_PREFIX}{os.getpid()}-"
        return [str(p) for p in runtime_base().iterdir() if p.name.startswith(mine)]

    asyncio.run(cancelled())
    assert wait_for(lambda: not ours(), 10)  # the run directory is gone, and with it every process naming it
    assert not pids_using(f"{runtime_base()}/{RUN_DIR_PREFIX}{os.getpid()}-")
