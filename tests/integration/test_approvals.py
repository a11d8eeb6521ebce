"""Boundary escapes answered at run time: by mode, on the terminal, through `sandboxctl approve`.

Every test judges from outside: files on the host, the action log, the answers the sandboxed
program got. The sandbox never has a way to answer for the human.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from sandboxctl.approval.client import connect_all

from .test_terminal import _read_until, _spawn_on_pty

WRITE = """
import sys
for path in sys.argv[1:]:
    try:
        with open(path, "w") as handle:
            handle.write("written in the sandbox: " + path)
        print("wrote", path, flush=True)
    except OSError as exc:
        print("refused", path, exc.errno, flush=True)
"""

CONNECT = """
import socket, sys
for target in sys.argv[1:]:
    s = socket.create_connection(("127.0.0.1", 3128))
    s.sendall(f"CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n".encode())
    print(target, s.recv(200).split(b"\\r\\n")[0].decode(), flush=True)
    s.close()
"""


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch):
    """A private runtime dir (short: socket paths are limited to 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="sbx-rt-"))
    os.chmod(path, 0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def echo_port():
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def _policy(sandbox, outside: Path, mode: str = "ask", via: str = "tty", timeout: str = "20s") -> str:
    return str(sandbox.write_policy("approvals.yaml", f"""
version: 1
name: approvals-test
extends: default
filesystem:
  read: [{outside}]
network:
  mode: proxy
  allow_private: true
approval: {{mode: {mode}, via: {via}, timeout: {timeout}}}
"""))


def _events(sandbox, event: str) -> list[dict]:
    return [r for r in sandbox.records() if r["event"] == event]


# ---------------------------------------------------------------------- answered by the mode

def test_approved_write_is_opened_by_the_supervisor_and_lands_on_the_host(sandbox, outside):
    target = outside / "new.txt"
    result = sandbox.run("--approve", "allow", "--", "python3", "-c", WRITE, str(target),
                         policy=_policy(sandbox, outside))
    assert result.returncode == 0, result.stderr
    assert f"wrote {target}" in result.stdout
    assert target.read_text() == f"written in the sandbox: {target}"
    [approval] = _events(sandbox, "approval")
    assert approval["kind"] == "file" and approval["target"] == str(target)
    assert approval["answer"] == "once" and approval["via"] == "mode:allow"
    [event] = [e for e in _events(sandbox, "file") if e["path"] == str(target)]
    assert event["decision"] == "allow" and "opened by the supervisor" in event["rule"]


def test_denied_write_gets_eacces_and_nothing_is_written(sandbox, outside):
    target = outside / "new.txt"
    result = sandbox.run("--approve", "deny", "--", "python3", "-c", WRITE, str(target),
                         policy=_policy(sandbox, outside))
    assert result.returncode == 0, result.stderr
    assert f"refused {target} 13" in result.stdout  # EACCES
    assert not target.exists()
    [approval] = _events(sandbox, "approval")
    assert approval["answer"] == "deny" and approval["via"] == "mode:deny"
    [event] = [e for e in _events(sandbox, "file") if e["path"] == str(target)]
    assert event["decision"] == "deny"


def test_never_approvable_paths_are_refused_without_asking(sandbox, outside):
    """A denied path and sandboxctl's own code are not escapes a human may open."""
    import sandboxctl

    code = Path(sandboxctl.__file__).parent / "planted.py"
    result = sandbox.run("--approve", "allow", "--", "python3", "-c", WRITE, str(code), "/etc/shadow",
                         policy=_policy(sandbox, outside))
    assert result.returncode == 0, result.stderr
    assert "wrote" not in result.stdout
    assert not code.exists()
    assert _events(sandbox, "approval") == []


def test_ci_mode_answers_twenty_escapes_without_waiting(sandbox, outside, echo_port):
    """CI=true and no --approve: every escape is denied at once, logged and summarised."""
    files = [str(outside / f"f{i}.txt") for i in range(10)]
    targets = [f"127.0.0.1:{echo_port}"] * 10
    script = WRITE + "\nsys.argv[1:] = sys.argv[11:]\n" + CONNECT.replace("import socket, sys", "import socket")
    started = time.monotonic()
    result = sandbox.run("--", "python3", "-c", script, *files, *targets,
                         policy=_policy(sandbox, outside, timeout="1h"), env={"CI": "true"}, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 20, f"a CI run must not wait for anyone ({elapsed:.1f} s)"
    assert result.stdout.count("refused") == 10 and result.stdout.count("HTTP/1.1 403 ") == 10  # not a port
    assert not list(outside.iterdir())
    approvals = _events(sandbox, "approval")
    assert len(approvals) == 20 and {a["answer"] for a in approvals} == {"deny"}
    assert {a["via"] for a in approvals} == {"mode:deny"}


# ---------------------------------------------------------------------- the socket front end

def _approve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandboxctl", "approve", *args], capture_output=True, text=True,
                          timeout=30, env={**os.environ, **(env or {})})


def _start_asking_run(sandbox, outside: Path, runtime: Path, *command: str) -> subprocess.Popen[str]:
    """A run whose escapes wait for `sandboxctl approve` (approval.via: socket)."""
    return subprocess.Popen(sandbox.argv("--approve", "ask", "--", "python3", "-c", *command,
                                         policy=_policy(sandbox, outside, via="socket")),
                            cwd=sandbox.workspace, env=sandbox.env({"XDG_RUNTIME_DIR": str(runtime)}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _next_request(timeout: float = 20.0) -> dict:
    listing = _approve("--list", "--json", "--wait", str(timeout))
    assert listing.returncode == 0, listing.stderr
    return json.loads(listing.stdout.splitlines()[0])


def test_socket_front_end_network_approved_once_then_denied(sandbox, outside, runtime, echo_port):
    target = f"127.0.0.1:{echo_port}"
    proc = _start_asking_run(sandbox, outside, runtime, CONNECT, target, target)
    try:
        first = _next_request()
        assert first["kind"] == "network" and first["target"] == target
        assert first["pid"] and "python3" in first["command"]  # who: the connecting process
        assert _approve(first["id"], "once").returncode == 0
        second = _next_request()
        assert second["id"] != first["id"]  # "once" covered one connection only
        assert _approve(second["id"], "deny").returncode == 0
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert "HTTP/1.1 200 " in lines[0] and "HTTP/1.1 403 " in lines[1]
    answers = [(a["answer"], a["via"]) for a in _events(sandbox, "approval")]
    assert answers == [("once", "socket"), ("deny", "socket")]
    assert not list(runtime.glob("sandboxctl/*.sock")), "the socket is removed after the run"


def test_socket_refuses_unknown_answers_and_requests(sandbox, outside, runtime):
    target = outside / "x.txt"
    proc = _start_asking_run(sandbox, outside, runtime, WRITE, str(target))
    try:
        request = _next_request()
        bad = _approve(request["id"], "maybe")
        assert bad.returncode == 125 and "must be one of" in bad.stderr and "Traceback" not in bad.stderr
        missing = _approve("nope-1", "once")
        assert missing.returncode == 125 and "no pending request" in missing.stderr
        assert _approve(request["id"], "run").returncode == 0
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert f"wrote {target}" in out, err
    assert target.read_text().startswith("written in the sandbox")


def test_race_the_path_shown_is_the_path_opened(sandbox, outside, runtime):
    """A second thread flips the path buffer while the first opens: the approver allows only
    `aaaa`; with "continue" the kernel would re-read the buffer and sometimes create `bbbb`."""
    racer = f"""
import ctypes, os, threading
libc = ctypes.CDLL(None, use_errno=True)
a, b = b"{outside}/aaaa.txt", b"{outside}/bbbb.txt"
buf = ctypes.create_string_buffer(a, 256)
stop = False
def flip():
    while not stop:
        ctypes.memmove(buf, b, len(b)); ctypes.memmove(buf, a, len(a))
threading.Thread(target=flip, daemon=True).start()
opened = 0
for i in range(40):
    fd = libc.open(buf, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    if fd >= 0:
        os.write(fd, b"x"); os.close(fd); opened += 1
stop = True
print("opened", opened, flush=True)
"""
    proc = _start_asking_run(sandbox, outside, runtime, racer)
    shown: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            for connection in connect_all(runtime / "sandboxctl"):
                for request in list(connection.pending):
                    shown.append(request["target"])
                    choice = "once" if request["target"].endswith("/aaaa.txt") else "deny"
                    connection.answer(request["id"], choice)
                connection.close()
            time.sleep(0.01)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    opened = int(out.split()[-1])
    assert shown.count(f"{outside}/aaaa.txt") == opened > 0
    assert f"{outside}/bbbb.txt" in shown, "the flipping thread never won a read: the test proved nothing"
    assert not (outside / "bbbb.txt").exists(), "a denied path was opened"
    assert (outside / "aaaa.txt").read_bytes() == b"x" * opened
    for event in _events(sandbox, "file"):
        if event["decision"] == "allow" and event.get("host_path"):
            assert event["path"] == event["host_path"] == f"{outside}/aaaa.txt"


# ---------------------------------------------------------------------- the terminal front end

BOTTOM_RIGHT = "╯".encode()  # the panel's last character: the whole prompt has arrived


def _panel_text(screen: bytes) -> str:
    """What the panel's lines hold, borders and escape sequences taken away and the lines joined:
    a long target is wrapped over lines of at most 100 columns (however wide the terminal), so
    whether it is there must not depend on how deep pytest's tmp directory is."""
    import re

    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace"))
    return "".join(line.split("│")[1].strip() for line in text.splitlines() if line.count("│") >= 2)


def _prompted(master: int, request_no: int) -> bytes:
    """Read up to the end of the prompt for request N (it may come in several chunks)."""
    seen = _read_until(master, f"-{request_no})".encode())
    assert f"-{request_no})".encode() in seen, seen.decode(errors="replace")[-2000:]
    title = seen.index(f"-{request_no})".encode())
    if BOTTOM_RIGHT not in seen[title:]:
        seen += _read_until(master, BOTTOM_RIGHT, 10)
    assert b"allow once" in seen and BOTTOM_RIGHT in seen[title:], seen.decode(errors="replace")[-2000:]
    time.sleep(0.6)  # a human reads it: a key in the panel's first half second is no answer
    return seen


def test_tty_prompt_each_answer_and_a_timeout(sandbox, outside):
    """once / run (a second write to the same file is not asked) / always / deny / timeout."""
    once, run, always, denied, late = (outside / f"{n}.txt" for n in ("once", "run", "always", "deny", "late"))
    policy = _policy(sandbox, outside, timeout="3s")
    proc, master = _spawn_on_pty(sandbox, ["--", "python3", "-c", WRITE, str(once), str(run), str(run),
                                           str(always), str(denied), str(late)], policy=policy)
    try:
        screen = _prompted(master, 1)
        assert str(once) in _panel_text(screen) and b"pid " in screen and b"outside the writable set" in screen
        os.write(master, b"o")
        _prompted(master, 2)
        os.write(master, b"r")
        _prompted(master, 4)  # the second write to run.txt was answered by the run grant (request 3)
        os.write(master, b"a")
        _prompted(master, 5)
        os.write(master, b"d")
        _prompted(master, 6)
        rest = _read_until(master, b"no answer in time", 10)  # nobody answers: denied after 3 s
        assert b"no answer in time" in rest
        rest += _read_until(master, b"refused " + str(late).encode(), 10)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        os.close(master)
    assert proc.returncode == 0
    for path in (once, run, always):
        assert path.read_text().startswith("written in the sandbox")
    assert not denied.exists() and not late.exists()
    answers = [(a["target"], a["answer"], a["via"]) for a in _events(sandbox, "approval")]
    assert answers == [(str(once), "once", "tty"), (str(run), "run", "tty"),
                       (str(run), "run", "remembered for this run"), (str(always), "always", "tty"),
                       (str(denied), "deny", "tty"), (str(late), "timeout", "no answer in time")]
    # "always" is remembered outside the workspace, shown by `policy show`, asked no more, revocable
    env = sandbox.env()
    shown = subprocess.run([sys.executable, "-m", "sandboxctl", "policy", "show", policy], env=env,
                           capture_output=True, text=True, timeout=30)
    assert f"file {always}  in workspace {sandbox.workspace}" in shown.stdout
    assert not any("approvals" in p.name for p in sandbox.workspace.rglob("*"))
    always.unlink()
    proc, master = _spawn_on_pty(sandbox, ["--", "python3", "-c", WRITE, str(always)], policy=policy)
    try:
        again = _read_until(master, b"wrote", 20)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        os.close(master)
    assert b"approval needed" not in again and f"wrote {always}".encode() in again
    assert _events(sandbox, "approval")[-1]["via"] == "remembered (always)"
    revoked = subprocess.run([sys.executable, "-m", "sandboxctl", "policy", "revoke", "approvals-test",
                              "--target", str(always)], env=env, capture_output=True, text=True, timeout=30)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    always.unlink()
    after = sandbox.run("--approve", "deny", "--", "python3", "-c", WRITE, str(always), policy=policy)
    assert f"refused {always}" in after.stdout


SPOOF_WRITE = """
import sys
try:
    open(sys.argv[2], "w").write("spoofed")
    print("wrote", flush=True)
except OSError as exc:
    print("refused", exc.errno, flush=True)
"""


def test_prompt_spoofing_argv_is_shown_inert_on_a_real_pty(sandbox, outside):
    """The issue's attack: the caller's argv holds three ESC M (cursor up), a fake 'what' line
    padded with U+2800 and ESC[99G, to repaint the panel on a 100-column terminal. The panel must
    name the real target first and show the payload escaped; no byte of the payload's escapes
    may reach the screen."""
    import re

    target = outside / "settings.toml"
    target.write_text("[user]\n")
    decoy = sandbox.workspace / "NOTES.md"
    payload = "\x1bM\x1bM\x1bM│ what  write " + str(decoy) + "\u2800" * 80 + "\x1b[99G"
    (sandbox.workspace / "docs.py").write_text(SPOOF_WRITE)
    proc, master = _spawn_on_pty(sandbox, ["--", "python3", "docs.py", payload, str(target)],
                                 policy=_policy(sandbox, outside), columns=100)
    try:
        screen = _prompted(master, 1)
        os.write(master, b"d")
        screen += _read_until(master, b"refused", 15)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        os.close(master)
    assert b"refused 13" in screen, screen.decode(errors="replace")[-2000:]
    assert target.read_text() == "[user]\n" and not decoy.exists()
    panel = screen[screen.index(b"approval needed"):]
    assert b"\x1bM" not in panel and b"\x1b[99G" not in panel and "\u2800".encode() not in panel
    assert re.sub(rb"\x1b\[[0-9;]*m", b"", panel).count(b"\x1b") == 0  # only rich's own colours
    lines = re.sub(r"\x1b\[[0-9;]*m", "", panel.decode()).replace("\r", "").splitlines()
    frame = lines[: next(i for i, line in enumerate(lines) if line.startswith("╰")) + 1]
    assert all(len(line) <= 100 for line in frame), frame
    assert frame[1].startswith("│ write    "), frame
    target_lines, shown = [], ""
    for line in frame[1:1 + 4]:  # the target's own lines: at most four, label blank after the first
        part = line[len("│ write    "):].rstrip(" │")
        if target_lines and (not line.startswith("│          ") or not str(target).startswith(shown + part)):
            break
        target_lines.append(line)
        shown += part
    assert shown == str(target), frame  # the whole path, folded onto its own lines when long
    assert target_lines[-1].strip("│ ").endswith("settings.toml"), frame  # the file name whole
    who = next(line for line in frame if line.startswith("│ who"))
    assert "python3 docs.py " in who and "\\x1bM\\x1bM\\x1bM\\u2502 what  write" in who  # shown as it is
    assert sum(str(decoy) in line for line in frame) <= 1 and str(decoy) not in frame[1]


def _live_approver(sandbox, runtime):
    """`sandboxctl approve` on a terminal of its own (40 rows, 120 columns): (process, pty master)."""
    import fcntl
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, b"\x28\x00\x78\x00\x00\x00\x00\x00")

    def own_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    approver = subprocess.Popen([sys.executable, "-m", "sandboxctl", "approve"], stdin=slave, stdout=slave,
                                stderr=slave, preexec_fn=own_terminal,
                                env={**sandbox.env(), "XDG_RUNTIME_DIR": str(runtime), "TERM": "xterm"})
    os.close(slave)
    return approver, master


def test_live_approve_answers_from_another_terminal(sandbox, outside, runtime):
    """`sandboxctl approve` on its own terminal follows the run and answers with one key."""
    target = outside / "live.txt"
    run = _start_asking_run(sandbox, outside, runtime, WRITE, str(target))
    approver, master = _live_approver(sandbox, runtime)
    try:
        screen = _read_until(master, b"without an answer", 30)
        assert b"approval needed" in screen and b"live.txt" in screen, screen[-1500:]
        os.write(master, b"o")
        assert b"allowed once" in _read_until(master, b"allowed once", 10)
        out, err = run.communicate(timeout=30)
        os.write(master, b"q")
        assert approver.wait(timeout=10) == 0
    finally:
        run.kill()
        approver.kill()
        os.close(master)
    assert f"wrote {target}" in out, err
    assert target.read_text().startswith("written in the sandbox")


def test_live_approve_marks_a_request_answered_from_another_window(sandbox, outside, runtime):
    """The live view shows a request; `sandboxctl approve ID deny` from a script answers it: the live
    view says so (and how), instead of leaving a stale question on screen."""
    target = outside / "elsewhere.txt"
    run = _start_asking_run(sandbox, outside, runtime, WRITE, str(target))
    approver, master = _live_approver(sandbox, runtime)
    try:
        screen = _read_until(master, b"without an answer", 30)
        assert b"elsewhere.txt" in screen, screen.decode(errors="replace")[-3000:]  # the name whole
        request = _next_request()
        assert _approve(request["id"], "deny", env={"XDG_RUNTIME_DIR": str(runtime)}).returncode == 0
        marked = _read_until(master, b"answered in another window", 10)
        assert f"{request['id']}: answered in another window: denied".encode() in marked, marked[-1500:]
        run.communicate(timeout=30)
        os.write(master, b"q")
        assert approver.wait(timeout=10) == 0
    finally:
        run.kill()
        approver.kill()
        os.close(master)
    assert not target.exists(), "denied from the other window: nothing written"
    assert [(a["answer"], a["via"]) for a in _events(sandbox, "approval")] == [("deny", "socket")]


def test_an_untrusted_workspace_policy_needs_policy_trust_never_yes(sandbox):
    (sandbox.workspace / ".sandboxctl.yaml").write_text("version: 1\nname: mine\nextends: default\n")
    refused = sandbox.run("--", "true", policy=None)
    assert refused.returncode == 125 and "not trusted yet" in refused.stderr
    assert "sandboxctl policy trust" in refused.stderr and "--yes" not in refused.stderr
    assert sandbox.run("--yes", "--", "true", policy=None).returncode == 125  # --yes is not trust
    trusted = subprocess.run([sys.executable, "-m", "sandboxctl", "policy", "trust",
                              str(sandbox.workspace / ".sandboxctl.yaml")],
                             cwd=sandbox.workspace, env=sandbox.env(), capture_output=True, text=True)
    assert trusted.returncode == 0, trusted.stderr
    accepted = sandbox.run("--", "true", policy=None)
    assert accepted.returncode == 0, accepted.stderr
    [start] = [r for r in sandbox.records() if r["event"] == "run.start"]
    assert start["policy"] == "mine"
