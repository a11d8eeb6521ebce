"""Red team of the plans made for very large workspaces and for root among other users' files
(plan/build.py: protected binds left out past bubblewrap's option limit, masks below
directories closed to the sandbox), and of the mediator's metadata calls those plans rest on.

Without the read-only binds, Landlock (the workspace read-only to the kernel) and the supervisor
performing each change hold the protected paths; but Landlock checks neither chmod nor extended
attributes, so every call of that kind must be performed (never continued) by the supervisor.
Each attack is judged from outside: the host file's mode while the sandbox still runs, the
host's own git running (or not) a hook, a canary file's mode."""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from tests.integration.test_big_workspace import BIG, fake_repositories
from tests.integration.test_protected_paths import _start, _wait_for, git, repo


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def acl_blob(bits: int) -> bytes:
    """A minimal POSIX access ACL (system.posix_acl_access, version 2): the same as chmod bits."""
    entry = lambda tag, perm: struct.pack("<HHI", tag, perm, 0xFFFFFFFF)  # noqa: E731
    return struct.pack("<I", 2) + entry(1, bits >> 6 & 7) + entry(4, bits >> 3 & 7) + entry(0x20, bits & 7)


def big_workspace(sandbox) -> Path:
    """BIG fake repositories and a real one whose pre-commit hook exists but is switched off
    (not executable: how users disable a hook); the plan must have left the binds out."""
    ws = sandbox.workspace
    fake_repositories(ws, BIG)
    real = repo(ws / "real", sandbox.home)
    hook = real / ".git" / "hooks" / "pre-commit"
    hook.write_text(f"#!/bin/sh\ntouch {ws.parent / 'CANARY'}\n")
    hook.chmod(0o644)
    plan = sandbox.run("--dry-run", "--", "true")
    assert "read-only binds are left out" in plan.stdout, plan.stdout[-2000:]
    return ws


def run_while_judging(sandbox, script: str, judge, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run `python3 attack.py` (script), then judge(ws) while the sandbox still runs (before the
    end-of-run check could put anything back), then let it end."""
    ws = sandbox.workspace
    (ws / "attack.py").write_text(textwrap.dedent(script))
    proc = _start(sandbox, "python3 attack.py > attack.out 2>&1; touch planted; "
                           "while [ ! -e go ]; do sleep 0.05; done")
    try:
        _wait_for(ws / "planted", timeout=timeout)
        judge(ws)
    finally:
        (ws / "go").touch()
        out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


ACLS = """
    import ctypes, os, struct
    libc = ctypes.CDLL(None, use_errno=True)
    def acl(bits):
        entry = lambda tag, perm: struct.pack("<HHI", tag, perm, 0xFFFFFFFF)
        return struct.pack("<I", 2) + entry(1, bits >> 6 & 7) + entry(4, bits >> 3 & 7) + entry(0x20, bits & 7)
    for target, bits in (("real/.git/hooks/pre-commit", 0o755), ("r7/.git/config", 0o666), ("r8/.git/hooks", 0o777)):
        for how in ("setxattr", "fsetxattr", "setxattrat"):
            try:
                if how == "setxattr":
                    os.setxattr(target, "system.posix_acl_access", acl(bits))
                elif how == "fsetxattr":
                    fd = os.open(target, os.O_RDONLY)
                    os.setxattr(fd, "system.posix_acl_access", acl(bits))
                    os.close(fd)
                else:  # Linux 6.13: struct xattr_args {value, size, flags}, unknown to older libseccomp
                    value = ctypes.create_string_buffer(acl(bits))
                    args = struct.pack("<QII", ctypes.addressof(value), len(acl(bits)), 0)
                    if libc.syscall(463, -100, target.encode(), 0, b"system.posix_acl_access", args, 16) != 0:
                        raise OSError(ctypes.get_errno(), how)
                print(how, target, "set")
            except OSError as exc:
                print(how, target, exc.errno)
"""


def test_an_acl_cannot_re_mode_protected_paths_when_their_binds_are_left_out(sandbox):
    """setxattr(system.posix_acl_access) is chmod by another name: it switched a disabled hook
    back on (the host's next `git commit` ran it), made a repository's config and hooks
    world-writable, and the end-of-run check left it all as it was ("changed from outside")."""
    ws = big_workspace(sandbox)
    real = ws / "real"

    def judge(ws: Path) -> None:
        assert mode(real / ".git" / "hooks" / "pre-commit") == 0o644
        assert mode(ws / "r7" / ".git" / "config") == 0o644
        assert mode(ws / "r8" / ".git" / "hooks") == 0o755

    result = run_while_judging(sandbox, ACLS, judge)
    assert result.returncode == 0, result.stderr
    assert " set" not in (ws / "attack.out").read_text()
    judge(ws)
    git(real, "commit", "-q", "--allow-empty", "-m", "after the run", home=sandbox.home)
    assert not (ws.parent / "CANARY").exists()


def flipping_path(bad: str) -> str:
    """The start of a race script: `buf` flips between a path in the sandbox's own /var/tmp (a
    call there used to be continued to the kernel, which reads the path again) and `bad`, a path
    relative to the workspace, in a second thread until `stop`."""
    return f"""
    import ctypes, os, threading, time
    libc = ctypes.CDLL(None, use_errno=True)
    bad = (os.getcwd() + "/{bad}").encode()
    good = b"/var/tmp/" + b"x" * (len(bad) - 9)
    open(good, "w").close()
    buf = ctypes.create_string_buffer(len(bad) + 1)
    stop = False
    def flip():
        while not stop:
            ctypes.memmove(buf, good, len(good) + 1)
            ctypes.memmove(buf, bad, len(bad) + 1)
    thread = threading.Thread(target=flip)
    thread.start()
"""


RACE_CHMOD = flipping_path("r10/.git/hooks") + """
    end = time.monotonic() + 8
    for _ in range(20000):
        libc.chmod(buf, 0o777)
        if os.stat("r10/.git/hooks").st_mode & 0o777 == 0o777 or time.monotonic() > end:
            break
    stop = True
    thread.join()
"""


def test_a_racing_thread_cannot_swap_a_chmod_onto_a_protected_path(sandbox):
    """chmod of a path in the sandbox's /var/tmp was continued to the kernel, which reads the
    path again: a second thread rewrote it to .git/hooks meanwhile. Landlock does not check
    chmod, so only a read-only bind refused it; without the binds the hooks became 0777."""
    ws = big_workspace(sandbox)
    result = run_while_judging(sandbox, RACE_CHMOD, lambda ws: None, timeout=240)
    assert result.returncode == 0, result.stderr
    assert mode(ws / "r10" / ".git" / "hooks") == 0o755


RACE_FCHMOD = """
    import os, threading, time
    decoy = os.open("/var/tmp/decoy", os.O_RDONLY | os.O_CREAT, 0o644)
    protected = os.open("r11/.git/config", os.O_RDONLY)
    spare = os.dup(decoy)
    stop = False
    def swap():
        while not stop:
            os.dup2(protected, spare)
            os.dup2(decoy, spare)
    thread = threading.Thread(target=swap)
    thread.start()
    end = time.monotonic() + 8
    for _ in range(20000):
        try:
            os.fchmod(spare, 0o666)
        except OSError:
            pass
        if os.stat("r11/.git/config").st_mode & 0o777 == 0o666 or time.monotonic() > end:
            break
    stop = True
    thread.join()
"""


def test_a_racing_dup2_cannot_swap_an_fchmod_onto_a_protected_file(sandbox):
    """fchmod of a descriptor of /var/tmp/decoy was continued to the kernel; another thread
    dup2()s a read-only descriptor of .git/config onto the same number before the kernel looks."""
    ws = big_workspace(sandbox)
    result = run_while_judging(sandbox, RACE_FCHMOD, lambda ws: None, timeout=240)
    assert result.returncode == 0, result.stderr
    assert mode(ws / "r11" / ".git" / "config") == 0o644


def test_the_run_start_record_says_the_binds_were_left_out(sandbox):
    """The log's protect layer says what held the protected paths: no read-only binds, and why."""
    ws = sandbox.workspace
    fake_repositories(ws, BIG)
    result = sandbox.sh("true")
    assert result.returncode == 0, result.stderr
    start = next(r for r in sandbox.records() if r.get("event") == "run.start")
    protect = start["layers"]["protect"]
    assert protect["read_only_binds"] == 0 and protect["binds_left_out"], json.dumps(protect)
    assert protect["git_directories"] == BIG and protect["wall_whole"] is True
    small = sandbox.workspace / "r0"  # a workspace of one repository keeps its binds
    result = sandbox.run("-w", str(small), "--", "true")
    assert result.returncode == 0, result.stderr
    start = [r for r in sandbox.records() if r.get("event") == "run.start"][-1]
    assert start["layers"]["protect"]["read_only_binds"] >= 2 and not start["layers"]["protect"]["binds_left_out"]


# ------------------------------------------------------------------ two runs in the same workspace
SWAP = """
    import os, time
    end = time.monotonic() + 6
    while time.monotonic() < end and not os.path.exists("stop"):
        os.symlink(os.environ["TARGET"], "l"); os.rename("l", "x")
        open("r", "w").close(); os.rename("r", "x")
"""
CHMOD = """
    import os, time
    end = time.monotonic() + 6
    while time.monotonic() < end and not os.path.exists("stop"):
        try:
            os.chmod("x", 0o666)
        except OSError:
            pass
"""


def test_a_second_run_cannot_turn_a_chmod_into_one_of_a_host_file(sandbox, tmp_path):
    """Run A chmods a workspace file; run B keeps swapping it for a symlink to a host file outside
    every grant. A's supervisor resolved the file, then chmodded it by name, following B's symlink
    in its own (the host's) view: the host file became 0666 (as root: any root-owned file)."""
    ws = sandbox.workspace
    target = tmp_path / "outside" / "canary"
    target.parent.mkdir()
    target.write_text("private\n")
    target.chmod(0o600)
    (ws / "x").write_text("x\n")
    (ws / "swap.py").write_text(textwrap.dedent(SWAP))
    (ws / "chmod.py").write_text(textwrap.dedent(CHMOD))
    env = sandbox.env()
    runs = [subprocess.Popen(sandbox.argv("--env", f"TARGET={target}", "--", "python3", name), cwd=ws, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name in ("chmod.py", "swap.py")]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(run.poll() is None for run in runs):
            assert mode(target) == 0o600, "the host file outside the grants was re-moded"
            time.sleep(0.1)
    finally:
        (ws / "stop").touch()
        results = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], results
    assert mode(target) == 0o600


# ------------------------------------------------------------------ root: the host's device nodes
@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox's root owns the host's device nodes only when it is root")
def test_a_root_sandbox_cannot_re_mode_the_hosts_device_nodes(sandbox):
    """/dev/null inside is a bind of the host's, owned by the sandbox's root (uid 0 is mapped):
    chmod was continued to the kernel, and Landlock does not check chmod. Judged by the host node's
    ctime (the same mode is set again, so a failure of this test harms nothing)."""
    before = os.stat("/dev/full")
    bits = stat.S_IMODE(before.st_mode)
    result = sandbox.py(textwrap.dedent(f"""
        import os
        for how in (lambda: os.chmod("/dev/full", 0o{bits:o}),
                    lambda: os.setxattr("/dev/full", "system.posix_acl_access", {acl_blob(bits)!r})):
            try:
                how(); print("changed")
            except OSError as exc:
                print("refused", exc.errno)
    """))
    assert result.returncode == 0, result.stderr
    assert "changed" not in result.stdout
    after = os.stat("/dev/full")
    assert (after.st_mode, after.st_ctime_ns) == (before.st_mode, before.st_ctime_ns)


def test_chmod_in_the_sandboxs_own_tmpfs_and_of_a_pipe_still_works(sandbox):
    """What the supervisor now performs itself instead of continuing: ordinary work goes on."""
    result = sandbox.py(textwrap.dedent("""
        import os, stat
        open("/var/tmp/f", "w").close()
        os.chmod("/var/tmp/f", 0o600); a = stat.S_IMODE(os.stat("/var/tmp/f").st_mode)
        fd = os.open("/var/tmp/f", os.O_RDONLY); os.fchmod(fd, 0o640); b = stat.S_IMODE(os.stat("/var/tmp/f").st_mode)
        os.symlink("/var/tmp/f", "/var/tmp/l"); os.chmod("/var/tmp/l", 0o604)
        c = stat.S_IMODE(os.stat("/var/tmp/f").st_mode)
        r, w = os.pipe(); os.fchmod(r, 0o600)
        open("mine", "w").close(); os.chmod("mine", 0o751)
        try:
            os.chmod("/var/tmp/missing", 0o600)
        except FileNotFoundError:
            print("missing")
        print(oct(a), oct(b), oct(c))
    """))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "missing\n0o600 0o640 0o604\n"
    assert mode(sandbox.workspace / "mine") == 0o751


# ------------------------------------------------------------------ root: masks below other users' directories
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: only root can make another user's private directory")
@pytest.mark.parametrize("entry", ["user", "group"])
def test_a_private_directory_opened_by_an_acl_keeps_its_masks(sandbox, entry):
    """Another user's 0700 directory whose ACL lets our uid (or gid) in: the planner judged it
    closed by its mode bits alone and left the .env mask out, and the sandbox read the secret."""
    ws = sandbox.workspace
    private = ws / "theirs" / "private"
    (private / "proj").mkdir(parents=True)
    (private / "proj" / ".env").write_text("SECRET=1\n")
    subprocess.run(["chown", "-R", "65534:65534", str(ws / "theirs")], check=True)
    tag = 2 if entry == "user" else 8  # ACL_USER, ACL_GROUP: for uid 0 / gid 0
    blob = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in sorted((
        (1, 7, 0xFFFFFFFF), (tag, 5, 0), (4, 0, 0xFFFFFFFF), (0x10, 5, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF))))
    os.setxattr(private, "system.posix_acl_access", blob)
    result = sandbox.sh("cat theirs/private/proj/.env; echo status $?")
    assert result.returncode == 0, result.stderr
    assert "SECRET" not in result.stdout and "status" in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a directory of ours with another group (chgrp to it)")
def test_a_directory_of_our_own_is_never_judged_closed(sandbox):
    """Our own 0600 directory (with another group, so not 'mapped') was judged closed and its
    .env mask left out: the sandbox, its owner, chmodded it open and read the secret. Its masks
    are kept now; bubblewrap cannot reach them to mount (no capability over an inode whose group
    is not mapped), so the launch fails closed."""
    ws = sandbox.workspace
    (ws / "d").mkdir()
    (ws / "d" / ".env").write_text("SECRET=1\n")
    os.chown(ws / "d", 0, 65534)
    (ws / "d").chmod(0o600)
    result = sandbox.sh("chmod 700 d; cat d/.env; echo status $?")
    assert "SECRET" not in result.stdout, result.stdout
    assert result.returncode in (0, 125), result.stderr
    assert mode(ws / "d") in (0o600, 0o700)


# ------------------------------------------------------------------ the CLI's own output and broken pipes
def _on_a_terminal_with_stdout_piped(sandbox, args: list[str], answer: bytes, reader_gone: bool):
    """sandboxctl with stdin and stderr on a terminal (a pty) and stdout a pipe, as in
    `sandboxctl run ... | tee log` (reader_gone: `| true`, the reader has already closed it)."""
    import pty
    import select

    master, slave = pty.openpty()
    read_end, write_end = os.pipe()
    if reader_gone:
        os.close(read_end)
    proc = subprocess.Popen(sandbox.argv(*args), cwd=sandbox.workspace, env=sandbox.env(), stdin=slave,
                            stdout=write_end, stderr=slave)
    os.close(write_end)
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"[y/N]" not in seen and time.monotonic() < deadline and proc.poll() is None:
            if select.select([master], [], [], 0.2)[0]:
                seen += os.read(master, 65536)
        if b"[y/N]" in seen:
            os.write(master, answer)
        code = proc.wait(timeout=60)
        with __import__("contextlib").suppress(OSError):
            while select.select([master], [], [], 0.2)[0]:
                seen += os.read(master, 65536)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    piped = b""
    if not reader_gone:
        with os.fdopen(read_end, "rb") as handle:
            piped = handle.read()
    return code, seen, piped


@pytest.mark.parametrize("reader_gone", [False, True])
def test_a_confirmation_asks_on_the_terminal_not_into_the_pipe(sandbox, reader_gone):
    """input() put "Run anyway? [y/N]" on stdout: with stdout piped the question was out of sight
    (and in the command's output); the answer "n" must still end the run unrun, exit 125."""
    code, seen, piped = _on_a_terminal_with_stdout_piped(
        sandbox, ["--net", "host", "--approve", "deny", "--", "sh", "-c", "touch ran"], b"n\n", reader_gone)
    assert b"Run anyway? [y/N]" in seen, seen
    assert b"[y/N]" not in piped
    assert code == 125 and not (sandbox.workspace / "ran").exists()


# ------------------------------------------------------------------ Landlock's TRUNCATE on read-only binds
RACE_TRUNC = flipping_path("hardlink") + """
    end = time.monotonic() + 8
    while time.monotonic() < end and os.stat("hardlink").st_size:
        fd = libc.open(buf, os.O_RDONLY | os.O_TRUNC)
        if fd >= 0:
            os.close(fd)
    stop = True
    thread.join()
"""


def test_a_hardlink_of_a_bound_protected_file_cannot_be_truncated_by_a_race(sandbox):
    """A read-only bind's Landlock rule is its inode's: with TRUNCATE granted on the bind of
    .git/config (main 738847e), the same inode under another name in the workspace (a hardlink
    made before the run) was truncatable by the kernel, and an O_TRUNC open continued for a path
    in /var/tmp, rewritten to the hardlink by a second thread, emptied the repository's config."""
    ws = repo(sandbox.workspace / "r", sandbox.home).parent
    config = ws / "r" / ".git" / "config"
    os.link(config, ws / "hardlink")
    before = config.read_bytes()

    def judge(ws: Path) -> None:
        assert config.read_bytes() == before

    result = run_while_judging(sandbox, RACE_TRUNC, judge)
    assert result.returncode == 0, result.stderr
    judge(ws)


# ------------------------------------------------------------------ FIFOs: the supervisor's loop must never wait
def test_truncating_a_fifo_does_not_stall_the_supervisor(sandbox):
    """truncate(2) of a FIFO: the supervisor opened it for writing in its own loop, which waited
    for a reader forever (the run's --timeout never fired, SIGTERM was only noted)."""
    script = ("mkfifo p /var/tmp/p; for f in p /var/tmp/p; do python3 -c 'import os, sys\n"
              "try: os.truncate(sys.argv[1], 0)\nexcept OSError as e: print(e.errno)' $f; done; exit 7")
    started = time.monotonic()
    result = sandbox.run("--timeout", "30s", "--", "/bin/sh", "-c", script, timeout=90)
    assert result.returncode == 7, result.stderr
    assert result.stdout == "22\n22\n" and time.monotonic() - started < 30


SWAP_FIFO = """
    import os, time
    end = time.monotonic() + 6
    while time.monotonic() < end and not os.path.exists("stop"):
        os.mkfifo("f"); os.rename("f", "x")
        open("r", "w").close(); os.rename("r", "x")
"""
OPEN_LOOP = """
    import os, threading, time
    end = time.monotonic() + 6
    def opens():  # blocking opens: those that meet a real FIFO wait (the first 32 on threads of the
        while time.monotonic() < end and not os.path.exists("stop"):  # supervisor, the rest get EAGAIN)
            try:
                os.close(os.open("x", os.O_WRONLY))
            except OSError:
                pass
    for _ in range(40):
        threading.Thread(target=opens, daemon=True).start()
    time.sleep(7)
    print("done", flush=True)
    os._exit(0)
"""


def test_a_second_run_swapping_in_a_fifo_does_not_stall_the_supervisor(sandbox):
    """Run A opens a workspace file for writing over and over; run B keeps replacing it with a
    FIFO. A's supervisor checked the entry (a regular file), then opened it in its own loop as B's
    FIFO, and waited there for a reader: A's timeout never fired. Now only A's own open waits (a
    FIFO without a reader, as the kernel would have it), and its --timeout ends it (124)."""
    ws = sandbox.workspace
    (ws / "x").write_text("x\n")
    (ws / "swap.py").write_text(textwrap.dedent(SWAP_FIFO))
    (ws / "open.py").write_text(textwrap.dedent(OPEN_LOOP))
    runs = [subprocess.Popen(sandbox.argv("--timeout", "12s", "--", "python3", name), cwd=ws, env=sandbox.env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name in ("open.py", "swap.py")]
    try:
        results = [run.communicate(timeout=90) for run in runs]
    finally:
        (ws / "stop").touch()
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.communicate()
    assert runs[0].returncode in (0, 124) and runs[1].returncode == 0, results
    assert runs[0].returncode == 124 or results[0][0] == "done\n"
