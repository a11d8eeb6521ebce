"""The gvisor backend's native launcher (launch/gvisor_exec.py): its code is the assembly in the
repository, and the program it makes behaves as gvisor_init.py does — run here, on the host,
where what it did is judged from outside (exit status, stderr, a canary file, the command's own
view of its seccomp status)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxctl.errors import SandboxError
from sandboxctl.launch import gvisor_exec, gvisor_init, oci
from sandboxctl.plan.build import GVISOR_INIT
from tests.unit.test_oci import gv_plan

SOURCE = Path(gvisor_exec.__file__).with_name("gvisor_exec_x86_64.S")
ALLOW_ALL = struct.pack("<HBBI", 6, 0, 0, 0x7FFF0000)
native = pytest.mark.skipif(os.uname().machine != "x86_64", reason="the native launcher is x86-64 code")


def deny(nr: int, errno_value: int) -> bytes:
    """A BPF program: syscall nr fails with errno_value, everything else is allowed."""
    return b"".join(struct.pack("<HBBI", *insn) for insn in [
        (0x20, 0, 0, 0), (0x15, 0, 1, nr), (0x06, 0, 0, 0x00050000 | errno_value), (0x06, 0, 0, 0x7FFF0000)])


def launch(tmp_path: Path, argv: list[str], env: dict[str, str], program: bytes = ALLOW_ALL,
           hints: dict[str, str] | None = None):
    path = tmp_path / "launch"
    path.write_bytes(gvisor_exec.build(program, argv, env, hints))
    path.chmod(0o500)
    result = subprocess.run([str(path)], env={}, capture_output=True, text=True, timeout=30)
    path.unlink()
    return result


def test_the_code_is_the_assembly_in_the_repository(tmp_path):
    if not (shutil.which("as") and shutil.which("objcopy")):
        pytest.skip("GNU as / objcopy (binutils) are not installed")
    subprocess.run(["as", "--64", "-o", str(tmp_path / "o"), str(SOURCE)], check=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(tmp_path / "o"), str(tmp_path / "bin")], check=True)
    assert (tmp_path / "bin").read_bytes() == gvisor_exec.CODE
    assert gvisor_exec.CODE_OFFSET + len(gvisor_exec.CODE) <= gvisor_exec.TABLE_OFFSET
    assert f".set TABLE, {hex(gvisor_exec.BASE + gvisor_exec.TABLE_OFFSET)}" in SOURCE.read_text()


def test_the_image_is_one_read_execute_segment_at_the_base():
    image = gvisor_exec.build(ALLOW_ALL, ["/bin/true"], {"A": "1"})
    assert image[:4] == b"\x7fELF" and image[4] == 2  # 64-bit
    e_type, machine, _, entry, phoff = struct.unpack_from("<HHIQQ", image, 16)
    assert (e_type, machine, entry, phoff) == (2, 62, gvisor_exec.BASE + gvisor_exec.CODE_OFFSET, 64)
    assert struct.unpack_from("<H", image, 56)[0] == 2  # e_phnum
    p_type, flags, offset, vaddr, _, filesz, memsz, _ = struct.unpack_from("<IIQQQQQQ", image, 64)
    assert (p_type, flags, offset, vaddr) == (1, 5, 0, gvisor_exec.BASE)  # PT_LOAD, R+X: nothing writable
    assert filesz == memsz == len(image)
    p_type, flags = struct.unpack_from("<II", image, 64 + 56)
    assert (p_type, flags) == (0x6474E551, 6)  # PT_GNU_STACK, read + write: the stack is not executable


def test_a_nul_byte_is_refused_not_truncated():
    for argv, env in ((["/bin/echo", "a\0b"], {}), (["/bin/true"], {"A": "x\0y"})):
        with pytest.raises(SandboxError, match="NUL"):
            gvisor_exec.build(ALLOW_ALL, argv, env)
    with pytest.raises(SandboxError, match="seccomp"):
        gvisor_exec.build(b"", ["/bin/true"], {})


@native
def test_it_executes_the_command_with_exactly_its_argv_and_environment(tmp_path):
    result = launch(tmp_path, ["sh", "-c", 'echo "$0|$1|$A|$PATH"; env | sort', "zero", "x y"],
                    {"A": "b c", "PATH": "/nonexistent:/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    first, *env = result.stdout.splitlines()
    assert first == "zero|x y|b c|/nonexistent:/usr/bin:/bin"
    assert {line.split("=", 1)[0] for line in env} <= {"A", "PATH", "PWD", "SHLVL", "_", "OLDPWD"}


@native
def test_the_seccomp_program_is_loaded_before_the_command(tmp_path):
    result = launch(tmp_path, ["/bin/sh", "-c", "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; uname"],
                    {}, deny(63, 1))  # uname(2): EPERM
    assert result.stdout.splitlines()[:2] == ["NoNewPrivs:\t1", "Seccomp:\t2"]
    assert result.returncode != 0 and "Operation not permitted" in result.stderr


@native
def test_a_program_that_does_not_load_never_runs_the_command(tmp_path):
    canary = tmp_path / "canary"
    result = launch(tmp_path, ["/bin/touch", str(canary)], {}, b"\0" * 8)  # BPF without a return: EINVAL
    assert result.returncode == 125 and not canary.exists()
    assert result.stderr == ("sandboxctl: error: cannot load the seccomp filter inside gVisor: Invalid argument\n"
                             f"  hint: {gvisor_init.DOCTOR}\n")


def python_launcher(tmp_path: Path, argv: list[str], env: dict[str, str], hints: dict[str, str] | None = None):
    """gvisor_init.py itself, on the host, with the same configuration."""
    config = oci.launch_config(gv_plan(net="none"), ALLOW_ALL, env, [], 317, hints)
    config["argv"] = argv
    path = tmp_path / "config"
    path.write_bytes(__import__("marshal").dumps(config))
    return subprocess.run([sys.executable, "-I", "-S", "-B", gvisor_init.__file__, str(path)], env={},
                          capture_output=True, text=True, timeout=30)


@native
@pytest.mark.parametrize("case", ["missing", "missing-path", "on-path", "directory-first", "not-executable",
                                  "not-executable-on-path", "only-a-directory", "bad-format", "terminal-escapes"])
def test_it_finds_and_fails_exactly_as_the_python_launcher(tmp_path, case):
    first, second = tmp_path / "first", tmp_path / "second"
    (first / "tool").mkdir(parents=True)  # a directory named like the command: skipped on PATH
    second.mkdir()
    (second / "tool").write_text("#!/bin/sh\necho from-second\n")
    (second / "tool").chmod(0o755)
    (second / "plain").write_text("data\n")
    (first / "plain").mkdir()
    (second / "junk").write_bytes(b"\x7fELF not really")
    (second / "junk").chmod(0o755)
    path = f"{first}:{second}"
    argv, env = {
        "missing": (["no-such-command-xyz"], {"PATH": path}),
        "missing-path": ([str(first / "nope")], {}),
        "on-path": (["tool"], {"PATH": path}),
        "directory-first": (["tool"], {"PATH": f"{first}:{second}"}),
        "not-executable": ([str(second / "plain")], {}),
        "not-executable-on-path": (["plain"], {"PATH": path}),
        "only-a-directory": (["plain"], {"PATH": str(first)}),
        "bad-format": ([str(second / "junk")], {}),
        "terminal-escapes": (["no-such-\x1b]0;owned\x07\x1b[2J"], {"PATH": f"{first}\x1b[31m:{second}"}),
    }[case]
    hints = {"exec": "exec hint \x1b[31m", "not_found": "not-found hint"} if case != "on-path" else None
    native_result = launch(tmp_path, argv, env, hints=hints)
    python_result = python_launcher(tmp_path, argv, env, hints)
    assert (native_result.returncode, native_result.stdout, native_result.stderr) == \
        (python_result.returncode, python_result.stdout, python_result.stderr)
    assert native_result.returncode in (0, 126, 127)
    assert not [c for c in native_result.stderr if c < " " and c != "\n"]  # straight to a terminal: inert
    if native_result.returncode:  # SPEC: one line and a hint, the run's own hint for this command
        lines = native_result.stderr.splitlines()
        assert len(lines) == 2 and lines[0].startswith("sandboxctl: error: "), lines
        wanted = "not-found hint" if native_result.returncode == 127 else "exec hint \\x1b[31m"
        assert lines[1] == f"  hint: {wanted}", lines


def test_without_hints_from_the_run_each_error_still_has_one(tmp_path):
    """A configuration from an older supervisor, or one without the key: gvisor_init.HINTS."""
    config = {"argv": ["no-such-command-xyz"], "env": {"PATH": str(tmp_path)}}
    path = tmp_path / "config"
    path.write_bytes(__import__("marshal").dumps(config))
    result = subprocess.run([sys.executable, "-I", "-S", "-B", gvisor_init.__file__, str(path)], env={},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 127
    assert result.stderr.splitlines() == [
        "sandboxctl: error: no-such-command-xyz: command not found inside the sandbox",
        f"  hint: {gvisor_init.HINTS['not_found']}"]
    result = subprocess.run([sys.executable, "-I", "-S", "-B", gvisor_init.__file__, str(tmp_path / "none")], env={},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 125 and result.stderr.splitlines()[1] == f"  hint: {gvisor_init.DOCTOR}"


def plan_on(machine: str, net: str):
    from sandboxctl.plan.build import build_plan
    from sandboxctl.plan.inputs import Invocation
    from sandboxctl.policy.discover import load_named
    from tests.unit.test_plan import BASE_FILES, WS, fake_facts

    facts = fake_facts(dict(BASE_FILES))._replace(machine=machine)
    return build_plan(load_named("default").policy, Invocation(command=("true",), workspace=WS, run_id="r1",
                                                               backend="gvisor", net=net), facts)


def test_the_plan_picks_the_native_launcher_only_on_x86_64_without_a_forwarder():
    paths = oci.dry_paths(plan_on("x86_64", "none"))
    for machine, net, native_expected in (("x86_64", "none", True), ("x86_64", "proxy", False),
                                          ("aarch64", "none", False), ("", "none", False)):
        plan = plan_on(machine, net)
        assert oci.native_launcher(plan) is native_expected
        assert any(m.target == GVISOR_INIT for m in plan.mounts) is not native_expected  # python3's file
        config = oci.config(plan, paths)
        launch_mount = next(m for m in config["mounts"] if m["destination"] == oci.LAUNCH_FILE)
        content = oci.launch_file(plan, oci.launch_config(plan, ALLOW_ALL, {}, [], 317))
        if native_expected:
            assert config["process"]["args"] == [oci.LAUNCH_FILE] and "noexec" not in launch_mount["options"]
            assert content.startswith(b"\x7fELF")
            with pytest.raises(SandboxError):  # no seccomp program: refused, never a launcher without one
                oci.launch_file(plan, oci.launch_config(plan, None, {}, [], 317))
        else:
            assert config["process"]["args"][-2:] == [GVISOR_INIT, oci.LAUNCH_FILE]
            assert "noexec" in launch_mount["options"] and not content.startswith(b"\x7fELF")
