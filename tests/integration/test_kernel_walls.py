"""Landlock and seccomp walls: each escape attempted for real, with a control that the allowed
path still works."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from sandboxctl.checks.selftest_bed import Listener

EXEC_POLICY = """\
version: 1
extends: default
exec:
  allow: [/usr/bin, /usr/local/bin]
"""


def test_exec_outside_exec_allow_is_denied_by_landlock(sandbox):
    shutil.copy("/bin/true", sandbox.workspace / "mytrue")
    os.chmod(sandbox.workspace / "mytrue", 0o755)
    policy = sandbox.write_policy("exec.yaml", EXEC_POLICY)
    allowed = sandbox.run("--", "/usr/bin/true", policy=str(policy))
    assert allowed.returncode == 0, allowed.stderr
    denied = sandbox.run("--", "./mytrue", policy=str(policy))
    assert denied.returncode == 126
    assert "permission denied" in denied.stderr
    # and from inside a shell the same binary cannot run either
    shell = sandbox.run("--", "/usr/bin/sh", "-c", "./mytrue; echo rc=$?", policy=str(policy))
    assert "rc=126" in shell.stdout
    # without exec.allow, the same file runs (the wall, not the file, made the difference)
    assert sandbox.run("--", "./mytrue").returncode == 0


def _errno_of(sandbox, code: str) -> str:
    result = sandbox.py("import ctypes, os, errno\nlibc = ctypes.CDLL(None, use_errno=True)\n" + code +
                        "\nprint(errno.errorcode.get(ctypes.get_errno(), 'OK'))")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_ptrace_is_denied(sandbox):
    assert _errno_of(sandbox, "libc.ptrace(16, os.getppid(), 0, 0)") == "EPERM"  # PTRACE_ATTACH


def test_process_vm_readv_is_denied(sandbox):
    assert _errno_of(sandbox, "libc.process_vm_readv(os.getppid(), 0, 0, 0, 0, 0)") == "EPERM"


def test_new_user_namespace_is_denied(sandbox):
    assert _errno_of(sandbox, "libc.unshare(0x10000000)") == "EPERM"  # CLONE_NEWUSER
    result = sandbox.sh("unshare -U true; echo rc=$?")
    assert "rc=0" not in result.stdout


def test_mount_is_denied(sandbox):
    assert _errno_of(sandbox, "libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)") == "EPERM"


def test_terminal_injection_is_denied(sandbox):
    assert _errno_of(sandbox, "import fcntl\nlibc.ioctl(0, 0x5412, ctypes.c_char_p(b'x'))") == "EPERM"


def test_io_uring_is_denied(sandbox):
    assert _errno_of(sandbox, "libc.syscall(425, 8, None)") == "EPERM"


def test_bpf_and_keyctl_and_perf_are_denied(sandbox):
    assert _errno_of(sandbox, "libc.syscall(321, 0, None, 0)") == "EPERM"  # bpf
    assert _errno_of(sandbox, "libc.syscall(250, 0, 0, 0, 0, 0)") == "EPERM"  # keyctl
    assert _errno_of(sandbox, "libc.syscall(298, None, 0, -1, -1, 0)") == "EPERM"  # perf_event_open


def test_personality_flags_denied_but_query_allowed(sandbox):
    assert _errno_of(sandbox, "libc.personality(0x0040000)") == "EPERM"  # ADDR_NO_RANDOMIZE
    assert _errno_of(sandbox, "libc.personality(0xffffffff)") == "OK"


def test_exotic_socket_families_are_refused(sandbox):
    result = sandbox.py(
        "import socket\n"
        "for fam in (socket.AF_PACKET, 38, socket.AF_BLUETOOTH if hasattr(socket,'AF_BLUETOOTH') else 31):\n"
        "    try:\n        socket.socket(fam, socket.SOCK_RAW); print('opened', fam)\n"
        "    except OSError as e:\n        print(e.errno)\n"
        "s = socket.socket(socket.AF_UNIX); print('unix ok')\n"
        "try:\n    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 9); print('audit opened')\n"
        "except OSError as e:\n    print('audit', e.errno)\n"
        "socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); print('route ok')\n")
    lines = result.stdout.split()
    assert "opened" not in result.stdout
    assert "unix" in lines and "route" in lines
    assert "audit opened" not in result.stdout


def test_signals_to_host_processes_do_not_arrive(sandbox):
    victim = subprocess.Popen(["sleep", "30"])
    try:
        result = sandbox.py(f"import os\ntry:\n    os.kill({victim.pid}, 9); print('sent')\n"
                            "except OSError as e:\n    print(e.errno)")
        assert "sent" not in result.stdout
        assert victim.poll() is None  # still alive
    finally:
        victim.kill()
        victim.wait()


def test_the_sandbox_sees_only_its_own_processes(sandbox):
    result = sandbox.sh("ls /proc | grep -c '^[0-9]'")
    assert int(result.stdout.strip()) <= 4


@pytest.fixture
def server():
    srv = Listener()
    yield srv
    srv.close()


CONNECT = ("import socket\ntry:\n    s = socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
           "    print('connected', s.recv(10))\nexcept OSError as e:\n    print('refused', e.errno)")


@pytest.mark.parametrize("policy", ["default", "offline", "ci", "base"])
def test_network_is_closed_without_a_grant(sandbox, server, policy):
    result = sandbox.run("--", "python3", "-c", CONNECT.format(port=server.port), policy=policy)
    assert "refused" in result.stdout, result.stderr
    assert server.hits == 0


def test_host_network_mode_really_connects(sandbox, server):
    """The control: same program, network: host (a launch-time confirmation) reaches the server."""
    result = sandbox.run("--net", "host", "--yes", "--", "python3", "-c", CONNECT.format(port=server.port))
    assert "connected" in result.stdout, result.stderr
    assert server.hits == 1
    [start] = [r for r in sandbox.records() if r["event"] == "run.start"]
    assert any("network: host" in item for item in start["confirmed"])  # logged as such


def test_widening_without_yes_is_refused_non_interactively(sandbox):
    result = sandbox.run("--net", "host", "--", "true")
    assert result.returncode == 125
    assert "--yes" in result.stderr


def test_dns_fails_cleanly_inside(sandbox):
    result = sandbox.py("import socket\ntry:\n    socket.getaddrinfo('example.com', 443); print('resolved')\n"
                        "except OSError as e:\n    print('no dns')")
    assert result.stdout.strip() == "no dns"


def test_run_start_records_the_layers_really_applied(sandbox):
    assert sandbox.run("--", "true").returncode == 0
    start = next(r for r in sandbox.records() if r["event"] == "run.start")
    landlock = start["layers"]["landlock"]
    assert landlock["enforced"] is True and landlock["abi"] >= 1
    assert "EXECUTE" in landlock["fs_rights"] and "WRITE_FILE" in landlock["fs_rights"]
    assert start["layers"]["seccomp"]["rules"] > 30
    assert start["layers"]["bubblewrap"]["capabilities"] == "all dropped"
    json.dumps(start)


def test_landlock_is_a_second_wall_behind_the_mounts(sandbox):
    """The launcher's own files are mounted (the shim needs them) but not granted to Landlock:
    reading them is refused by Landlock alone."""
    result = sandbox.py("try:\n    open('/run/sandboxctl/shim.py').read(); print('read')\n"
                        "except OSError as e:\n    print(e.errno)")
    assert result.stdout.strip() == "13"  # EACCES from Landlock, the file exists


I386_GETPID = """
import ctypes, mmap
code = bytes([0xb8, 0x14, 0, 0, 0, 0xcd, 0x80, 0xc3])  # mov eax, 20 (i386 getpid); int 0x80; ret
buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
buf.write(code)
fn = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(buf)))
print('pid', fn(), flush=True)
"""

X32_GETPID = "import ctypes\nprint('pid', ctypes.CDLL(None).syscall(0x40000000 + 39), flush=True)"


def _runs_on_host(code: str) -> bool:
    result = subprocess.run(["python3", "-c", code], capture_output=True, text=True)
    return result.returncode == 0 and result.stdout.startswith("pid ") and int(result.stdout.split()[1]) > 0


@pytest.mark.parametrize("name,code", [("i386 int 0x80", I386_GETPID), ("x32", X32_GETPID)])
def test_foreign_architecture_syscalls_kill_the_process(sandbox, name, code):
    if os.uname().machine != "x86_64":
        pytest.skip("x86_64 only")
    if not _runs_on_host(code):
        pytest.skip(f"this kernel has no {name} system call entry (nothing to escape through)")
    result = sandbox.run("--", "python3", "-c", code)
    assert result.returncode == 128 + 31, result  # SIGSYS: killed by the filter, not EPERM
    assert "pid" not in result.stdout


def test_every_program_run_inside_is_logged_even_through_shells(sandbox):
    result = sandbox.sh("ls | wc -l")
    assert result.returncode == 0, result.stderr
    execs = [r for r in sandbox.records() if r["event"] == "exec"]
    names = [os.path.basename(r["path"]) for r in execs]
    assert names[0] == "sh" and "ls" in names and "wc" in names
    assert all(r["pid"] > 0 and r["argv"] for r in execs)


def test_a_denied_system_call_becomes_a_syscall_event(sandbox):
    assert _errno_of(sandbox, "libc.ptrace(16, os.getppid(), 0, 0)") == "EPERM"
    events = [r for r in sandbox.records() if r["event"] == "syscall"]
    assert events and events[0]["name"] == "ptrace" and events[0]["decision"] == "deny"
    assert events[0]["rule"] and events[0]["errno"] == "EPERM"
    end = next(r for r in sandbox.records() if r["event"] == "run.end")
    assert end["denied"] >= 1


def test_exec_events_can_be_switched_off(sandbox):
    policy = sandbox.write_policy("quiet.yaml", "version: 1\nextends: default\nlog:\n  exec_events: false\n")
    assert sandbox.run("--", "/bin/sh", "-c", "ls >/dev/null", policy=str(policy)).returncode == 0
    assert not [r for r in sandbox.records() if r["event"] == "exec"]


def test_file_events_record_writes_and_reads_cost_nothing(sandbox):
    result = sandbox.sh("echo a > made.txt; cat made.txt > /dev/null; : > made.txt; cat /etc/hostname >/dev/null")
    assert result.returncode == 0, result.stderr
    files = [(r["path"], r["op"], r["decision"]) for r in sandbox.records() if r["event"] == "file"]
    assert (str(sandbox.workspace / "made.txt"), "create", "allow") in files
    assert not [f for f in files if f[1] == "read"]  # file_events: write never traps a read


TRUNCATE_ATTEMPTS = """
import os, sys
path = sys.argv[1]
for name, attempt in [
        ("truncate", lambda: os.truncate(path, 0)),
        ("truncate longer", lambda: os.truncate(path, 1 << 20)),
        ("open O_RDONLY|O_TRUNC", lambda: os.close(os.open(path, os.O_RDONLY | os.O_TRUNC))),
        ("open O_WRONLY|O_TRUNC", lambda: os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))),
        ("ftruncate of a read-only descriptor", lambda: os.ftruncate(os.open(path, os.O_RDONLY), 0))]:
    try:
        attempt()
        print(name, "succeeded")
    except OSError as exc:
        print(name, "refused", exc.errno)
"""


def test_a_read_only_grant_cannot_be_truncated_in_any_way(sandbox, tmp_path):
    """Five ways to truncate a file of a read-only grant; judged by the host file's bytes."""
    data = tmp_path / "ro" / "data.txt"
    data.parent.mkdir()
    data.write_text("keep me\n")
    policy = sandbox.write_policy("ro.yaml", f"version: 1\nextends: default\nfilesystem:\n  read: [{data.parent}]\n")
    plan = sandbox.run("--dry-run", "--", "true", policy=str(policy))
    assert f"{data.parent}: read, execute" in plan.stdout
    result = sandbox.run("--", "python3", "-c", TRUNCATE_ATTEMPTS, str(data), policy=str(policy))
    assert result.returncode == 0, result.stderr
    assert "succeeded" not in result.stdout and result.stdout.count("refused") == 5, result.stdout
    assert data.read_text() == "keep me\n"
