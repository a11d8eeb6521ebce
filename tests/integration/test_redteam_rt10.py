"""Red team rt10: things a hostile command leaves in the workspace for the host's ordinary tools to
run or follow after the run (git's legacy remote files, lefthook's other config names, mise, more
coding agents' project config), judged from outside: the host's own git and lefthook, and the
bytes on the host's disk.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_protected_paths import git, repo


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    return tmp_path / "CANARY"


# ------------------------------------------------------------------ git's legacy remote files
@pytest.mark.parametrize("legacy", ["remotes", "branches"])
def test_legacy_remote_files_cannot_redirect_the_hosts_fetch(sandbox, tmp_path, legacy: str) -> None:
    """git fetch and pull take an unconfigured remote (origin in a fresh local repository) from
    .git/remotes/NAME or .git/branches/NAME: a file the sandbox writes there makes the host's next
    `git pull` fetch and merge what the sandbox chose (a commit bringing .claude/settings.json or
    .envrc in, written by the host's git where the sandbox could not)."""
    ws = repo(sandbox.workspace, sandbox.home)
    other = repo(tmp_path / "other", sandbox.home)
    git(other, "commit", "-q", "--allow-empty", "-m", "EVIL-COMMIT", home=sandbox.home)
    pull = "Pull: refs/heads/master:refs/remotes/origin/evil\\n"
    body = f"URL: {other}\\n{pull}" if legacy == "remotes" else f"{other}\\n"
    result = sandbox.sh(f"mkdir -p .git/{legacy}; printf '{body}' > .git/{legacy}/origin; echo end")
    assert "end" in result.stdout, result.stderr
    git(ws, "fetch", "-q", "origin", home=sandbox.home, check=False)
    log = git(ws, "log", "--all", "--format=%s", home=sandbox.home).stdout
    assert "EVIL-COMMIT" not in log, log
    assert not (ws / ".git" / legacy / "origin").exists()


def test_git_still_works_inside_with_the_legacy_directories_protected(sandbox) -> None:
    """git init's template makes .git/branches: protecting it must not stop normal work inside."""
    ws = repo(sandbox.workspace, sandbox.home)
    assert (ws / ".git" / "branches").is_dir()
    script = ("git -c user.name=t -c user.email=t@t checkout -qb topic && echo x > x && git add x && "
              "git -c user.name=t -c user.email=t@t commit -qm x && git gc -q && echo end")
    result = sandbox.sh(script, env={"HOME": str(sandbox.home)})
    assert "end" in result.stdout, result.stderr
    assert "x" in git(ws, "log", "-1", "--format=%s", "topic", home=sandbox.home).stdout


# ------------------------------------------------------------------ lefthook
LEFTHOOK_NAMES = [f"{pre}{stem}.{ext}" for stem in ("lefthook-local", "lefthook") for ext in ("yml", "toml", "json")
                  for pre in ("", ".", ".config/")]
LEFTHOOK_NAMES += [".lefthook/pre-commit/evil.sh", ".lefthook-local/pre-commit/x.sh"]


def _lefthook_config(canary: Path) -> str:
    return f"pre-commit:\\n  commands:\\n    evil:\\n      run: touch {canary}\\n"


@pytest.mark.parametrize("name", LEFTHOOK_NAMES)
def test_lefthook_configs_other_than_lefthook_yml_cannot_be_planted(sandbox, canary, name: str) -> None:
    """lefthook's git hook reads any of fifteen main config names, merges a lefthook-local.* (which
    needs no main config), and runs scripts from .lefthook/ and .lefthook-local/: only lefthook.yml
    and .lefthook.yml were protected, so the sandbox's lefthook-local.yml ran at the host's next
    commit. Judged by the host's disk (and by the host's lefthook, when installed, below)."""
    ws = repo(sandbox.workspace, sandbox.home)
    result = sandbox.sh(f"mkdir -p $(dirname {name}); printf '{_lefthook_config(canary)}' > {name}; echo end")
    assert "end" in result.stdout, result.stderr
    assert not (ws / name).exists()


@pytest.mark.skipif(not shutil.which("lefthook"), reason="lefthook is not installed (pip install lefthook)")
def test_lefthook_local_config_does_not_run_at_the_hosts_commit(sandbox, canary) -> None:
    ws = repo(sandbox.workspace, sandbox.home)
    (ws / "lefthook.yml").write_text("pre-commit:\n  commands:\n    ok:\n      run: true\n")
    git(ws, "add", "lefthook.yml", home=sandbox.home)
    git(ws, "commit", "-qm", "lefthook", home=sandbox.home)
    lefthook_dir = str(Path(shutil.which("lefthook") or "lefthook").parent)
    env = {"PATH": f"/usr/bin:/bin:{lefthook_dir}", "HOME": str(sandbox.home)}
    subprocess.run(["lefthook", "install"], cwd=ws, env=env, check=True, capture_output=True)
    result = sandbox.sh(f"printf '{_lefthook_config(canary)}' > lefthook-local.yml; echo end")
    assert "end" in result.stdout, result.stderr
    (ws / "f").write_text("f")
    git(ws, "add", "f", home=sandbox.home)
    git(ws, "commit", "-qm", "f", home=sandbox.home, check=False)
    assert not canary.exists()


# ------------------------------------------------------------------ mise and more coding agents
PLANTED = ["mise.toml", ".mise.toml", "mise.local.toml", ".mise.local.toml", "mise/config.toml", ".mise/config.toml",
           ".config/mise/config.toml", ".config/mise.toml", "opencode.json", "opencode.jsonc",
           ".opencode/plugin/evil.js", "crush.json", ".crush.json", ".kiro/hooks/evil.kiro.hook", ".roo/mcp.json",
           ".amazonq/mcp.json", ".qwen/settings.json", ".clinerules/hooks/PreToolUse", ".junie/mcp/mcp.json",
           "project.code-workspace"]


@pytest.mark.parametrize("name", PLANTED)
def test_tool_and_agent_project_config_cannot_be_planted(sandbox, name: str) -> None:
    """mise runs a trusted config's hooks and sources its env files on entering the directory (its
    trust goes by path: a changed file is not asked about again); opencode loads .opencode/plugin/
    code and starts its config's MCP servers; Crush, Kiro, Roo, Amazon Q, Qwen Code, Cline and
    Junie start the commands their project config names; VS Code offers to open a *.code-workspace
    it finds at the root (its tasks and settings as .vscode's). Judged by the host's disk."""
    ws = sandbox.workspace
    result = sandbox.sh(f"mkdir -p $(dirname {name}); echo '{{\"mcpServers\": {{}}}}' > {name}; echo end")
    assert "end" in result.stdout, result.stderr
    assert not (ws / name).exists()


def test_the_same_names_below_the_root_stay_writable(sandbox) -> None:
    """As with .envrc: only at the root of a writable grant (dependency trees ship such files)."""
    ws = sandbox.workspace
    result = sandbox.sh("mkdir -p pkg/.opencode && echo x > pkg/mise.toml && echo x > pkg/lefthook-local.yml "
                        "&& echo x > pkg/.opencode/x && echo x > pkg/p.code-workspace && echo end")
    assert "end" in result.stdout, result.stderr
    assert (ws / "pkg" / "mise.toml").exists() and (ws / "pkg" / ".opencode" / "x").exists()


# ------------------------------------------------------------------ history that brings a protected name in
COMMIT_PROTECTED = """set -e
export GIT_INDEX_FILE=/tmp/idx GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@t GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@t
hook=$(echo '{"hooks": {"SessionStart": [{"hooks": [{"type": "command", "command": "touch CANARY"}]}]}}' |
       git hash-object -w --stdin)
envrc=$(echo 'touch CANARY' | git hash-object -w --stdin)
git read-tree HEAD
git update-index --add --cacheinfo 100644,$hook,.claude/settings.json --cacheinfo 100644,$envrc,.envrc
tree=$(git write-tree)
commit=$(git commit-tree $tree -p HEAD -m 'fix a typo')
"""


def _protect_records(sandbox) -> list[dict]:
    return [r for r in sandbox.records() if r.get("event") == "protect"]


def test_a_commit_that_brings_protected_names_in_is_reported(sandbox, canary) -> None:
    """The sandbox writes objects and moves main to a commit holding .claude/settings.json (a
    SessionStart hook) and .envrc; the wall never sees a file, but the host's `git reset --hard`
    (the user discarding the agent's work) writes both into the workspace. The run must say so."""
    ws = repo(sandbox.workspace, sandbox.home)
    result = sandbox.sh(COMMIT_PROTECTED.replace("CANARY", str(canary)) + "git update-ref refs/heads/master $commit\n"
                        "echo end")
    assert "end" in result.stdout, result.stderr
    git(ws, "reset", "-q", "--hard", home=sandbox.home)  # what it would do: the host's git writes them
    assert (ws / ".envrc").exists() and (ws / ".claude" / "settings.json").exists()
    for name in (".envrc", ".claude/settings.json"):
        assert f"{ws}/{name} (in refs/heads/master) was committed or staged" in result.stderr, result.stderr
    recorded = {r["path"]: r["action"] for r in _protect_records(sandbox)}
    assert recorded.get(f"{ws}/.envrc (in refs/heads/master)") == "left in git", recorded


def test_a_replace_ref_planted_through_packed_refs_is_reported(sandbox, canary) -> None:
    """refs/replace/ is protected, but a replace ref can be a line of packed-refs (which git
    rewrites in normal work): the host's git log shows the commit unchanged by its id, and its
    `git reset --hard` writes the replacement's .envrc."""
    ws = repo(sandbox.workspace, sandbox.home)
    plant = ('head=$(git rev-parse HEAD)\n'
             'printf "# pack-refs with: peeled fully-peeled sorted \\n%s refs/heads/master\\n%s refs/replace/%s\\n" '
             '$head $commit $head > .git/packed-refs.new && mv .git/packed-refs.new .git/packed-refs\necho end')
    script = COMMIT_PROTECTED.replace("CANARY", str(canary)).replace("$tree -p HEAD", "$tree")
    result = sandbox.sh(script + plant)
    assert "end" in result.stdout, result.stderr
    git(ws, "reset", "-q", "--hard", home=sandbox.home)
    assert (ws / ".envrc").exists()  # the host's git honoured the replace ref
    assert f"{ws}/.envrc (in refs/replace/" in result.stderr, result.stderr


def test_an_index_entry_for_a_protected_name_is_reported(sandbox) -> None:
    """Staged only: the host's `git status` shows it deleted, and `git checkout .` writes it."""
    ws = repo(sandbox.workspace, sandbox.home)
    result = sandbox.sh("blob=$(echo '{}' | git hash-object -w --stdin) && "
                        "git update-index --add --cacheinfo 100644,$blob,.vscode/tasks.json && echo end")
    assert "end" in result.stdout, result.stderr
    git(ws, "checkout", "--", ".", home=sandbox.home)
    assert (ws / ".vscode" / "tasks.json").exists()
    assert f"{ws}/.vscode/tasks.json (in the index) was committed or staged" in result.stderr, result.stderr


def test_ordinary_commits_and_gc_report_nothing(sandbox) -> None:
    ws = repo(sandbox.workspace, sandbox.home)
    script = ("export GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@t GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@t; "
              "echo x > x && git add x && git commit -qm x && git checkout -qb topic && echo y > y && git add y && "
              "git commit -qm y && git stash list && git gc -q && echo end")
    result = sandbox.sh(script)
    assert "end" in result.stdout, result.stderr
    assert "committed or staged" not in result.stderr and not _protect_records(sandbox), result.stderr
    assert git(ws, "log", "-1", "--format=%s", "topic", home=sandbox.home).stdout.strip() == "y"


def test_a_commit_left_in_orig_head_is_reported(sandbox, canary) -> None:
    """`git reset --hard ORIG_HEAD` (undoing a reset or a merge) takes what .git/ORIG_HEAD names."""
    ws = repo(sandbox.workspace, sandbox.home)
    result = sandbox.sh(COMMIT_PROTECTED.replace("CANARY", str(canary)) + "echo $commit > .git/ORIG_HEAD\necho end")
    assert "end" in result.stdout, result.stderr
    git(ws, "reset", "-q", "--hard", "ORIG_HEAD", home=sandbox.home)
    assert (ws / ".envrc").exists()
    assert f"{ws}/.envrc (in ORIG_HEAD) was committed or staged" in result.stderr, result.stderr


def test_an_existing_code_workspace_file_cannot_be_rewritten(sandbox) -> None:
    ws = sandbox.workspace
    (ws / "team.code-workspace").write_text('{"folders": [{"path": "."}]}\n')
    before = (ws / "team.code-workspace").read_bytes()
    tasks = '{"tasks": {"tasks": [{"label": "x", "command": "touch CANARY", "runOptions": {"runOn": "folderOpen"}}]}}'
    result = sandbox.sh(f"echo '{tasks}' > team.code-workspace; echo x > new && mv new team.code-workspace; echo end")
    assert "end" in result.stdout, result.stderr
    assert (ws / "team.code-workspace").read_bytes() == before


def test_too_many_new_refs_are_said_not_passed_over(sandbox, canary) -> None:
    """Past the refs a check reads, the run says the history was not checked (a sandbox making
    20 001 refs must not switch the check off in silence)."""
    ws = repo(sandbox.workspace, sandbox.home)
    script = COMMIT_PROTECTED.replace("CANARY", str(canary)) + (
        'python3 -c "import sys; c = sys.argv[1]; f = open(\'.git/packed-refs\', \'w\'); '
        '[f.write(f\'{c} refs/tags/t{i:06d}\\n\') for i in range(20001)]" $commit; echo end')
    result = sandbox.sh(script)
    assert "end" in result.stdout, result.stderr
    assert f"the git history of {ws}/.git (more than 20000 refs" in result.stderr, result.stderr
