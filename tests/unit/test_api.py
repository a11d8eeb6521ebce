"""The library's pure parts: argument checks, the session name and socket rules, `exec`'s parser,
session plans — nothing launched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxctl.api import checks
from sandboxctl.cli import execcmd
from sandboxctl.errors import SandboxError
from sandboxctl.paths import runtime_dir
from sandboxctl.plan.build import SESSION_SERVER
from sandboxctl.supervise import session_registry as registry
from sandboxctl.supervise import session_wire as wire
from tests.unit.test_plan import mounts, plan_for


@pytest.mark.parametrize("value", [None, "ok"])
def test_text_accepts_strings_and_paths(value):
    assert checks.text(value, "x") == value
    assert checks.text(Path("/a/b"), "x") == "/a/b"


@pytest.mark.parametrize("check,value,needle", [
    (lambda v: checks.argv(v), "ls -l", "argv: expected a list of strings, got str"),
    (lambda v: checks.argv(v), b"ls", "argv: expected a list of strings, got bytes"),
    (lambda v: checks.argv(v), ["ls", 3], "argv[1]: expected a string, got int"),
    (lambda v: checks.argv(v), [], "no command given"),
    (lambda v: checks.argv(v), ["a\0b"], "NUL"),
    (lambda v: checks.strings(v, "allow_read"), "/etc", "allow_read: expected a list of strings, got str"),
    (lambda v: checks.env_items(v, "env"), {"A": 1}, "env: names and values must be strings"),
    (lambda v: checks.duration(v, "timeout"), [1], "timeout: expected a duration"),
    (lambda v: checks.duration(v, "timeout"), True, "timeout: expected a duration"),
    (lambda v: checks.size(v, "memory"), 1.5, "memory: expected a size"),
    (lambda v: checks.input_bytes(v), 3, "input: expected str or bytes"),
    (lambda v: checks.callback(v, "on_stdout"), "print", "on_stdout: expected a function"),
])
def test_wrong_types_are_sandbox_errors_naming_the_argument(check, value, needle):
    with pytest.raises(SandboxError) as failure:
        check(value)
    assert needle in str(failure.value) and failure.value.exit_code == 125


def test_values_become_the_clis_option_text():
    assert checks.duration(90, "t") == "90s" and checks.duration(0.5, "t") == "500ms"
    assert checks.duration(-1, "t") == "0s"
    assert checks.size(1 << 20, "m") == "1048576"
    assert checks.env_items({"A": "1", "B": "x=y"}, "env") == ["A=1", "B=x=y"]
    assert checks.env_items(["A", "B=2"], "env") == ["A", "B=2"]
    assert checks.cwd("sub/../x", "/ws") == "/ws/x" and checks.cwd("/abs", "/ws") == "/abs"


def test_decoders_keep_a_character_split_across_chunks_whole():
    seen = []
    decoders = checks.Decoders(text=True)
    sink = decoders.sink(1, seen.append)
    data = "é€".encode()
    for i in range(len(data)):
        sink(data[i:i + 1])
    assert "".join(seen) == "é€"
    assert decoders.whole(b"\xff") == "\ufffd"
    assert checks.Decoders(text=False).whole(b"\xff") == b"\xff"


def test_the_library_fails_with_the_clis_messages(workspace):
    from sandboxctl import Sandbox

    with pytest.raises(SandboxError, match="--net 'sideways': must be one of none, proxy, host"):
        Sandbox(workspace=workspace, net="sideways")  # the CLI's argparse says it in its own words first
    cases = [({"env": ["1X=y"]}, "--env '1X=y': not NAME or NAME=VALUE"),
             ({"allow_read": ["relative/path"]}, "relative/path: extra paths must be absolute (or start with ~)"),
             ({"allow_net": ["*."]}, "--allow-net: "),
             ({"memory": "lots"}, "--memory: 'lots': not a size"),
             ({"policy": "no-such"}, "no built-in policy named 'no-such'")]
    for options, message in cases:
        with pytest.raises(SandboxError) as failure:
            Sandbox(workspace=workspace, **options)
        assert str(failure.value).startswith(message)
        cli = subprocess.run([sys.executable, "-m", "sandboxctl", "run", "-w", str(workspace),
                              *_as_flags(options), "--", "true"], capture_output=True, text=True, env=dict(os.environ))
        assert cli.returncode == 125 and f"sandboxctl: error: {failure.value}" in cli.stderr
        assert failure.value.hint and f"  hint: {failure.value.hint}" in cli.stderr  # SPEC: one line + hint


def _as_flags(options: dict) -> list[str]:
    flags = []
    for key, value in options.items():
        flag = {"policy": "-p"}.get(key, "--" + key.replace("_", "-"))
        for item in value if isinstance(value, list) else [value]:
            flags += [flag, item]
    return flags


def test_import_sandboxctl_stays_cheap():
    code = "import sys, sandboxctl; print(sorted(m for m in sys.modules if m.startswith('sandboxctl')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['sandboxctl']"
    code = "import sandboxctl; print(sandboxctl.Sandbox.__module__, sandboxctl.SandboxError.__module__)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["sandboxctl.api.sandbox", "sandboxctl.errors"]


def test_the_package_is_typed():
    assert (Path(checks.__file__).parents[1] / "py.typed").exists()


# ------------------------------------------------------------------ sessions
@pytest.mark.parametrize("env", [
    {}, {"TMPDIR": "/var/tmp"}, {"XDG_RUNTIME_DIR": "relative"}, {"XDG_RUNTIME_DIR": "/nonexistent-rt"},
])
def test_the_registry_finds_the_runtime_dir_the_planner_masks(monkeypatch, env):
    for name in ("XDG_RUNTIME_DIR", "TMPDIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert registry.runtime_dir() == str(runtime_dir())


def test_the_registry_and_the_planner_agree_on_a_private_runtime_dir(monkeypatch, tmp_path):
    private = tmp_path / "rt"
    private.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(private))
    assert registry.runtime_dir() == str(runtime_dir()) == str(private / "sandboxctl")
    private.chmod(0o755)  # not private: neither uses it
    assert registry.runtime_dir() == str(runtime_dir()) != str(private / "sandboxctl")


@pytest.mark.parametrize("name", ["build", "a", "x.y_z-1", "A" * 64])
def test_good_session_names(name):
    assert registry.check_name(name) == name


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "a/b", "../up", "a b", "é", "A" * 65, "x\n"])
def test_bad_session_names(name):
    with pytest.raises(SandboxError, match="session name"):
        registry.check_name(name)


def test_exec_parses_its_options_and_keeps_the_command_untouched():
    opts, name, command = execcmd.parse(["--timeout", "5s", "--env=A=1", "--env", "B", "--cwd", "sub", "-q",
                                         "build", "--", "sh", "-c", "--timeout x"])
    assert name == "build" and command == ["sh", "-c", "--timeout x"]
    assert opts == {"timeout": "5s", "env": ["A=1", "B"], "cwd": "sub", "quiet": True}
    assert execcmd.parse(["build", "ls", "-l"])[2] == ["ls", "-l"]


@pytest.mark.parametrize("args,needle", [
    ([], "no session name given"), (["--", "ls"], "no session name given"), (["build"], "no command given"),
    (["build", "--"], "no command given"), (["--bogus", "x", "--", "ls"], "no such option: --bogus"),
    (["--timeout"], "requires an argument"),
])
def test_exec_refuses_bad_arguments(args, needle):
    with pytest.raises(SandboxError, match=needle):
        execcmd.parse(args)


def test_exec_checks_env_and_timeout_before_connecting(monkeypatch):
    monkeypatch.setenv("FROM_CALLER", "v")
    request = execcmd._request({"timeout": "2m", "env": ["FROM_CALLER", "SET=x", "UNSET_HERE"], "cwd": None},
                               ["true"], None)
    assert request["exec"]["timeout"] == 120 and request["exec"]["env"] == {"FROM_CALLER": "v", "SET": "x"}
    with pytest.raises(SandboxError, match="--timeout: 'soon'"):
        execcmd._request({"timeout": "soon", "env": [], "cwd": None}, ["true"], None)
    with pytest.raises(SandboxError, match="not NAME or NAME=VALUE"):
        execcmd._request({"timeout": None, "env": ["9=x"], "cwd": None}, ["true"], None)


def _session_plan(command=(), **fields):
    from sandboxctl.plan.build import build_plan
    from sandboxctl.plan.inputs import Invocation
    from sandboxctl.policy.discover import load_named
    from tests.unit.test_plan import BASE_FILES, WS, fake_facts

    invocation = Invocation(command=command, workspace=WS, run_id="r1", **fields)
    return build_plan(load_named("default").policy, invocation, fake_facts(BASE_FILES))


def test_a_session_plan_mounts_the_server_and_needs_no_command():
    plan = _session_plan(session="build")
    assert plan.session == "build" and plan.command == ()
    assert ("ro", SESSION_SERVER) in mounts(plan)
    assert ("ro", SESSION_SERVER) not in mounts(plan_for())
    with pytest.raises(SandboxError, match="no command given"):
        _session_plan()
    with pytest.raises(SandboxError, match="sessions need the bubblewrap backend"):
        _session_plan(session="build", backend="gvisor")


def test_the_wire_drops_what_is_not_a_json_object():
    import socket

    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        for junk in (b"not json", b"[1, 2]", b'"text"'):
            theirs.send(junk)
            assert wire.receive(mine) == (None, [])
        read, write = os.pipe()
        wire.send(theirs, {"ok": 1}, [read])
        message, fds = wire.receive(mine)
        assert message == {"ok": 1} and len(fds) == 1 and not os.get_inheritable(fds[0])
        wire.close_all([*fds, read, write])
        theirs.close()
        assert wire.receive(mine) == (None, [])
    finally:
        mine.close()


def test_the_log_shows_a_sessions_commands_in_a_few_words():
    from sandboxctl.log.render import summarize

    assert summarize({"event": "command.start", "command_id": 3, "argv": ["pytest", "-q"]}) == "#3 pytest -q"
    assert summarize({"event": "command.end", "command_id": 3, "exit_code": 124, "duration_s": 1.5,
                      "timed_out": True}) == "#3 exit 124 after 1.50s, timed out"
