"""Red-team attacks on the protected-paths wall (issue 13), each judged from outside the sandbox:
the host's own git leaving a canary, the host file's bytes, a canary a binary would write."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.integration.test_exec_allow import CANARY_C
from tests.integration.test_protected_paths import _start, _wait_for, git, hostile_config, repo


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    return tmp_path / "CANARY"


def plant_commondir(canary: Path, how: str) -> str:
    """A copy of .git with a hostile config, and .git/commondir pointing the host's git at it."""
    return f"cp -r .git evil && printf '%s' '{hostile_config(canary)}' > evil/config && {how}; echo end"


# ------------------------------------------------------------------ the kernel wall under a tmpfs
def host_git_status_while_running(sandbox, attack: str, ws: Path, **kwargs) -> None:
    """Run the attack, then the host's git status while the sandbox still runs (a shell prompt or
    an editor runs it every few seconds), before the end-of-run check could put anything back."""
    proc = _start(sandbox, f"{attack}; echo planted > planted; while [ ! -e go ]; do sleep 0.05; done")
    try:
        _wait_for(ws / "planted", timeout=kwargs.get("timeout", 60))
        git(ws, "status", home=sandbox.home)
    finally:
        (ws / "go").write_text("")
        proc.communicate(timeout=60)


def test_a_magic_link_path_cannot_plant_git_commondir(sandbox, canary):
    """/proc/self/cwd/… fails the supervisor's RESOLVE_NO_MAGICLINKS resolution, so the call is
    continued to the kernel; Landlock does not hold the workspace read-only when it lies beneath a
    sandbox tmpfs (/tmp, HOME): the /tmp rule's write rights cover the bind mounted under it."""
    ws = repo(sandbox.workspace, sandbox.home)
    host_git_status_while_running(sandbox, plant_commondir(canary, "echo ../evil > /proc/self/cwd/.git/commondir"), ws)
    assert not canary.exists()


RACE = textwrap.dedent("""
    import ctypes, os, threading
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)
    good, bad = b"/tmp/decoy", os.getcwd().encode() + b"/.git/commondir"
    stop = False
    def flip():
        while not stop:
            ctypes.memmove(buf, good + b"\\0", len(good) + 1)
            ctypes.memmove(buf, bad + b"\\0", len(bad) + 1)
    t = threading.Thread(target=flip); t.start()
    for _ in range(20000):
        fd = libc.open(buf, os.O_WRONLY | os.O_CREAT, 0o644)
        if fd >= 0:
            os.write(fd, b"../evil\\n"); os.close(fd)
        if os.path.exists(".git/commondir"):
            break
    stop = True; t.join()
""")


def test_a_racing_thread_cannot_swap_a_tmp_path_onto_git_commondir(sandbox, canary):
    """A path in the sandbox's /tmp is continued to the kernel; a second thread swaps the buffer
    to the workspace before the kernel reads it. Only Landlock could refuse it there."""
    ws = repo(sandbox.workspace, sandbox.home)
    (ws / "race.py").write_text(RACE)
    host_git_status_while_running(sandbox, plant_commondir(canary, "python3 race.py"), ws, timeout=180)
    assert not canary.exists()


# ------------------------------------------------------------------ gVisor: absent git metadata is not held at all
@pytest.mark.skipif(not shutil.which("runsc"), reason="runsc (gVisor) is not installed")
@pytest.mark.parametrize("how", ["echo ../evil > .git/commondir", "git init -q sub && cp evil/config sub/.git/config"])
def test_gvisor_cannot_plant_git_metadata_that_did_not_exist(sandbox, canary, how):
    """Under gVisor only existing protected entries are binds and only absent *root* names are
    checked at the end; an absent .git/commondir (config.worktree, objects/info/alternates, …)
    and a new repository beneath the workspace are neither."""
    ws = repo(sandbox.workspace, sandbox.home)
    result = sandbox.run("--backend", "gvisor", "--", "/bin/sh", "-c", plant_commondir(canary, how))
    assert "end" in result.stdout, result.stderr
    git(ws, "status", home=sandbox.home)
    if (ws / "sub").is_dir():
        git(ws / "sub", "status", home=sandbox.home, check=False)
    assert not canary.exists()


# ------------------------------------------------------------------ a repository made without the name .git
SIGNED_COMMIT = ("tree %s\\nauthor a <a@a> 1 +0000\\ncommitter a <a@a> 1 +0000\\n"
                 "gpgsig -----BEGIN PGP SIGNATURE-----\\n x\\n -----END PGP SIGNATURE-----\\n\\nm\\n")


def test_a_new_bare_repository_in_a_subdirectory_cannot_be_planted(sandbox, canary):
    """git takes any directory holding HEAD, objects/ and refs/ for a (bare) repository and reads
    its config: the host's next `git log` run from docs/ runs gpg.program from it."""
    ws = repo(sandbox.workspace, sandbox.home)
    (ws / "docs").mkdir()
    script = f"""cd docs && git init -q --bare /tmp/b && cp -r /tmp/b/HEAD /tmp/b/objects /tmp/b/refs . &&
printf '#!/bin/sh\\ntouch {canary}\\n' > g.sh && chmod +x g.sh &&
printf '[core]\\n\\tbare = true\\n[log]\\n\\tshowSignature = true\\n[gpg]\\n\\tprogram = %s/g.sh\\n' "$PWD" > config &&
c=$(printf '{SIGNED_COMMIT}' $(git mktree </dev/null) | git hash-object -t commit -w --stdin) &&
git update-ref refs/heads/master $c; echo end"""
    result = sandbox.sh(script)
    assert "end" in result.stdout, result.stderr
    git(ws / "docs", "log", "-1", home=sandbox.home, check=False)
    assert not canary.exists()


# ------------------------------------------------------------------ exec.allow
EXEC_POLICY = "version: 1\nextends: default\nexec:\n  allow: [/usr/bin, /bin]\n"
CONSTRUCTOR_C = ('#include <stdio.h>\n#include <stdlib.h>\n__attribute__((constructor)) static void run(void) '
                 '{ char *c = getenv("CANARY"); if (c) fclose(fopen(c, "w")); }\n')


@pytest.mark.parametrize("how", ["LD_PRELOAD=./evil.so /usr/bin/true",
                                 "python3 -c 'import ctypes; ctypes.CDLL(\"./evil.so\")'"])
def test_exec_allow_holds_against_shared_objects_from_the_workspace(sandbox, how):
    """Landlock checks execute rights on execve only; the loader maps a preloaded or dlopen()ed
    file with PROT_EXEC on a read right alone, so native code from the workspace runs."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler on this machine")
    (sandbox.workspace / "evil.c").write_text(CONSTRUCTOR_C)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(sandbox.workspace / "evil.so"),
                    str(sandbox.workspace / "evil.c")], check=True)
    policy = sandbox.write_policy("exec.yaml", EXEC_POLICY)
    ran = sandbox.workspace / "ran"
    sandbox.run("--", "/bin/sh", "-c", f"CANARY={ran} {how}", policy=str(policy))
    assert not ran.exists()


LOADER_PROBE = textwrap.dedent("""
    import ctypes, os, sys, threading
    binary, canary, how = sys.argv[1].encode(), sys.argv[2].encode(), sys.argv[3]
    loader = [p for p in (b"/lib64/ld-linux-x86-64.so.2", b"/lib/ld-linux-aarch64.so.1") if os.path.exists(p)][0]
    if how == "non-utf8-name":  # the supervisor resolves /tmp/l\\ufffd, which does not exist
        os.symlink(loader, b"/tmp/l\\xff")
        os.execv(b"/tmp/l\\xff", [loader, binary, canary])
    libc = ctypes.CDLL(None, use_errno=True)
    for _ in range(300):  # race: the supervisor reads /usr/bin/true, the kernel the loader
        if os.path.exists(canary):
            break
        if os.fork() == 0:
            buf = ctypes.create_string_buffer(64)
            def flip():
                while True:
                    ctypes.memmove(buf, loader + b"\\0", len(loader) + 1)
                    ctypes.memmove(buf, b"/usr/bin/true\\0", 14)
            threading.Thread(target=flip, daemon=True).start()
            libc.execv(buf, (ctypes.c_char_p * 4)(loader, binary, canary, None))
            os._exit(1)
        os.wait()
""")


@pytest.mark.parametrize("how", ["non-utf8-name", "race"])
def test_the_loader_refusal_holds(sandbox, how):
    """The exec guard reads the exec path from the caller's memory, resolves it and continues:
    a name that is not UTF-8 resolves to another (missing) name there, and a second thread
    swaps the path between the guard's read and the kernel's."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler on this machine")
    (sandbox.workspace / "c.c").write_text(CANARY_C)
    subprocess.run([cc, "-o", str(sandbox.workspace / "bin"), str(sandbox.workspace / "c.c")], check=True)
    (sandbox.workspace / "probe.py").write_text(LOADER_PROBE)
    ran = sandbox.workspace / "ran"
    policy = sandbox.write_policy("exec.yaml", EXEC_POLICY)
    sandbox.run("--", "python3", "probe.py", "./bin", str(ran), how, policy=str(policy), timeout=120)
    assert not ran.exists()


# ------------------------------------------------------------------ the mediator itself
def test_a_fifo_with_no_reader_does_not_stall_the_supervisor(sandbox):
    """The supervisor opens a FIFO for writing itself and blocks until a reader comes: every other
    trapped call (each exec) waits behind it, the run's --timeout never fires, SIGTERM does not
    end it. (A read lease taken by the sandbox on its own file stalls it the same way, for the
    kernel's lease-break-time, 45 s, per open.)"""
    fifo = sandbox.workspace / "f"
    try:
        sandbox.run("--timeout", "20s", "--", "/bin/sh", "-c", "mkfifo f; (echo x > f &); sleep 0.2; echo ok > ok",
                    timeout=40)
    except subprocess.TimeoutExpired:
        pytest.fail("the run hung past its own --timeout")
    finally:
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # release a blocked writer
    assert (sandbox.workspace / "ok").exists()


NAMES_PROBE = textwrap.dedent("""
    import errno, os
    for name in (b"caf\\xe9.txt", b"d\\xff"):
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644))
    os.rename(b"d\\xff", b"e\\xfe"); os.mkdir(b"dir\\xe9"); os.unlink(b"caf\\xe9.txt")
    path = os.getcwd()
    while len(path) < 3850:
        os.mkdir("a" * 200); os.chdir("a" * 200); path += "/" + "a" * 200
    try:  # over 4100 bytes: the kernel refuses any path of PATH_MAX (4096) or more
        os.open(path + "/" + "b" * 250, os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        print(errno.errorcode[exc.errno])
""")


def test_the_supervisor_acts_on_the_callers_exact_bytes(sandbox):
    """Paths are read from the caller's memory as UTF-8 with errors replaced, and up to a page
    past 4096 bytes: the supervisor creates, renames and removes other names than the caller
    gave (dir\\ufffd; two different names become the same one), and creates a file through a
    path the kernel would refuse as too long."""
    result = sandbox.py(NAMES_PROBE)
    assert result.stdout.split() == ["ENAMETOOLONG"], result.stderr
    assert sorted(os.listdir(os.fsencode(sandbox.workspace))) == [b"a" * 200, b"dir\xe9", b"e\xfe"]
    assert [files for _, _, files in os.walk(sandbox.workspace / ("a" * 200)) if files] == []
