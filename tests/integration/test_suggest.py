"""policy suggest, end to end: a run is denied; the suggested policy lets the same run through,
except what is never granted (issue 19, item 7). Judged from the host: files, the server, the log."""

from __future__ import annotations

import os
import shlex
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
        f"sandboxctl: the least grants for these denials: {shlex.quote(sys.executable)} -m sandboxctl policy suggest " \
        f"--run {run}"  # named as it was run (python -m sandboxctl), so the line can be pasted as it is
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


NAMES = """
import sys
outside = sys.argv[1].encode()
for name in sys.argv[2:]:
    try:
        with open(outside + b"/" + bytes.fromhex(name), "a") as handle:
            handle.write("written in the sandbox\\n")
        print("wrote", name)
    except OSError:
        print("denied", name)
"""


def _shown_safely(text: str) -> bool:
    """Nothing a terminal acts on, or draws as nothing: controls, format characters, surrogates."""
    import unicodedata

    return all(c == "\n" or unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp") for c in text)


def test_names_no_policy_can_hold_are_refused_and_the_rest_granted_exactly(sandbox, tmp_path: Path) -> None:
    """A file named with a byte that is not UTF-8 (the log holds it as a surrogate escape), one with
    a wildcard, one past U+FFFF: the suggestion is YAML any reader takes (libyaml refuses a
    surrogate escape), the loader accepts it, and it grants the one a policy can name, exactly."""
    outside = tmp_path / "outside"
    outside.mkdir()
    names = [b"in\xff\x1b[2J.txt", b"report[1].txt", "note \U0001f600.txt".encode()]
    for name in names:
        (Path(os.fsdecode(bytes(outside))) / os.fsdecode(name)).write_text("before\n")
    command = ["--allow-read", str(outside), "--", "python3", "-c", NAMES, str(outside), *[n.hex() for n in names]]
    first = subprocess.run([sys.executable, "-m", "sandboxctl", "run", "-q", "-p", "default", *command],
                           cwd=sandbox.workspace, env=sandbox.env(), capture_output=True, text=True, timeout=120)
    assert first.stdout.count("denied") == 3, first.stdout + first.stderr
    run = next(r["run"] for r in reversed(sandbox.records()) if r["event"] == "run.start")

    shown = _cli(sandbox, "policy", "suggest", "--run", run)
    assert shown.returncode == 0, shown.stderr
    assert _shown_safely(shown.stdout) and _shown_safely(shown.stderr)
    refused = shown.stdout.split("# Not suggested", 1)[1]
    assert "in\\xff\\x1b[2J.txt" in refused and "not UTF-8" in refused and "report[1].txt" in refused
    for loader in (yaml.SafeLoader, *([yaml.CSafeLoader] if yaml.__with_libyaml__ else [])):
        data = yaml.load(shown.stdout, Loader=loader)
        assert data["filesystem"]["write"] == [str(outside / "note \U0001f600.txt")]

    suggested = tmp_path / "suggested.yaml"
    assert _cli(sandbox, "policy", "suggest", "--run", run, "-o", str(suggested)).returncode == 0
    assert _cli(sandbox, "policy", "validate", str(suggested)).returncode == 0
    again = subprocess.run([sys.executable, "-m", "sandboxctl", "run", "-q", "-p", str(suggested), *command],
                           cwd=sandbox.workspace, env=sandbox.env(), capture_output=True, text=True, timeout=120)
    assert again.stdout.count("denied") == 2 and f"wrote {names[2].hex()}" in again.stdout, again.stdout
    assert (outside / "note \U0001f600.txt").read_text() == "before\nwritten in the sandbox\n"
    assert (Path(os.fsdecode(bytes(outside))) / os.fsdecode(names[0])).read_text() == "before\n"


def test_a_policy_file_whose_path_is_not_text_cannot_be_extended(sandbox, tmp_path: Path) -> None:
    mine = Path(os.fsdecode(bytes(tmp_path) + b"/mine\xff.yaml"))
    mine.write_text("version: 1\nname: mine\nextends: default\n")
    assert sandbox.run("--", "touch", "/etc/sandboxctl-suggest-probe", policy=str(mine)).returncode != 0
    run = next(r["run"] for r in reversed(sandbox.records()) if r["event"] == "run.start")
    done = _cli(sandbox, "policy", "suggest", "--run", run)
    assert done.returncode == 125 and done.stdout == "", done.stdout
    [error, hint] = done.stderr.splitlines()
    assert error.startswith("sandboxctl: error: the suggestion cannot extend ") and "mine\\xff.yaml" in error
    assert "not UTF-8 text" in error and hint.startswith("  hint: rename the policy file")
