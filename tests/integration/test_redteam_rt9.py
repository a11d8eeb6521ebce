"""Red team rt9: the launchers that call libc through _ctypes and pack the kernel's structures by
hand (launch/shim.py, launch/gvisor_init.py), attacked in real runs and judged from outside: the
host's /proc for the sandboxed process's seccomp state, host canary files and directories, the
host's own view of listening ports and of an abstract socket, the action log.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration.test_sessions import Cli, runtime  # noqa: F401 (the fixture)

CTYPES = None
try:
    import _ctypes

    CTYPES = os.path.realpath(_ctypes.__file__)
except ImportError:  # pragma: no cover - ctypes is part of every supported Python
    pass

GIT_CORE = "/usr/lib/git-core/git"  # a program readable and on a plain read-only mount, outside /usr/bin


def _policy(sandbox, name: str, body: str) -> Path:
    path = sandbox.write_policy(f"{name}.yaml", f"version: 1\nname: {name}\nextends: default\n{body}")
    os.chmod(path, 0o644)
    return path


def _host_pids(marker: str) -> list[int]:
    """Host processes that are the sandboxed python3 with the marker (not the sandboxctl naming it)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    argv = handle.read().split(b"\0")
                    if argv[0] == b"python3" and marker.encode() in argv:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as handle:
        return dict(line.rstrip("\n").split(":\t", 1) for line in handle if ":\t" in line)


def _wait_for_pid(marker: str, deadline_s: float = 20) -> int:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        pids = _host_pids(marker)
        if pids:
            return pids[0]
        time.sleep(0.05)
    raise AssertionError(f"no host process with {marker} in its command line")


# ------------------------------------------------------------------ fail closed: _ctypes masked
def _one_error_line(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("sandboxctl: error:")]


@pytest.mark.skipif(CTYPES is None, reason="no _ctypes extension module to mask")
@pytest.mark.parametrize("landlock", ["required", "best-effort"])
def test_a_masked_ctypes_fails_the_bwrap_run_closed(sandbox, landlock: str) -> None:
    """The policy's deny puts an empty file over _ctypes' shared object inside the sandbox, as an
    empty module bound over it would: the shim cannot reach Landlock, and even under best-effort
    (which trades Landlock only when the kernel lacks it) the run fails, with one line."""
    policy = _policy(sandbox, f"noctypes-{landlock}", f"landlock: {landlock}\nfilesystem:\n  deny: [{CTYPES}]\n")
    result = sandbox.sh("echo ran > marker", policy=str(policy))
    assert result.returncode == 125, result
    assert "Traceback" not in result.stderr and not (sandbox.workspace / "marker").exists()
    [line] = _one_error_line(result.stderr)
    assert "_ctypes" in line, line
    assert not [r for r in sandbox.records() if r.get("event") == "run.start"]  # never reported as started


@pytest.mark.skipif(CTYPES is None or not shutil.which("runsc"), reason="needs _ctypes and runsc")
@pytest.mark.parametrize("landlock", ["required", "best-effort"])
def test_a_masked_ctypes_fails_the_gvisor_run_closed(sandbox, landlock: str, tmp_path: Path) -> None:
    """The same under gVisor (network: proxy, so gvisor_init.py is the launcher; best-effort with
    exec.allow, the mode in which gVisor runs without what it cannot enforce)."""
    import tempfile

    runtime_dir = Path(tempfile.mkdtemp(prefix="gv9", dir="/tmp"))
    os.chmod(runtime_dir, 0o700)
    body = f"landlock: {landlock}\nfilesystem:\n  deny: [{CTYPES}]\n"
    if landlock == "best-effort":
        body += "exec:\n  allow: [/usr/bin]\n"
    policy = _policy(sandbox, f"gv-noctypes-{landlock}", body)
    try:
        result = subprocess.run([*sandbox.argv(policy=str(policy)), "--backend", "gvisor", "--net", "proxy", "--",
                                 "/bin/sh", "-c", "echo ran > marker"], cwd=sandbox.workspace,
                                env=sandbox.env({"XDG_RUNTIME_DIR": str(runtime_dir)}), capture_output=True,
                                text=True, timeout=120)
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)
    assert result.returncode == 125, result
    assert "Traceback" not in result.stderr and not (sandbox.workspace / "marker").exists()
    [line] = _one_error_line(result.stderr)
    assert "_ctypes" in line, line


# ------------------------------------------------------------------ the walls, judged from outside
SYSCALLS = r"""
import ctypes, errno, sys, time
libc = ctypes.CDLL(None, use_errno=True)
calls = {"ptrace": (101, 0, 0, 0, 0), "keyctl": (250, 0, 0, 0, 0), "bpf": (321, 0, 0, 0),
         "io_uring_setup": (425, 1, 0), "userfaultfd": (323, 0), "unshare": (272, 0x10000000),
         "mount": (165, 0, 0, 0, 0, 0), "kexec_load": (246, 0, 0, 0, 0)}
out = {}
for name, (nr, *args) in calls.items():
    result = libc.syscall(nr, *args)
    out[name] = result if result != -1 else errno.errorcode[ctypes.get_errno()]
print(out, flush=True)
time.sleep(30)
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 syscall numbers")
def test_the_command_runs_under_both_seccomp_filters_as_the_host_sees_it(sandbox) -> None:
    """/proc/PID/status of the sandboxed command, read on the host: no_new_privs and two filters
    (bubblewrap's baseline and the shim's notify filter, packed by Libc.seccomp_filter)."""
    marker = "rt9-seccomp-marker"
    process = subprocess.Popen([*sandbox.argv(), "--", "python3", "-c", SYSCALLS, marker],
                               cwd=sandbox.workspace, env=sandbox.env(), stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        status = _status(_wait_for_pid(marker))
    finally:
        process.kill()
        process.wait()
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2" and status["Seccomp_filters"] == "2", status
    answers = ast.literal_eval(line)
    assert all(value in ("EPERM", "ENOSYS") for value in answers.values()), answers


def test_exec_outside_exec_allow_is_refused_by_landlock_alone(sandbox) -> None:
    """/usr is one read-only bind with no noexec: only Landlock's EXECUTE right (granted on /usr/bin
    alone) stops git-core's git, which would otherwise make a repository the host sees."""
    if not os.access(GIT_CORE, os.X_OK):
        pytest.skip(f"{GIT_CORE} is not installed")
    policy = _policy(sandbox, "execonly", "exec:\n  allow: [/usr/bin]\n")
    result = sandbox.sh(f"{GIT_CORE} init canary-repo; echo $?", policy=str(policy))
    assert result.returncode == 0 and result.stdout.split()[-1] == "126", result
    assert not (sandbox.workspace / "canary-repo").exists()


def test_a_second_thread_racing_the_start_is_walled_too(sandbox) -> None:
    """A command whose first act is a thread that tries the same exec while the main thread writes:
    Landlock and seccomp are in place before the command's first instruction, for every thread."""
    if not os.access(GIT_CORE, os.X_OK):
        pytest.skip(f"{GIT_CORE} is not installed")
    policy = _policy(sandbox, "execonly-race", "exec:\n  allow: [/usr/bin]\n")
    code = (f"import os, threading\n"
            f"def go():\n    os.system('{GIT_CORE} init raced-repo 2>/dev/null')\n"
            f"threads = [threading.Thread(target=go) for _ in range(8)]\n"
            f"[t.start() for t in threads]\n"
            f"[t.join() for t in threads]\n"
            f"print(open('/proc/self/status').read().count('Seccomp_filters:\\t2'))\n")
    result = sandbox.py(code, policy=str(policy))
    assert result.returncode == 0 and result.stdout.strip() == "1", result
    assert not (sandbox.workspace / "raced-repo").exists()


BIND_AND_ABSTRACT = r"""
import socket, sys, time
held, out = [], []
for port in map(int, sys.argv[1:3]):
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(1)
        held.append(sock)
        out.append("bound")
    except OSError as exc:
        out.append(exc.errno)
unix = socket.socket(socket.AF_UNIX)
try:
    unix.connect("\0" + sys.argv[3])
    out.append("connected")
except OSError as exc:
    out.append(exc.errno)
print(out, flush=True)
time.sleep(20)
"""


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def _host_listening(port: int) -> bool:
    probe = socket.socket()
    probe.settimeout(2)
    try:
        return probe.connect_ex(("127.0.0.1", port)) == 0
    finally:
        probe.close()


def test_landlock_tcp_bind_rules_and_the_abstract_scope_hold_under_the_hosts_network(sandbox) -> None:
    """network: host with listen: [P] — no network namespace, so Landlock's TCP rule (ABI 4, a
    landlock_net_port_attr packed by the shim) is the only wall on binding, and its scope (ABI 6)
    the only one between the command and the host's abstract sockets. The host checks both itself."""
    allowed, other = _free_ports(2)
    name = f"rt9-abstract-{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind("\0" + name)
    listener.listen(1)
    listener.settimeout(0.2)
    arrived = []

    def watch() -> None:
        end = time.monotonic() + 15
        while time.monotonic() < end and not arrived:
            try:
                arrived.append(listener.accept()[0])
            except OSError:
                continue

    watcher = threading.Thread(target=watch)
    watcher.start()
    policy = _policy(sandbox, "hostnet", f"network:\n  mode: host\n  listen: [{allowed}]\n")
    process = subprocess.Popen([*sandbox.argv(policy=str(policy)), "--yes", "--", "python3", "-c",
                                BIND_AND_ABSTRACT, str(allowed), str(other), name],
                               cwd=sandbox.workspace, env=sandbox.env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        seen_allowed, seen_other = _host_listening(allowed), _host_listening(other)
    finally:
        process.kill()
        process.communicate()
        watcher.join()
        listener.close()
    assert line.strip() == "['bound', 13, 1]", line  # EACCES from the TCP rule, EPERM from the scope
    assert seen_allowed and not seen_other
    assert not arrived


CONNECTS = r"""
import errno, socket
held, out = [], []
for port in (8000, 8001):
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(1)
        held.append(sock)
        out.append("ok")
    except OSError as exc:
        out.append(errno.errorcode[exc.errno])
for port in (8000, 3128, 9, 8001):
    sock = socket.socket()
    sock.settimeout(5)
    try:
        sock.connect(("127.0.0.1", port))
        out.append("ok")
    except OSError as exc:
        out.append(errno.errorcode.get(exc.errno, str(exc)))
print(" ".join(out))
"""


def test_landlock_tcp_connect_rules_name_only_the_listed_ports_and_the_proxy(sandbox) -> None:
    """network: proxy with listen: [8000]: bind 8000 only, connect 8000 and the proxy's 3128 only —
    port 9 (nothing listens) is EACCES, Landlock's answer, not ECONNREFUSED, the network's: the
    connect rules (landlock_net_port_attr, CONNECT_TCP) were packed and taken."""
    policy = _policy(sandbox, "listen-one", "network:\n  mode: proxy\n  listen: [8000]\n")
    result = sandbox.py(CONNECTS, policy=str(policy))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "EACCES", "ok", "ok", "EACCES", "EACCES"], result.stdout


def test_two_hundred_read_grants_are_each_a_rule_and_each_readable(sandbox, tmp_path: Path) -> None:
    """200 filesystem.read paths: 200 landlock_path_beneath_attr rules more than the default, every
    one readable, and the log's run.start says how many rules the kernel took."""
    base = tmp_path / "many"
    paths = []
    for i in range(200):
        d = base / f"r{i:03}"
        d.mkdir(parents=True)
        (d / "f").write_text(f"{i}\n")
        paths.append(str(d))
    for p in (tmp_path, base, *base.iterdir()):
        os.chmod(p, 0o755)
    listed = "".join(f"    - {p}\n" for p in paths)
    policy = _policy(sandbox, "many", f"filesystem:\n  read:\n{listed}")
    default = sandbox.sh("true")
    assert default.returncode == 0, default.stderr
    result = sandbox.sh(f"cat {base}/r*/f | wc -l; echo x > {paths[0]}/w 2>/dev/null; echo $?", policy=str(policy))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["200", "2"], result.stdout
    assert not (Path(paths[0]) / "w").exists()
    starts = [r for r in sandbox.records() if r.get("event") == "run.start"]
    rules = [r["layers"]["landlock"]["path_rules"] for r in starts]
    assert rules[1] - rules[0] == 200, rules


PRELOAD_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void mark(void) {
    char exe[256] = {0}, line[512];
    readlink("/proc/self/exe", exe, sizeof exe - 1);
    int n = snprintf(line, sizeof line, "%s\n", exe);
    int fd = open(CANARY, O_WRONLY | O_CREAT | O_APPEND, 0666);
    if (fd >= 0) { write(fd, line, n); close(fd); }
}
"""


@pytest.mark.skipif(not shutil.which("gcc"), reason="gcc builds the preloaded library")
@pytest.mark.parametrize("backend", ["bwrap", "gvisor"])
def test_the_launcher_is_deaf_to_loader_and_python_variables(sandbox, backend: str, tmp_path: Path) -> None:
    """--env LD_PRELOAD, LD_LIBRARY_PATH, PYTHONPATH, PYTHONHOME, PYTHONSTARTUP: they reach the
    command (LD_PRELOAD's library says so in the canary) and never the launcher that loads
    _ctypes and libc (bubblewrap --clearenv / an empty OCI env, python3 -I -S): the canary names
    /usr/bin/true alone, and no planted module is imported."""
    if backend == "gvisor" and not shutil.which("runsc"):
        pytest.skip("runsc is not installed")
    ws = sandbox.workspace
    canary = ws / "preload-canary"
    (ws / "evil.c").write_text(PRELOAD_C)
    subprocess.run(["gcc", "-shared", "-fPIC", f'-DCANARY="{canary}"', "-o", str(ws / "evil.so"), str(ws / "evil.c")],
                   check=True)
    planted = ws / "planted"
    planted.mkdir()
    for module in ("marshal", "os", "_ctypes", "struct", "stat", "site", "encodings"):
        (planted / f"{module}.py").write_text(f"open({str(ws / 'python-canary')!r}, 'a').write('{module}\\n')\n")
    extra = ["--backend", "gvisor", "--net", "proxy"] if backend == "gvisor" else []
    env = {}
    if backend == "gvisor":
        import tempfile

        runtime_dir = Path(tempfile.mkdtemp(prefix="gv9", dir="/tmp"))
        os.chmod(runtime_dir, 0o700)
        env["XDG_RUNTIME_DIR"] = str(runtime_dir)
    try:
        result = subprocess.run([*sandbox.argv(), *extra, "--env", f"LD_PRELOAD={ws / 'evil.so'}",
                                 "--env", f"LD_LIBRARY_PATH={ws}", "--env", f"PYTHONPATH={planted}",
                                 "--env", f"PYTHONHOME={planted}", "--env", f"PYTHONSTARTUP={planted / 'os.py'}",
                                 "--", "/usr/bin/true"], cwd=ws, env=sandbox.env(env), capture_output=True,
                                text=True, timeout=120)
    finally:
        if env:
            shutil.rmtree(env["XDG_RUNTIME_DIR"], ignore_errors=True)
    assert result.returncode == 0, result.stderr
    assert canary.read_text().split() == ["/usr/bin/true"]
    assert not (ws / "python-canary").exists()


# ------------------------------------------------------------------ a notify filter of the command's own
SELF_NOTIFY = r"""
import ctypes, errno, os, socket, struct, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
target = sys.argv[1]
mode = sys.argv[2] if len(sys.argv) > 2 else "attack"
def plain():
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(target); return "connected"
    except OSError as e:
        return errno.errorcode[e.errno]
    finally:
        s.close()
if mode == "plain":
    print("plain", plain()); sys.exit()
def insn(code, jt, jf, k): return struct.pack("HBBI", code, jt, jf, k)
NR_CONNECT = 42
prog = (insn(0x20, 0, 0, 0) + insn(0x15, 0, 1, NR_CONNECT)
        + insn(0x06, 0, 0, 0x7FC00000) + insn(0x06, 0, 0, 0x7FFF0000))  # USER_NOTIF, else ALLOW
buf = ctypes.create_string_buffer(prog)
fprog = struct.pack("HxxxxxxQ", len(prog) // 8, ctypes.addressof(buf))
libc.prctl(38, 1, 0, 0, 0)
fd = libc.syscall(317, 1, 8, fprog)  # SECCOMP_SET_MODE_FILTER, NEW_LISTENER
if fd < 0:
    print("own listener refused:", errno.errorcode[ctypes.get_errno()]); print("plain", plain()); sys.exit()
def handler():
    notif = ctypes.create_string_buffer(80)
    while True:
        ctypes.memset(notif, 0, 80)
        if libc.ioctl(fd, 0xC0502100, notif) != 0:
            return
        nid = struct.unpack_from("Q", notif.raw, 0)[0]
        resp = struct.pack("QqiI", nid, 0, 0, 1)  # SECCOMP_USER_NOTIF_FLAG_CONTINUE
        libc.ioctl(fd, 0xC0182101, ctypes.create_string_buffer(resp))
threading.Thread(target=handler, daemon=True).start()
print("attack", plain())
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 syscall numbers")
def test_a_notify_filter_of_the_commands_own_cannot_take_the_supervisors_place(sandbox, tmp_path: Path) -> None:
    """The newest filter's USER_NOTIF wins a tie, so a command that stacks its own notify filter on
    connect and answers CONTINUE would keep the supervisor from ever seeing its connects; below
    Landlock ABI 9 the supervisor's answer is the only wall before a host UNIX socket. The kernel
    allows one listener per filter chain (EBUSY), and the host's socket sees no connection."""
    (sandbox.workspace / "selfnotify.py").write_text(SELF_NOTIFY)
    path = sandbox.workspace / "host.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(4)
    listener.setblocking(False)
    try:
        plain = sandbox.run("--", "python3", "selfnotify.py", str(path), "plain")
        attack = sandbox.run("--", "python3", "selfnotify.py", str(path), "attack")
        try:
            accepted = listener.accept()
        except BlockingIOError:
            accepted = None
    finally:
        listener.close()
    assert plain.stdout.split() == ["plain", "EACCES"], plain
    assert "own listener refused: EBUSY" in attack.stdout and "connected" not in attack.stdout, attack
    assert accepted is None


# ------------------------------------------------------------------ sessions inherit the walls
def test_a_sessions_commands_run_under_the_same_landlock_and_seccomp(sandbox, runtime: Path) -> None:  # noqa: F811
    """`sandboxctl exec` starts each command from the session's server, the shim's own process:
    the host sees no_new_privs and both filters on it, and exec.allow (Landlock alone) still holds."""
    if not os.access(GIT_CORE, os.X_OK):
        pytest.skip(f"{GIT_CORE} is not installed")
    cli = Cli(sandbox, runtime)
    policy = _policy(sandbox, "session-exec", "exec:\n  allow: [/usr/bin]\n")
    name = cli.start("rt9-walls", "-p", str(policy))
    try:
        refused = cli("exec", name, "--", "sh", "-c", f"{GIT_CORE} init session-repo; echo $?")
        assert refused.returncode == 0 and refused.stdout.split()[-1] == "126", refused
        assert not (sandbox.workspace / "session-repo").exists()
        marker = "rt9-session-marker"
        process = subprocess.Popen([sys.executable, "-m", "sandboxctl", "exec", name, "--", "python3", "-c",
                                    "import time; print('up', flush=True); time.sleep(30)", marker],
                                   cwd=sandbox.workspace, env=cli.env(), stdout=subprocess.PIPE, text=True)
        try:
            assert process.stdout.readline() == "up\n"
            status = _status(_wait_for_pid(marker))
        finally:
            process.kill()
            process.wait()
        assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2" and status["Seccomp_filters"] == "2", status
    finally:
        cli("session", "stop", name, timeout=30)
    starts = [r for r in sandbox.records() if r.get("event") == "run.start"]
    assert starts and all(r["layers"]["landlock"]["enforced"] for r in starts), json.dumps(starts)[:500]
