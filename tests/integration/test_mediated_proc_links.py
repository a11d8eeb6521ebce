"""Mediated calls whose path meets a symlink into /proc/self (or a magic link) on the way.

The supervisor resolves a caller's path with openat2 in its own view, where /proc/self names
nobody (it has no pid in the sandbox's /proc) and magic links are refused: `ln -s
/proc/self/root/usr/share ws/sl; echo x > ws/sl/f` was answered ENOENT and nothing was logged,
though the caller's kernel reaches /usr/share. Every call through such a path must be answered and
logged exactly as its plain spelling is. Judged from outside: the run's JSONL log and the host's
files; a read-only host directory (`--allow-read RO`) holds the canaries.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading

PROBE = r"""
import errno, json, os, socket, sys
ops = json.loads(sys.argv[1])
def run(op, a):
    if op == "open": os.close(os.open(a[0], os.O_WRONLY | os.O_CREAT, 0o644))
    elif op == "write": os.close(os.open(a[0], os.O_WRONLY))
    elif op == "tmpfile": os.close(os.open(a[0], os.O_TMPFILE | os.O_WRONLY, 0o600))
    elif op == "mkdir": os.mkdir(a[0])
    elif op == "mkfifo": os.mkfifo(a[0])
    elif op == "symlink": os.symlink("x", a[0])
    elif op == "link": os.link(a[0], a[1])
    elif op == "rename": os.rename(a[0], a[1])
    elif op == "unlink": os.unlink(a[0])
    elif op == "rmdir": os.rmdir(a[0])
    elif op == "truncate": os.truncate(a[0], 0)
    elif op == "chmod": os.chmod(a[0], 0o777)
    elif op == "bind": socket.socket(socket.AF_UNIX).bind(a[0])
    elif op == "connect": socket.socket(socket.AF_UNIX).connect(a[0])
    elif op == "ln": os.symlink(a[0].replace("PID", str(os.getpid())), a[1])
    elif op == "stat": os.stat(a[0])
for op, *args in ops:
    try:
        run(op, args); print("ok", flush=True)
    except OSError as e:
        print(errno.errorcode[e.errno], flush=True)
"""


def _run(sandbox, ro, ops, *extra):
    result = sandbox.run("--approve", "deny", "--allow-read", str(ro), *extra, "--", "python3", "-c", PROBE,
                         json.dumps(ops))
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def _file_records(sandbox):
    """(op, path, decision) of the file records, but the allowed symlinks the probe made itself."""
    return [(r["op"], r["path"], r["decision"]) for r in sandbox.records()
            if r["event"] == "file" and (r["op"] != "symlink" or r["decision"] == "deny")]


def _canaries(ro):
    ro.mkdir()
    (ro / "existing").write_text("host\n")
    os.chmod(ro / "existing", 0o644)
    (ro / "dir").mkdir()
    return {p.name: (p.stat().st_mode, p.stat().st_ino) for p in ro.iterdir()}


def _spellings(ro):
    """Links the sandbox makes to RO through /proc: (link name in ws, its target). All of them lead,
    in the caller's kernel, to RO itself."""
    pid_link = "/proc/PID/root" + str(ro)  # PID: the probe's own, filled in inside
    return [("abs", f"/proc/self/root{ro}"), ("rel", "abs"), ("thread", f"/proc/thread-self/root{ro}"),
            ("dot", f"/proc/./self/root{ro}"), ("net", f"/proc/net/../root{ro}"),
            ("devfd", f"/dev/fd/../root{ro}"), ("chain", "rel"), ("own", pid_link)]


def test_every_mediated_call_through_proc_self_is_answered_and_logged_as_its_plain_spelling(sandbox, tmp_path):
    ro = tmp_path / "ro"
    before = _canaries(ro)
    ws = sandbox.workspace
    (ws / "src").write_text("mine\n")
    links = _spellings(ro)

    def ops(base):
        return [("open", f"{base}/new"), ("write", f"{base}/existing"), ("tmpfile", f"{base}"),
                ("mkdir", f"{base}/d"), ("mkfifo", f"{base}/fifo"), ("symlink", f"{base}/sl"),
                ("link", f"{ws}/src", f"{base}/hard"), ("rename", f"{ws}/src", f"{base}/moved"),
                ("unlink", f"{base}/existing"), ("rmdir", f"{base}/dir"), ("truncate", f"{base}/existing"),
                ("chmod", f"{base}/existing"), ("bind", f"{base}/sock")]

    plain = _run(sandbox, ro, ops(str(ro)))
    plain_records = _file_records(sandbox)
    assert "ENOENT" not in plain and len(plain) == len(ops(str(ro))), plain
    assert plain_records and all(decision == "deny" for _op, _path, decision in plain_records), plain_records
    made = [("ln", target, f"{ws}/{name}") for name, target in links]
    for name, _target in links:
        sandbox.log_path.unlink()
        answers = _run(sandbox, ro, made + ops(f"{ws}/{name}"))
        assert answers[:len(made)] == ["ok"] * len(made), answers
        assert answers[len(made):] == plain, (name, answers[len(made):], plain)
        assert _file_records(sandbox) == plain_records, (name, _file_records(sandbox))
        for link, _t in links:
            (ws / link).unlink()
    assert {p.name: (p.stat().st_mode, p.stat().st_ino) for p in ro.iterdir()} == before  # nothing landed
    assert (ro / "existing").read_text() == "host\n" and (ws / "src").read_text() == "mine\n"


def test_a_path_that_does_not_exist_is_still_plain_enoent_without_a_denial(sandbox, tmp_path):
    ro = tmp_path / "ro"
    _canaries(ro)
    ws = sandbox.workspace
    (ws / "dangling").symlink_to("/proc/self/root/no/such/dir")
    (ws / "file").write_text("")
    (ws / "to-file").symlink_to(f"/proc/self/root{ws}/file")
    answers = _run(sandbox, ro, [("open", f"{ws}/missing/f"), ("open", "/no/such/dir/f"),
                                 ("open", f"{ws}/dangling/f"), ("mkdir", f"{ws}/dangling/d"),
                                 ("bind", f"{ws}/dangling/s"), ("rename", f"{ws}/file", f"{ws}/dangling/x"),
                                 ("open", f"{ws}/to-file/f"), ("unlink", f"{ws}/dangling/x"),
                                 ("open", f"/proc/self/root{ro}/missing/f")])
    assert answers == ["ENOENT", "ENOENT", "ENOENT", "ENOENT", "ENOENT", "ENOENT", "ENOTDIR", "ENOENT",
                       "ENOENT"], answers
    assert [r for r in sandbox.records() if r["event"] == "file" and r["decision"] == "deny"] == []
    assert (ws / "file").exists()


def test_forty_links_are_followed_to_a_denial_and_the_forty_first_is_eloop(sandbox, tmp_path):
    """c0 -> /proc/self/root/RO is three links (c0, /proc/self, its root), cN one more each: the
    kernel follows 40 (c37) and refuses the 41st (c38) — as its own stat says inside."""
    ro = tmp_path / "ro"
    _canaries(ro)
    ws = sandbox.workspace
    (ws / "c0").symlink_to(f"/proc/self/root{ro}")
    for i in range(1, 45):
        (ws / f"c{i}").symlink_to(f"c{i - 1}")
    answers = _run(sandbox, ro, [("stat", f"{ws}/c37/"), ("stat", f"{ws}/c38/"), ("open", f"{ws}/c37/f37"),
                                 ("open", f"{ws}/c38/f38"), ("mkdir", f"{ws}/c44/d44"), ("open", f"{ws}/c2/f2")])
    assert answers == ["ok", "ELOOP", "EACCES", "ELOOP", "ELOOP", "EACCES"], answers
    denied = [r["path"] for r in sandbox.records() if r["event"] == "file" and r["decision"] == "deny"]
    assert denied == [f"{ro}/f37", f"{ro}/f2"]
    assert sorted(p.name for p in ro.iterdir()) == ["dir", "existing"]


def test_writes_through_the_callers_own_proc_links_name_where_they_landed(sandbox, tmp_path):
    """/proc/self/cwd/../.., /proc/self/fd/N/.., /proc/self/./cwd and /proc/PID/cwd: the record names
    the file the write made (in the sandbox's view), never the text the caller gave."""
    ro = tmp_path / "ro"
    _canaries(ro)
    ws = sandbox.workspace
    (ws / "a" / "b").mkdir(parents=True)
    probe = ("import os, sys\n"
             "os.chdir('a/b')\n"
             "fd = os.open('.', os.O_RDONLY)\n"
             "for path in ('/proc/self/cwd/../../w1', f'/proc/self/fd/{fd}/../../w2', '/proc/self/./cwd/../../w3',"
             " f'/proc/{os.getpid()}/cwd/../../w4', '/proc//thread-self/cwd/../w5', '/dev/fd/../cwd/../../w6',"
             " '/proc/self/cwd/../../../ro/w7'):\n"
             "    try:\n        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)); print('ok')\n"
             "    except OSError as e:\n        print(e.errno)\n")
    result = sandbox.run("--approve", "deny", "--allow-read", str(ro), "--", "python3", "-c", probe)
    assert result.returncode == 0, result.stderr
    records = {r["path"]: r["decision"] for r in sandbox.records() if r["event"] == "file" and r.get("op") == "create"}
    landed = {f"{ws}/w1", f"{ws}/w2", f"{ws}/w3", f"{ws}/w4", f"{ws}/a/w5", f"{ws}/w6"}
    assert records == {**dict.fromkeys(landed, "allow"), f"{ro}/w7": "deny"}, records
    assert all(os.path.exists(path) for path in landed) and not (ro / "w7").exists()


def test_a_symlink_swapped_by_a_racing_process_never_hides_a_call(sandbox, tmp_path):
    """Another process flips ws/sw between ws/real and /proc/self/root/RO while the writer writes
    through it: each attempt lands in ws/real (and is logged there) or is refused and logged as RO."""
    ro = tmp_path / "ro"
    _canaries(ro)
    ws = sandbox.workspace
    (ws / "real").mkdir()
    count = 300
    probe = (f"import os, sys, errno\n"
             f"if os.fork() == 0:\n"
             f"    for i in range(100000):\n"
             f"        os.symlink('{ws}/real' if i % 2 else '/proc/self/root{ro}', 'tmp%d' % (i % 2))\n"
             f"        os.rename('tmp%d' % (i % 2), 'sw')\n"
             f"        if os.path.exists('stop'): os._exit(0)\n"
             f"    os._exit(0)\n"
             f"while not os.path.lexists('sw'): pass\n"
             f"answers = []\n"
             f"for i in range({count}):\n"
             f"    try:\n        os.close(os.open('sw/f%d' % i, os.O_WRONLY | os.O_CREAT, 0o644))\n"
             f"        answers.append('ok')\n"
             f"    except OSError as e:\n        answers.append(errno.errorcode[e.errno])\n"
             f"open('stop', 'w').close(); os.wait()\n"
             f"print(' '.join(answers))\n")
    result = sandbox.run("--approve", "deny", "--allow-read", str(ro), "--", "python3", "-c", probe, timeout=120)
    assert result.returncode == 0, result.stderr
    creates = [r for r in sandbox.records() if r["event"] == "file" and r.get("op") == "create"
               and "/f" in r["path"]]
    by_name = {}
    for r in creates:
        by_name.setdefault(r["path"].rsplit("/", 1)[1], []).append((r["path"].rsplit("/", 1)[0], r["decision"]))
    for i in range(count):
        seen = by_name.get(f"f{i}")
        assert seen in ([(f"{ws}/real", "allow")], [(str(ro), "deny")]), (i, seen)
        assert (ws / "real" / f"f{i}").exists() == (seen == [(f"{ws}/real", "allow")])
    kinds = {seen[0][1] for seen in by_name.values()}
    assert kinds == {"allow", "deny"}, kinds  # the link did flip under the writer
    assert sorted(p.name for p in ro.iterdir()) == ["dir", "existing"]


def test_another_process_s_proc_link_on_the_way_is_refused_and_logged(sandbox, tmp_path):
    """/proc/1/root is the sandbox's init's: the supervisor cannot follow it as the caller's kernel
    would (that depends on whether the caller may read the init), so the call is refused and seen."""
    ro = tmp_path / "ro"
    _canaries(ro)
    ws = sandbox.workspace
    (ws / "init").symlink_to(f"/proc/1/root{ro}")
    answers = _run(sandbox, ro, [("open", f"{ws}/init/f"), ("mkdir", f"{ws}/init/d")])
    assert answers == ["EACCES", "EACCES"], answers
    denied = [(r["op"], r["path"]) for r in sandbox.records() if r["event"] == "file" and r["decision"] == "deny"]
    assert denied == [("create", f"{ws}/init/f"), ("mkdir", f"{ws}/init/d")], denied
    assert all("another process" in r["rule"] for r in sandbox.records()
               if r["event"] == "file" and r["decision"] == "deny")
    assert sorted(p.name for p in ro.iterdir()) == ["dir", "existing"]


def test_a_unix_socket_reached_through_proc_self_is_judged_and_logged(sandbox, tmp_path):
    """A host socket the policy does not list: connecting to it through a link to /proc/self/root is
    a logged denial like the plain path (it was ENOENT, unseen), and the server never sees a client."""
    ro = tmp_path / "ro"
    _canaries(ro)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(ro / "host.sock"))
    server.listen(8)
    server.settimeout(0.2)
    accepted = []

    def serve():
        for _ in range(100):
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                if stop.is_set():
                    return

    stop = threading.Event()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ws = sandbox.workspace
    (ws / "sl").symlink_to(f"/proc/self/root{ro}")
    try:
        answers = _run(sandbox, ro, [("connect", f"{ro}/host.sock"), ("connect", f"{ws}/sl/host.sock"),
                                     ("connect", f"{ws}/sl/none.sock")])
    finally:
        stop.set()
        thread.join()
        server.close()
    assert answers[0] not in ("ok", "ENOENT") and answers[1] == answers[0] and answers[2] == "ENOENT", answers
    denied = [r for r in sandbox.records() if r["event"] == "net" and r["decision"] == "deny"]
    assert [r["host"] for r in denied] == [f"unix:{ro}/host.sock", f"unix:{ws}/sl/host.sock"], denied
    assert denied[0]["rule"] == denied[1]["rule"], denied  # the same socket file, judged the same
    assert accepted == []
    assert stat.S_ISSOCK(os.lstat(ro / "host.sock").st_mode)


def test_process_memory_behind_dotdot_after_a_magic_link_is_refused_and_logged(sandbox):
    """/proc/self/root/../proc/self/mem is the caller's memory. A write-intent open of it was judged
    as text (normpath: /proc/self/proc/self/mem, "no process memory") and let through; through
    openat2 with the caller's own RESOLVE_CACHED it reached the kernel with an "allow" record."""
    probe = ("import ctypes, errno, os\n"
             "libc = ctypes.CDLL(None, use_errno=True)\n"
             "class How(ctypes.Structure):\n"
             "    _fields_ = [('flags', ctypes.c_uint64), ('mode', ctypes.c_uint64), ('resolve', ctypes.c_uint64)]\n"
             "path = b'/proc/self/root/../proc/self/mem'\n"
             "for resolve in (0, 0x20):\n"
             "    how = How(os.O_RDWR, 0, resolve)\n"
             "    fd = libc.syscall(437, -100, path, ctypes.byref(how), ctypes.sizeof(how))\n"
             "    print('opened' if fd >= 0 else errno.errorcode[ctypes.get_errno()])\n")
    result = sandbox.run("--", "python3", "-c", probe)
    assert result.stdout.split() == ["EACCES", "EACCES"], (result.stdout, result.stderr)
    records = [(r["path"], r["decision"]) for r in sandbox.records() if r["event"] == "file"]
    assert len(records) == 2 and all(d == "deny" for _p, d in records), records
    assert all("/proc/PID/mem" in r["rule"] for r in sandbox.records() if r["event"] == "file")


def test_a_final_symlink_into_proc_self_is_followed_as_the_kernel_follows_it(sandbox, tmp_path):
    """The link is the last component: an open without O_NOFOLLOW (and truncate, chmod) follows it
    to RO's file, refused and logged there; one that dangles into /proc is plain ENOENT, unlogged."""
    ro = tmp_path / "ro"
    _canaries(ro)
    ws = sandbox.workspace
    (ws / "to-new").symlink_to(f"/proc/./self/root{ro}/new")
    (ws / "to-existing").symlink_to(f"/proc/thread-self/root{ro}/existing")
    (ws / "dangles").symlink_to("/proc/self/root/no/such/dir/f")
    answers = _run(sandbox, ro, [("open", f"{ws}/to-new"), ("write", f"{ws}/to-existing"),
                                 ("truncate", f"{ws}/to-existing"), ("chmod", f"{ws}/to-existing"),
                                 ("open", f"{ws}/dangles")])
    assert answers == ["EACCES", "EACCES", "EROFS", "EROFS", "ENOENT"], answers
    denied = [(r["op"], r["path"]) for r in sandbox.records() if r["event"] == "file" and r["decision"] == "deny"]
    assert denied == [("create", f"{ro}/new"), ("write", f"{ro}/existing"), ("truncate", f"{ro}/existing"),
                      ("chmod", f"{ro}/existing")], denied
    assert sorted(p.name for p in ro.iterdir()) == ["dir", "existing"]
    assert (ro / "existing").read_text() == "host\n" and stat.S_IMODE((ro / "existing").stat().st_mode) == 0o644


def test_an_unnamed_file_in_the_workspace_still_gets_its_name(sandbox):
    """O_TMPFILE's directory is resolved as entries are (through a link to /proc/self too), opened
    by the supervisor, and named with linkat of /proc/self/fd/N: the bytes land on the host."""
    ws = sandbox.workspace
    (ws / "sub").mkdir()
    (ws / "via").symlink_to(f"/proc/self/./root{ws}/sub")
    probe = ("import os\n"
             "for where, name in (('.', 'named'), ('via', 'via-named')):\n"
             "    fd = os.open(where, os.O_TMPFILE | os.O_WRONLY, 0o640)\n"
             "    os.write(fd, b'unnamed\\n')\n"
             "    here = os.open('.', os.O_RDONLY)  # a dir_fd makes os.link call linkat(AT_SYMLINK_FOLLOW)\n"
             "    os.link(f'/proc/self/fd/{fd}', name, dst_dir_fd=here, follow_symlinks=True)\n"
             "print('ok')\n")
    result = sandbox.run("--", "python3", "-c", probe)
    assert result.stdout.strip() == "ok", result.stderr
    assert (ws / "named").read_bytes() == b"unnamed\n" and (ws / "via-named").read_bytes() == b"unnamed\n"
    creates = [r["path"] for r in sandbox.records() if r["event"] == "file" and r.get("op") == "create"]
    assert creates == [str(ws), f"{ws}/sub"], creates
