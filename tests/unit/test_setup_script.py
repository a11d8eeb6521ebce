"""scripts/setup, the README's first command: who installs the system packages, and how it fails.

The machine is simulated by stubs on PATH (dpkg-query, apt-get, sudo, id, python3) that record what
they were asked; the real thing (a fresh root shell without sudo, a user with and one without sudo)
is what .ci/run runs from the README verbatim.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "setup"
PACKAGES = ("bubblewrap", "libseccomp2", "python3-venv", "git")

STUBS = {
    # installed packages come from $STUB_INSTALLED (space-separated)
    "dpkg-query": 'for p in $STUB_INSTALLED; do [ "$p" = "$3" ] && { printf "install ok installed"; exit 0; }; done; '
                  "exit 1",
    "apt-get": 'echo "apt-get $* (uid $(id -u))" >> "$STUB_LOG"',
    "id": '[ "$1" = -u ] && { echo "$STUB_UID"; exit 0; }; exit 1',
    # $STUB_SUDO: nopasswd (runs the command as root), password (-n fails), refused (every call fails)
    "sudo": '''echo "sudo $*" >> "$STUB_LOG"
case "$STUB_SUDO:$1" in
  nopasswd:-n) exit 0 ;;
  nopasswd:*) STUB_UID=0 exec "$@" ;;
  password:-n) echo "sudo: a password is required" >&2; exit 1 ;;
  *) echo "sorry, user may not run sudo" >&2; exit 1 ;;
esac''',
    "python3": '''echo "python3 $*" >> "$STUB_LOG"
mkdir -p .venv/bin
printf '#!/bin/sh\\necho "venv-python $*" >> "$STUB_LOG"\\n' > .venv/bin/python
chmod +x .venv/bin/python''',
}


@pytest.fixture
def machine(tmp_path: Path):
    """A clone (scripts/setup and the files it checks for) and a PATH of stubs and basic tools."""
    clone = tmp_path / "clone"
    (clone / "scripts").mkdir(parents=True)
    (clone / "sandboxctl").mkdir()
    (clone / "pyproject.toml").write_text("[project]\nname = 'agent-sandboxctl'\n")
    shutil.copy(SETUP, clone / "scripts" / "setup")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "mkdir", "chmod", "cat", "grep"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    log = tmp_path / "calls.log"
    log.touch()

    def run(uid: int, installed: tuple[str, ...] = PACKAGES, sudo: str | None = None,
            stdin=subprocess.DEVNULL, stderr=None) -> tuple[subprocess.CompletedProcess[str], list[str]]:
        for name, body in STUBS.items():
            if name == "sudo" and sudo is None:
                continue
            path = bin_dir / name
            path.write_text("#!/bin/sh\n" + body + "\n")
            path.chmod(0o755)
        env = {"PATH": str(bin_dir), "STUB_LOG": str(log), "STUB_UID": str(uid), "STUB_SUDO": sudo or "",
               "STUB_INSTALLED": " ".join(installed), "HOME": str(tmp_path)}
        done = subprocess.run(["/bin/sh", str(clone / "scripts" / "setup")], env=env, stdin=stdin,
                              stdout=subprocess.PIPE, stderr=stderr or subprocess.PIPE, text=True, timeout=30)
        return done, log.read_text().splitlines()

    run.clone = clone
    return run


def test_everything_present_needs_no_root_at_all(machine) -> None:
    done, calls = machine(uid=1000)
    assert done.returncode == 0, done.stderr
    assert not [c for c in calls if c.startswith(("apt-get", "sudo"))]
    assert calls == ["python3 -m venv .venv", "venv-python -m pip install -q --disable-pip-version-check -e .",
                     "venv-python -m compileall -q sandboxctl",
                     "venv-python -m sandboxctl.console_script .venv/bin/sandboxctl"]  # pip's script replaced


def test_root_installs_directly_without_sudo(machine) -> None:
    """A root shell in a container has no sudo: the packages go in with apt-get itself."""
    done, calls = machine(uid=0, installed=("libseccomp2",))
    assert done.returncode == 0, done.stderr
    apt = [c for c in calls if c.startswith("apt-get")]
    assert apt == ["apt-get -o DPkg::Lock::Timeout=600 update -qq (uid 0)",
                   "apt-get -o DPkg::Lock::Timeout=600 install -y -qq bubblewrap python3-venv git (uid 0)"]
    assert not [c for c in calls if c.startswith("sudo")]


def test_a_user_with_sudo_installs_through_it(machine) -> None:
    done, calls = machine(uid=1000, installed=("bubblewrap", "libseccomp2", "python3-venv"), sudo="nopasswd")
    assert done.returncode == 0, done.stderr
    assert "sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq git" in calls
    assert "apt-get -o DPkg::Lock::Timeout=600 install -y -qq git (uid 0)" in calls
    assert calls[-3].startswith("venv-python -m pip install") and calls[-2].startswith("venv-python -m compileall")
    assert calls[-1] == "venv-python -m sandboxctl.console_script .venv/bin/sandboxctl"


@pytest.mark.parametrize(("sudo", "why"), [(None, "there is no sudo here"),
                                           ("password", "sudo cannot run them without a password here"),
                                           ("refused", "sudo cannot run them without a password here")])
def test_a_user_who_cannot_use_sudo_gets_one_clear_message(machine, sudo: str | None, why: str) -> None:
    """Without a terminal, a sudo that wants a password cannot be told apart from no rights: both stop here."""
    done, calls = machine(uid=1000, installed=("bubblewrap", "libseccomp2"), sudo=sudo)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 2, done.stderr
    assert lines[0].startswith("scripts/setup: error: missing system packages: python3-venv git;") and why in lines[0]
    assert "apt-get update && apt-get install -y python3-venv git" in lines[1]
    assert not [c for c in calls if c.startswith("apt-get")], "never reaches apt (nor its lock)"
    assert not (machine.clone / ".venv").exists()


def test_sudo_refusing_on_a_terminal_is_said_plainly(machine) -> None:
    primary, secondary = os.openpty()
    try:
        done, calls = machine(uid=1000, installed=("bubblewrap", "libseccomp2", "python3-venv"), sudo="refused",
                              stdin=secondary, stderr=secondary)
        os.close(secondary)
        secondary = -1
        screen = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    text = screen.decode()
    assert done.returncode == 1
    assert "sudo -v" in calls and not [c for c in calls if c.startswith("apt-get")]
    assert "sudo refused, so they cannot be installed as you" in text
    assert "ask an administrator to run: apt-get update && apt-get install -y git" in text


def test_not_a_clone_is_refused(tmp_path: Path) -> None:
    lone = tmp_path / "scripts"
    lone.mkdir()
    shutil.copy(SETUP, lone / "setup")
    done = subprocess.run(["/bin/sh", str(lone / "setup")], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "from a clone of the sandboxctl repository" in done.stderr


def test_readme_first_command_is_the_setup_and_the_demo() -> None:
    """.ci/run runs the README's first two sh blocks verbatim; they must stay single commands."""
    text = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0].strip("\n") for b in text.split("```sh\n")[1:3]]
    assert blocks[0] == "scripts/setup && .venv/bin/python examples/agent.py"
    assert blocks[1] == ".venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_command 1" in ci and "readme_command 2" in ci
    extracted = subprocess.run(["bash", "-c", ci.split("setup_and_demo=")[0] + 'readme_command 1; readme_command 2'],
                               capture_output=True, text=True, cwd=ROOT / ".ci", timeout=30,
                               env={"PATH": "/usr/bin:/bin"})
    assert extracted.stdout.splitlines() == blocks, extracted.stderr
