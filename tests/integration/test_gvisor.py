"""The gvisor backend through real runsc sandboxes: the escape tests, judged from outside.

Each test runs `sandboxctl run --backend gvisor`. Where gVisor cannot provide what a bubblewrap
test checks (Landlock, seccomp user notification), the test is skipped with the reason, and a
test of its own checks that the run says so instead of pretending.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sandboxctl.supervise.processes import wait_for
from tests.integration.conftest import Sandbox
from tests.integration.test_approvals import CONNECT  # one program for proxy escapes, both backends

if not shutil.which("runsc"):
    pytest.skip("runsc (gVisor) is not installed: apt-get install runsc", allow_module_level=True)

CANARY = "canary-gv-51d0e2"
NO_LANDLOCK = "gVisor does not implement Landlock (landlock_create_ruleset: ENOSYS inside it)"
NO_NOTIFY = ("gVisor has no seccomp user notification (SECCOMP_FILTER_FLAG_NEW_LISTENER: EINVAL), so it "
             "provides no exec/file/syscall events and no file-write approvals")


class GvisorSandbox(Sandbox):
    """`sandboxctl run --backend gvisor`, with a private, short runtime dir (UNIX socket paths
    are limited to 107 bytes) so each test can check that its run left nothing in it."""

    def __init__(self, workspace: Path, home: Path, state: Path, runtime: Path):
        super().__init__(workspace, home, state)
        self.runtime = runtime

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return super().env({"XDG_RUNTIME_DIR": str(self.runtime), **(extra or {})})

    def argv(self, *args: str, policy: str | None = "default") -> list[str]:
        head = super().argv(policy=policy)
        return [*head, "--backend", "gvisor", *args]

    def run_dirs(self) -> list[str]:
        base = self.runtime / "sandboxctl"
        return sorted(p.name for p in base.iterdir() if p.name.startswith("g-")) if base.is_dir() else []

    def processes(self) -> list[int]:
        """Host processes of this test's runs: runsc, its gofer and sandbox name the run dir."""
        from sandboxctl.launch.runsc import pids_using

        return pids_using(str(self.runtime))

    def start(self) -> dict:
        return next(r for r in self.records() if r["event"] == "run.start")


@pytest.fixture
def gv(tmp_path: Path, workspace: Path, home: Path):
    runtime = Path(tempfile.mkdtemp(prefix="gv", dir="/tmp"))
    os.chmod(runtime, 0o700)
    box = GvisorSandbox(workspace, home, tmp_path / "state", runtime)
    yield box
    leftovers = box.run_dirs()
    shutil.rmtree(runtime, ignore_errors=True)
    assert not leftovers, f"run directories left behind: {leftovers}"


# ------------------------------------------------------------------ it runs, and says what it applied
def test_python_runs_under_gvisor_with_the_default_policy(gv):
    result = gv.run("--", "python3", "-c", "print(1)")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1\n"
    assert gv.run_dirs() == [] and gv.processes() == []


def test_run_start_records_what_gvisor_really_applies(gv):
    assert gv.run("--", "true").returncode == 0
    start = gv.start()
    layers = start["layers"]
    assert start["backend"] == "gvisor" and "bubblewrap" not in layers
    assert layers["gvisor"]["platform"] in ("ptrace", "kvm") and layers["gvisor"]["rootless"] is True
    assert layers["gvisor"]["capabilities"] == "none"
    assert layers["landlock"]["enforced"] is False and "does not implement" in layers["landlock"]["why"]
    seccomp = layers["seccomp"]
    assert seccomp["rules"] > 30 and "gVisor" in seccomp["enforced_by"]
    assert seccomp["denials_trapped"] is False and seccomp["exec_events"] is False and seccomp["file_events"] is False
    assert layers["network"]["mode"] == "proxy"
    assert layers["pids"] == "rlimit"
    end = [r for r in gv.records() if r["event"] == "run.end"]
    assert end and end[0]["exit_code"] == 0


def test_every_run_warns_what_gvisor_does_not_provide(gv):
    result = subprocess.run([a for a in gv.argv("--", "true") if a != "-q"], cwd=gv.workspace, env=gv.env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "Landlock is not applied" in result.stderr and "no exec, file or syscall events" in result.stderr


@pytest.mark.parametrize("policy,launcher", [("default", "python3"), ("base", "native")])
def test_seccomp_baseline_is_enforced_inside_gvisor(gv, policy, launcher):
    """With either launcher: python3 + gvisor_init.py (network: proxy starts a forwarder) or the
    native program (network: none, x86-64), which loads the same BPF program without an interpreter."""
    if launcher == "native" and os.uname().machine != "x86_64":
        pytest.skip("the native launcher exists for x86-64 only; elsewhere python3 starts every command")
    code = ("import ctypes, errno, socket\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('Seccomp:')][0])\n"
            "print(libc.ptrace(0, 0, 0, 0), errno.errorcode[ctypes.get_errno()])\n"
            "print(libc.unshare(0x10000000), errno.errorcode[ctypes.get_errno()])\n"
            "try:\n    socket.socket(17, socket.SOCK_RAW)\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n"
            "import threading\nt = threading.Thread(target=print, args=('threads work',)); t.start(); t.join()\n")
    result = gv.py(code, policy=policy)
    assert result.stdout.splitlines() == ["2", "-1 EPERM", "-1 EPERM", "EAFNOSUPPORT", "threads work"], result.stderr
    assert gv.start()["layers"]["gvisor"]["launcher"].startswith(launcher)
    assert gv.processes() == [] and gv.run_dirs() == []


# ------------------------------------------------------------------ file system
def test_workspace_is_writable_and_the_write_shows_on_the_host(gv):
    result = gv.sh("echo built > out.txt && cat out.txt && pwd")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["built", str(gv.workspace)]
    written = gv.workspace / "out.txt"
    assert written.read_text() == "built\n" and written.stat().st_uid == os.getuid()


def test_write_outside_the_workspace_fails_and_nothing_appears_on_the_host(gv, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    result = gv.sh(f"echo pwned > {outside}/x; echo pwned > /etc/pwned; echo pwned > /usr/pwned; "
                   "echo pwned > /pwned; echo done")
    assert result.stdout.strip() == "done"
    assert "Read-only file system" in result.stderr
    assert not (outside / "x").exists()
    assert not any(os.path.exists(p) for p in ("/etc/pwned", "/usr/pwned", "/pwned"))


def test_paths_not_granted_are_absent(gv, tmp_path):
    private = tmp_path / "private"
    private.mkdir()
    (private / "data").write_text("host-only")
    result = gv.sh(f"cat {private}/data; echo rc=$?")
    assert "host-only" not in result.stdout and "rc=1" in result.stdout


def test_home_is_private_and_empty_and_gone_after_the_run(gv):
    (gv.home / "diary.txt").write_text("host secret")
    result = gv.py("import os\nprint(os.listdir(os.environ['HOME']))\n"
                   "open(os.environ['HOME'] + '/planted', 'w').write('x'); print('wrote')")
    listing, wrote = result.stdout.splitlines()
    assert "diary.txt" not in listing and wrote == "wrote", result.stderr
    assert not (gv.home / "planted").exists()


def test_denied_credentials_are_not_readable_under_a_granted_parent(gv):
    ssh = gv.home / ".ssh"
    ssh.mkdir()
    (ssh / "id_rsa").write_text("PRIVATE KEY")
    (gv.home / ".netrc").write_text("machine x password hunter2")
    (gv.home / "notes.txt").write_text("readable")
    (gv.workspace / ".env").write_text("OPENAI_API_KEY=sk-live")
    policy = gv.write_policy("home-ro.yaml", "version: 1\nextends: default\nfilesystem:\n  read: ['~']\n")
    result = gv.run("--", "/bin/sh", "-c", "cat ~/notes.txt; cat ~/.ssh/id_rsa; cat ~/.netrc; cat .env; "
                    "python3 -c \"import os; print(os.listdir(os.path.expanduser('~/.ssh')))\"; echo end",
                    policy=str(policy))
    assert "readable" in result.stdout and result.stdout.strip().endswith("end")
    assert "[]" in result.stdout  # ~/.ssh is an empty directory inside
    for secret in ("PRIVATE KEY", "hunter2", "sk-live"):
        assert secret not in result.stdout


def test_host_secrets_under_etc_stay_unreadable(gv):
    result = gv.sh("cat /etc/shadow /etc/gshadow 2>/dev/null | head -c 200; echo end")
    assert result.stdout.strip() == "end"
    if os.getuid() != 0:  # runsc cannot mount over what this user may not open: left out, and said so
        skipped = gv.start()["layers"]["gvisor"]["masks_not_needed"]
        assert "/etc/shadow" in skipped


@pytest.mark.parametrize("attack", [
    "echo evil > .git/hooks/pre-commit",
    "echo evil >> .git/config",
    "rm -rf .git/hooks",
    "mv .git x && mkdir -p .git/hooks && echo evil > .git/hooks/pre-commit",
    "echo 'eval evil' > .envrc",
])
def test_protected_paths_resist_tampering(gv, attack):
    subprocess.run(["git", "init", "-q", str(gv.workspace)], check=True)
    (gv.workspace / ".envrc").write_text("# direnv\n")
    config_before = (gv.workspace / ".git" / "config").read_text()
    hooks_before = sorted(os.listdir(gv.workspace / ".git" / "hooks"))
    result = gv.sh(attack + "; echo end")
    assert "end" in result.stdout
    assert (gv.workspace / ".git" / "config").read_text() == config_before
    assert sorted(os.listdir(gv.workspace / ".git" / "hooks")) == hooks_before
    assert (gv.workspace / ".envrc").read_text() == "# direnv\n"
    assert not (gv.workspace / "x").exists()


def test_the_action_log_is_invisible_even_inside_the_workspace(gv):
    state = gv.workspace / ".state"
    result = gv.run("--", "/bin/sh", "-c", "cat .state/sandboxctl/actions.jsonl; "
                    "echo forged >> .state/sandboxctl/actions.jsonl; echo end", env={"XDG_STATE_HOME": str(state)})
    assert "end" in result.stdout and '"run.start"' not in result.stdout
    lines = (state / "sandboxctl" / "actions.jsonl").read_text().splitlines()
    assert lines and all(line.startswith("{") for line in lines)


# ------------------------------------------------------------------ network
def test_no_network_connect_out_fails(gv):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        code = (f"import socket\nfor target in [('1.1.1.1', 80), ('127.0.0.1', {port})]:\n"
                "    try:\n        socket.create_connection(target, timeout=3); print('connected', target)\n"
                "    except OSError as e:\n        print('refused')\n"
                "try:\n    socket.getaddrinfo('example.com', 443); print('resolved')\n"
                "except OSError:\n    print('no dns')\n")
        result = gv.run("--", "python3", "-c", code, policy="offline")
    assert result.stdout.split() == ["refused", "refused", "no", "dns"], result.stdout + result.stderr
    assert gv.start()["layers"]["gvisor"]["host_unix_sockets"] == "none"


def test_host_unix_sockets_are_out_of_reach_without_the_proxy(gv):
    path = gv.workspace / "host.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        code = ("import socket\ns = socket.socket(socket.AF_UNIX)\n"
                "try:\n    s.connect('host.sock'); print('connected')\n"
                "except OSError as e:\n    print('refused', e.errno)")
        result = gv.run("--", "python3", "-c", code, policy="offline")
    assert result.stdout.startswith("refused"), result.stdout + result.stderr


def test_network_host_is_refused_under_gvisor(gv):
    result = gv.run("--net", "host", "--yes", "--", "touch", "ran")
    assert result.returncode == 125 and "network: host is not available under gVisor" in result.stderr
    assert not (gv.workspace / "ran").exists()


@pytest.fixture
def web_port(web) -> int:
    """The port of the static HTTP server the network tests also use (conftest)."""
    return web[0]


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
def test_proxy_allows_the_allowlist_and_logs_every_connection(gv, web_port):
    policy = gv.write_policy("net.yaml", "version: 1\nextends: default\nnetwork:\n  mode: proxy\n"
                             f"  allow: ['127.0.0.1:{web_port}']\n  allow_private: true\n")
    result = gv.run("--", "/bin/sh", "-c", f"curl -s http://127.0.0.1:{web_port}/hello.txt; "
                    f"curl -s -o /dev/null -w '%{{http_code}}\\n' http://127.0.0.1:{web_port + 1}/; "
                    f"curl -s --max-time 3 --noproxy '*' http://127.0.0.1:{web_port}/hello.txt || echo direct-refused",
                    policy=str(policy))
    assert result.stdout.splitlines() == ["hello from the host", "403", "direct-refused"], result.stderr
    events = [r for r in gv.records() if r["event"] == "net"]
    assert [e["decision"] for e in events] == ["allow", "deny"]
    assert gv.start()["layers"]["network"]["proxy"].startswith("127.0.0.1:3128")




FORWARDER_ATTACK = r"""
import os, signal, socket, sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/hello.txt"
print(urllib.request.urlopen(url, timeout=10).read().decode().strip())
signal.signal(signal.SIGUSR1, signal.SIG_IGN)
for target, signum in ((0, signal.SIGUSR1), (-1, signal.SIGUSR1), (-1, signal.SIGKILL)):
    try:
        os.kill(target, signum)
        print("signalled", target)
    except OSError as e:
        print("kill", target, e.errno)
time.sleep(0.5)
for host in ("127.0.0.1", "0.0.0.0", "::ffff:127.0.0.1"):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        s.bind((host, 3128))
        s.listen()
        print("BOUND", host)
    except OSError as e:
        print("bind", e.errno)
print(urllib.request.urlopen(url, timeout=10).read().decode().strip())
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
print(*(status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd")))
"""


def test_the_proxy_forwarder_is_out_of_the_commands_reach(gv, web_port):
    """kill(0) and kill(-1) from the command reach no forwarder, 127.0.0.1:3128 cannot be bound
    beside it, and requests still arrive at the supervisor's proxy afterwards (judged by its log)."""
    policy = gv.write_policy("net.yaml", "version: 1\nextends: default\nnetwork:\n  mode: proxy\n"
                             f"  allow: ['127.0.0.1:{web_port}']\n  allow_private: true\n")
    result = gv.run("--", "python3", "-c", FORWARDER_ATTACK, str(web_port), policy=str(policy), timeout=120)
    lines = result.stdout.splitlines()
    assert len(lines) == 9 and lines[0] == "hello from the host", result.stdout + result.stderr
    assert lines[1:4] == ["signalled 0", "kill -1 3", "kill -1 3"]  # ESRCH: nobody else it may signal
    assert lines[4:7] == ["bind 98"] * 3  # EADDRINUSE, whatever the address or option
    assert lines[7] == "hello from the host"
    assert lines[8].split() == ["0000000000000000"] * 4  # the command has no capability at all
    assert [e["decision"] for e in gv.records() if e["event"] == "net"] == ["allow", "allow"]
    assert "uid 65534" in gv.start()["layers"]["network"]["proxy"]


FORWARDER_PID = r"""
import os, sys, time
for pid in os.listdir("/proc"):
    if pid.isdigit() and os.stat(f"/proc/{pid}").st_uid == 65534:
        print(pid, flush=True)
time.sleep(60)
"""


def test_the_run_ends_if_the_forwarder_stops(gv):
    """Whatever stops the forwarder (here runsc, from outside), the port must not be left free for
    the command: the supervisor sees its lifeline close and ends the run."""
    proc = subprocess.Popen(gv.argv("--", "python3", "-c", FORWARDER_PID, policy="ci"), cwd=gv.workspace,
                            env=gv.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        forwarder = proc.stdout.readline().strip()
        assert forwarder.isdigit(), proc.stderr.read()
        run_id = gv.start()["run"]
        state = next((gv.runtime / "sandboxctl").glob("g-*")) / "state"
        subprocess.run([shutil.which("runsc"), f"--root={state}", "kill", "--pid", forwarder,
                        f"sandboxctl-{run_id}", "9"], check=True, capture_output=True, timeout=30)
        assert proc.wait(30) == 125
        assert "forwarder inside gVisor stopped" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert [r["kind"] for r in gv.records() if r["event"] == "limit"] == ["forwarder"]


def _approval_policy(gv, via: str = "tty") -> str:
    return str(gv.write_policy("approvals.yaml", "version: 1\nextends: default\nnetwork:\n  mode: proxy\n"
                               f"  allow_private: true\napproval: {{mode: ask, via: {via}, timeout: 20s}}\n"))


def test_network_escapes_are_answered_by_the_approval_mode(gv, web_port):
    target = f"127.0.0.1:{web_port}"
    for mode, status in (("allow", "200"), ("deny", "403")):
        result = gv.run("--approve", mode, "--", "python3", "-c", CONNECT, target, policy=_approval_policy(gv))
        assert result.stdout.split()[2] == status, result.stdout + result.stderr
    answers = [(r["answer"], r["via"]) for r in gv.records() if r["event"] == "approval"]
    assert answers == [("once", "mode:allow"), ("deny", "mode:deny")]
    layers = gv.start()["layers"]["approvals"]
    assert layers["file_writes"] is None and "gVisor" in layers["why"]


def test_network_escape_waits_for_sandboxctl_approve(gv, web_port):
    """The same broker and socket front end as under bubblewrap; only the connecting pid is
    unknown (it is a process of gVisor's kernel)."""
    import sys

    target = f"127.0.0.1:{web_port}"
    proc = subprocess.Popen(gv.argv("--approve", "ask", "--", "python3", "-c", CONNECT, target, target,
                                    policy=_approval_policy(gv, via="socket")),
                            cwd=gv.workspace, env=gv.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def approve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sandboxctl", "approve", *args], capture_output=True,
                              text=True, timeout=30, env=gv.env())

    try:
        for answer in ("once", "deny"):
            listing = approve("--list", "--json", "--wait", "20")
            assert listing.returncode == 0, listing.stderr
            request = json.loads(listing.stdout.splitlines()[0])
            assert request["kind"] == "network" and request["target"] == target
            assert approve(request["id"], answer).returncode == 0
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert [line.split()[2] for line in out.splitlines()] == ["200", "403"]
    assert [(r["answer"], r["via"]) for r in gv.records() if r["event"] == "approval"] == [("once", "socket"),
                                                                                              ("deny", "socket")]


# ------------------------------------------------------------------ environment and secrets
@pytest.mark.parametrize("policy", ["default", "base"])  # python3 launcher, native launcher (x86-64)
def test_environment_is_cleared(gv, policy):
    result = gv.run("--", "/bin/sh", "-c", "env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'",
                    env={"SECRET_CANARY": CANARY, "AWS_SECRET_ACCESS_KEY": CANARY}, policy=policy)
    assert result.returncode == 0, result.stderr
    assert CANARY not in result.stdout
    names = {line.split("=", 1)[0] for line in result.stdout.splitlines() if "=" in line}
    assert {"PATH", "HOME", "SANDBOXCTL"} | ({"HTTPS_PROXY"} if policy == "default" else set()) <= names
    assert not names & {"XDG_STATE_HOME", "XDG_RUNTIME_DIR", "SECRET_CANARY", "PYTHONPATH"}


def test_secrets_arrive_as_env_and_file_and_leave_no_trace(gv):
    policy = gv.write_policy("secrets.yaml", "version: 1\nextends: default\nsecrets:\n"
                             "  A:\n    from: env:SRC\n    as: env\n  B:\n    from: env:SRC\n    as: file\n")
    code = ("import os, stat\nprint(os.environ['A'])\nprint(open(os.environ['B_FILE']).read())\n"
            "print(oct(stat.S_IMODE(os.stat('/run/secrets/B').st_mode)))\nprint('B' in os.environ)")
    result = gv.run("--", "python3", "-c", code, policy=str(policy), env={"SRC": CANARY})
    assert result.stdout.splitlines() == [CANARY, CANARY, "0o400", "False"], result.stderr
    assert CANARY not in gv.log_path.read_text()
    assert [(r["name"], r["action"]) for r in gv.records() if r["event"] == "secret"] == [("A", "inject"),
                                                                                          ("B", "inject")]
    dry = gv.run("--dry-run", "--json", "--", "true", policy=str(policy), env={"SRC": CANARY})
    assert dry.returncode == 0 and CANARY not in dry.stdout
    assert gv.run_dirs() == []


def test_file_secret_expires_while_the_command_runs(gv):
    policy = gv.write_policy("ttl.yaml", "version: 1\nextends: default\nsecrets:\n  T:\n    from: env:SRC\n"
                             "    ttl: 2s\n")
    result = gv.run("--", "/bin/sh", "-c", 'cat "$T_FILE"; echo; sleep 3.5; cat "$T_FILE" 2>/dev/null || echo gone',
                    policy=str(policy), env={"SRC": "short-lived"})
    assert result.stdout.split() == ["short-lived", "gone"], result.stderr
    assert [(r["name"], r["action"]) for r in gv.records() if r["event"] == "secret"] == [("T", "inject"),
                                                                                          ("T", "expire")]


# ------------------------------------------------------------------ exit codes, limits, clean-up
@pytest.mark.parametrize("script,code", [("exit 0", 0), ("exit 7", 7), ("kill -9 $$", 137), ("kill -15 $$", 143)])
def test_exit_codes_follow_the_command(gv, script, code):
    assert gv.sh(script).returncode == code


@pytest.mark.parametrize("policy", ["default", "base"])  # python3 launcher, native launcher (x86-64)
def test_command_not_found_is_127_and_not_executable_is_126(gv, policy):
    missing = gv.run("--", "no-such-command-xyz", policy=policy)
    assert missing.returncode == 127 and "Traceback" not in missing.stderr
    assert "sandboxctl: error: no-such-command-xyz: command not found inside the sandbox" in missing.stderr
    lines = missing.stderr.splitlines()  # SPEC: one line and a hint, as under bubblewrap
    hint = lines[lines.index("sandboxctl: error: no-such-command-xyz: command not found inside the sandbox") + 1]
    assert hint == "  hint: 'no-such-command-xyz' is not on your PATH outside the sandbox either: check the name"
    assert gv.run("--", "/nonexistent/cmd", policy=policy).returncode == 127
    denied = gv.run("--", "/etc/passwd", policy=policy)  # a regular file without an execute bit
    assert denied.returncode == 126 and "/etc/passwd: permission denied" in denied.stderr
    assert "  hint: the file is not executable (chmod +x), or its interpreter is not" in denied.stderr.splitlines()
    assert gv.run("--", "sh", "-c", "exit 3", policy=policy).returncode == 3  # found on PATH
    if policy == "default":
        (gv.workspace / "script.sh").write_text("#!/bin/sh\necho hi\n")
        assert gv.run("--", "./script.sh").returncode == 126


@pytest.mark.parametrize("policy", ["default", "base"])  # python3 launcher, native launcher (x86-64)
def test_timeout_gives_124_and_leaves_no_process(gv, policy):
    started = time.monotonic()
    result = gv.run("--timeout", "1s", "--", "/bin/sh", "-c", "trap '' TERM; sleep 7.3 & sleep 7.3", policy=policy)
    assert result.returncode == 124
    assert time.monotonic() - started < 8
    assert gv.processes() == [] and gv.run_dirs() == []
    assert [r["kind"] for r in gv.records() if r["event"] == "limit"] == ["timeout"]
    assert [r["exit_code"] for r in gv.records() if r["event"] == "run.end"] == [124]


@pytest.mark.parametrize("policy", ["default", "base"])  # python3 launcher, native launcher (x86-64)
def test_killing_the_supervisor_leaves_nothing(gv, policy):
    proc = subprocess.Popen(gv.argv("--", "/bin/sh", "-c", "sleep 9.2 & sleep 9.2", policy=policy), cwd=gv.workspace,
                            env=gv.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: len(gv.processes()) >= 3 and gv.run_dirs(), 15)  # runsc, gofer, sandbox
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert wait_for(lambda: not gv.processes() and not gv.run_dirs(), 10), (gv.processes(), gv.run_dirs())
    finally:
        proc.kill()


def test_sigterm_reaches_the_command_and_its_status_is_returned(gv):
    proc = subprocess.Popen(gv.argv("--", "/bin/sh", "-c", "trap 'echo got-term; exit 42' TERM; "
                                    "echo ready; sleep 6.5 & wait"),
                            cwd=gv.workspace, env=gv.env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 42 and "got-term" in out


def test_pids_file_size_and_memory_limits_hold(gv):
    policy = gv.write_policy("lim.yaml", "version: 1\nextends: default\nlimits:\n  pids: 30\n  file_size: 1M\n")
    code = ("import os\nkids = 0\ntry:\n    while kids < 200:\n        if os.fork() == 0:\n"
            "            import time; time.sleep(2); os._exit(0)\n        kids += 1\nexcept OSError as e:\n"
            "    print('stopped at', kids)\n"
            "try:\n    open('big', 'wb').write(b'x' * (4 << 20)); print('wrote 4M')\nexcept OSError as e:\n"
            "    print('file too large')\n"
            "try:\n    blocks = [bytearray(64 << 20) for _ in range(32)]; print('allocated 2G')\n"
            "except MemoryError:\n    print('memory refused')\n")
    result = gv.run("--memory", "512M", "--", "python3", "-c", code, policy=str(policy), timeout=90)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("stopped at") and int(lines[0].split()[2]) < 30, result.stdout + result.stderr
    assert lines[1:] == ["file too large", "memory refused"]
    assert (gv.workspace / "big").stat().st_size <= 1 << 20
    limits = gv.start()["limits"]
    assert limits["memory_method"] == "rlimit-as" and limits["pids_method"] == "rlimit"


def test_output_to_a_regular_file_keeps_every_line(gv, tmp_path):
    """gVisor writes a regular-file stdout at an offset of its own; the relay keeps `> f 2>&1` whole."""
    out = tmp_path / "out.txt"
    with open(out, "w") as handle:
        handle.write("before\n")
        handle.flush()
        subprocess.run(gv.argv("--", "/bin/sh", "-c", "echo one; echo two >&2; echo three"), cwd=gv.workspace,
                       env=gv.env(), stdout=handle, stderr=handle, timeout=60)
        handle.write("after\n")
    lines = out.read_text().splitlines()
    assert lines[0] == "before" and lines[-1] == "after"
    assert sorted(lines[1:-1]) == ["one", "three", "two"]


def test_stdin_and_stdout_pass_through(gv):
    assert gv.run("--", "/bin/sh", "-c", "tr a-z A-Z", input="hello gvisor\n").stdout == "HELLO GVISOR\n"


def test_dry_run_prints_the_oci_config_and_runs_nothing(gv):
    result = gv.run("--dry-run", "--json", "--", "touch", "marker")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["backend"] == "gvisor" and "bwrap_argv" not in data
    config = data["oci_config"]
    assert config["root"]["readonly"] is True and config["process"]["env"] == []
    assert {"destination": str(gv.workspace), "type": "bind", "source": str(gv.workspace),
            "options": ["rbind", "rw", "nosuid", "nodev"]} in config["mounts"]
    assert "run" in data["runsc_argv"] and "--rootless" in data["runsc_argv"]
    assert not (gv.workspace / "marker").exists() and gv.run_dirs() == []
    human = gv.run("--dry-run", "--", "true")
    assert "OCI config.json" in human.stdout and "bubblewrap" not in human.stdout


def test_the_log_chain_verifies(gv):
    from sandboxctl.log.chain import verify_lines

    gv.sh("exit 3")
    gv.sh("exit 0")
    lines = gv.log_path.read_bytes().splitlines()
    count, broken = verify_lines(iter(lines))
    assert broken is None and count == len(lines)
    assert [r["exit_code"] for r in gv.records() if r["event"] == "run.end"] == [3, 0]


# ------------------------------------------------------------------ what gVisor does not provide
def test_exec_allow_is_refused_rather_than_silently_dropped(gv):
    policy = gv.write_policy("exec.yaml", "version: 1\nextends: default\nexec:\n  allow: [/usr/bin]\n")
    result = gv.run("--", "touch", "ran", policy=str(policy))
    assert result.returncode == 125 and "exec.allow cannot be enforced under gVisor" in result.stderr
    assert not (gv.workspace / "ran").exists()


@pytest.mark.skip(reason=f"exec.allow and Landlock's second wall: {NO_LANDLOCK}; such runs are refused "
                         "(test_exec_allow_is_refused_rather_than_silently_dropped)")
def test_exec_allow_limits_what_may_run():
    """The bubblewrap backend's Landlock exec test: not applicable under gVisor."""


@pytest.mark.skip(reason=f"file-write denial events and approvals: {NO_NOTIFY}; writes outside the "
                         "writable set still fail (read-only mounts), unlogged")
def test_write_outside_is_logged_as_a_file_event():
    """The bubblewrap backend's seccomp-notify file event test: not applicable under gVisor."""


@pytest.mark.skip(reason=f"exec events in the action log: {NO_NOTIFY}")
def test_every_exec_is_logged():
    """The bubblewrap backend's exec event test: not applicable under gVisor."""


def test_no_exec_or_file_events_are_claimed(gv):
    gv.sh("echo x > /etc/nope; true")
    assert not [r for r in gv.records() if r["event"] in ("exec", "file", "syscall")]


# ------------------------------------------------------------------ a terminal
@pytest.mark.parametrize("policy", ["default", "base"])  # python3 launcher, native launcher (x86-64)
def test_terminal_size_resize_and_ctrl_c_reach_the_command(gv, policy):
    """The command is not in the terminal's process group: the supervisor forwards Ctrl-C and
    SIGWINCH, and the terminal itself is the caller's (ioctls pass through gVisor)."""
    from tests.integration.test_terminal import RESIZE_PROBE, _read_until, _set_size, _spawn_on_pty

    proc, master = _spawn_on_pty(gv, ["--", "python3", "-c", RESIZE_PROBE], policy=policy)
    try:
        out = _read_until(master, b"tty True")
        assert b"columns=111, lines=33" in out and b"xterm" in out, out
        _set_size(master, 40, 132)
        os.killpg(os.getpgid(proc.pid), signal.SIGWINCH)  # what the kernel does on a resize
        out = _read_until(master, b"resized")
        assert b"columns=132, lines=40" in out, out
        os.write(master, b"\x03")  # Ctrl-C typed on the terminal
        out = _read_until(master, b"got-ctrl-c")
        assert b"got-ctrl-c" in out, out
        assert proc.wait(timeout=15) == 42
    finally:
        proc.kill()
        os.close(master)


@pytest.mark.skipif(not shutil.which("less"), reason="less is not installed")
def test_full_screen_program_runs_on_the_terminal(gv):
    from tests.integration.test_terminal import _read_until, _spawn_on_pty

    (gv.workspace / "text.txt").write_text("".join(f"line {i}\n" for i in range(200)))
    proc, master = _spawn_on_pty(gv, ["--", "less", "text.txt"])
    try:
        assert b"line 0" in _read_until(master, b"line 20")
        os.write(master, b"G")
        assert b"line 199" in _read_until(master, b"line 199")
        os.write(master, b"q")
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()
        os.close(master)


def test_a_record_cut_short_with_a_left_out_hardlink_refuses_to_start(gv):
    """Red team rt5: past MAX_ENTRIES the protected tree (here filesystem.protect) is recorded in
    part; gVisor mediates nothing, and the read-only binds hold the protected names only, so a
    left-out file with another name made before the run (uv links venvs to its cache) was rewritten
    through that name and the end-of-run check, which never recorded it, said nothing. Such a
    launch now fails before anything runs (125, one line naming the file); without the hardlink
    it runs. Judged by the file's bytes on the host."""
    from sandboxctl.protect import snapshot

    big = gv.workspace / "big"
    big.mkdir()
    for n in range(snapshot.MAX_ENTRIES + 100):
        (big / f"f{n:05d}").touch()
    (big / "zz.pth").write_text("original\n")
    (gv.workspace / "cache").mkdir()
    os.link(big / "zz.pth", gv.workspace / "cache" / "zz")
    subprocess.run(["chmod", "-R", "a+rX", str(gv.workspace)], check=True)
    policy = gv.write_policy("big.yaml", "version: 1\nname: big\nextends: default\n"
                                         "filesystem:\n  protect: [\"{workspace}/big\"]\n")
    result = gv.run("--", "sh", "-c", "echo evil > cache/zz", policy=str(policy), timeout=120)
    assert result.returncode == 125, result.stderr
    assert (big / "zz.pth").read_text() == "original\n"
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "zz.pth" in errors[0] and "another name" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    (gv.workspace / "cache" / "zz").unlink()
    again = gv.run("--", "true", policy=str(policy), timeout=120)
    assert again.returncode == 0, again.stderr


COMMONDIR = """
import os, time
os.makedirs('evil/objects', exist_ok=True)
os.makedirs('evil/refs', exist_ok=True)
with open('evil/config', 'w') as f:
    f.write('[core]\\n\\trepositoryformatversion = 0\\n\\tfsmonitor = "touch {canary}; false"\\n')
def wait(name):
    deadline = time.time() + 60
    while not os.path.exists(name) and time.time() < deadline:
        time.sleep(0.02)
wait('{wait}')
if not os.path.exists('.git/commondir'):
    with open('.git/commondir', 'w') as f:
        f.write('../evil\\n')
open('{done}', 'w').close()
wait('{hold}')
"""


def test_a_second_run_puts_back_what_the_first_run_put_away_and_its_own_sandbox_made_again(gv, tmp_path):
    """Red team rt5 (two gVisor runs, as root and as a user): A's sandbox makes .git/commondir
    (a name that did not exist: nothing holds it during a gVisor run) pointing at a config with
    core.fsmonitor; B launches and records it; A removes it at its end; B's sandbox makes it again,
    byte for byte. B's check only reported what A had recorded otherwise, and found nothing at
    all here, so it stayed and the host's git ran the config. B now compares with A's record (the
    state before the first run). Judged by the host's git and a canary."""
    canary = tmp_path / "canary"
    subprocess.run(["git", "init", "-q", str(gv.workspace)], check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(gv.workspace)], check=True)
    ws = gv.workspace
    runs = []
    try:
        runs.append(subprocess.Popen(gv.argv("--", "python3", "-c", COMMONDIR.format(
            canary=canary, wait="go-a", done="a-planted", hold="b-started")), cwd=ws, env=gv.env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        (ws / "go-a").touch()
        deadline = time.monotonic() + 60
        while not (ws / "a-planted").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (ws / ".git" / "commondir").exists(), runs[0].stderr
        runs.append(subprocess.Popen(gv.argv("--", "python3", "-c", "open('b-started', 'w').close()\n" +
                                             COMMONDIR.format(canary=canary, wait="a-ended", done="b-planted",
                                                              hold="b-planted")),
                                     cwd=ws, env=gv.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        runs[0].communicate(timeout=60)
        assert not (ws / ".git" / "commondir").exists()  # A put it away
        (ws / "a-ended").touch()
        _out, err = runs[1].communicate(timeout=60)
        assert (ws / "b-planted").exists(), err
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()
    assert not (ws / ".git" / "commondir").exists()
    subprocess.run(["git", "-C", str(ws), "status"], capture_output=True, timeout=30)
    assert not canary.exists(), "the host's git ran a config the sandbox wrote"


SLOW_END = r"""
import os, sys, time
from sandboxctl.log.writer import ActionLog
marker, sys.argv = sys.argv[1], ["sandboxctl", *sys.argv[2:]]
original = ActionLog.write_last
def write_last(self, event, **fields):  # an end that takes its time (a slow disk, a collector)
    open(marker, "w").close()
    time.sleep(1.5)
    original(self, event, **fields)
ActionLog.write_last = write_last
from sandboxctl.cli.main import main
main()
"""


@pytest.mark.parametrize("backend", ["bwrap", "gvisor"])
def test_a_sigterm_while_the_end_is_written_waits_for_run_end(gv, backend, tmp_path):
    """SIGTERM to sandboxctl once the command has ended, before run.end is written: the supervisor
    writes run.end, cleans up, and only then dies of it, under either backend (gVisor's gave the
    caller's handlers back as the command ended: killed there, its run had no end)."""
    marker = tmp_path / "ending"
    argv = gv.argv("--", "/bin/true")[3:]  # after `python -m sandboxctl`
    if backend == "bwrap":
        argv = [a for a in argv if a not in ("--backend", "gvisor")]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_END, str(marker), *argv], cwd=gv.workspace, env=gv.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(marker.exists, 60), proc.communicate(timeout=5)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGTERM, stderr
    records = gv.records()
    assert records[-1]["event"] == "run.end" and records[-1]["exit_code"] == 0, [r["event"] for r in records][-4:]
