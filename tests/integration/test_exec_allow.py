"""exec.allow holds against every way of running a binary from outside the list (issue 13, case 9),
judged by a canary the binary would write if it ran."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

POLICY = "version: 1\nextends: default\nexec:\n  allow: [/usr/bin, /bin]\n"
CANARY_C = '#include <stdio.h>\nint main(int c, char **v) { FILE *f = fopen(v[1], "w"); return f ? 0 : 1; }\n'

PROBE = textwrap.dedent("""
    import ctypes, os, sys
    binary, canary = sys.argv[1], sys.argv[2]
    data = open(binary, "rb").read()
    how = sys.argv[3]
    if how == "direct":
        os.execv(binary, [binary, canary])
    if how == "memfd":
        fd = os.memfd_create("x", 0); os.write(fd, data)
        os.execv(f"/proc/self/fd/{fd}", ["x", canary])
    if how == "fexecve":
        fd = os.memfd_create("x", 0); os.write(fd, data)
        os.execve(fd, ["x", canary], {})
    if how == "memfd-exec-flag":
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.memfd_create(b"x", 0x10)  # MFD_EXEC
        if fd < 0:
            raise OSError(ctypes.get_errno(), "memfd_create(MFD_EXEC)")
        os.write(fd, data); os.execv(f"/proc/self/fd/{fd}", ["x", canary])
    if how == "chmod-memfd":
        fd = os.memfd_create("x", 0); os.write(fd, data); os.fchmod(fd, 0o755)
        os.execv(f"/proc/self/fd/{fd}", ["x", canary])
    if how == "empty-path":
        fd = os.open(binary, os.O_RDONLY)
        os.execve(fd, ["x", canary], {})
    if how == "loader":
        loader = [p for p in ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1") if os.path.exists(p)][0]
        os.execv(loader, [loader, binary, canary])
    if how == "tmp-copy":
        import shutil
        shutil.copy(binary, "/tmp/b"); os.chmod("/tmp/b", 0o755); os.execv("/tmp/b", ["b", canary])
""")


@pytest.fixture
def binary(sandbox) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler on this machine")
    source = sandbox.workspace / "canary.c"
    source.write_text(CANARY_C)
    out = sandbox.workspace / "canary-bin"
    subprocess.run([cc, "-o", str(out), str(source)], check=True)
    (sandbox.workspace / "probe.py").write_text(PROBE)
    return out


@pytest.mark.parametrize("how", ["direct", "memfd", "fexecve", "memfd-exec-flag", "chmod-memfd", "empty-path",
                                 "loader", "tmp-copy"])
def test_no_way_runs_a_binary_from_outside_the_list(sandbox, binary, how):
    policy = sandbox.write_policy("exec.yaml", POLICY)
    canary = sandbox.workspace / f"ran-{how}"
    result = sandbox.run("--", "python3", "probe.py", str(binary), str(canary), how, policy=str(policy))
    assert result.returncode != 0
    assert not canary.exists(), f"{how}: the binary ran ({result.stderr})"


def test_interpreters_still_run_scripts_and_allowed_binaries_run(sandbox, binary):
    policy = sandbox.write_policy("exec.yaml", POLICY)
    (sandbox.workspace / "s.py").write_text("open('py-ran', 'w').write('1')\n")
    (sandbox.workspace / "s.sh").write_text("echo 1 > sh-ran\n")
    result = sandbox.run("--", "/bin/sh", "-c", "python3 s.py && sh s.sh && /usr/bin/true && echo ok",
                         policy=str(policy))
    assert result.stdout.strip() == "ok", result.stderr
    assert (sandbox.workspace / "py-ran").exists() and (sandbox.workspace / "sh-ran").exists()


def test_memory_files_still_work_as_memory(sandbox, binary):
    policy = sandbox.write_policy("exec.yaml", POLICY)
    code = "import os\nfd = os.memfd_create('buf')\nos.write(fd, b'data')\nos.lseek(fd, 0, 0)\nprint(os.read(fd, 4))"
    result = sandbox.run("--", "python3", "-c", code, policy=str(policy))
    assert result.stdout.strip() == "b'data'", result.stderr


def test_the_loader_is_refused_and_logged(sandbox, binary):
    policy = sandbox.write_policy("exec.yaml", POLICY)
    sandbox.run("--", "python3", "probe.py", str(binary), "x", "loader", policy=str(policy))
    denied = [r for r in sandbox.records() if r.get("event") == "exec" and r.get("decision") == "deny"]
    assert denied and "ELF loader" in denied[0]["rule"]


SHARED_C = ('#include <stdio.h>\n__attribute__((constructor)) static void run(void) {\n'
            '  FILE *f = fopen(CANARY, "w"); if (f) fclose(f); }\n')


@pytest.mark.parametrize("how", ["ld_preload", "dlopen", "loader-maps"])
def test_native_code_written_inside_is_never_mapped_as_code(sandbox, binary, how):
    """Landlock checks execve only; the writable mounts are also noexec, so mmap(PROT_EXEC) of a
    file the command can write fails too: LD_PRELOAD, dlopen and the loader map nothing."""
    cc = shutil.which("cc") or shutil.which("gcc")
    canary = sandbox.workspace / f"ran-{how}"
    (sandbox.workspace / "lib.c").write_text(SHARED_C.replace("CANARY", f'"{canary}"'))
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(sandbox.workspace / "lib.so"),
                    str(sandbox.workspace / "lib.c")], check=True)
    policy = sandbox.write_policy("exec.yaml", POLICY)
    scripts = {
        "ld_preload": f"LD_PRELOAD={sandbox.workspace}/lib.so /usr/bin/true; cp lib.so /tmp/l.so; "
                      "LD_PRELOAD=/tmp/l.so /usr/bin/true",
        "dlopen": f"python3 -c \"import ctypes; ctypes.CDLL('{sandbox.workspace}/lib.so')\"",
        "loader-maps": "python3 probe.py canary-bin ran-loader-maps loader",
    }
    sandbox.run("--", "/bin/sh", "-c", scripts[how], policy=str(policy))
    assert not canary.exists(), how
    [start] = [r for r in sandbox.records() if r["event"] == "run.start"]
    assert str(sandbox.workspace) in start["layers"]["exec_allow"]["noexec_mounts"]


def test_the_loader_reached_through_a_link_to_proc_self_is_refused_and_logged(sandbox, binary, tmp_path):
    """ws/l -> /proc/self/root/lib64: /proc/self names nobody in the supervisor's view, so the
    loader's path was "no such file", the exec went on, and the loader ran a binary from outside
    the list — one on a mount that lets it be mapped (a read grant), judged by its canary."""
    import os

    policy = sandbox.write_policy("exec.yaml", POLICY)
    tools = tmp_path / "tools"
    tools.mkdir()
    shutil.copy(binary, tools / "canary-bin")
    os.chmod(tools, 0o755)
    loader = next(p for p in ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1") if os.path.exists(p))
    directory, name = os.path.split(loader)
    canary = sandbox.workspace / "ran-through-link"
    script = (f"ln -s /proc/self/root{directory} l && ln -s /proc/./self/root{directory} l2 && "
              f"{{ l/{name} {tools}/canary-bin {canary}; l2/{name} {tools}/canary-bin {canary}; "
              f"{loader} {tools}/canary-bin {canary}; }}")
    result = sandbox.run("--allow-read", str(tools), "--", "/bin/sh", "-c", script, policy=str(policy))
    assert not canary.exists(), result.stderr
    denied = [r["path"] for r in sandbox.records() if r.get("event") == "exec" and r.get("decision") == "deny"]
    assert denied == [f"{sandbox.workspace}/l/{name}", f"{sandbox.workspace}/l2/{name}", loader], denied
