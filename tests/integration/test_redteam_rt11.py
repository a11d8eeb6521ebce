"""Red team rt11: the git history check (protect/history.py) reads refs, packed-refs and the index
that the sandbox wrote, in the supervisor, and runs the host's git on them. A hostile command
leaves there what holds the run's end, crashes it, or moves a branch past the check unseen.
Judged from outside: the time `sandboxctl run` takes, its exit code, its stderr and the host's git.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.test_protected_paths import git, repo
from tests.integration.test_redteam_rt10 import COMMIT_PROTECTED


def _timed(sandbox, script: str, timeout: float = 40) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    try:
        result = sandbox.sh(script, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"sandboxctl run still had not ended after {timeout} s")
    return result, time.monotonic() - start


@pytest.mark.parametrize("place", [".git/refs/heads/evil", ".git/ORIG_HEAD", ".git/packed-refs"])
def test_a_fifo_where_a_ref_is_does_not_hold_the_runs_end(sandbox, place: str) -> None:
    """The check opened each ref for reading: a FIFO nobody writes to held the supervisor in open()
    for ever, and a SIGTERM (deferred until run.end) did not end it either."""
    repo(sandbox.workspace, sandbox.home)
    result, took = _timed(sandbox, f"rm -f {place}; mkfifo {place} && echo end")
    assert "end" in result.stdout, result.stderr
    assert result.returncode == 0 and took < 20, (result.returncode, took, result.stderr)
    assert "Traceback" not in result.stderr
    # and the next run's launch reads the same FIFO
    result, took = _timed(sandbox, "echo again")
    assert "again" in result.stdout and result.returncode == 0 and took < 20, result.stderr


def test_refs_nested_past_the_recursion_limit_do_not_crash_the_run(sandbox) -> None:
    """os.walk recursed once per directory: refs/ nested 1100 deep raised RecursionError."""
    repo(sandbox.workspace, sandbox.home)
    deep = "/".join(["d"] * 1100)
    try:
        result, _ = _timed(sandbox, f"mkdir -p .git/refs/{deep} && echo end")
        assert "end" in result.stdout, result.stderr
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        result, _ = _timed(sandbox, "echo again")
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    finally:  # pytest's own rmtree of tmp_path recurses too
        subprocess.run(["rm", "-rf", str(sandbox.workspace / ".git" / "refs" / "d")], check=True)


@pytest.mark.parametrize("spelling", ["upper", "junk", "packed-upper"])
def test_a_branch_moved_with_an_id_git_reads_differently_is_reported(sandbox, tmp_path: Path, spelling: str) -> None:
    """git takes a ref's id in upper case, and ignores what follows it after a space: the check
    took only 40 lower-case hex digits, so a branch moved so went unreported, and the host's
    `git reset --hard` wrote the commit's .envrc."""
    ws = repo(sandbox.workspace, sandbox.home)
    move = {"upper": 'echo "$commit" | tr a-f A-F > .git/refs/heads/master',
            "junk": 'echo "$commit fix" > .git/refs/heads/master',
            "packed-upper": 'rm .git/refs/heads/master; printf "%s refs/heads/master\\n" '
                            '"$(echo $commit | tr a-f A-F)" > .git/packed-refs'}[spelling]
    script = COMMIT_PROTECTED.replace("CANARY", str(tmp_path / "CANARY")) + move + "\necho end"
    result = sandbox.sh(script)
    assert "end" in result.stdout, result.stderr
    git(ws, "reset", "-q", "--hard", home=sandbox.home)
    assert (ws / ".envrc").exists()  # the host's git took the id
    assert f"{ws}/.envrc (in refs/heads/master) was committed or staged" in result.stderr, result.stderr


RENAME_INDEX_ENTRY = r"""
import hashlib, struct, sys
data = open('.git/index', 'rb').read()[:-20]
old, new = sys.argv[1].encode(), sys.argv[2].encode()
out, at = bytearray(data[:12]), 12
for _ in range(struct.unpack('>I', data[8:12])[0]):  # index v2 entries: 62 bytes, the name, 1-8 NULs
    length = struct.unpack('>H', data[at + 60:at + 62])[0] & 0xFFF
    name, size = data[at + 62:at + 62 + length], 62 + length + 8 - (62 + length) % 8
    fixed = bytearray(data[at:at + 62])
    if name == old:
        name = new
        fixed[60:62] = struct.pack('>H', (struct.unpack('>H', fixed[60:62])[0] & 0xF000) | len(new))
    out += fixed + name + b'\0' * (8 - (62 + len(name)) % 8)
    at += size
out += data[at:]
open('.git/index', 'wb').write(bytes(out) + hashlib.sha1(bytes(out)).digest())
"""


def test_an_index_entry_reaching_out_through_dotdot_is_not_read(sandbox, tmp_path: Path) -> None:
    """An index entry `.vscode/../fifo` matches the pathspec `.vscode`: the check read the file it
    names to hash it, a FIFO (held for ever) or, as well, /dev/zero (memory without end)."""
    ws = repo(sandbox.workspace, sandbox.home)
    (ws / ".vscode").mkdir()
    (ws / ".vscode" / "a").write_text("x\n")
    (ws / "rename.py").write_text(RENAME_INDEX_ENTRY)
    git(ws, "add", ".vscode/a", home=sandbox.home)
    git(ws, "commit", "-qm", "vscode", home=sandbox.home)
    result, took = _timed(sandbox, "mkfifo fifo && python3 rename.py .vscode/a .vscode/../fifo && git ls-files && "
                          "echo end")
    assert "end" in result.stdout and ".vscode/../fifo" in result.stdout, result.stderr
    assert result.returncode == 0 and took < 20, (took, result.stderr)
    assert f"{ws}/.vscode/../fifo (in the index) was committed or staged" in result.stderr, result.stderr


def _rebase_state(todo: str) -> str:
    return ("h=$(git rev-parse HEAD); mkdir .git/rebase-merge && echo $h > .git/rebase-merge/onto && "
            "echo refs/heads/master > .git/rebase-merge/head-name && touch .git/rebase-merge/interactive && "
            f"echo \"${{orig:-$h}}\" > .git/rebase-merge/orig-head && "
            f"printf '{todo}' > .git/rebase-merge/git-rebase-todo")


def test_a_rebase_todo_left_with_an_exec_line_is_reported(sandbox, tmp_path: Path) -> None:
    """The rebase state is git's normal work, so writable: a todo the sandbox leaves with an exec
    line runs its program on the host at the user's `git rebase --continue` (the prompt shows a
    rebase in progress). The run must say so."""
    ws = repo(sandbox.workspace, sandbox.home)
    canary = tmp_path / "CANARY"
    result = sandbox.sh(_rebase_state(f"exec touch {canary}\\n") + " && echo end")
    assert "end" in result.stdout, result.stderr
    git(ws, "rebase", "--continue", home=sandbox.home, check=False)
    assert canary.exists()  # what the host's git does with it
    assert f"the git history of {ws}/.git (rebase-merge/git-rebase-todo was left holding 1 commands" in result.stderr
    assert "1 of them exec lines" in result.stderr, result.stderr


@pytest.mark.parametrize("where", ["orig-head", "todo"])
def test_a_commit_left_in_a_rebase_state_is_reported(sandbox, tmp_path: Path, where: str) -> None:
    """`git rebase --abort` checks out rebase-merge/orig-head, and `--continue` picks what the todo
    names: a commit bringing .envrc in, left there, is written by the host's git."""
    ws = repo(sandbox.workspace, sandbox.home)
    state = _rebase_state("pick $commit x\\n" if where == "todo" else "")
    state = state.replace("$commit", "'\"$commit\"'")
    script = (COMMIT_PROTECTED.replace("CANARY", str(tmp_path / "CANARY")) +
              ("orig=$commit\n" if where == "orig-head" else "") + state + "\necho end")
    result = sandbox.sh(script)
    assert "end" in result.stdout, result.stderr
    git(ws, "rebase", "--abort" if where == "orig-head" else "--continue", home=sandbox.home, check=False)
    assert (ws / ".envrc").exists()  # the host's git wrote it
    name = "rebase-merge/orig-head" if where == "orig-head" else "rebase-merge/git-rebase-todo"
    assert f"{ws}/.envrc (in {name}) was committed or staged" in result.stderr, result.stderr


def test_no_git_on_the_supervisors_path_is_said(sandbox, tmp_path: Path) -> None:
    """Without a git program to list what a moved branch brings in, the check said nothing at all."""
    import shutil

    ws = repo(sandbox.workspace, sandbox.home)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("bwrap", "python3"):
        (bin_dir / program).symlink_to(shutil.which(program))
    script = COMMIT_PROTECTED.replace("CANARY", str(tmp_path / "CANARY")) + (
        "git update-ref refs/heads/master $commit\necho end")
    result = sandbox.sh(script.replace("set -e\n", "set -e\nexport PATH=/usr/bin:/bin\n"), env={"PATH": str(bin_dir)})
    assert "end" in result.stdout, result.stderr
    assert f"the git history of {ws}/.git (no git program" in result.stderr, result.stderr


def _many_under_claude(count: int) -> str:
    return ("export GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@t GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@t\n"
            "blob=$(echo x | git hash-object -w --stdin)\n"
            f"sub=$(python3 -c \"import sys; [sys.stdout.write('100644 blob $blob\\tf%07d\\n' % i) "
            f"for i in range({count})]\" | git mktree)\n"
            "tree=$(printf '040000 tree %s\\t.claude\\n' $sub | git mktree)\n"
            "git update-ref refs/heads/flood $(git commit-tree $tree -m x)\necho end")


@pytest.mark.parametrize("count", [150, 120_000])
def test_a_commit_with_very_many_protected_paths_does_not_flood_stderr_or_the_log(sandbox, count: int) -> None:
    """One tree of 200 000 entries under .claude/ (six seconds of the sandbox's git) made 200 000
    lines on stderr (53 MB) and as many protect records (63 MB of log), all held in memory first:
    a hundred are said, then how many more; past 4 MiB of git's output, that the rest was not read."""
    ws = repo(sandbox.workspace, sandbox.home)
    result, _ = _timed(sandbox, _many_under_claude(count), timeout=120)
    assert "end" in result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) <= 101 and len(result.stderr) < 64 << 10, (len(lines), lines[-3:])
    protect = [r for r in sandbox.records() if r.get("event") == "protect"]
    assert len(protect) <= 101
    if count == 150:
        assert sum("was committed or staged" in line for line in lines) == 100
        assert f"{ws} (50 more protected paths its commits or index bring in, not listed" in result.stderr
    else:
        assert f"the git history of {ws}/.git (its history lists more than 4 MiB" in result.stderr, lines


def test_an_index_made_a_fifo_does_not_hide_a_moved_branch(sandbox, tmp_path: Path) -> None:
    """git ls-files on an index that is a FIFO waits until its call's 5 s run out: that ended the
    whole check, so the branch moved to a commit bringing .envrc in, with 5 s of the budget left,
    was never read. The refs are read with what is left."""
    ws = repo(sandbox.workspace, sandbox.home)
    script = COMMIT_PROTECTED.replace("CANARY", str(tmp_path / "CANARY")) + (
        "git update-ref refs/heads/master $commit\nrm .git/index && mkfifo .git/index\necho end")
    result, took = _timed(sandbox, script)
    assert "end" in result.stdout, result.stderr
    assert took < 15, took
    assert f"{ws}/.envrc (in refs/heads/master) was committed or staged" in result.stderr, result.stderr
    assert f"the git history of {ws}/.git (its index: one git call on it took more than 5 s" in result.stderr


def test_the_run_after_one_that_made_too_many_refs_is_not_passed_over(sandbox, tmp_path: Path) -> None:
    """Too many refs at launch to record: the repository was left out of the check, silently, so
    the run after the one that made 20 001 refs moved a branch to a commit bringing .envrc in unsaid."""
    ws = repo(sandbox.workspace, sandbox.home)
    many = ('python3 -c "import sys; c = sys.argv[1]; f = open(\'.git/packed-refs\', \'w\'); '
            '[f.write(f\'{c} refs/tags/t{i:06d}\\n\') for i in range(20001)]" $(git rev-parse HEAD); echo end')
    first = sandbox.sh(many)
    assert "end" in first.stdout and "more than 20000 refs" in first.stderr, first.stderr
    script = COMMIT_PROTECTED.replace("CANARY", str(tmp_path / "CANARY")) + (
        "git update-ref refs/heads/master $commit\necho end")
    result = sandbox.sh(script)
    assert "end" in result.stdout, result.stderr
    git(ws, "reset", "-q", "--hard", home=sandbox.home)
    assert (ws / ".envrc").exists()
    assert f"the git history of {ws}/.git (more than 20000 refs or 64 MiB of packed-refs as the run started" \
        in result.stderr, result.stderr


@pytest.mark.parametrize("spelling", [".ENVRC", ".Claude/settings.json"])
def test_a_protected_name_committed_in_another_case_is_reported(sandbox, tmp_path: Path, spelling: str) -> None:
    """The wall takes every spelling a folding makes a protected name as that name (a case-insensitive
    directory makes `.ENVRC` the file direnv runs); the history check listed the exact names only."""
    ws = repo(sandbox.workspace, sandbox.home)
    script = COMMIT_PROTECTED.replace("CANARY", str(tmp_path / "CANARY")).replace(
        ",.envrc", f",{spelling}").replace(",.claude/settings.json", ",README2")
    for where in ("the index", "refs/heads/master"):
        run = script + ("git update-ref refs/heads/master $commit\n" if where != "the index" else
                        f"unset GIT_INDEX_FILE; git update-index --add --cacheinfo 100644,$envrc,{spelling}\n")
        result = sandbox.sh(run + "echo end")
        assert "end" in result.stdout, result.stderr
        assert f"{ws}/{spelling} (in {where}) was committed or staged" in result.stderr, result.stderr


def test_an_am_session_left_with_patches_is_reported(sandbox) -> None:
    """`git am --continue` or `--skip` applies what rebase-apply/ holds: a patch the sandbox left
    there that adds .envrc is written by the host's git (seen with git 2.39: a second patch after a
    conflicting one, `git am --skip`). The run must say so."""
    ws = repo(sandbox.workspace, sandbox.home)
    (ws / "b").write_text("b\n")
    git(ws, "add", "b", home=sandbox.home)
    git(ws, "commit", "-qm", "b", home=sandbox.home)
    script = ("export GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@t GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@t\n"
              "echo 'touch CANARY' > x.envrc && echo evil > b && git add x.envrc b && git commit -qm evil && "
              "git format-patch -q -1 -o /tmp/p && sed -i 's/x\\.envrc/.envrc/g' /tmp/p/*.patch && "
              "git reset -q --hard HEAD~1 && echo conflict > b && git commit -qam c && "
              "(git am /tmp/p/*.patch >/dev/null 2>&1; ls .git/rebase-apply/0001) && echo end")
    result = sandbox.sh(script)
    assert "end" in result.stdout, result.stderr
    assert f"the git history of {ws}/.git (rebase-apply was left holding patches" in result.stderr, result.stderr
