"""Sessions from the command line: `session start | list | stop` and `exec`.

Judged from outside: the processes on the host (a marker command line), the session's files in
the runtime dir, the host's files, the action log. Each way a session ends — stop, its own
timeout, idle, a killed session process, a dead server inside — leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sandboxctl.supervise.processes import descendants, wait_for
from tests.integration.conftest import processes_with

from .test_terminal import _read_until, _set_size


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch):
    """A private runtime dir (short: socket paths are limited to 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="sbx-rt-"))
    os.chmod(path, 0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Cli:
    def __init__(self, sandbox, runtime: Path):
        self.sandbox = sandbox
        self.runtime = runtime
        self.started: list[str] = []

    def env(self) -> dict[str, str]:
        return {**self.sandbox.env(), "XDG_RUNTIME_DIR": str(self.runtime)}

    def __call__(self, *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sandboxctl", *args], cwd=self.sandbox.workspace,
                              env=self.env(), capture_output=True, text=True, input=input, timeout=timeout)

    def start(self, name: str, *args: str) -> str:
        result = self("session", "start", "--name", name, *args)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == name
        self.started.append(name)
        return name

    @property
    def sessions_dir(self) -> Path:
        return self.runtime / "sandboxctl" / "sessions"

    def info(self, name: str) -> dict:
        return json.loads((self.sessions_dir / f"{name}.json").read_text())

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.sessions_dir.iterdir()) if self.sessions_dir.exists() else []


@pytest.fixture
def cli(sandbox, runtime):
    client = Cli(sandbox, runtime)
    yield client
    for name in client.started:
        client("session", "stop", name, timeout=30)


def server_pid(session_pid: int) -> int:
    """The session's server inside the sandbox, as a host pid (the shim's process)."""
    for pid in descendants(session_pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        # bubblewrap's own command lines name the shim too: the server is the interpreter running it
        shim = any(arg.startswith(b"/run/sandboxctl/shim.py") for arg in argv)  # .py or .pyc
        if shim and not os.path.basename(argv[0]).startswith(b"bwrap"):
            return pid
    raise AssertionError("no session server found")


def test_commands_share_the_sandbox_and_keep_their_own_exit_codes_and_stdio(cli):
    name = cli.start("t-basic")
    state = f"/tmp/sbx-session-state-{os.urandom(4).hex()}"
    first = cli("exec", name, "--", "sh", "-c", f"echo kept > {state}; echo out; echo err >&2; exit 3")
    assert (first.returncode, first.stdout, first.stderr) == (3, "out\n", "err\n")
    second = cli("exec", name, "--", "cat", state)
    assert (second.returncode, second.stdout) == (0, "kept\n")
    piped = cli("exec", name, "--", "tr", "a-z", "A-Z", input="through stdin\n")
    assert piped.stdout == "THROUGH STDIN\n"
    missing = cli("exec", name, "--", "no-such-\x1b[31mcommand")
    assert missing.returncode == 127
    # the server's words are made inert once, by the client: an ESC reads \x1b, never \\x1b (a backslash)
    assert missing.stderr.splitlines()[0] == \
        "sandboxctl: error: no-such-\\x1b[31mcommand: command not found inside the sandbox", missing.stderr
    assert "sandbox's PATH" in missing.stderr.splitlines()[1] and "exec.allow" not in missing.stderr
    assert cli("exec", "--env", "GREETING=hi there", name, "--", "sh", "-c", 'echo "$GREETING"').stdout == "hi there\n"
    (cli.sandbox.workspace / "sub").mkdir()
    assert cli("exec", "--cwd", "sub", name, "--", "pwd").stdout.strip() == str(cli.sandbox.workspace / "sub")
    assert not Path(state).exists()  # the sandbox's /tmp is its own
    listed = cli("session", "list", "--json")
    [entry] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert entry["name"] == name and entry["commands"] == 6 and entry["running"] == 0


def test_each_command_has_its_own_records_and_denials(cli):
    name = cli.start("t-records")
    assert cli("exec", name, "--", "true").returncode == 0
    denied = cli("exec", name, "--", "sh", "-c", "touch /etc/sandboxctl-session-probe")
    assert denied.returncode == 1
    assert "1 denied" in denied.stderr and "/etc/sandboxctl-session-probe" in denied.stderr
    assert not Path("/etc/sandboxctl-session-probe").exists()
    records = cli.sandbox.records()
    run = cli.info(name)["run"]
    mine = [r for r in records if r["run"] == run]
    starts = [r for r in mine if r["event"] == "command.start"]
    ends = [r for r in mine if r["event"] == "command.end"]
    assert [s["command_id"] for s in starts] == [1, 2] and starts[1]["argv"][0] == "sh"
    assert [(e["command_id"], e["exit_code"], e["denied"]) for e in ends] == [(1, 0, 0), (2, 1, 1)]
    [denial] = [r for r in mine if r["event"] == "file" and r["decision"] == "deny"]
    assert denial["command_id"] == 2 and denial["path"] == "/etc/sandboxctl-session-probe"
    execs = [r for r in mine if r["event"] == "exec"]
    assert {r["command_id"] for r in execs} == {1, 2}


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
def test_each_connection_through_the_proxy_is_its_commands(cli, web):
    """An allowed connection's record too (only asked-about ones were attributed before): it is
    written when the connection ends, so its command is found as the connection begins."""
    port, _ = web
    policy = cli.sandbox.write_policy("net.yaml", "version: 1\nextends: default\nnetwork:\n  mode: proxy\n"
                                      f"  allow: ['127.0.0.1:{port}']\n  allow_private: true\n")
    name = cli.start("t-net", "-p", str(policy))
    fetch = "curl -s -o /dev/null -w '%{http_code}\\n' http://127.0.0.1:PORT/hello.txt"
    assert cli("exec", name, "--", "sh", "-c", "true").returncode == 0
    assert cli("exec", name, "--", "sh", "-c", fetch.replace("PORT", str(port))).stdout == "200\n"
    refused = cli("exec", name, "--", "sh", "-c", fetch.replace("PORT", str(port + 1)))
    assert refused.stdout == "403\n" and "1 denied" in refused.stderr
    run = cli.info(name)["run"]
    mine = [r for r in cli.sandbox.records() if r["run"] == run]
    net = [(r["decision"], r.get("command_id")) for r in mine if r["event"] == "net"]
    assert net == [("allow", 2), ("deny", 3)]
    ends = {r["command_id"]: r["denied"] for r in mine if r["event"] == "command.end"}
    assert ends == {1: 0, 2: 0, 3: 1}


def test_a_command_whose_last_call_is_denied_always_counts_it(cli):
    """Calls are answered on the listener's own thread: the command can exit as soon as its last
    call is refused, before that thread has logged it. Its end waits for the thread (settled()):
    every command's summary counts its denial, and command.end follows its own records."""
    name = cli.start("t-last-call")
    for i in range(25):
        denied = cli("exec", name, "--", "sh", "-c", f"exec touch /etc/sandboxctl-last-call-{i}")
        assert denied.returncode == 1 and "1 denied" in denied.stderr, (i, denied.stderr)
    run = cli.info(name)["run"]
    mine = [r for r in cli.sandbox.records() if r["run"] == run]
    for number in range(1, 26):
        own = [r["event"] for r in mine if r.get("command_id") == number]
        assert own[0] == "command.start" and own[-1] == "command.end" and "file" in own, (number, own)
    assert [e["denied"] for e in mine if e["event"] == "command.end"] == [1] * 25


def test_a_command_timeout_kills_that_command_only(cli):
    name = cli.start("t-timeout")
    marker = "60.11235"
    started = time.monotonic()
    result = cli("exec", "--timeout", "1s", name, "--", "sh", "-c", f"trap '' TERM; sleep {marker}")
    assert result.returncode == 124
    assert time.monotonic() - started < 8
    assert wait_for(lambda: not processes_with(f"sleep {marker}"), 5)
    assert cli("exec", name, "--", "echo", "still up").stdout == "still up\n"


def test_stop_leaves_no_process_and_no_file(cli):
    name = cli.start("t-stop")
    marker = "7.21312"
    assert cli("exec", name, "--", "sh", "-c", f"setsid sleep {marker} >/dev/null 2>&1 & echo bg").returncode == 0
    assert wait_for(lambda: bool(processes_with(f"sleep {marker}")))
    session_pid = cli.info(name)["pid"]
    stopped = cli("session", "stop", name)
    assert stopped.returncode == 0, stopped.stderr
    assert not processes_with(f"sleep {marker}")
    assert not os.path.exists(f"/proc/{session_pid}")
    assert cli.leftovers() == []
    run_end = [r for r in cli.sandbox.records() if r["event"] == "run.end"][-1]
    assert run_end["reason"] == "stopped" and run_end["session"] == name
    gone = cli("exec", name, "--", "true")
    assert gone.returncode == 125 and f"no session named '{name}' is running" in gone.stderr


def test_a_killed_session_process_leaves_nothing(cli):
    name = cli.start("t-killed")
    marker = "8.31415"
    cli("exec", name, "--", "sh", "-c", f"sleep {marker} >/dev/null 2>&1 &")
    assert wait_for(lambda: bool(processes_with(f"sleep {marker}")))
    os.kill(cli.info(name)["pid"], signal.SIGKILL)
    assert wait_for(lambda: not processes_with(f"sleep {marker}"), 5)
    assert wait_for(lambda: cli.leftovers() == [], 5), cli.leftovers()
    assert cli("exec", name, "--", "true").returncode == 125


def test_idle_and_session_timeouts_end_the_session_and_the_next_call_says_why(cli):
    idle = cli.start("t-idle", "--idle-timeout", "3s")
    whole = cli.start("t-whole", "--timeout", "4s")
    markers = {idle: "39.27182", whole: "39.14142"}
    for name, marker in markers.items():
        assert cli("exec", name, "--", "sh", "-c", f"sleep {marker} >/dev/null 2>&1 &").returncode == 0
        assert wait_for(lambda marker=marker: bool(processes_with(f"sleep {marker}")), 2)
    assert wait_for(lambda: not any(processes_with(f"sleep {m}") for m in markers.values()), 15)
    assert wait_for(lambda: cli.leftovers() == ["t-idle.ended", "t-whole.ended"], 5), cli.leftovers()
    first = cli("exec", idle, "--", "true")
    assert first.returncode == 125 and "session t-idle ended: idle" in first.stderr
    assert "session t-whole ended: timeout" in cli("exec", whole, "--", "true").stderr
    assert "no session named" in cli("exec", idle, "--", "true").stderr  # reported once
    assert cli.leftovers() == []
    reasons = {r["session"]: r["reason"] for r in cli.sandbox.records() if r["event"] == "run.end"}
    assert reasons == {"t-idle": "idle", "t-whole": "timeout"}


def test_a_dead_server_is_reported_on_the_next_call_without_hanging(cli):
    name = cli.start("t-crash")
    os.kill(server_pid(cli.info(name)["pid"]), signal.SIGKILL)
    started = time.monotonic()
    result = cli("exec", name, "--", "true", timeout=20)
    assert time.monotonic() - started < 10
    assert result.returncode == 125
    assert f"session {name}" in result.stderr or "no session named" in result.stderr, result.stderr
    assert wait_for(lambda: cli.leftovers() in ([], [f"{name}.ended"]), 5)


def test_a_command_stopping_or_killing_the_server_never_hangs_the_session(cli):
    name = cli.start("t-server")
    marker = "50.77215"
    assert cli("exec", name, "--", "sh", "-c", f"sleep {marker} >/dev/null 2>&1 & echo $! > /tmp/job").returncode == 0
    assert wait_for(lambda: bool(processes_with(f"sleep {marker}")))
    stopped = cli("exec", name, "--", "sh", "-c", "kill -STOP 2; echo stopped it", timeout=30)  # 2: the server
    assert "stopped it" in stopped.stdout
    started = time.monotonic()
    assert cli("exec", name, "--", "echo", "still served", timeout=30).stdout == "still served\n"
    assert time.monotonic() - started < 10
    # a later command may stop what an earlier one left running (they share the sandbox)
    assert cli("exec", name, "--", "sh", "-c", 'kill "$(cat /tmp/job)"').returncode == 0
    assert wait_for(lambda: not processes_with(f"sleep {marker}"), 5)
    killed = cli("exec", name, "--", "sh", "-c", "kill -9 2", timeout=30)
    assert killed.returncode == 125 and f"session {name}" in killed.stderr
    assert wait_for(lambda: cli.leftovers() in ([], [f"{name}.ended"]), 5)
    assert cli("exec", name, "--", "true").returncode == 125


def test_bad_input_fails_before_anything_starts(cli):
    assert "no session named" in cli("exec", "nobody-here", "--", "true").stderr
    bad_name = cli("session", "start", "--name", "../escape")
    assert bad_name.returncode == 125 and "session name" in bad_name.stderr
    bad_policy = cli("session", "start", "--name", "t-bad", "-p", "no-such-policy")
    assert bad_policy.returncode == 125 and "no built-in policy named 'no-such-policy'" in bad_policy.stderr
    assert cli("exec", "--timeout", "soon", "x", "--", "true").returncode == 125
    name = cli.start("t-dup")
    dup = cli("session", "start", "--name", name)
    assert dup.returncode == 125 and "already running" in dup.stderr
    assert cli.leftovers() == [f"{name}.json", f"{name}.sock"]


def test_the_socket_refuses_a_peer_in_another_namespace(cli, tmp_path):
    """A process in its own user and PID namespace, handed the socket, gets nothing started."""
    name = cli.start("t-peer")
    probe = ("import socket, json, sys\n"
             "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
             f"s.connect({str(cli.sessions_dir / (name + '.sock'))!r})\n"
             "msg = json.dumps({'exec': {'argv': ['touch', sys.argv[1]], 'env': {}, 'tty': [24, 80]}}).encode()\n"
             "try:\n    s.send(msg); print('reply', s.recv(4096))\nexcept OSError as e:\n    print('refused', e)\n")
    canary = cli.sandbox.workspace / "canary"
    result = subprocess.run(["bwrap", "--unshare-user", "--unshare-pid", "--die-with-parent", "--bind", "/", "/",
                             "--dev", "/dev", "--proc", "/proc", sys.executable, "-c", probe, str(canary)],
                            capture_output=True, text=True, timeout=30)
    assert "started" not in result.stdout, result.stdout + result.stderr
    assert not canary.exists()
    run = cli.info(name)["run"]
    assert not [r for r in cli.sandbox.records() if r["run"] == run and r["event"] == "command.start"]


def test_a_terminal_gets_a_pty_of_its_own(cli):
    name = cli.start("t-tty")
    master, slave = os.openpty()
    _set_size(slave, 31, 97)

    def own_terminal() -> None:
        os.setsid()
        import fcntl
        import termios

        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "sandboxctl", "exec", name, "--", "sh", "-c",
                             "tty; stty size; read line; echo got:$line; exit 5"],
                            cwd=cli.sandbox.workspace, env={**cli.env(), "TERM": "xterm"},
                            stdin=slave, stdout=slave, stderr=slave, preexec_fn=own_terminal)
    os.close(slave)
    try:
        seen = _read_until(master, b"31 97")
        assert b"/dev/pts/" in seen and b"31 97" in seen, seen
        os.write(master, b"typed\r")
        seen += _read_until(master, b"got:typed")
        assert b"got:typed" in seen
        assert proc.wait(timeout=20) == 5
    finally:
        proc.kill()
        os.close(master)


def test_sigterm_to_exec_reaches_the_command(cli):
    name = cli.start("t-signal")
    proc = subprocess.Popen([sys.executable, "-m", "sandboxctl", "exec", name, "--", "sh", "-c",
                             "trap 'echo got-term; exit 42' TERM; sleep 4.1234 & wait"],
                            cwd=cli.sandbox.workspace, env=cli.env(), stdout=subprocess.PIPE, text=True)
    assert wait_for(lambda: bool(processes_with("sleep 4.1234")))
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 42 and "got-term" in out


def test_sigint_that_kills_the_command_ends_exec_by_sigint_too(cli):
    """A shell stops its script only after a child that died of SIGINT (wait-and-cooperative-exit):
    the exec client ends so when the Ctrl-C it passed on killed the command, and keeps the
    command's own status when the command caught it."""
    name = cli.start("t-sigint")
    for sleep, script, expected in (("sleep 4.2345", "sleep 4.2345", -signal.SIGINT),
                                    ("sleep 4.3456", "trap 'exit 42' INT; sleep 4.3456 & wait", 42)):
        proc = subprocess.Popen([sys.executable, "-m", "sandboxctl", "exec", name, "--", "sh", "-c", script],
                                cwd=cli.sandbox.workspace, env=cli.env(), stdout=subprocess.PIPE, text=True)
        assert wait_for(lambda sleep=sleep: bool(processes_with(sleep)))
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=15)
        assert proc.returncode == expected, (script, proc.returncode)


def test_the_sessions_dir_is_hidden_in_every_sandbox_even_under_a_writable_grant(sandbox, monkeypatch):
    """The runtime dir inside the workspace (granted rw): masked, so no sandbox — not even the
    session's own — sees the socket, or can plant one."""
    runtime = sandbox.workspace / "rt"
    runtime.mkdir(mode=0o700)
    cli = Cli(sandbox, runtime)
    name = cli.start("t-hidden")
    try:
        sessions = runtime / "sandboxctl" / "sessions"
        assert (sessions / f"{name}.sock").exists()
        probe = (f"import os, socket\nprint(sorted(os.listdir({str(sessions.parent)!r})))\n"
                 "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
                 f"try:\n    s.connect({str(sessions / (name + '.sock'))!r}); print('connected')\n"
                 "except OSError as e:\n    print('refused', e.errno)\n"
                 f"try:\n    open({str(sessions / 'planted.json')!r}, 'w'); print('planted')\n"
                 "except OSError as e:\n    print('not planted', e.errno)\n")
        inside_run = cli("run", "-q", "--", "python3", "-c", probe)
        inside_session = cli("exec", name, "--", "python3", "-c", probe)
        for result in (inside_run, inside_session):
            assert result.stdout.startswith("[]\nrefused"), result.stdout + result.stderr
            assert "connected" not in result.stdout and "not planted" in result.stdout
        assert not (sessions / "planted.json").exists()
    finally:
        cli("session", "stop", name)
