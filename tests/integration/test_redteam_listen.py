"""Red team of the exec listener thread, the queued exec log and the `python -I -S` console script.

Every attack is judged from outside the sandbox: a canary file on the host, the log file read
here, `sandboxctl log --verify`, the supervisor's own threads and descriptors as /proc shows them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import sandboxctl

PACKAGE = Path(sandboxctl.__file__).resolve().parent
# what a module planted next to sandboxctl's package would run: a canary outside every grant
PLANTED = ("_sha2", "nt", "_winapi")  # top-level imports the supervisor makes that no earlier entry has


@pytest.fixture(scope="module")
def editable(tmp_path_factory) -> tuple[Path, Path]:
    """An editable install of its own (`pip install -e CLONE`, as the README's "Install elsewhere"
    and scripts/setup make it): a venv whose .pth files name the clone — a copy of this package —
    and this venv's site-packages (the dependencies). Returns (venv, clone)."""
    import shutil
    import sysconfig

    base = tmp_path_factory.mktemp("editable")
    os.chmod(base, 0o755)
    clone, venv = base / "clone", base / "venv"
    shutil.copytree(PACKAGE, clone / "sandboxctl", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PACKAGE.parent / "policies", clone / "policies")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site_packages = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; "
                                         "print(sysconfig.get_paths()['purelib'])"], check=True, timeout=60,
                                        capture_output=True, text=True).stdout.strip())
    for dependency in Path(sysconfig.get_paths()["purelib"]).iterdir():  # this venv's, installed there too
        if not dependency.name.endswith(".pth") and not dependency.name.startswith(("sandboxctl", "agent_sandboxctl")):
            (site_packages / dependency.name).symlink_to(dependency)
    (site_packages / "_editable_impl_agent_sandboxctl.pth").write_text(f"{clone}\n")  # what pip -e writes
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    return venv, clone


def _console_script(editable: tuple[Path, Path]) -> list[str]:
    """The script scripts/setup writes in place of pip's (python -m sandboxctl.console_script)."""
    venv, clone = editable
    target = venv / "bin" / "sandboxctl-isolated"
    if not target.exists():  # in the clone, as scripts/setup runs it
        subprocess.run([str(venv / "bin" / "python"), "-m", "sandboxctl.console_script", str(target)], check=True,
                       timeout=60, cwd=clone)
    assert str(clone) in target.read_text()
    return [str(target)]


def _pips_script(editable: tuple[Path, Path]) -> list[str]:
    """pip's own console script for the install, exactly as pip writes it (its entry point)."""
    from importlib.metadata import entry_points

    venv, _clone = editable
    (entry,) = [e for e in entry_points(group="console_scripts") if e.name == "sandboxctl"]
    module, function = entry.value.split(":")
    target = venv / "bin" / "sandboxctl"
    target.write_text(f"#!{venv}/bin/python\nimport re\nimport sys\nfrom {module} import {function}\n"
                      f"if __name__ == '__main__':\n    sys.exit({function}())\n")
    target.chmod(0o755)
    return [str(target)]


def _plant(names: tuple[str, ...], canary: Path) -> str:
    """A shell script run inside the sandbox: a module file for each name, in its cwd."""
    body = f"open({str(canary)!r}, 'a').write(__name__ + chr(10))"
    return "; ".join(f"printf '%s\\n' \"{body}\" > {name}.py" for name in names) + "; ls"


def _attack(script: list[str], clone: Path, sandbox, canary: Path, names: tuple[str, ...]) -> None:
    env = sandbox.env()
    first = subprocess.run([*script, "run", "-q", "-p", "default", "-w", str(clone), "--", "/bin/sh", "-c",
                            _plant(names, canary)], cwd=clone, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert not canary.exists(), f"the supervisor imported {canary.read_text().split()}"
    second = subprocess.run([*script, "run", "-q", "-p", "default", "-w", str(clone), "--", "/bin/true"],
                            cwd=clone, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert not canary.exists(), f"the supervisor imported {canary.read_text().split()}"


@pytest.fixture
def clean_clone(editable):
    _venv, clone = editable
    yield editable
    for entry in clone.iterdir():
        if entry.name not in ("sandboxctl", "policies"):
            subprocess.run(["rm", "-rf", str(entry)], check=True)


def test_a_module_planted_in_an_editable_clone_never_runs_in_the_next_supervisor(sandbox, tmp_path, clean_clone):
    """A developer runs an agent in their sandboxctl clone (the workspace is the clone): the
    sandbox writes `_sha2.py`, `nt.py`, `_winapi.py` at its root — names the supervisor imports
    (digest.py on Python 3.11; pathlib's ntpath) and finds nowhere earlier on sys.path. The next
    run's supervisor (the console script) must not import them: it puts only the package itself
    on the import path, never the clone's other files."""
    _attack(_console_script(clean_clone), clean_clone[1], sandbox, tmp_path / "canary", PLANTED)


def test_pips_script_of_an_editable_clone_imports_nothing_a_sandbox_left_there(sandbox, tmp_path, clean_clone):
    """The same attack on pip's own script (what a later `pip install -e` writes again): site
    imports `sitecustomize` from any sys.path entry, the clone's included, before sandboxctl runs;
    so the plan protects those names at the clone's root, and the program (cli/main.entry)
    forgets the clone as an import path once sandboxctl is imported."""
    clone = clean_clone[1]
    _attack(_pips_script(clean_clone), clone, sandbox, tmp_path / "canary",
            (*PLANTED, "sitecustomize", "usercustomize"))
    assert not (clone / "sitecustomize.py").exists() and not (clone / "usercustomize.py").exists()


def test_pips_script_never_imports_from_the_workspace_named_by_an_empty_pythonpath_entry(sandbox, tmp_path,
                                                                                     clean_clone):
    """`export PYTHONPATH=$PYTHONPATH:/x` with PYTHONPATH unset leaves an empty entry, which names
    the current directory — the workspace — for pip's script (site, not -I): a `nt.py` the
    sandbox left there ran in the next supervisor. cli/main.entry drops the current directory."""
    canary = tmp_path / "canary"
    script = _pips_script(clean_clone)
    env = sandbox.env({"PYTHONPATH": ":/nonexistent"})
    for argv in (["/bin/sh", "-c", _plant(PLANTED, canary)], ["/bin/true"]):
        done = subprocess.run([*script, "run", "-q", "-p", "default", "--", *argv], cwd=sandbox.workspace, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    assert (sandbox.workspace / "nt.py").exists()
    assert not canary.exists(), f"the supervisor imported {canary.read_text().split()}"


def test_the_shell_functions_never_import_from_the_workspace(sandbox, tmp_path):
    """`sandboxctl shell-init` without sandboxctl on PATH writes functions that start
    `python -m sandboxctl` — from the user's current directory, the project the agent works in.
    `python -m` puts that directory first on sys.path: a `contextlib.py` the sandboxed agent left
    there would run, outside any sandbox, in the next `claude`. The functions start it isolated."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "claude").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "claude").chmod(0o755)
    env = sandbox.env({"PATH": f"{fake_bin}:/usr/bin:/bin"})
    init = subprocess.run([sys.executable, "-I", "-m", "sandboxctl", "shell-init", "bash"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    (line,) = [line for line in init.stdout.splitlines() if "function claude" in line]
    launcher = line.split("command ", 1)[1].split(" run ", 1)[0].split()
    assert launcher[0] == sys.executable or os.path.realpath(launcher[0]) == os.path.realpath(sys.executable)
    canary = tmp_path / "canary"
    names = ("contextlib", "selectors", "json", "_sha2", "nt")
    first = subprocess.run([*launcher, "run", "-q", "-p", "default", "--", "/bin/sh", "-c", _plant(names, canary)],
                           cwd=sandbox.workspace, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert (sandbox.workspace / "contextlib.py").exists()
    subprocess.run([*launcher, "run", "-q", "-p", "default", "--", "/bin/true"], cwd=sandbox.workspace, env=env,
                   capture_output=True, text=True, timeout=60)
    assert not canary.exists(), f"the supervisor imported {canary.read_text().split()}"


# ------------------------------------------------------------------ threads that answer for the listener
def _records(log: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _verify(log: Path, env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-I", "-m", "sandboxctl", "log", "--verify", "--log", str(log)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def _threads(name: str) -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name == name and t.is_alive()]


def test_a_fifo_open_waiting_at_the_end_of_the_run_does_not_outlive_it(workspace, home, tmp_path):
    """The supervisor opens a FIFO for writing itself, on a thread of its own, and that open waits
    for a reader. The command leaves such a writer behind and exits: the sandbox is gone, but the
    library's caller (a long-lived agent) kept a supervisor thread blocked in open(), holding a
    descriptor of the workspace — and when someone opened the FIFO for reading later, that thread
    woke, opened the host's FIFO, and tried to hand it over and write the (closed) log: a traceback
    in the caller. Judged from outside: the caller's own threads, descriptors and exceptions."""
    import threading
    import time

    from sandboxctl import Sandbox

    failures: list[BaseException] = []
    previous = threading.excepthook
    threading.excepthook = lambda hook: failures.append(hook.exc_value)
    try:
        log = tmp_path / "state" / "sandboxctl" / "actions.jsonl"  # the default, under XDG_STATE_HOME
        box = Sandbox(policy="default", workspace=str(workspace))
        result = box.run(["/bin/sh", "-c", "mkfifo f; (echo x > f &); sleep 0.3"], timeout="30s")
        assert result.exit_code == 0, result.stderr
        deadline = time.monotonic() + 2
        while _threads("sandboxctl-fifo-open") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _threads("sandboxctl-fifo-open"), "a supervisor thread still waits on the sandbox's FIFO"
        held = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                if os.path.exists(f"/proc/self/fd/{fd}")]
        assert str(workspace) not in held
        reader = os.open(workspace / "f", os.O_RDONLY | os.O_NONBLOCK)  # a reader, long after
        time.sleep(0.5)
        os.close(reader)
        assert failures == []
        assert _records(log)[-1]["event"] == "run.end"
        _verify(log, dict(os.environ))
    finally:
        threading.excepthook = previous


# ------------------------------------------------------------------ the queued exec records
STORM = r"""
import os, sys, time
args = ["/bin/true"] + ["\x1b" * 4000] * 255  # 1 MB of argv, 6 MB as JSON (\u001b): the biggest record
end = time.time() + 6
while time.time() < end:
    os.waitpid(os.posix_spawn("/bin/true", args, {}), 0)
"""


def test_an_exec_storm_of_big_records_cannot_outrun_the_flood_guard(sandbox, monkeypatch):
    """Exec records are queued for the log's thread; a storm of execs with 1 MB argvs (two
    processes; control characters, 6 bytes each in JSON) made them faster than the thread wrote
    them, so the queue grew without bound (the supervisor's memory), and when the flood guard
    stopped the run, what was still queued was written after, rotating the run's own first
    records (run.start) out of the kept files — the guard's whole point. Judged from the kept
    files: the stopped run still has its seq 0."""
    from sandboxctl import Sandbox
    from sandboxctl.log import files as logfiles
    from sandboxctl.log.writer import ActionLog

    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(ActionLog.__init__, "__defaults__", ((), 32 << 20, 3))  # keeps 4 x 32 MB (a record: 6)
    (sandbox.workspace / "storm.py").write_text(STORM)
    box = Sandbox("default", sandbox.workspace)
    with pytest.raises(sandboxctl.SandboxError) as raised:
        box.run(["/bin/sh", "-c", "python3 storm.py & python3 storm.py; wait"], timeout="60s")
    assert "before the log's rotation could drop" in raised.value.message
    records = [r.data for r in logfiles.iter_records(sandbox.log_path)]
    run = next(r["run"] for r in records if r["event"] == "limit" and r.get("kind") == "log")
    mine = [r for r in records if r["run"] == run]
    assert mine[0]["seq"] == 0 and mine[0]["event"] == "run.start", f"the kept files begin at seq {mine[0]['seq']}"
    assert mine[-1]["event"] == "run.end"
    _verify(sandbox.log_path, sandbox.env())


def test_an_approved_open_of_a_fifo_outside_the_grants_never_stalls_the_listener(sandbox, tmp_path):
    """An open for writing outside the writable set is performed by the supervisor once allowed
    (--approve allow: on the listener's own thread). A FIFO there (a host directory granted
    read-only) made that open wait for a reader: every trapped call of the sandbox (mkdir, exec)
    waited with it until the timeout, and the listener thread stayed blocked after the run.
    Judged from outside: the run's duration, the directory made on the host, the exec record."""
    import time

    shared = tmp_path / "shared"
    shared.mkdir()
    os.mkfifo(shared / "fifo")
    os.chmod(tmp_path, 0o755)
    os.chmod(shared, 0o755)
    started = time.monotonic()
    result = sandbox.run("--approve", "allow", "--allow-read", str(shared), "--timeout", "8s", "--", "/bin/sh", "-c",
                         f"(echo x > {shared}/fifo &); sleep 0.3; mkdir made && /bin/true", timeout=90)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15
    assert (sandbox.workspace / "made").is_dir()
    records = sandbox.records()
    assert any(r["event"] == "exec" and r["path"] == "/bin/true" for r in records)
    assert records[-1]["event"] == "run.end"


DENIAL_STORM = r"""
import ctypes, os, threading
libc = ctypes.CDLL(None, use_errno=True)
def storm():
    while True:
        libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)  # refused by the baseline, trapped to be logged
for _ in range(8):
    threading.Thread(target=storm, daemon=True).start()
for _ in range(3):
    if os.fork() == 0:
        for _ in range(8):
            threading.Thread(target=storm, daemon=True).start()
        storm()
storm()
"""


def test_a_storm_of_trapped_calls_from_many_threads_still_lets_the_timeout_fire(sandbox):
    """32 threads in 4 processes make a trapped, refused call as fast as they can: the listener
    thread answers all of it, and the loop must still fire the timeout and end the run, with the
    log whole. Judged from outside: the exit code and time, the log file, `log --verify`."""
    import time

    (sandbox.workspace / "storm.py").write_text(DENIAL_STORM)
    started = time.monotonic()
    result = sandbox.run("--timeout", "2s", "--", "python3", "storm.py", timeout=60)
    assert result.returncode == 124, result.stderr
    assert time.monotonic() - started < 15
    records = sandbox.records()
    denials = [r for r in records if r["event"] == "syscall" and r.get("name") == "mount"]
    assert len(denials) > 20 and any(r.get("repeated") for r in denials)  # the rest counted, not written
    assert records[-1]["event"] == "run.end" and records[-1]["denied"] > len(denials)
    _verify(sandbox.log_path, sandbox.env())


# ------------------------------------------------------------------ programs the supervisor runs from PATH
FAKE_BWRAP = """#!/bin/sh
echo ran >> {canary}
exec {real} "$@"
"""


@pytest.mark.parametrize("entry", ["activated venv", "relative"])
def test_a_bwrap_planted_on_the_callers_path_is_never_run(sandbox, tmp_path, entry):
    """The supervisor runs `bwrap` from the caller's PATH. A developer who activated the project's
    venv has `WORKSPACE/.venv/bin` first on PATH (or a relative entry, which names the current
    directory: the workspace); the sandbox writes `bwrap` there, and the next run's supervisor
    ran it, outside any sandbox. Judged from outside: the canary the planted bwrap writes."""
    import shutil

    real = shutil.which("bwrap")
    bindir = sandbox.workspace / ".venv" / "bin"
    bindir.mkdir(parents=True)
    canary = tmp_path / "canary"
    path = f"{bindir}:/usr/local/bin:/usr/bin:/bin" if entry == "activated venv" else ".venv/bin:/usr/bin:/bin"
    env = {"PATH": path}
    plant = FAKE_BWRAP.format(canary=canary, real=real)
    sandbox.run("--", "/bin/sh", "-c", f"printf '%s' '{plant}' > .venv/bin/bwrap; chmod 755 .venv/bin/bwrap",
                env=env)
    if entry == "activated venv":  # under a writable grant, on PATH: the name is protected
        assert not (bindir / "bwrap").exists()
    second = sandbox.run("--", "/bin/true", env=env)
    assert second.returncode == 0, second.stderr
    assert not canary.exists(), "the supervisor ran the bwrap a sandbox planted"


def test_a_secrets_command_planted_on_the_callers_path_is_never_run(sandbox, tmp_path):
    """`secrets.X.from: command:printf …` runs on the host, from the caller's PATH, before each
    run: the same plant (WORKSPACE/.venv/bin/printf) would run outside the sandbox."""
    bindir = sandbox.workspace / ".venv" / "bin"
    bindir.mkdir(parents=True)
    canary = tmp_path / "canary"
    env = {"PATH": f"{bindir}:/usr/bin:/bin"}
    policy = sandbox.write_policy("secret.yaml", "version: 1\nextends: default\nsecrets:\n"
                                  "  TOKEN:\n    from: 'command:printf token'\n    as: env\n")
    plant = f"#!/bin/sh\\necho ran >> {canary}\\n"
    sandbox.run("--", "/bin/sh", "-c", f"printf '{plant}' > .venv/bin/printf; chmod 755 .venv/bin/printf",
                policy=str(policy), env=env)
    assert not (bindir / "printf").exists()
    second = sandbox.run("--", "/bin/true", policy=str(policy), env=env)
    assert second.returncode == 0, second.stderr
    assert not canary.exists(), "the supervisor ran the secret's command a sandbox planted"


def test_exec_records_and_denials_with_escape_sequences_reach_a_human_inert(sandbox):
    """An exec whose path and argv hold escape sequences (colour, OSC title, clear screen, a
    right-to-left override) and a refused write to such a path: the run's stderr and
    `sandboxctl log` show them inert. Judged from the bytes a terminal would get."""
    evil = "\\033]0;pwned\\007\\033[2J\\342\\200\\256x"
    script = (f'p="/tmp/$(printf "{evil}")"; cp /bin/true "$p"; "$p" "$(printf "{evil}")"; '
              f'{{ echo x > "/etc/$(printf "{evil}")"; }} 2>/dev/null; exit 0')  # the command's own stderr: its own
    result = sandbox.run("--approve", "deny", "--", "/bin/sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert any(r["event"] == "exec" and "\x1b]0;pwned" in r["path"] for r in sandbox.records())  # it was recorded
    shown = subprocess.run([sys.executable, "-I", "-m", "sandboxctl", "log"], env=sandbox.env(), capture_output=True,
                           timeout=60)
    assert shown.returncode == 0, shown.stderr
    for output in (result.stderr.encode(), shown.stdout, shown.stderr):
        assert b"\x1b" not in output and b"\x07" not in output and "\u202e".encode() not in output, output[-400:]
    assert b"pwned" in shown.stdout


def test_a_bwrap_planted_before_its_directory_is_on_path_is_never_run(sandbox, tmp_path):
    """The protection of PATH programs named only this run's PATH: a sandbox started before the
    developer activated the project's venv wrote `.venv/bin/bwrap`, and the first run after the
    activation ran it outside any sandbox (proven by its canary). bwrap and runsc are now
    protected at any depth beneath a writable grant."""
    import shutil

    canary = tmp_path / "canary"
    plant = FAKE_BWRAP.format(canary=canary, real=shutil.which("bwrap"))
    first = sandbox.run("--", "/bin/sh", "-c", f"mkdir -p .venv/bin sub; printf '%s' '{plant}' > .venv/bin/bwrap; "
                        f"printf x > sub/x; mv sub/x sub/runsc; ln -s /usr/bin/bwrap BWRAP; echo end",
                        env={"PATH": "/usr/bin:/bin"})
    assert "end" in first.stdout, first.stderr
    for name in (".venv/bin/bwrap", "sub/runsc", "BWRAP"):
        assert not os.path.lexists(sandbox.workspace / name), name
    assert (sandbox.workspace / "sub").is_dir()  # the rest of the workspace stays writable
    second = sandbox.run("--", "/bin/true", env={"PATH": f"{sandbox.workspace}/.venv/bin:/usr/bin:/bin"})
    assert second.returncode == 0, second.stderr
    assert not canary.exists(), "the supervisor ran the bwrap a sandbox planted"


def test_doctor_never_runs_a_bwrap_from_a_relative_path_entry(sandbox, tmp_path):
    """`sandboxctl doctor` looked bwrap up with shutil.which, relative PATH entries included: with
    `.` on PATH, a `bwrap` in the workspace (a cloned repository's) ran on the host (proven by its
    canary). It now looks as the run does (spawn.which: absolute entries only)."""
    import shutil

    canary = tmp_path / "canary"
    planted = sandbox.workspace / "bwrap"
    planted.write_text(FAKE_BWRAP.format(canary=canary, real=shutil.which("bwrap")))
    planted.chmod(0o755)
    subprocess.run([sys.executable, "-m", "sandboxctl", "doctor"], cwd=sandbox.workspace, capture_output=True,
                   env=sandbox.env({"PATH": ".:/usr/bin:/bin"}), timeout=60)
    assert not canary.exists(), "doctor ran the bwrap of the current directory"
