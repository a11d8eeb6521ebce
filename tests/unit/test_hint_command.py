"""Hints name sandboxctl the way the user can run it: `.venv/bin/sandboxctl` or `python3 -m sandboxctl`
when no `sandboxctl` of this install is on PATH, and the bare name when it is. Shown inert."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxctl.cli import output

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "sandboxctl"
NO_SANDBOXCTL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def run(argv: list[str], path: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PATH"} | {"PATH": path}
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=60,
                          stdin=subprocess.DEVNULL)


def hint(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 125, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[1].startswith("  hint: "), result.stderr
    return lines[1]


def test_python_m_is_named_as_typed(home: Path) -> None:
    assert shutil.which("sandboxctl", path=NO_SANDBOXCTL_PATH) is None
    line = hint(run([sys.executable, "-m", "sandboxctl", "policy"], NO_SANDBOXCTL_PATH, ROOT))
    assert f"see `{sys.executable} -m sandboxctl policy --help`" in line, line


def test_a_venv_script_off_path_is_named_by_its_path(home: Path) -> None:
    if not SCRIPT.is_file():
        pytest.skip("no console script beside this python (scripts/setup writes one)")
    relative = os.path.relpath(SCRIPT, ROOT)
    line = hint(run([relative, "policy"], NO_SANDBOXCTL_PATH, ROOT))
    assert f"see `{relative} policy --help`" in line, line
    line = hint(run([relative, "run"], NO_SANDBOXCTL_PATH, ROOT))
    assert line == f"  hint: usage: {relative} run [OPTIONS] -- COMMAND [ARG...]"


def test_on_path_it_is_the_bare_name(home: Path) -> None:
    if not SCRIPT.is_file():
        pytest.skip("no console script beside this python (scripts/setup writes one)")
    line = hint(run([str(SCRIPT), "policy"], f"{SCRIPT.parent}:{NO_SANDBOXCTL_PATH}", ROOT))
    assert "see `sandboxctl policy --help`" in line, line


def test_a_program_path_with_escapes_is_quoted_and_inert(tmp_path: Path, home: Path) -> None:
    if not SCRIPT.is_file():
        pytest.skip("no console script beside this python (scripts/setup writes one)")
    odd = tmp_path / "b in\x1b]0;x\x07" / "sandboxctl"
    odd.parent.mkdir()
    shutil.copy2(SCRIPT, odd)
    os.chmod(tmp_path, 0o755)
    os.chmod(odd.parent, 0o755)
    result = run([str(odd), "policy"], NO_SANDBOXCTL_PATH, tmp_path)
    line = hint(result)
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "b in\\x1b]0;x\\x07/sandboxctl' policy --help`" in line, line


@pytest.mark.parametrize(("orig", "argv", "path", "expected"), [
    (["python3", "-m", "sandboxctl", "log"], ["/x/sandboxctl/__main__.py"], None, sys.executable + " -m sandboxctl"),
    ([sys.executable, "-I", "-m", "sandboxctl"], ["/x/__main__.py"], None, sys.executable + " -I -m sandboxctl"),
    ([sys.executable, "-IS", "a b/sandboxctl"], ["a b/sandboxctl"], NO_SANDBOXCTL_PATH, "'a b/sandboxctl'"),
    (["python3", "-c", "x"], ["-c"], None, "sandboxctl"),  # the library: no program to name
])
def test_invocation(orig: list[str], argv: list[str], path: str | None, expected: str,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    if path is not None:
        monkeypatch.setenv("PATH", path)
    else:  # python3 on PATH is not this venv's python: named by its absolute path
        monkeypatch.setenv("PATH", NO_SANDBOXCTL_PATH)
    assert output._invocation(orig, argv) == expected


@pytest.mark.parametrize(("name", "text", "expected"), [
    (".venv/bin/sandboxctl", "run `sandboxctl doctor`", "run `.venv/bin/sandboxctl doctor`"),
    (".venv/bin/sandboxctl", "run sandboxctl doctor again", "run .venv/bin/sandboxctl doctor again"),
    ("py -m sandboxctl", "(see: sandboxctl log --run r1)", "(see: py -m sandboxctl log --run r1)"),
    ("py -m sandboxctl", "py -m sandboxctl apply r1", "py -m sandboxctl apply r1"),  # once
    ("py -m sandboxctl", "/ws/sandboxctl run/x, sandboxctl runs, sandboxctl: x, as sandboxctl uses",
     "/ws/sandboxctl run/x, sandboxctl runs, sandboxctl: x, as sandboxctl uses"),  # not commands of ours
])
def test_named(name: str, text: str, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output, "_invoked", name)
    assert output.named(text) == expected
    assert output.named(output.named(text)) == expected
