"""policy suggest, end to end: a run is denied; the suggested policy lets the same run through,
except what is never granted (issue 19, item 7). Judged from the host: files, the server, the log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

AGENT = """
import sys, urllib.request
outside, port = sys.argv[1], sys.argv[2]
failed = []
for name, mode in (("existing.txt", "w"), ("new1.txt", "w"), ("new2.txt", "w")):
    try:
        with open(f"{outside}/{name}", mode) as handle:
            handle.write("written in the sandbox\\n")
    except OSError as exc:
        failed.append(f"{name}: {exc.strerror}")
try:
    urllib.request.urlopen(f"http://127.0.0.2:{port}/hello.txt", timeout=10).read()
except OSError as exc:
    failed.append(f"http: {exc}")
try:  # protected (it would run git commands later, outside): never suggested, so this stays denied
    with open(sys.argv[3], "a") as handle:
        handle.write("[alias]\\n  x = !evil\\n")
except OSError:
    pass
print("failed:", failed)
sys.exit(1 if failed else 0)
"""


def _cli(sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandboxctl", *args], cwd=sandbox.workspace, env=sandbox.env(),
                          capture_output=True, text=True, timeout=60)


def _denials(sandbox, run: str) -> list[dict]:
    return [r for r in sandbox.records() if r.get("run") == run and r.get("decision") == "deny"]


def test_the_suggested_policy_lets_the_same_run_through(sandbox, tmp_path: Path, web_elsewhere) -> None:
    port, _root = web_elsewhere
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "existing.txt").write_text("before\n")
    gitconfig = sandbox.home / ".gitconfig"
    gitconfig.write_text("[user]\n  name = ann\n")
    command = ["--allow-read", str(outside), "--", "python3", "-c", AGENT, str(outside), str(port), str(gitconfig)]

    first = subprocess.run([sys.executable, "-m", "sandboxctl", "run", "-p", "default", *command],
                           cwd=sandbox.workspace, env=sandbox.env(), capture_output=True, text=True, timeout=120)
    assert first.returncode == 1, first.stdout + first.stderr
    run = next(r["run"] for r in reversed(sandbox.records()) if r["event"] == "run.start")
    assert first.stderr.rstrip().splitlines()[-1] == \
        f"sandboxctl: the least grants for these denials: sandboxctl policy suggest --run {run}"
    assert (outside / "existing.txt").read_text() == "before\n"

    suggested = tmp_path / "policies" / "suggested.yaml"
    suggested.parent.mkdir()
    made = _cli(sandbox, "policy", "suggest", "--run", run[:12], "-o", str(suggested))
    assert made.returncode == 0, made.stderr
    text = suggested.read_text()
    data = yaml.safe_load(text)
    assert data["extends"] == "default"
    assert data["filesystem"]["write"] == [str(outside)]  # several new files there: the directory
    assert data["network"]["allow"] == [f"127.0.0.2:{port}"]
    assert ".gitconfig" not in str(data) and "protected" in text.split("# Not suggested", 1)[1]
    assert _cli(sandbox, "policy", "validate", str(suggested)).returncode == 0

    again = subprocess.run([sys.executable, "-m", "sandboxctl", "run", "-p", str(suggested), *command],
                           cwd=sandbox.workspace, env=sandbox.env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    second = next(r["run"] for r in reversed(sandbox.records()) if r["event"] == "run.start")
    assert [d["path"] for d in _denials(sandbox, second)] == [str(gitconfig)]  # only what is never granted
    assert (outside / "existing.txt").read_text() == "written in the sandbox\n"
    assert (outside / "new1.txt").exists() and (outside / "new2.txt").exists()
    assert "alias" not in gitconfig.read_text()


def test_a_run_without_denials_has_nothing_to_suggest(sandbox) -> None:
    assert sandbox.run("--", "true").returncode == 0
    run = next(r["run"] for r in sandbox.records() if r["event"] == "run.start")
    done = _cli(sandbox, "policy", "suggest", "--run", run)
    assert done.returncode == 0 and done.stdout == ""
    assert "was denied nothing" in done.stderr


def test_an_unknown_run_is_one_line_and_a_hint(sandbox) -> None:
    assert sandbox.run("--", "true").returncode == 0
    done = _cli(sandbox, "policy", "suggest", "--run", "nope")
    assert done.returncode == 125 and done.stderr.splitlines()[0] == "sandboxctl: error: no run 'nope' in " \
        f"{sandbox.log_path}"


def test_a_policy_file_is_extended_relative_to_the_suggestion(sandbox, tmp_path: Path, web_elsewhere) -> None:
    port, _root = web_elsewhere
    mine = sandbox.write_policy("mine.yaml", "version: 1\nname: mine\nextends: default\n")
    done = sandbox.run("--", "python3", "-c", f"import urllib.request as u; u.urlopen('http://127.0.0.2:{port}/')",
                       policy=str(mine))
    assert done.returncode != 0
    run = next(r["run"] for r in reversed(sandbox.records()) if r["event"] == "run.start")
    out = tmp_path / "a" / "b" / "s.yaml"
    out.parent.mkdir(parents=True)
    assert _cli(sandbox, "policy", "suggest", "--run", run, "-o", str(out)).returncode == 0
    data = yaml.safe_load(out.read_text())
    assert (out.parent / data["extends"]).resolve() == mine.resolve() and data["name"] == "mine-suggested"
    assert sandbox.run("--", "python3", "-c", f"import urllib.request as u; u.urlopen('http://127.0.0.2:{port}/')",
                       policy=str(out)).returncode == 0
