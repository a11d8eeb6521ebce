"""Both launchers, run for real in a child interpreter (python3 -I -S, as inside a sandbox) with
their libc broken in the ways a sandbox's file tree or a Python build can break it: _ctypes that
does not import, an empty _ctypes, a missing libc symbol, a dlopen that fails, a call that raises
something other than OSError. Each must end the launch with exit 125 and one clear line (the shim:
an error message to the supervisor), no traceback, and never run the command: a marker file the
command would write must not exist. A control case with nothing broken runs the command, so the
harness can tell."""

from __future__ import annotations

import _socket
import marshal
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxctl.launch import config_frames, landlock_rights
from sandboxctl.plan.model import LandlockPathRule, LandlockPlan

LAUNCH = Path(config_frames.__file__).parent
SECCOMP_NR = {"x86_64": 317, "aarch64": 277}.get(os.uname().machine)
ALLOW_ALL = (0x06).to_bytes(2, sys.byteorder) + bytes(2) + (0x7FFF0000).to_bytes(4, sys.byteorder)

# Python run in the child before the launcher's main(): each breaks libc's reach one way
BREAKAGES = {
    "nothing": "",
    "no _ctypes": "sys.modules['_ctypes'] = None",
    "empty _ctypes": "import types; sys.modules['_ctypes'] = types.ModuleType('_ctypes')",
    "dlopen fails": """
import _ctypes as real, types
fake = types.ModuleType('_ctypes'); fake.__dict__.update(vars(real))
def dlopen(*args):
    raise OSError('libc.so.6: cannot open shared object file')
fake.dlopen = dlopen
sys.modules['_ctypes'] = fake
""",
    "no syscall symbol": """
import _ctypes as real, types
fake = types.ModuleType('_ctypes'); fake.__dict__.update(vars(real))
class CFuncPtr(real.CFuncPtr):
    _flags_ = real.FUNCFLAG_CDECL
    def __new__(cls, *args):
        if args and isinstance(args[0], tuple) and args[0][0] == 'syscall':
            raise AttributeError('python3: undefined symbol: syscall')
        return super().__new__(cls, *args)
fake.CFuncPtr = CFuncPtr
sys.modules['_ctypes'] = fake
""",
    "a call raises TypeError": """
def syscall(self, number, *args):
    if number == SECCOMP_NR:
        raise TypeError("Don't know how to convert parameter 3")
    return REAL_SYSCALL(self, number, *args)
REAL_SYSCALL = launcher['Libc'].syscall
launcher['Libc'].syscall = syscall
""",
    "prctl raises ArgumentError": """
import _ctypes
def prctl(self, option, *args):
    raise _ctypes.ArgumentError('argument 2: OverflowError: int too long to convert')
launcher['Libc'].prctl = prctl
""",
}

CHILD = r"""
import sys
source, breakage, SECCOMP_NR = sys.argv[1], sys.argv[2], int(sys.argv[3])
launcher = {"__name__": "launcher_under_test"}
with open(source) as handle:
    exec(compile(handle.read(), source, "exec"), launcher)
exec(breakage)
sys.argv = ["launcher", *sys.argv[4:]]
launcher["main"]()
"""

pytestmark = pytest.mark.skipif(SECCOMP_NR is None, reason="no seccomp number for this machine")


def _command(marker: Path) -> list[str]:
    return ["/bin/sh", "-c", f"echo ran > {marker}"]


def _child(launcher: str, breakage: str, *args: str) -> list[str]:
    return [sys.executable, "-I", "-S", "-c", CHILD, str(LAUNCH / launcher), BREAKAGES[breakage], str(SECCOMP_NR),
            *args]


def _assert_failed_closed(code: int, stderr: str, marker: Path) -> None:
    assert "Traceback" not in stderr, stderr
    assert code == 125, (code, stderr)
    assert not marker.exists(), "the command ran"


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_gvisor_init_fails_closed_with_one_line(tmp_path: Path, breakage: str) -> None:
    marker = tmp_path / "marker"
    config = tmp_path / "launch"
    config.write_bytes(marshal.dumps({"argv": _command(marker), "env": {"PATH": "/usr/bin:/bin"},
                                      "seccomp": ALLOW_ALL, "seccomp_nr": SECCOMP_NR, "default_signals": []}))
    done = subprocess.run(_child("gvisor_init.py", breakage, str(config)), capture_output=True, text=True,
                          timeout=60)
    if breakage == "nothing":
        assert (done.returncode, marker.read_text()) == (0, "ran\n"), done.stderr
        return
    _assert_failed_closed(done.returncode, done.stderr, marker)
    lines = done.stderr.splitlines()  # SPEC: one line and a hint
    assert len(lines) == 2 and lines[0].startswith("sandboxctl: error: ") and lines[1].startswith("  hint: "), lines


def _shim_config(tmp_path: Path, marker: Path) -> dict:
    plan = LandlockPlan(required=True, minimum_abi=1,
                        paths=(LandlockPathRule("/", ("read", "execute")), LandlockPathRule(str(tmp_path), ("write",))),
                        restrict_tcp_bind=False, restrict_tcp_connect=False, connect_tcp_ports=(), bind_tcp_ports=(),
                        scopes=())
    return {"limits": {}, "landlock": landlock_rights.shim_config(plan), "argv": _command(marker),
            "env": {"PATH": "/usr/bin:/bin"}, "notify_program": ALLOW_ALL, "seccomp_nr": SECCOMP_NR,
            "default_signals": []}


def _run_shim(tmp_path: Path, breakage: str, marker: Path) -> tuple[int, str, list[dict]]:
    """The shim with the test as its supervisor: the configuration in frames, go on ready."""
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    err_r, err_w = os.pipe()
    process = subprocess.Popen(_child("shim.py", breakage, str(theirs.fileno()), str(err_w)),
                               pass_fds=(theirs.fileno(), err_w), stderr=subprocess.PIPE, text=True)
    theirs.close()
    os.close(err_w)
    messages = []
    try:
        config_frames.send_config(ours, _shim_config(tmp_path, marker))
        ours.settimeout(60)
        while True:
            data, ancillary, _flags, _addr = ours.recvmsg(1 << 20, _socket.CMSG_SPACE(16))
            for _level, _kind, payload in ancillary:
                for at in range(0, len(payload) - len(payload) % 4, 4):
                    os.close(int.from_bytes(payload[at:at + 4], sys.byteorder))
            if not data:
                break
            message = marshal.loads(data)
            messages.append(message)
            if "ready" in message:
                ours.sendall(marshal.dumps({"go": True}))
    finally:
        ours.close()
        _stdout, stderr = process.communicate(timeout=60)
        with os.fdopen(err_r, "rb") as real_stderr:
            stderr += real_stderr.read().decode(errors="replace")
    return process.returncode, stderr, messages


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_the_shim_fails_closed_with_one_message(tmp_path: Path, breakage: str) -> None:
    marker = tmp_path / "marker"
    code, stderr, messages = _run_shim(tmp_path, breakage, marker)
    if breakage == "nothing":
        assert (code, marker.read_text()) == (0, "ran\n"), (stderr, messages)
        assert next(m for m in messages if "ready" in m)["ready"]["landlock"]["enforced"]
        return
    _assert_failed_closed(code, stderr, marker)
    assert stderr == ""  # the supervisor shows the error: nothing else
    [error] = [m for m in messages if "error" in m]
    assert error["code"] == 125 and "\n" not in error["error"] and error["error"].strip(), error
    if breakage in ("no _ctypes", "empty _ctypes", "dlopen fails", "no syscall symbol"):  # said as what it is
        assert error["error"].startswith("cannot reach libc's system calls through _ctypes: ")
        assert "best-effort` does not help" in error["hint"]
    assert not [m for m in messages if "ready" in m]  # never reported as ready: the supervisor never says go


def test_gvisor_inits_words_are_inert(tmp_path: Path) -> None:
    """gvisor_init writes its line straight to the caller's terminal (no supervisor in between to
    escape it, as under bubblewrap): a command name with ESC and BEL must not reach it raw."""
    config = tmp_path / "launch"
    name = "no-such-\x1b]0;owned\x07\x1b[31mRED\u202e\\x"
    config.write_bytes(marshal.dumps({"argv": [name], "env": {"PATH": "/usr/bin"},
                                      "seccomp": ALLOW_ALL, "seccomp_nr": SECCOMP_NR, "default_signals": [],
                                      "hints": {"not_found": f"'{name}' is not on your PATH"}}))
    done = subprocess.run(_child("gvisor_init.py", "nothing", str(config)), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 127, done.stderr
    shown = "no-such-\\x1b]0;owned\\x07\\x1b[31mRED\\u202e\\\\x"
    assert done.stderr == (f"sandboxctl: error: {shown}: command not found inside the sandbox\n"
                           f"  hint: '{shown}' is not on your PATH\n")


# ---------------------------------------------------------------- errno: only "no Landlock here" degrades
class _AnswersVersion:
    """A libc whose Landlock version query fails with one errno (and that records the rest)."""

    def __init__(self, errno_value: int) -> None:
        self.errno_value = errno_value
        self.calls: list[int] = []

    def syscall(self, number, *args):
        self.calls.append(number)
        if number == 444 and args[2] == 1:
            raise OSError(self.errno_value, os.strerror(self.errno_value))
        raise AssertionError("nothing but the version query may be made")

    def prctl(self, *args):
        raise AssertionError("no prctl without a ruleset")


def _plan_config(required: bool) -> dict:
    plan = LandlockPlan(required=required, minimum_abi=1, paths=(LandlockPathRule("/usr", ("read",)),),
                        restrict_tcp_bind=False, restrict_tcp_connect=False, connect_tcp_ports=(), bind_tcp_ports=(),
                        scopes=())
    return landlock_rights.shim_config(plan)


@pytest.mark.parametrize("errno_value", [38, 95], ids=["ENOSYS", "EOPNOTSUPP"])
def test_a_kernel_without_landlock_stops_required_and_is_said_under_best_effort(errno_value: int) -> None:
    from sandboxctl.launch import shim

    with pytest.raises(RuntimeError, match="Landlock is not available"):
        shim.apply_landlock(_AnswersVersion(errno_value), _plan_config(required=True))
    report = shim.apply_landlock(_AnswersVersion(errno_value), _plan_config(required=False))
    assert report["enforced"] is False and report["degraded"] == "Landlock is not available"


@pytest.mark.parametrize("errno_value", [1, 13, 22, 14], ids=["EPERM", "EACCES", "EINVAL", "EFAULT"])
def test_any_other_errno_of_the_version_query_fails_even_best_effort(errno_value: int) -> None:
    """EPERM is what a container's seccomp profile answers for a call it refuses: Landlock may well
    be there, so it is no 'kernel without Landlock' to degrade from — the run fails (125)."""
    from sandboxctl.launch import shim

    for required in (True, False):
        with pytest.raises(OSError) as caught:
            shim.apply_landlock(_AnswersVersion(errno_value), _plan_config(required))
        assert caught.value.errno == errno_value


@pytest.mark.parametrize("launcher", ["shim", "gvisor_init"])
def test_a_failed_call_raises_the_kernels_errno(launcher: str) -> None:
    """Libc reads errno where _ctypes kept it (FUNCFLAG_USE_ERRNO): the version query with flags the
    kernel does not know is EINVAL, a prctl past the last capability EINVAL, and a bad syscall
    number ENOSYS — the values the launchers' fallbacks are decided on."""
    import importlib

    libc = importlib.import_module(f"sandboxctl.launch.{launcher}").Libc()
    for call, expected in ((lambda: libc.syscall(444, None, 0, 1 << 20), 22),
                           (lambda: libc.prctl(23, 4096, 0, 0, 0), 22),
                           (lambda: libc.syscall(100_000), 38)):
        with pytest.raises(OSError) as caught:
            call()
        assert caught.value.errno == expected
    try:
        abi = libc.syscall(444, None, 0, 1)
    except OSError as exc:  # a kernel without Landlock
        assert exc.errno in (38, 95)
    else:
        assert abi >= 1  # a success is its value (the ABI), not an error


def test_an_environment_with_a_nul_byte_is_refused_before_anything_starts() -> None:
    """The library's env= (or a policy's env.set: YAML has "\\0") with a NUL byte reached the
    launcher's execve: ValueError after the supervisor's go, a traceback and exit 1 reported as the
    command's own status. The plan refuses it, as it refuses one in argv."""
    from sandboxctl.errors import SandboxError
    from sandboxctl.plan.build import build_plan
    from sandboxctl.plan.inputs import Invocation
    from sandboxctl.policy.discover import load_named
    from tests.unit.test_plan import BASE_FILES, WS, fake_facts

    policy = load_named("default").policy
    for env in (("A=x\0y",), ("A\0B=x",)):
        with pytest.raises(SandboxError, match="contains a NUL byte") as caught:
            build_plan(policy, Invocation(command=("true",), workspace=WS, run_id="r1", env=env),
                       fake_facts(dict(BASE_FILES)))
        assert caught.value.exit_code == 125
    build_plan(policy, Invocation(command=("true",), workspace=WS, run_id="r1", env=("A=x y",)),
               fake_facts(dict(BASE_FILES)))


def test_the_shims_own_line_when_the_supervisor_is_gone_is_inert(tmp_path: Path) -> None:
    """With the supervisor gone, fail() writes its line straight to the caller's stderr (no
    supervisor in between to escape it): like gvisor_init's, ESC, BEL and U+202E must not reach
    it raw, however they got into the failure's words."""
    breakage = """
import _ctypes as real, types
fake = types.ModuleType('_ctypes'); fake.__dict__.update(vars(real))
def dlopen(*args):
    raise OSError('\\x1b]0;owned\\x07\\x1b[31mRED\\u202e\\\\x')
fake.dlopen = dlopen
sys.modules['_ctypes'] = fake
"""
    marker = tmp_path / "marker"
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    err_r, err_w = os.pipe()
    command = [sys.executable, "-I", "-S", "-c", CHILD, str(LAUNCH / "shim.py"), breakage, str(SECCOMP_NR),
               str(theirs.fileno()), str(err_w)]
    process = subprocess.Popen(command, pass_fds=(theirs.fileno(), err_w), stderr=subprocess.PIPE, text=True)
    theirs.close()
    os.close(err_w)
    config_frames.send_config(ours, _shim_config(tmp_path, marker))
    ours.close()  # gone before the shim can say anything
    _stdout, stderr = process.communicate(timeout=60)
    with os.fdopen(err_r, "rb") as real_stderr:
        stderr += real_stderr.read().decode(errors="replace")
    _assert_failed_closed(process.returncode, stderr, marker)
    assert stderr == ("sandboxctl: error: cannot reach libc's system calls through _ctypes: "
                      "\\x1b]0;owned\\x07\\x1b[31mRED\\u202e\\\\x\n"), stderr


class _Seccomp:
    """A libc whose seccomp refuses the flags it does not know, as a kernel before 5.19 does."""

    def __init__(self, known: int):
        self.known = known
        self.calls: list[int] = []

    def seccomp_filter(self, seccomp_nr, flags, program):
        self.calls.append(flags)
        if flags & ~self.known:
            raise OSError(22, "Invalid argument")
        return 7


def test_notify_filter_asks_for_the_killable_wait_and_says_when_it_was_refused() -> None:
    from sandboxctl.launch import shim as shim_module

    new_kernel, old_kernel, not_asked = _Seccomp(8 | 32), _Seccomp(8), _Seccomp(8 | 32)
    assert shim_module.load_notify_filter(new_kernel, b"x" * 8, 317, killable=True) == (7, True)
    assert shim_module.load_notify_filter(old_kernel, b"x" * 8, 317, killable=True) == (7, False)
    assert old_kernel.calls == [8 | 32, 8]
    assert shim_module.load_notify_filter(not_asked, b"x" * 8, 317) == (7, False)
    assert not_asked.calls == [8]
