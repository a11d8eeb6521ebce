"""What a newcomer's mistakes look like: one line and a hint, a dry-run that survives a pipe, a URL
where a host belongs. (Issue 19, item 6.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxctl.units import parse_host_pattern


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed CLI with stdout and stderr on pipes (not terminals), as in CI or `| less`."""
    return subprocess.run([sys.executable, "-m", "sandboxctl", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args", [["run"], ["-q", "run"], ["run", "-p", "ci"], ["run", "--"]])
def test_run_without_a_command_is_one_line_and_a_hint(args: list[str], home: Path) -> None:
    result = cli(*args)
    assert result.returncode == 125
    lines = result.stderr.splitlines()
    assert lines == ["sandboxctl: error: no command given",
                     f"  hint: usage: {sys.executable} -m sandboxctl run [OPTIONS] -- COMMAND [ARG...]"], result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("args", "commands"), [([], "run, "), (["policy"], "list, show"), (["export"], "k8s")])
def test_a_group_without_its_command_names_the_commands(args: list[str], commands: str, home: Path) -> None:
    result = cli(*args)
    assert result.returncode == 125
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0] == "sandboxctl: error: no command given", result.stderr
    assert commands in lines[1] and "--help" in lines[1]
    assert "Usage:" not in result.stderr


def test_run_help_is_still_the_full_help(home: Path) -> None:
    result = cli("run", "--help")
    assert result.returncode == 0 and "--allow-write" in result.stdout


def test_dry_run_through_a_pipe_is_complete_and_inert(tmp_path: Path, home: Path) -> None:
    """Every mount target and Landlock path whole (no rich cut `…/sand…`); escape sequences in a path inert."""
    deep = tmp_path / ("a-directory-name-long-enough-to-be-cut-by-an-80-column-table-" * 2) / "proj\x1b[31mred"
    deep.mkdir(parents=True)
    result = cli("run", "--dry-run", "-w", str(deep), "--", "printf", "x\x1b]0;title\x07")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "\x1b" not in out and "\x07" not in out
    shown = str(deep).replace("\x1b", "\\x1b")
    assert f"  rw        {shown}: workspace" in out.splitlines()
    data = json.loads(cli("run", "--dry-run", "--json", "-w", str(deep), "--", "true").stdout)
    lines = out.splitlines()
    for mount in data["mounts"]:  # the same plan as JSON: every target appears whole in the text
        target = mount["target"].replace("\x1b", "\\x1b")
        shown_mount = (f" {target}: ", f" {target} from ")
        assert any(line.startswith(f"  {mount['kind']} ") and any(s in line for s in shown_mount)
                   for line in lines), target
    for rule in data["landlock"]["paths"]:
        assert any(line.startswith(f"  {rule['path'].replace(chr(27), chr(92) + 'x1b')}: ") for line in lines)
    assert len(lines) < 250  # compact: one item per line, no wrapped table cells


def test_dry_run_into_head_is_not_an_internal_error(home: Path, tmp_path: Path) -> None:
    result = subprocess.run(f"{sys.executable} -m sandboxctl run --dry-run -- true | head -1", shell=True,
                            capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.stdout.startswith("plan for run ")
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("url", "suggestion"), [
    ("https://pypi.org", "pypi.org:443"),
    ("http://example.com:8080/simple/", "example.com:8080"),
    ("HTTPS://files.pythonhosted.org/packages", "files.pythonhosted.org:443"),
    ("https://[2001:db8::1]:8443/x", "[2001:db8::1]:8443"),
    ("https://user:pw@git.example.org/", "git.example.org:443"),
])
def test_a_url_is_named_and_the_destination_suggested(url: str, suggestion: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_host_pattern(url)
    assert str(info.value) == f"{url!r}: a URL, not a host pattern; write {suggestion}"
    parse_host_pattern(suggestion)  # what it suggests is valid


def test_a_url_with_escape_sequences_is_not_echoed_raw() -> None:
    with pytest.raises(ValueError) as info:
        parse_host_pattern("https://evil\x1b[2J.example/")
    assert "\x1b" not in str(info.value).replace(repr("https://evil\x1b[2J.example/"), "")
    assert "write host:port" in str(info.value)


def test_url_in_a_policy_is_reported_once_with_the_fix(tmp_path: Path, home: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text('version: 1\nextends: default\nnetwork:\n  allow: ["https://pypi.org"]\n')
    result = cli("policy", "validate", str(policy))
    assert result.returncode == 125
    assert result.stderr.count("https://pypi.org") == 1, result.stderr
    assert "a URL, not a host pattern; write pypi.org:443" in result.stderr
    assert "port must be" not in result.stderr
    run = cli("run", "-p", str(policy), "--", "true", cwd=tmp_path)
    assert run.returncode == 125 and run.stderr.count("a URL") == 1, run.stderr
    flag = cli("run", "--allow-net", "https://pypi.org/simple", "--", "true", cwd=tmp_path)
    assert flag.returncode == 125 and "write pypi.org:443" in flag.stderr
