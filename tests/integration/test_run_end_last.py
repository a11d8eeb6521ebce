"""run.end is the last record of its run, whatever still runs when it is written: a notification
thread stuck past its join, a proxy connection stuck past the proxy's stop, a collector that comes
back after it, a stuck approval prompt. Judged from the log file (the chain verifies, run.end is
the run's last record) and from what the user is told (run.end's `unfinished`, the notices)."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from sandboxctl import Sandbox
from sandboxctl.log.verify import verify
from sandboxctl.log.writer import ActionLog
from sandboxctl.supervise import listener, notify
from sandboxctl.supervise.runner import Supervisor


def _log_path(home: Path) -> Path:
    return home.parent / "state" / "sandboxctl" / "actions.jsonl"


def _run_records(path: Path, run: str) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["run"] == run]


def _hold_close(monkeypatch, go: threading.Event, attempted: threading.Event) -> None:
    """The run's log closes only once the stuck thread has been let go and has tried to write:
    its late record meets the log between run.end and the close, where it used to be appended."""
    original = ActionLog.close

    def close(self: ActionLog) -> None:
        go.set()
        attempted.wait(10)
        original(self)

    monkeypatch.setattr(ActionLog, "close", close)


def _stuck_on_unshare(stuck: list[threading.Thread], go: threading.Event, attempted: threading.Event,
                      entered: threading.Event | None = None, mark: Path | None = None) -> type[notify.Dispatcher]:
    """A Dispatcher that answers the first trapped unshare only once `go` is set (a host call
    that hangs past the run's end); its thread goes into `stuck`, `attempted` is set once it
    has tried to answer (its `syscall` record: after run.end now). `mark`: a file made (from the
    host) once the call is held, for a command that waits for it."""

    class StuckDispatcher(notify.Dispatcher):
        def _answer(self, notification: notify.Notification) -> bool:
            if self.names.get(notification.nr) == "unshare" and not stuck:
                stuck.append(threading.current_thread())
                if entered is not None:
                    entered.set()
                if mark is not None:
                    mark.touch()
                go.wait(20)
                try:
                    return super()._answer(notification)
                finally:
                    attempted.set()
            return super()._answer(notification)

    return StuckDispatcher


def test_a_notification_thread_stuck_past_its_join_writes_nothing_after_run_end(workspace, home, monkeypatch):
    go, attempted = threading.Event(), threading.Event()
    stuck: list[threading.Thread] = []
    monkeypatch.setattr(Supervisor, "dispatcher_class", _stuck_on_unshare(stuck, go, attempted,
                                                                        mark=workspace / "held"))
    monkeypatch.setattr(listener, "NOTIFY_JOIN_S", 0.2)
    _hold_close(monkeypatch, go, attempted)
    # the command ends once its unshare is held (a fixed sleep lost that race on a loaded machine)
    result = Sandbox(workspace=workspace).run(
        ["sh", "-c", "unshare -U true & i=0; while [ ! -e held ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; "
                     "echo out"])
    assert result.exit_code == 0 and result.stdout == "out\n", result
    assert stuck and attempted.is_set()
    records = _run_records(_log_path(home), result.run_id)
    assert records[-1]["event"] == "run.end", [r["event"] for r in records]
    assert records[-1]["unfinished"] == {"notification_thread": 1}
    assert not [r for r in records if r["event"] == "syscall"], "the late denial is not in the log ..."
    said = "\n".join(result.warnings)
    assert "seccomp notification thread" in said and "`syscall` record came after run.end" in said  # ... but said
    assert verify(_log_path(home)).ok
    stuck[0].join(10)  # its listener was taken away: its next ioctl failed, and it ended
    assert not stuck[0].is_alive()


def test_a_proxy_connection_stuck_past_the_proxys_stop_is_named_in_run_end(workspace, home, monkeypatch, tmp_path):
    from sandboxctl.network import proxy

    go, attempted = threading.Event(), threading.Event()
    original_init = proxy.ProxyServer.__init__

    def hanging_resolver(*args, **kwargs):  # a DNS server that does not answer
        go.wait(20)
        attempted.set()
        raise OSError(110, "timed out")

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs, resolver=hanging_resolver)

    monkeypatch.setattr(proxy.ProxyServer, "__init__", init)
    monkeypatch.setattr(proxy.ProxyServer.stop, "__defaults__", (0.3,))
    _hold_close(monkeypatch, go, attempted)
    policy = tmp_path / "net.yaml"
    policy.write_text("version: 1\nextends: default\nnetwork:\n  mode: proxy\n  allow: [hangs.example:80]\n")
    client = ("import socket, time\ns = socket.create_connection(('127.0.0.1', 3128))\n"
              "s.sendall(b'CONNECT hangs.example:80 HTTP/1.1\\r\\nHost: hangs.example:80\\r\\n\\r\\n')\n"
              "time.sleep(0.5)\nprint('out')\n")
    result = Sandbox(policy=str(policy), workspace=workspace).run(["python3", "-c", client])
    assert result.exit_code == 0 and result.stdout == "out\n", result
    records = _run_records(_log_path(home), result.run_id)
    assert records[-1]["event"] == "run.end", [r["event"] for r in records]
    assert records[-1]["unfinished"] == {"proxy_connections": 1}
    net = [r for r in records if r["event"] == "net"]
    assert [r.get("error") for r in net] == ["still open when the proxy stopped"] and net[0]["host"] == "hangs.example"
    assert "proxy connection threads" in "\n".join(result.warnings)
    assert verify(_log_path(home)).ok


def test_a_stuck_approval_prompt_at_the_end_is_answered_before_run_end(workspace, home, tmp_path):
    """The library's on_approval never returns: the run's end denies what waits (`run ended`),
    the proxy connection and the file escape record that before run.end, and nothing follows it."""
    hang = threading.Event()
    asked: list[str] = []

    def on_approval(request) -> str:
        asked.append(request.kind)
        hang.wait(30)
        return "deny"

    outside = tmp_path / "outside"
    outside.mkdir()
    policy = tmp_path / "ask.yaml"
    policy.write_text(f"version: 1\nextends: default\nfilesystem:\n  read: [{outside}]\nnetwork:\n  mode: proxy\n")
    client = ("import socket, threading, time\n"
              f"threading.Thread(target=lambda: open('{outside}/x', 'w'), daemon=True).start()\n"
              "s = socket.create_connection(('127.0.0.1', 3128))\n"
              "s.sendall(b'CONNECT unlisted.example:443 HTTP/1.1\\r\\nHost: unlisted.example:443\\r\\n\\r\\n')\n"
              "time.sleep(1.0)\nprint('out')\n")
    try:
        result = Sandbox(policy=str(policy), workspace=workspace, on_approval=on_approval).run(
            ["python3", "-c", client])
    finally:
        hang.set()
    assert result.exit_code == 0 and result.stdout == "out\n", result
    assert asked, "a prompt was up when the run ended"
    records = _run_records(_log_path(home), result.run_id)
    assert records[-1]["event"] == "run.end" and "unfinished" not in records[-1], records[-1]
    approvals = [r for r in records if r["event"] == "approval"]
    assert sorted(r["kind"] for r in approvals) == ["file", "network"], approvals
    assert all(r["answer"] == "deny" and r["via"] == "run ended" for r in approvals)
    assert not (outside / "x").exists()
    assert verify(_log_path(home)).ok


def test_a_collector_that_comes_back_after_run_end_is_told_not_logged(sandbox):
    """log.forward to a TCP collector that was down all run and is up by the end: the forwarder's
    last try delivers the backlog after run.end; that it is up again is said on stderr, not
    appended to the local log after run.end."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    policy = sandbox.write_policy("fwd.yaml", f'version: 1\nextends: default\nlog:\n  forward: '
                                              f'["syslog+tcp://127.0.0.1:{port}"]\n')
    received: list[bytes] = []

    def collector() -> None:  # comes up once the run has seen it down
        end = time.monotonic() + 30
        while time.monotonic() < end and not (sandbox.log_path.exists()
                                              and b'"state":"down"' in sandbox.log_path.read_bytes()):
            time.sleep(0.02)
        with socket.create_server(("127.0.0.1", port)) as server:
            server.settimeout(30)
            conn, _ = server.accept()
            with conn:
                while data := conn.recv(65536):
                    received.append(data)

    thread = threading.Thread(target=collector, daemon=True)
    thread.start()
    result = subprocess.run(sandbox.argv("--", "/bin/sh", "-c", "sleep 0.6; /bin/true", policy=str(policy)),
                            cwd=sandbox.workspace, env=sandbox.env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    thread.join(10)
    records = sandbox.records()
    assert records[-1]["event"] == "run.end", [(r["event"], r.get("state")) for r in records]
    states = [r["state"] for r in records if r["event"] == "log.forward"]
    assert states == ["down", "unsent"], states
    assert "came back, its backlog sent, after run.end" in result.stderr
    assert b'"event":"run.end"' in b"".join(received), "the backlog, run.end included, reached it"
    check = subprocess.run([sys.executable, "-m", "sandboxctl", "log", "--verify"], env=sandbox.env(),
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_session_ended_in_a_flood_of_execs_and_connections_ends_with_run_end(workspace, home, tmp_path):
    """A session command floods trapped calls (execs) and proxy connections right up to the
    session's stop: each command's records come before its command.end, and the session's run.end
    is its last record."""
    policy = tmp_path / "net.yaml"
    policy.write_text("version: 1\nextends: default\nnetwork:\n  mode: proxy\n  allow: [127.0.0.1]\n")
    flood = ("import socket, subprocess, threading\n"
             "def connect():\n"
             "    while True:\n"
             "        try:\n"
             "            s = socket.create_connection(('127.0.0.1', 3128))\n"
             "            s.sendall(b'CONNECT 127.0.0.1:9 HTTP/1.1\\r\\n\\r\\n'); s.recv(64); s.close()\n"
             "        except OSError:\n"
             "            pass\n"
             "for _ in range(4):\n"
             "    threading.Thread(target=connect, daemon=True).start()\n"
             "print('flooding', flush=True)\n"
             "while True:\n"
             "    subprocess.run(['/bin/true'])\n")
    box = Sandbox(policy=str(policy), workspace=workspace)
    with box.session() as session:
        assert session.run(["sh", "-c", "/bin/true; echo first"]).stdout == "first\n"
        started = threading.Event()
        outcome: list = []

        def run_flood() -> None:
            try:
                outcome.append(session.run(["python3", "-c", flood], on_stdout=lambda chunk: started.set()))
            except Exception as exc:  # the session's end ends it
                outcome.append(exc)

        thread = threading.Thread(target=run_flood, daemon=True)
        thread.start()
        assert started.wait(30)
        run_id = session.run_id

        def flooding() -> bool:  # both floods under way (a loaded machine starts them slowly)
            events = [r["event"] for r in _run_records(_log_path(home), run_id)]
            return events.count("exec") > 20 and events.count("net") > 5

        end = time.monotonic() + 30
        while not flooding() and time.monotonic() < end:
            time.sleep(0.1)
    thread.join(30)
    records = _run_records(_log_path(home), run_id)
    events = [r["event"] for r in records]
    assert events[-1] == "run.end" and events.count("run.end") == 1, events[-5:]
    assert events.count("exec") > 20 and events.count("net") > 5, "it flooded both"
    first_end = next(i for i, r in enumerate(records) if r["event"] == "command.end" and r["command_id"] == 1)
    assert all(i < first_end for i, r in enumerate(records) if r.get("command_id") == 1 and r["event"] != "command.end")
    assert "unfinished" not in records[-1]
    assert verify(_log_path(home)).ok


def test_a_session_whose_notification_thread_outlives_its_end_ends_with_run_end(workspace, home, monkeypatch):
    """The session is stopped while its notification thread is stuck in a call of a running command."""
    go, attempted, entered = threading.Event(), threading.Event(), threading.Event()
    stuck: list[threading.Thread] = []

    from sandboxctl.supervise.session import SessionSupervisor

    monkeypatch.setattr(SessionSupervisor, "dispatcher_class", _stuck_on_unshare(stuck, go, attempted, entered))
    monkeypatch.setattr(listener, "NOTIFY_JOIN_S", 0.2)
    _hold_close(monkeypatch, go, attempted)
    box = Sandbox(workspace=workspace)
    with box.session() as session:
        def command() -> None:
            with contextlib.suppress(Exception):  # the session's end ends it
                session.run(["sh", "-c", "unshare -U true & sleep 30"])

        thread = threading.Thread(target=command, daemon=True)
        thread.start()
        assert entered.wait(20)
        run_id = session.run_id
    assert attempted.wait(20)
    thread.join(20)
    records = _run_records(_log_path(home), run_id)
    assert records[-1]["event"] == "run.end", [r["event"] for r in records]
    assert records[-1]["unfinished"] == {"notification_thread": 1} and records[-1]["session"]
    assert not [r for r in records if r["event"] == "syscall"]
    assert verify(_log_path(home)).ok


def test_a_sigterm_as_the_run_ends_waits_for_run_end(sandbox):
    """SIGTERM to sandboxctl after the command has ended, while the end is written (held here by a
    collector that takes nothing: the forwarder's flush waits): the supervisor is not killed before
    run.end; it writes it, cleans up, and only then dies of the SIGTERM."""
    import signal

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list = []
    threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
    policy = sandbox.write_policy("fwd.yaml", f'version: 1\nextends: default\nlog:\n  forward: '
                                              f'["syslog+tcp://127.0.0.1:{server.getsockname()[1]}"]\n')
    big = ("import subprocess\nfor _ in range(8):\n    subprocess.run(['/bin/true'] + ['x' * 4000] * 255)\n"
           "print('done', flush=True)\n")  # 8 MB of exec records: more than the socket buffers take
    proc = subprocess.Popen(sandbox.argv("--", "python3", "-c", big, policy=str(policy)), cwd=sandbox.workspace,
                            env=sandbox.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "done\n"
        time.sleep(0.5)  # the command has exited; the end is being written
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
        server.close()
    assert proc.returncode == -signal.SIGTERM, stderr
    records = sandbox.records()
    assert records[-1]["event"] == "run.end" and records[-1]["exit_code"] == 0, [r["event"] for r in records][-4:]
    assert verify(sandbox.log_path).ok


FLOOD_TO_THE_END = r"""
import os, socket, threading, time
def trapped():  # denied write-intent opens and mkdirs: each one a notification the supervisor answers
    while True:
        for call in (lambda: open("/etc/flood-x", "w"), lambda: os.mkdir("/etc/flood-d")):
            try:
                call()
            except OSError:
                pass
def connect():
    while True:
        try:
            s = socket.create_connection(("127.0.0.1", 3128))
            s.sendall(b"CONNECT unlisted.example:443 HTTP/1.1\r\n\r\n")
            s.recv(64)
            s.close()
        except OSError:
            pass
for target in [trapped] * 32 + [connect] * 8:
    threading.Thread(target=target, daemon=True).start()
time.sleep(1.0)
print("exiting", flush=True)
os._exit(3)  # while 32 threads are in (or entering) trapped calls and 8 connect
"""


def test_a_command_that_exits_while_32_threads_are_in_trapped_calls_ends_with_run_end(sandbox):
    result = sandbox.run("--net", "proxy", "--", "python3", "-c", FLOOD_TO_THE_END)
    assert result.returncode == 3 and "exiting" in result.stdout, result.stderr
    records = sandbox.records()
    events = [r["event"] for r in records]
    assert events[-1] == "run.end" and events.count("run.end") == 1, events[-5:]
    assert records[-1]["denied"] > 100, "the calls were trapped and answered up to the end"
    assert events.count("net") >= 1 and "unfinished" not in records[-1]
    assert records[-1]["exit_code"] == 3 and "after run.end" not in result.stderr
    assert verify(sandbox.log_path).ok


STUCK_CALL_THEN_EXIT = r"""
import ctypes, os, threading, time
libc = ctypes.CDLL(None, use_errno=True)
threading.Thread(target=lambda: libc.unshare(0x10000000), daemon=True).start()  # trapped: stuck outside
time.sleep(0.5)
print("first", flush=True)
os._exit(0)  # while that call waits for its answer: no other trapped call is needed to get here
"""


def test_a_session_command_that_ends_during_a_stuck_call_does_not_hang_the_session(workspace, home, monkeypatch):
    """A command exits while the notification thread is stuck in one of its calls (a host call that
    hangs): the command's end waits for that call at most SETTLE_S, so the session's loop goes on
    (before, it waited as long as the call did: no stop, no timeout, no other client meanwhile)."""
    release, entered = threading.Event(), threading.Event()

    class StuckDispatcher(notify.Dispatcher):
        def _answer(self, notification: notify.Notification) -> bool:
            if self.names.get(notification.nr) == "unshare" and not entered.is_set():
                entered.set()
                release.wait(20)
            return super()._answer(notification)

    from sandboxctl.supervise.session import SessionSupervisor

    monkeypatch.setattr(SessionSupervisor, "dispatcher_class", StuckDispatcher)
    monkeypatch.setattr(notify, "SETTLE_S", 0.5, raising=False)
    box = Sandbox(workspace=workspace)
    try:
        with box.session() as session:
            started = time.monotonic()
            first = session.run(["python3", "-c", STUCK_CALL_THEN_EXIT])
            took = time.monotonic() - started
            release.set()
            second = session.run(["sh", "-c", "echo second"])
            run_id = session.run_id
    finally:
        release.set()
    assert entered.is_set() and first.stdout == "first\n" and second.stdout == "second\n"
    assert took < 10, f"the command's end waited {took:.1f} s for a stuck call"
    records = _run_records(_log_path(home), run_id)
    assert records[-1]["event"] == "run.end" and verify(_log_path(home)).ok
