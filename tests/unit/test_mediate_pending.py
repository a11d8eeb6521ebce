"""The mediator changes nothing for a call that is no longer pending (SECCOMP_IOCTL_NOTIF_ID_VALID).

What the mediator reads of a caller (its memory, /proc/PID/cwd and fd/N, its umask and limits, a
pidfd) names the caller only while the call waits for its answer: once the caller is killed its
pid may be another process's — a host process's. A harness drives the real Mediator (a real plan
of a workspace, this process standing in for the caller: its memory holds the arguments, its
descriptors are the caller's) with the kernel's side replaced: `still_valid` says whether the
call is pending, and answers are collected. Each call is performed while pending, and leaves the
workspace untouched and unanswered once not.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import stat
from pathlib import Path

import pytest

from sandboxctl.supervise import fdops, mediate, mediate_answers, mediate_changes, mediate_judge, mediate_opens
from sandboxctl.supervise.notify import _NOTIF, AT_FDCWD, Notification


class Harness:
    def __init__(self, tmp_path, monkeypatch):
        from sandboxctl.api.sandbox import Sandbox

        self.ws = tmp_path / "ws"
        self.ws.mkdir()
        plan = Sandbox(workspace=str(self.ws)).plan(["true"])
        self.pending = True
        self.answers: list[tuple[int, int, bool]] = []
        self.handed: list[int] = []
        self.asked = 0

        def respond(fd, notification_id, *, error=0, allow=False):
            if not self.pending:
                return False
            self.answers.append((notification_id, error, allow))
            return True

        def still_valid(fd, notification_id):
            self.asked += 1
            return self.pending

        def add_fd(listener, notification_id, fd, cloexec):
            if not self.pending:
                raise OSError(2, "gone")
            self.handed.append(os.fstat(fd).st_ino)

        for module in (mediate, mediate_opens, mediate_changes, mediate_judge, mediate_answers):
            monkeypatch.setattr(module, "respond", respond)
        monkeypatch.setattr(mediate, "still_valid", still_valid)
        monkeypatch.setattr(fdops, "add_fd", add_fd)
        self.outside: list[str] = []
        root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)  # this process's root: the "sandbox's"
        self.mediator = mediate.Mediator(-1, plan, plan.protection(), lambda *a, **k: None, [],
                                         outside=lambda n, full, *rest: self.outside.append(full), root=root)
        self.buffers: list[ctypes.Array] = []

    def text(self, value: str | bytes) -> int:
        buffer = ctypes.create_string_buffer(value.encode() if isinstance(value, str) else value)
        self.buffers.append(buffer)
        return ctypes.addressof(buffer)

    def call(self, name: str, *args: int) -> None:
        words = [*args, *[0] * (6 - len(args))]
        notification = Notification(_NOTIF.pack(7, os.getpid(), 0, 0, 0, 0, *words))
        self.mediator.handle(notification, name)

    def close(self) -> None:
        self.mediator.close()


@pytest.fixture
def harness(tmp_path, monkeypatch):
    h = Harness(tmp_path, monkeypatch)
    yield h
    h.close()


def _state(ws) -> list[tuple[str, int, int, bytes]]:
    """Every entry beneath ws: name, type and mode bits, size, contents of regular files."""
    found = []
    for base, dirs, files in os.walk(ws):
        for name in sorted(dirs + files):
            path = os.path.join(base, name)
            st = os.lstat(path)
            data = Path(path).read_bytes() if stat.S_ISREG(st.st_mode) else b""
            found.append((os.path.relpath(path, ws), st.st_mode, st.st_size, data))
    return sorted(found)


def _setup(ws) -> None:
    (ws / "file").write_bytes(b"contents")
    os.chmod(ws / "file", 0o644)
    (ws / "dir").mkdir()


def _bind_address(h: Harness, path: str) -> tuple[int, int]:
    raw = (1).to_bytes(2, "little") + path.encode() + b"\0"
    return h.text(raw), len(raw)


CALLS = {
    # name: a function of (harness, ws) that makes the call
    "create": lambda h, ws: h.call("openat", AT_FDCWD, h.text(f"{ws}/new"), os.O_CREAT | os.O_WRONLY, 0o644),
    "truncating open": lambda h, ws: h.call("open", h.text(f"{ws}/file"), os.O_WRONLY | os.O_TRUNC, 0),
    "tmpfile": lambda h, ws: h.call("openat", AT_FDCWD, h.text(f"{ws}/dir"), mediate.O_TMPFILE | os.O_WRONLY, 0o600),
    "mkdir": lambda h, ws: h.call("mkdir", h.text(f"{ws}/newdir"), 0o755),
    "mknod": lambda h, ws: h.call("mknod", h.text(f"{ws}/fifo"), stat.S_IFIFO | 0o644, 0),
    "unlink": lambda h, ws: h.call("unlink", h.text(f"{ws}/file")),
    "rmdir": lambda h, ws: h.call("rmdir", h.text(f"{ws}/dir")),
    "symlink": lambda h, ws: h.call("symlink", h.text("file"), h.text(f"{ws}/link")),
    "truncate": lambda h, ws: h.call("truncate", h.text(f"{ws}/file"), 0),
    "chmod": lambda h, ws: h.call("chmod", h.text(f"{ws}/file"), 0o600),
    "rename": lambda h, ws: h.call("rename", h.text(f"{ws}/file"), h.text(f"{ws}/moved")),
    "link": lambda h, ws: h.call("link", h.text(f"{ws}/file"), h.text(f"{ws}/hard")),
    "fchmod": lambda h, ws: _fchmod(h, ws),
    "bind": lambda h, ws: _bind(h, ws),
}


def _fchmod(h: Harness, ws) -> None:
    fd = os.open(ws / "file", os.O_RDONLY)
    try:
        h.call("fchmod", fd, 0o600)
    finally:
        os.close(fd)


def _bind(h: Harness, ws) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        address, length = _bind_address(h, f"{ws}/sock")
        h.call("bind", sock.fileno(), address, length)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_call_is_performed_while_pending_and_never_once_its_caller_is_gone(harness, name):
    ws = harness.ws
    _setup(ws)
    before = _state(ws)
    CALLS[name](harness, ws)
    answered = harness.answers == [(7, 0, False)] or (harness.answers == [] and len(harness.handed) == 1)
    assert answered, "performed and answered (an open: its descriptor handed over) while pending"
    assert _state(ws) != before or harness.handed, "the harness must see the call performed"
    assert harness.asked == 1, "one NOTIF_ID_VALID per performed call"

    for entry in ("new", "newdir", "fifo", "link", "moved", "hard", "sock"):  # back to the start
        path = ws / entry
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        elif os.path.lexists(path):
            path.unlink()
    for entry in ("file", "dir"):
        path = ws / entry
        if path.is_dir():
            path.rmdir()
        elif path.exists():
            path.unlink()
    _setup(ws)
    harness.answers.clear()
    harness.handed.clear()
    harness.pending = False
    before = _state(ws)
    CALLS[name](harness, ws)
    assert _state(ws) == before, "nothing may change for a caller whose pid may be another process's"
    assert harness.answers == [] and harness.handed == []


def test_a_umask_read_for_a_call_no_longer_pending_is_not_kept(harness):
    """The umask cache must not keep what was read from a pid's next owner."""
    harness.pending = False
    harness.call("mkdir", harness.text(f"{harness.ws}/d"), 0o777)
    assert os.getpid() not in harness.mediator.umasks
    harness.pending = True
    harness.call("mkdir", harness.text(f"{harness.ws}/d"), 0o777)
    assert os.getpid() in harness.mediator.umasks and (harness.ws / "d").is_dir()


def test_a_refusal_is_recorded_only_when_the_kernel_took_it(harness):
    """A denial answered to nobody (the caller gone) is not a denial of the run's."""
    (harness.ws / ".git").mkdir()
    harness.pending = False
    harness.call("openat", AT_FDCWD, harness.text(f"{harness.ws}/.git/config"), os.O_CREAT | os.O_WRONLY, 0o644)
    assert harness.mediator.denied == []
    harness.pending = True
    harness.call("openat", AT_FDCWD, harness.text(f"{harness.ws}/.git/config"), os.O_CREAT | os.O_WRONLY, 0o644)
    assert len(harness.mediator.denied) == 1 and harness.answers[0][1] != 0


def test_a_link_source_named_by_another_pid_is_never_the_hosts(harness, tmp_path):
    """/proc/NUMBER/fd/N as a link's source is a pid of the sandbox's namespace: the supervisor never
    opens the host's /proc/NUMBER (here another process, holding a file at that number). Only the
    caller's own descriptors (/proc/self/fd/N) are taken."""
    import subprocess

    outside = tmp_path / "outside"
    outside.write_text("another process's file")
    fd = os.open(outside, os.O_RDONLY)
    other = subprocess.Popen(["sleep", "30"], pass_fds=(fd,))
    try:
        source = harness.text(f"/proc/{other.pid}/fd/{fd}")
        harness.call("linkat", AT_FDCWD, source, AT_FDCWD, harness.text(f"{harness.ws}/stolen"),
                     mediate.AT_SYMLINK_FOLLOW)
        assert not os.path.lexists(harness.ws / "stolen") and harness.answers[-1][1] != 0
        mine = (harness.ws / "mine")
        mine.write_text("the caller's own file")
        own = os.open(mine, os.O_RDONLY)
        try:
            harness.call("linkat", AT_FDCWD, harness.text(f"/proc/self/fd/{own}"), AT_FDCWD,
                         harness.text(f"{harness.ws}/named"), mediate.AT_SYMLINK_FOLLOW)
        finally:
            os.close(own)
        assert os.path.samefile(harness.ws / "named", mine)
    finally:
        other.kill()
        other.wait()
        os.close(fd)


def test_a_memory_open_refused_to_a_gone_caller_is_no_denial_of_the_runs(monkeypatch):
    """refuses_open read the caller's cwd: answered to nobody, the refusal is not recorded."""
    from sandboxctl.plan.model import WriteVerdict
    from sandboxctl.supervise import notify

    dispatcher = notify.Dispatcher(-1, {}, lambda n: ("x", 1, "x"), lambda path: WriteVerdict(True, "tmpfs"),
                                   lambda *a, **k: None)
    monkeypatch.setattr(dispatcher.execs, "refuses_open", lambda *args: "writing process memory is refused")
    notification = Notification(_NOTIF.pack(7, os.getpid(), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    for pending, expected in ((False, 0), (True, 1)):
        monkeypatch.setattr(notify, "respond", lambda fd, notification_id, pending=pending, **kwargs: pending)
        dispatcher.outside(notification, "/proc/1/mem", "write", os.O_WRONLY, 0)
        assert len(dispatcher.denied) == expected


def test_with_a_launch_record_cut_short_no_file_with_another_name_is_written(harness):
    """Past MAX_ENTRIES a protected directory (a venv of torch and scipy) is recorded in part:
    the files left out have no identity among the protected inodes, so a hardlink of one made
    before the run (uv's cache links into the venv) was written through unseen (red team rt4).
    With the record cut short, a file of more than one name is not written; one of one name is."""
    ws = harness.ws
    (ws / "venv-file").write_bytes(b"import os\n")
    os.link(ws / "venv-file", ws / "cache-link")
    (ws / "plain").write_bytes(b"mine\n")
    truncating = os.O_WRONLY | os.O_TRUNC
    harness.mediator.protected_incomplete = True
    harness.call("open", harness.text(f"{ws}/cache-link"), truncating, 0)
    assert (ws / "venv-file").read_bytes() == b"import os\n" and harness.answers[-1][1] != 0
    assert "another name" in harness.mediator.denied[-1]["rule"]
    harness.call("truncate", harness.text(f"{ws}/cache-link"), 0)
    assert (ws / "venv-file").read_bytes() == b"import os\n"
    harness.call("open", harness.text(f"{ws}/plain"), truncating, 0)
    assert (ws / "plain").read_bytes() == b"" and len(harness.handed) == 1
    harness.mediator.protected_incomplete = False  # a whole record: its inodes decide
    harness.call("open", harness.text(f"{ws}/cache-link"), truncating, 0)
    assert (ws / "venv-file").read_bytes() == b"" and len(harness.handed) == 2


@pytest.mark.parametrize("name", ["open", "truncate"])
def test_the_file_opened_is_judged_not_only_the_name_looked_at_before(harness, monkeypatch, name):
    """Between the judgement of a name and the open that follows it by name, another run's
    sandbox can rename a hardlink of a protected file there (red team rt5: a hook written through
    a plain file's name). The swap is made here right after the judgement: nothing is written
    through it, and a plain file is still opened and truncated."""
    ws = harness.ws
    (ws / "hook").write_bytes(b"#!/bin/sh\n")
    os.link(ws / "hook", ws / "other-name")
    (ws / "plain").write_bytes(b"mine\n")
    harness.mediator.protected_inodes = {(os.stat(ws / "hook").st_dev, os.stat(ws / "hook").st_ino): "protected: hook"}
    judge = mediate_judge.Judgement._other_name
    swapped = []

    def swap_after_judging(self, n, entry):
        why = judge(self, n, entry)
        if entry.name == "plain" and not swapped:
            fdops.renameat2(-100, str(ws / "other-name"), -100, str(ws / "plain"), mediate.RENAME_EXCHANGE)
            swapped.append(True)
        return why

    monkeypatch.setattr(mediate_judge.Judgement, "_other_name", swap_after_judging)
    if name == "open":
        harness.call("open", harness.text(f"{ws}/plain"), os.O_WRONLY | os.O_TRUNC, 0)
    else:
        harness.call("truncate", harness.text(f"{ws}/plain"), 0)
    assert swapped
    assert (ws / "hook").read_bytes() == b"#!/bin/sh\n" and harness.handed == []
    assert harness.answers[-1][1] != 0 and "another name" in harness.mediator.denied[-1]["rule"]
    swapped.append(True)  # no more swaps: the plain file (now at other-name) is written as asked
    harness.call("open", harness.text(f"{ws}/other-name"), os.O_WRONLY | os.O_TRUNC, 0)
    assert (ws / "other-name").read_bytes() == b"" and len(harness.handed) == 1


def test_o_trunc_is_done_after_the_judgement_and_as_the_kernel_does_it(harness):
    """O_TRUNC is taken off the open and done on the descriptor once judged: a writable open and
    an O_RDONLY one (which Linux truncates too) empty the file; an open without it keeps it."""
    ws = harness.ws
    (ws / "dir").mkdir()
    for flags, left in ((os.O_WRONLY | os.O_TRUNC, b""), (os.O_RDONLY | os.O_TRUNC, b""),
                        (os.O_RDWR, b"contents"), (os.O_WRONLY | os.O_CREAT | os.O_TRUNC, b"")):
        (ws / "file").write_bytes(b"contents")
        harness.call("open", harness.text(f"{ws}/file"), flags, 0o644)
        assert (ws / "file").read_bytes() == left, oct(flags)
    assert len(harness.handed) == 4
    harness.call("open", harness.text(f"{ws}/dir"), os.O_RDONLY | os.O_TRUNC, 0)  # as the kernel: EISDIR
    assert harness.answers[-1][1] == errno.EISDIR and len(harness.handed) == 4


def test_with_a_record_cut_short_a_file_of_two_names_gets_a_third_but_is_never_written(harness):
    """The link-count rule costs what it refuses: pnpm and uv install by linking their store's files
    (each already of two names or more), and refusing the link broke every install (red team rt5:
    2 000 of 2 000 links refused). A name more is no write: the protected name stays, so every
    other name of a left-out protected file still counts two or more, and writing through the
    new one is refused; the refusal names the directory recorded in part."""
    ws = harness.ws
    (ws / "venv-file").write_bytes(b"import os\n")
    os.link(ws / "venv-file", ws / "cache-link")
    harness.mediator.protected_incomplete = f"{ws}/venv"
    harness.call("link", harness.text(f"{ws}/cache-link"), harness.text(f"{ws}/third-name"))
    assert harness.answers[-1] == (7, 0, False) and os.path.samefile(ws / "third-name", ws / "venv-file")
    harness.call("open", harness.text(f"{ws}/third-name"), os.O_WRONLY, 0)
    assert (ws / "venv-file").read_bytes() == b"import os\n" and harness.handed == []
    assert f"{ws}/venv is too big to record whole" in harness.mediator.denied[-1]["rule"]
    harness.call("chmod", harness.text(f"{ws}/third-name"), 0o777)
    assert harness.answers[-1][1] != 0
