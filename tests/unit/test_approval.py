"""The approval broker, remembered grants, write verdicts and the socket protocol, without a sandbox."""

from __future__ import annotations

import json
import os
import re
import select
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from sandboxctl.approval.broker import Broker
from sandboxctl.approval.grants import GrantStore, Scope
from sandboxctl.approval.socket_server import SocketFrontEnd
from sandboxctl.approval.view import render
from sandboxctl.plan.model import Mount

SCOPE = Scope("p", "a" * 64, "/ws")


class FakeFrontEnd:
    """Answers each request from a script, the way a human at a front end would."""

    name = "fake"

    def __init__(self, answers: dict[str, str] | None = None):
        self.answers = answers or {}
        self.broker = None
        self.seen: list[str] = []

    def start(self, broker) -> None:
        self.broker = broker

    def changed(self) -> None:
        for request in self.broker.pending():
            if request.id not in self.seen:
                self.seen.append(request.id)
                choice = self.answers.get(request.target)
                if choice:
                    threading.Thread(target=self.broker.answer, args=(request.id, choice, "fake")).start()

    def stop(self) -> None:
        pass


def make_broker(tmp_path: Path, mode: str = "ask", timeout: float = 5.0, answers: dict | None = None,
                records: list | None = None) -> Broker:
    log = records.append if records is not None else (lambda *a, **k: None)
    broker = Broker(mode, timeout, lambda event, **fields: log({"event": event, **fields}), run_id="run-abcdef",
                    scope=SCOPE, store=GrantStore(tmp_path / "state"))
    if answers is not None:
        broker.attach(FakeFrontEnd(answers))
    return broker


def test_modes_answer_without_asking(tmp_path: Path) -> None:
    records: list[dict] = []
    assert make_broker(tmp_path, "deny", records=records).decide("file", "/x", "r").answer == "deny"
    assert make_broker(tmp_path, "allow", records=records).decide("file", "/x", "r").approved
    assert [(r["answer"], r["via"]) for r in records] == [("deny", "mode:deny"), ("once", "mode:allow")]


def test_ask_without_a_front_end_denies(tmp_path: Path) -> None:
    request = make_broker(tmp_path).decide("network", "h:1", "r")
    assert request.answer == "deny" and not request.approved


def test_once_run_always_deny(tmp_path: Path) -> None:
    records: list[dict] = []
    broker = make_broker(tmp_path, answers={"h:1": "once", "h:2": "run", "h:3": "always", "h:4": "deny"},
                         records=records)
    assert broker.decide("network", "h:1", "r").answer == "once"
    assert broker.decide("network", "h:2", "r").answer == "run"
    assert broker.decide("network", "h:2", "r").via == "remembered for this run"
    assert broker.decide("network", "h:3", "r").answer == "always"
    assert broker.decide("network", "h:4", "r").answer == "deny"
    front_end = broker.front_ends[0]
    front_end.answers.clear()  # "once" is not remembered: asked again, nobody answers in time
    broker.timeout = 0.2
    assert broker.decide("network", "h:1", "r").answer == "timeout"
    assert GrantStore(tmp_path / "state").allows(SCOPE, "network", "h:3")
    assert not GrantStore(tmp_path / "state").allows(SCOPE, "network", "h:2")
    assert all(r["event"] == "approval" and r["request"].startswith("abcdef-") for r in records)


def test_always_is_scoped_to_policy_hash_and_workspace(tmp_path: Path) -> None:
    store = GrantStore(tmp_path / "state")
    store.add(SCOPE, "file", "/etc/x")
    store.add(SCOPE, "file", "/etc/x")  # no duplicate
    assert len(store.all()) == 1
    assert store.allows(SCOPE, "file", "/etc/x")
    assert not store.allows(SCOPE._replace(policy_sha256="b" * 64), "file", "/etc/x")  # edited policy
    assert not store.allows(SCOPE._replace(workspace="/other"), "file", "/etc/x")
    assert not store.allows(SCOPE, "network", "/etc/x")
    broker = make_broker(tmp_path, answers={})
    request = broker.decide("file", "/etc/x", "r")
    assert (request.answer, request.via) == ("always", "remembered (always)")
    assert oct((tmp_path / "state" / "approvals.json").stat().st_mode & 0o777) == "0o600"
    assert [g.target for g in store.revoke("p", target="/etc/x")] == ["/etc/x"]
    assert store.all() == []


def test_always_is_not_consulted_in_deny_mode(tmp_path: Path) -> None:
    GrantStore(tmp_path / "state").add(SCOPE, "file", "/etc/x")
    assert make_broker(tmp_path, "deny").decide("file", "/etc/x", "r").answer == "deny"


def test_grant_file_corruption_grants_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "approvals.json").write_text("{not json")
    assert GrantStore(state).all() == []
    (state / "approvals.json").write_text(json.dumps({"grants": [{"policy": "p"}, 5, "x"]}))
    assert GrantStore(state).all() == []


def test_a_run_answer_settles_identical_queued_requests(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, answers={})
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(broker.decide("network", "h:9", "r").answer))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while len(broker.pending()) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert broker.answer(broker.pending()[0].id, "run", "test") is None
    for thread in threads:
        thread.join(5)
    assert results == ["run"] * 3


def test_stop_denies_what_waits(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, answers={})
    results: list = []
    thread = threading.Thread(target=lambda: results.append(broker.decide("file", "/x", "r")))
    thread.start()
    while not broker.pending():
        time.sleep(0.01)
    broker.stop()
    thread.join(5)
    assert (results[0].answer, results[0].via) == ("deny", "run ended")
    assert broker.decide("file", "/y", "r").answer == "deny"


def test_answer_rejects_unknown_choices_and_ids(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, answers={})
    assert "unknown answer" in broker.answer("x", "yes", "t")
    assert "no pending request" in broker.answer("x", "once", "t")


def test_render_shows_what_who_rule_and_choices() -> None:
    text = render({"id": "r-1", "kind": "file", "target": "/etc/x", "detail": "create", "pid": 42,
                   "command": "python3 agent.py", "rule": "outside the writable set", "expires_in_s": 60}, 2,
                  "default", 100)
    assert re.search(r"write +/etc/x", _SGR.sub("", text))
    for needle in ("pid 42: python3 agent.py", "outside the writable set", "[o]", "allow once",
                   "[r]", "[a]", "always", "[d]", "deny", "2 more waiting", "r-1"):
        assert needle in text
    text = render({"id": "r-2", "kind": "http", "target": "DELETE api.github.com/repos/acme/x", "pid": None,
                   "rule": "not in network.inspect allow rules", "expires_in_s": 60}, 0, "default", 100)
    assert re.search(r"request +DELETE api\.github\.com/repos/acme/x", _SGR.sub("", text))


_SGR = re.compile(r"\x1b\[[0-9;]*m")  # rich's own styles: the only escape sequences a panel may hold


def _panel_lines(text: str) -> list[str]:
    return _SGR.sub("", text).splitlines()


SPOOF = "\x1bM\x1bM\x1bM│ what  write /home/u/w/NOTES.md" + "\u2800" * 80 + "\x1b[99G"


@pytest.mark.parametrize("field", ["target", "command", "detail", "rule"])
def test_render_every_field_is_inert(field: str) -> None:
    """The issue's payload in any field: shown escaped, never a raw ESC or a blank-looking pad."""
    request = {"id": "r-1", "kind": "file", "target": "/home/u/.gitconfig", "detail": "write", "pid": 77,
               "command": "python3 docs.py", "rule": "outside the writable set", "expires_in_s": 60}
    request[field] = request[field] + " " + SPOOF
    text = render(request, 0, "default", 100)
    assert "\x1b" not in _SGR.sub("", text) and "\u2800" not in text and "\u2502 what" not in text
    assert "\\x1bM\\x1bM\\x1bM" in text
    lines = _panel_lines(text)
    assert all(len(line) <= 100 for line in lines)
    assert re.fullmatch(r"│ write +/home/u/\.gitconfig.*│", lines[1]), lines  # the target: first, whole
    assert lines[-1].startswith("╰") and lines[0].startswith("╭")


def test_render_long_target_keeps_its_start_and_end_on_screen() -> None:
    target = "/home/u/" + "a/" * 500 + "authorized_keys"
    request = {"id": "r-1", "kind": "file", "target": target, "pid": 1, "command": "x" * 5000,
               "rule": "r" * 5000, "expires_in_s": 1}
    lines = _panel_lines(render(request, 0, "p", 60))
    assert lines[1].startswith("│ write    /home/u/a/") and "authorized_keys" in lines[4]
    assert "…[+" in lines[4] and len(lines) == 10
    assert all(len(line) == 60 for line in lines)  # nothing wraps: each field is one line (cut)


def test_render_wide_characters_do_not_break_the_frame() -> None:
    request = {"id": "r-1", "kind": "network", "target": "例え.jp:443", "pid": 1, "command": "日本" * 200,
               "rule": "not in network.allow", "expires_in_s": 1}
    lines = _panel_lines(render(request, 0, "p", 80))
    from sandboxctl.inert import display_width

    assert all(display_width(line) == 80 for line in lines), lines
    assert re.match(r"│ connect +例え\.jp:443", lines[1])


# ---------------------------------------------------------------------- write verdicts

def _plan_with(mounts, never=()):
    from tests.unit.test_plan import plan_for  # the planner's own fixture plan

    return plan_for()._replace(mounts=tuple(mounts), never_writable=tuple(never))


def test_write_verdicts() -> None:
    plan = _plan_with([Mount("ro", "/usr", "/usr", "system"), Mount("rw", "/ws", "/ws", "workspace"),
                       Mount("ro", "/ws/.git/hooks", "/ws/.git/hooks", "protected: .git/hooks"),
                       Mount("ro", "/ws/.envrc", "placeholder:file", "protected (absent)"),
                       Mount("mask-dir", "/home/u/.ssh", None, "filesystem.deny"),
                       Mount("ro", "/home/u/.gitconfig", "/home/u/.gitconfig", "filesystem.read"),
                       Mount("tmpfs", "/tmp", None, "tmpfs")],
                      never=[("/usr/lib/python3/dist-packages/sandboxctl", "sandboxctl's own code")])
    assert plan.write_verdict("/ws/a.py").inside
    assert plan.write_verdict("/tmp/x").inside
    hook = plan.write_verdict("/ws/.git/hooks/pre-commit")
    assert not hook.inside and hook.approvable and hook.host_path == "/ws/.git/hooks/pre-commit"
    usr = plan.write_verdict("/usr/local/x")
    assert usr.host_source == "/usr" and usr.relative == "local/x"
    assert plan.write_verdict("/home/u/.gitconfig").host_path == "/home/u/.gitconfig"
    for refused in ("/ws/.envrc", "/home/u/.ssh/authorized_keys", "/opt/x",
                    "/usr/lib/python3/dist-packages/sandboxctl/cli/main.py"):
        verdict = plan.write_verdict(refused)
        assert not verdict.inside and not verdict.approvable, refused


# ---------------------------------------------------------------------- the socket protocol

def test_socket_front_end_lists_and_answers(tmp_path: Path) -> None:
    directory = Path(tempfile.mkdtemp(prefix="sbx-u-"))
    broker = make_broker(tmp_path)
    front_end = SocketFrontEnd("run-1", directory / "rt")
    broker.attach(front_end)
    try:
        assert oct(front_end.path.stat().st_mode & 0o777) == "0o600"
        assert oct((directory / "rt").stat().st_mode & 0o777) == "0o700"
        results: list = []
        thread = threading.Thread(target=lambda: results.append(broker.decide("network", "h:1", "r", 7, "curl")))
        thread.start()
        from sandboxctl.approval.client import connect_all

        deadline = time.monotonic() + 5
        connection = None
        while time.monotonic() < deadline:
            [connection] = connect_all(directory / "rt")
            if connection.pending:
                break
            connection.close()
            time.sleep(0.02)
        assert connection is not None and connection.pending[0]["target"] == "h:1"
        assert connection.pending[0]["command"] == "curl"
        assert "unknown answer" in connection.answer(connection.pending[0]["id"], "sure")
        assert connection.answer(connection.pending[0]["id"], "once") is None
        thread.join(5)
        assert results[0].answer == "once" and results[0].via == "socket"
        raw = socket.socket(socket.AF_UNIX)
        raw.connect(str(front_end.path))
        raw.recv(4096)
        raw.sendall(b"garbage\n")
        assert b"error" in raw.recv(4096)
        raw.close()
    finally:
        broker.stop()
        os.system(f"rm -rf {directory}")
    assert not front_end.path.exists()


def test_peer_in_another_user_namespace_is_refused(tmp_path: Path) -> None:
    """What a sandboxed process looks like from the socket: another user (and PID) namespace."""
    import shutil
    import subprocess

    if not shutil.which("unshare"):
        pytest.skip("unshare(1) is not installed")
    directory = Path(tempfile.mkdtemp(prefix="sbx-u-"))
    broker = make_broker(tmp_path)
    front_end = SocketFrontEnd("run-2", directory)
    broker.attach(front_end)
    try:
        probe = (f"import socket; s=socket.socket(socket.AF_UNIX); s.connect({str(front_end.path)!r}); "
                 "s.settimeout(3); print(repr(s.recv(100)))")
        import sys

        result = subprocess.run(["unshare", "--user", "--map-current-user", sys.executable, "-c", probe],
                                capture_output=True, text=True, timeout=20)
        if result.returncode != 0 and "Operation not permitted" in result.stderr:
            pytest.skip("user namespaces are not available here")
        assert result.stdout.strip() == "b''", result.stdout + result.stderr  # dropped before a byte
    finally:
        broker.stop()
        os.system(f"rm -rf {directory}")


def test_plan_never_lets_an_approval_write_what_the_supervisor_relies_on() -> None:
    from tests.unit.test_plan import HOME, plan_for

    plan = plan_for(protected_code=("/usr/lib/python3/dist-packages/sandboxctl",))
    guarded = dict(plan.never_writable)
    assert f"{HOME}/.local/state/sandboxctl" in guarded
    assert "/usr/lib/python3/dist-packages/sandboxctl" in guarded
    assert "/etc/shadow" in guarded  # filesystem.deny of base
    verdict = plan.write_verdict("/usr/lib/python3/dist-packages/sandboxctl/cli/run.py")
    assert not verdict.approvable and "never approvable" in verdict.rule
    assert plan.write_verdict("/usr/lib/other/x").approvable


def test_write_trapping_follows_the_approval_mode(tmp_path: Path) -> None:
    """log.file_events: none still traps write opens when a human or `allow` may approve them."""
    from tests.unit.test_plan import plan_for, policy_from_text

    policy = policy_from_text("version: 1\nname: t\nextends: default\nlog: {file_events: none}\n", tmp_path)
    assert plan_for(policy, approve="ask").seccomp.file_events == "write"
    assert plan_for(policy, approve="allow").seccomp.file_events == "write"
    # a writable workspace: every write beneath it goes to the supervisor, which alone performs it
    assert plan_for(policy, approve="deny").seccomp.file_events == "write"
    assert plan_for(policy, approve="ask").file_events == "none"  # what is logged stays the policy's
    bare = policy_from_text("version: 1\nname: t\nextends: default\nworkspace: none\n"
                            "log: {file_events: none, exec_events: false}\n", tmp_path)
    assert plan_for(bare, approve="deny").seccomp.file_events == "none"
    assert not plan_for(bare, approve="deny").seccomp.mediate
    # exec records rely on write opens of /proc/PID/mem reaching the supervisor (which refuses them)
    execs = policy_from_text("version: 1\nname: t\nextends: default\nworkspace: none\nlog: {file_events: none}\n",
                             tmp_path)
    assert plan_for(execs, approve="deny").seccomp.file_events == "write"


def test_absent_and_glob_denied_paths_are_never_approvable(tmp_path: Path) -> None:
    from tests.unit.test_plan import HOME, WS, plan_for, policy_from_text

    policy = policy_from_text("version: 1\nname: t\nextends: default\nworkspace: ro\n", tmp_path)
    plan = plan_for(policy, allow_read=(HOME,))
    for path in (f"{HOME}/.ssh/authorized_keys", f"{WS}/.env.local"):
        verdict = plan.write_verdict(path)
        assert not verdict.approvable and "filesystem.deny" in verdict.rule, (path, verdict)
    assert plan.write_verdict(f"{WS}/src/x.py").approvable


def test_open_beneath_never_leaves_the_mount_source(tmp_path: Path) -> None:
    """A symlink (or ..) under the read-only bind cannot carry an approved open elsewhere."""
    import errno

    from sandboxctl.plan.model import WriteVerdict
    from sandboxctl.supervise.file_escape import open_beneath

    root = tmp_path / "bound"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere")
    (root / "inner").mkdir()
    (root / "inner" / "up").symlink_to("..")  # a relative link that stays beneath is fine
    for relative in ("link/x.txt", "../elsewhere/x.txt"):
        with pytest.raises(OSError) as info:
            open_beneath(WriteVerdict(False, "r", str(root), relative), os.O_WRONLY | os.O_CREAT, 0o644)
        assert info.value.errno == errno.EXDEV, relative
    assert not (tmp_path / "elsewhere" / "x.txt").exists()
    fd = open_beneath(WriteVerdict(False, "r", str(root), "inner/up/new.txt"), os.O_WRONLY | os.O_CREAT, 0o640)
    os.write(fd, b"ok")
    os.close(fd)
    assert (root / "new.txt").read_bytes() == b"ok"
    single = tmp_path / "single.conf"
    single.write_text("a")
    fd = open_beneath(WriteVerdict(False, "r", str(single), ""), os.O_WRONLY | os.O_TRUNC, 0)
    os.close(fd)
    assert single.read_text() == ""


def test_tty_front_end_queues_requests_and_restores_the_terminal(tmp_path: Path) -> None:
    """Two requests at once: one prompt at a time, each answered by a key; the mode comes back."""
    import termios

    from sandboxctl.approval.tty import TtyFrontEnd

    master, slave = os.openpty()
    slave_name = os.ttyname(slave)
    before = termios.tcgetattr(slave)
    broker = make_broker(tmp_path)
    broker.attach(TtyFrontEnd(slave_name))
    results: dict[str, str] = {}
    threads = [threading.Thread(target=lambda t=t: results.__setitem__(t, broker.decide("network", t, "r").answer))
               for t in ("a:1", "b:2")]
    try:
        for thread in threads:
            thread.start()
        screen = b""
        for key in (b"o", b"d"):
            deadline = time.monotonic() + 10
            while b"without an answer" not in screen and time.monotonic() < deadline:
                if select.select([master], [], [], 0.2)[0]:
                    screen += os.read(master, 4096)
            assert screen.count(b"approval needed") == 1, screen  # never two prompts at once
            time.sleep(0.6)  # read, as a human does: a key in the panel's first half second is no answer
            os.write(master, key)
            screen = b""
        for thread in threads:
            thread.join(10)
        assert sorted(results.values()) == ["deny", "once"]
        time.sleep(0.2)
        assert termios.tcgetattr(slave)[3] == before[3]  # ICANON/ECHO as they were
    finally:
        broker.stop()
        os.close(master)
        os.close(slave)


def test_a_flood_of_requests_is_denied_beyond_the_queue_limit(tmp_path: Path, monkeypatch) -> None:
    from sandboxctl.approval import broker as broker_module

    monkeypatch.setattr(broker_module, "MAX_PENDING", 2)
    broker = make_broker(tmp_path, answers={}, timeout=3)
    threads = [threading.Thread(target=broker.decide, args=("network", f"h:{i}", "r")) for i in range(2)]
    for thread in threads:
        thread.start()
    while len(broker.pending()) < 2:
        time.sleep(0.01)
    request = broker.decide("network", "h:9", "r")
    assert (request.answer, request.via) == ("deny", "more than 2 requests waiting")
    broker.stop()
    for thread in threads:
        thread.join(5)



def test_an_approved_write_to_another_name_of_a_protected_file_is_never_performed(tmp_path: Path, monkeypatch) -> None:
    """Red team rt5 (as root, --approve allow): a hook hardlinked into a read-only grant before the
    run was rewritten through an approved write there — the approval path judged no identity, and
    protected paths are never approvable whatever name leads to them. Now such a file is refused
    before anyone is asked; if the name leads there only after the question (swapped meanwhile),
    the file opened is judged again, and O_TRUNC is done only after that. A plain file is written."""
    from types import SimpleNamespace

    from sandboxctl.plan.model import WriteVerdict
    from sandboxctl.supervise import fdops, file_escape, notify

    root = tmp_path / "ro"
    root.mkdir()
    hook = tmp_path / "hook"
    hook.write_text("#!/bin/sh\n")
    os.link(hook, root / "pc")
    (root / "plain").write_text("plain\n")
    answers: list[int] = []
    handed: list[int] = []
    monkeypatch.setattr(notify, "respond", lambda fd, nid, error=0, allow=False: answers.append(error) or True)
    monkeypatch.setattr(notify, "still_valid", lambda fd, nid: True)
    monkeypatch.setattr(fdops, "add_fd", lambda listener, nid, fd, cloexec: handed.append(os.fstat(fd).st_ino))
    asked: list[str] = []

    class Broker:
        asks_human = False

        def decide(self, kind, target, *rest):
            asked.append(target)
            return SimpleNamespace(approved=True, answer="once", via="test")

    denied: list[dict] = []
    escapes = file_escape.FileEscapes(-1, Broker(), lambda *a, **k: None, denied)
    protected = (hook.stat().st_dev, hook.stat().st_ino)
    escapes.guard = lambda st: "protected: hook" if (st.st_dev, st.st_ino) == protected else None

    def escape(name: str) -> file_escape.FileEscape:
        return file_escape.FileEscape(7, os.getpid(), f"/ro/{name}", "write", os.O_WRONLY | os.O_TRUNC, 0,
                                      WriteVerdict(False, "read-only", str(root), name))

    escapes(escape("pc"))
    assert hook.read_text() == "#!/bin/sh\n" and handed == [] and asked == [] and answers[-1] != 0
    monkeypatch.setattr(file_escape, "stat_beneath", lambda verdict: (root / "plain").stat())  # swapped after
    escapes(escape("pc"))
    assert asked == ["/ro/pc"] and hook.read_text() == "#!/bin/sh\n" and handed == [] and answers[-1] != 0
    assert "another" not in denied[-1]["rule"] and "protected: hook" in denied[-1]["rule"]
    monkeypatch.undo()
    monkeypatch.setattr(notify, "respond", lambda fd, nid, error=0, allow=False: answers.append(error) or True)
    monkeypatch.setattr(notify, "still_valid", lambda fd, nid: True)
    monkeypatch.setattr(fdops, "add_fd", lambda listener, nid, fd, cloexec: handed.append(os.fstat(fd).st_ino))
    escapes(escape("plain"))
    assert (root / "plain").read_text() == "" and handed == [(root / "plain").stat().st_ino]
