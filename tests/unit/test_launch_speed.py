"""The launcher's shortcuts hold what they replace: the Landlock rights as numbers equal
landlockpy's flags, and the compiled shim is the shim (keyed by its source and interpreter)."""

from __future__ import annotations

import marshal
import os
from pathlib import Path

import landlockpy.flags as flags

from sandboxctl.launch import landlock_rights, shim_code
from sandboxctl.plan.model import LandlockPathRule, LandlockPlan

SHIM = Path(shim_code.__file__).with_name("shim.py")


def test_rights_are_landlockpys() -> None:
    for table, kind, for_abi in ((landlock_rights.FS, flags.AccessFS, flags.fs_for_abi),
                                 (landlock_rights.NET, flags.AccessNet, flags.net_for_abi),
                                 (landlock_rights.SCOPE, flags.Scope, flags.scope_for_abi)):
        assert {name: bit for name, (bit, _abi) in table.items()} == \
            {f.name: int(f) for f in kind if f and f.name}
        for abi in range(flags.LATEST_ABI + 1):
            assert landlock_rights.for_abi(table, abi) == int(for_abi(abi)), (kind, abi)
    bit, abi = landlock_rights.RESTRICT_NO_NEW_PRIVS
    assert bit == int(flags.RestrictFlag.NO_NEW_PRIVS) and int(flags.restrict_for_abi(abi)) & bit
    assert not int(flags.restrict_for_abi(abi - 1)) & bit


def test_shim_config_and_report_name_what_the_plan_grants() -> None:
    plan = LandlockPlan(required=True, minimum_abi=1, paths=(LandlockPathRule("/usr", ("read", "execute")),),
                        restrict_tcp_bind=True, restrict_tcp_connect=True, connect_tcp_ports=(3128,),
                        bind_tcp_ports=(), scopes=("signal",))
    config = landlock_rights.shim_config(plan)
    assert config["paths"] == [["/usr", int(flags.AccessFS.READ_FILE | flags.AccessFS.READ_DIR
                                            | flags.AccessFS.EXECUTE)]]
    assert [list(pair) for pair in config["scopes"]] == [[int(flags.Scope.SIGNAL), 6]]
    report = landlock_rights.report({"abi": 7, "enforced": True, "handled_fs": int(flags.fs_for_abi(7)),
                                     "handled_net": int(flags.net_for_abi(4)), "scoped": int(flags.Scope.SIGNAL)})
    assert report["fs_rights"] == sorted(f.name for f in flags.AccessFS if f and f in flags.fs_for_abi(7))
    assert report["net_rights"] == ["BIND_TCP", "CONNECT_TCP"] and report["scopes"] == ["SIGNAL"]
    assert "handled_fs" not in report


def test_compiled_shim_is_keyed_by_source_and_runs_it(tmp_path: Path) -> None:
    source = tmp_path / "shim.py"
    source.write_text("print('one')\n")
    first = shim_code.cached_path(str(source), str(tmp_path / "cache"))
    shim_code.ensure(str(source), first)
    assert marshal.loads(Path(first).read_bytes()[16:]).co_filename == shim_code.SOURCE_INSIDE
    assert os.stat(first).st_mode & 0o077 == 0
    source.write_text("print('two')\n")
    second = shim_code.cached_path(str(source), str(tmp_path / "cache"))
    assert second != first  # an edited shim is another file: never the old code
    shim_code.ensure(str(source), second)
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-I", "-S", second], capture_output=True, text=True, check=True)
    assert out.stdout == "two\n"


def test_the_real_shim_compiles_where_it_is_mounted() -> None:
    path = shim_code.cached_path(str(SHIM), "/nonexistent")
    assert path.startswith("/nonexistent/shim-") and path.endswith(".pyc")


def test_elf_loaders_are_what_glob_finds() -> None:
    import glob

    from sandboxctl.plan.facts import _LOADER_PATTERNS, _elf_loaders

    expected = tuple(sorted({os.path.realpath(p) for pattern in _LOADER_PATTERNS for p in glob.glob(pattern)}))
    assert _elf_loaders() == expected


def test_head_start_cache_is_the_state_dirs(monkeypatch, tmp_path: Path) -> None:
    from sandboxctl.launch import headstart
    from sandboxctl.paths import state_dir

    for env in ({"XDG_STATE_HOME": str(tmp_path / "s"), "HOME": str(tmp_path)}, {"HOME": str(tmp_path / "h")}):
        monkeypatch.delenv("XDG_STATE_HOME", raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert headstart.cache_dir() == os.path.join(state_dir(), "cache")


def test_head_start_key_holds_what_a_launch_depends_on(monkeypatch, tmp_path: Path) -> None:
    from sandboxctl.launch import headstart

    base = headstart.key(["-q", "--", "true"])
    assert headstart.key(["-q", "--", "true"]) == base
    assert headstart.key(["--", "true"]) != base
    monkeypatch.setenv("SOME_VARIABLE", "x")
    assert headstart.key(["-q", "--", "true"]) != base
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SOME_VARIABLE")
    assert headstart.key(["-q", "--", "true"]) != base


def test_head_start_remembers_only_what_it_can_replay(tmp_path: Path, monkeypatch) -> None:
    from sandboxctl.launch import headstart
    from sandboxctl.plan.model import SecretPlan

    class FakePlan:
        backend, secrets, creations, session, confirmations = "bwrap", (), (), None, ()
        policy_source = "builtin:default"

    plan = FakePlan()
    assert headstart.eligible(plan, inherited_stdio=True, forwards_signals=True)
    assert not headstart.eligible(plan, inherited_stdio=False, forwards_signals=True)  # the library's pipes
    plan.secrets = (SecretPlan("TOKEN", "env:TOKEN", "env", None),)
    assert not headstart.eligible(plan, inherited_stdio=True, forwards_signals=True)
    plan.secrets, plan.backend = (), "gvisor"
    assert not headstart.eligible(plan, inherited_stdio=True, forwards_signals=True)
    plan.backend, plan.policy_source = "bwrap", "/ws/.sandboxctl.yaml"
    assert not headstart.eligible(plan, inherited_stdio=True, forwards_signals=True)


def test_head_start_matches_only_exactly_what_it_started() -> None:
    from sandboxctl.launch.headstart import HeadStart

    early = HeadStart(1, None, -1, ["bwrap", "--", "x"], {"env": {"A": "1"}, "n": 1}, "r", 0.0, {}, (3, 4, 5),
                      b"bpf-1")
    assert early.matches(["bwrap", "--", "x"], {"env": {"A": "1"}, "n": 1}, b"bpf-1")
    assert not early.matches(["bwrap", "--", "y"], {"env": {"A": "1"}, "n": 1}, b"bpf-1")
    assert not early.matches(["bwrap", "--", "x"], {"env": {"A": "2"}, "n": 1}, b"bpf-1")
    assert not early.matches(["bwrap", "--", "x"], {"env": {"A": "1"}, "n": True}, b"bpf-1")  # types count too
    # bubblewrap's static seccomp program is named in argv only by its fd: its bytes are compared
    assert not early.matches(["bwrap", "--", "x"], {"env": {"A": "1"}, "n": 1}, b"bpf-2")


def test_head_start_uses_only_a_private_regular_entry(monkeypatch, tmp_path: Path) -> None:
    """The entry's argv runs before any check: a symlink to it, one others may read or write, or one
    in a cache directory others may write, is never read (so nothing is spawned from it)."""
    import marshal as marshal_module

    from sandboxctl.launch import headstart

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    cache = Path(headstart.cache_dir())
    cache.mkdir(parents=True, mode=0o700)
    elsewhere = tmp_path / "elsewhere.marshal"
    elsewhere.write_bytes(marshal_module.dumps({"format": "not-this"}))  # never a launch: "not used" is None
    entry = cache / f"{headstart.PREFIX}k.marshal"
    read: list[str] = []
    real_loads = headstart.marshal.loads

    def spy(data):
        read.append("read")
        return real_loads(data)

    monkeypatch.setattr(headstart.marshal, "loads", spy)
    entry.symlink_to(elsewhere)
    assert headstart._start("k") is None and read == []
    entry.unlink()
    entry.write_bytes(elsewhere.read_bytes())
    entry.chmod(0o644)
    assert headstart._start("k") is None and read == []
    entry.chmod(0o600)
    cache.chmod(0o770)
    assert headstart._start("k") is None and read == []
    cache.chmod(0o700)
    assert headstart._start("k") is None and read == ["read"]  # ours and private: read (wrong format: unused)


class _EarlyCgroup:
    """Stands in for the RunCgroup a head start makes (its layout, and what was done to it)."""

    def __init__(self, layout: str):
        self.layout = layout
        self.calls: list[str] = []

    def moved(self) -> None:
        self.calls.append("moved")

    def remove(self) -> None:
        self.calls.append("remove")


def _gone(pid: int) -> bool:
    """Killed and reaped (abort waits for it): no such process any more."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _early_sandbox(cgroup: _EarlyCgroup):
    import socket
    import subprocess

    from sandboxctl.launch.headstart import HeadStart

    child = subprocess.Popen(["sleep", "30"])
    ours, _theirs = socket.socketpair()
    err_r, err_w = os.pipe()
    os.close(err_w)
    return child, HeadStart(child.pid, ours, err_r, [], {}, "r", 0.0, {}, (0, 0, 0), b"", cgroup)


def test_head_start_cgroup_is_the_runs_only_with_the_same_layout() -> None:
    """Taken with the layout lifecycle finds: the caller's (limited, removed by it). Another
    layout: the early sandbox is killed and its cgroup removed at once — bubblewrap is never
    left in a cgroup that will not get the run's limits."""
    same = _EarlyCgroup("v1")
    child, early = _early_sandbox(same)
    try:
        assert early.take_cgroup("v1") is same and early.cgroup is None
        early.abort()
        assert same.calls == [] and _gone(child.pid)  # the caller removes it, not the head start
    finally:
        child.kill()
    other = _EarlyCgroup("v1")
    child, early = _early_sandbox(other)
    try:
        assert early.take_cgroup("v2") is None
        assert early.settled and _gone(child.pid) and other.calls == ["moved", "remove"]
    finally:
        child.kill()


def test_a_cgroup_move_writes_only_the_processes_not_listed_there(tmp_path, monkeypatch) -> None:
    """Each cgroup.procs write takes the kernel's cgroup lock for writing (the first after a quiet
    while waits ~10 ms for RCU): add() reads the list first and writes only the missing pids, and
    the early mover follows bubblewrap's children once bubblewrap itself is in."""
    from sandboxctl.supervise import cgroups

    written: list[tuple[str, str]] = []
    members = {str(tmp_path / "pids"): {10, 11}, str(tmp_path / "memory"): {10}}
    monkeypatch.setattr(cgroups, "_members", lambda path: set(members[path]))

    def write(path: str, value: str) -> None:
        written.append((path, value))
        members[path.rsplit("/", 1)[0]].add(int(value))

    monkeypatch.setattr(cgroups, "_write", write)
    cgroup = object.__new__(cgroups.RunCgroup)
    cgroup.dirs = list(members)
    assert cgroup.add([10, 11]) == 1 and written == [(f"{tmp_path}/memory/cgroup.procs", "11")]
    assert cgroup.add([10, 11]) == 0 and len(written) == 1  # all in: nothing written
    written.clear()
    monkeypatch.setattr(cgroups, "descendants", lambda pid: [20, 21] if pid == 12 else [])
    cgroup._mover, cgroup._move_error, cgroup._switch_interval = None, None, 0.005
    cgroup.move_soon(12)
    cgroup.moved()
    assert [value for _path, value in written] == ["12", "12", "20", "21", "20", "21"]  # both dirs, once each
    assert all(members[d] >= {12, 20, 21} for d in members)


def test_the_shim_imports_no_python_layer_it_can_do_without() -> None:
    """Every run's launcher interpreter pays for what the shim imports, on the critical path:
    ctypes' Python layer alone was ~2.7 ms of it. Only these (C modules, and struct's thin layer)."""
    import ast

    allowed = {"marshal", "os", "stat", "sys", "errno", "resource", "struct", "_ctypes", "_socket", "_signal"}
    tree = ast.parse(Path(shim_code.__file__).with_name("shim.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= allowed, imported - allowed
    assert "_ctypes" in imported  # the system calls go through it (Landlock, seccomp, prctl)


def test_both_launchers_call_libc_the_same_way() -> None:
    """launch/shim.py and launch/gvisor_init.py are each one file bound alone into a sandbox, so
    each holds the class that calls libc; they must not drift apart."""
    import ast

    def libc_class(name: str) -> str:
        tree = ast.parse(Path(shim_code.__file__).with_name(name).read_text())
        [node] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Libc"]
        return ast.dump(node)

    assert libc_class("shim.py") == libc_class("gvisor_init.py")
