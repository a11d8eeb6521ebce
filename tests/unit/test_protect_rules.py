"""protect/: which entries are protected, the cached index, git config references, JSON keys and
the end-of-run record — pure parts and small real trees, nothing launched."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from sandboxctl.protect import gitconfig, jsonkeys, rules
from sandboxctl.protect.index import scan
from sandboxctl.protect.rules import Protection
from sandboxctl.protect.snapshot import Snapshot, compare_and_restore

WS = "/ws"


@pytest.mark.parametrize(("path", "protected"), [
    (".git", True), (".git/config", True), (".git/config.lock", True), (".git/hooks/pre-commit", True),
    (".git/info/exclude", True), (".git/commondir", True), (".git/objects/info/alternates", True),
    (".git/refs/replace/x", True), (".git/modules/sub/config", True), (".git/worktrees/w/gitdir", True),
    (".git/objects/ab/cdef", False), (".git/refs/heads/main", False), (".git/index.lock", False),
    (".git/HEAD", False), (".git/rebase-merge/git-rebase-todo", False), (".git/objects/info/packs", False),
    ("sub/.git", True), ("sub/.git/hooks/x", True), ("a/b/c/.git/config", True), ("sub/.git/index", False),
    (".envrc", True), (".vscode/tasks.json", True), (".claude/settings.json", True), (".mcp.json", True),
    (".config/fish/config.fish", True), (".config/git/config", True), (".config/other", False),
    (".bashrc", True), (".codex/config.toml", True), ("sub/.envrc", False), ("src/main.py", False),
    (".gitmodules", True), ("x/.gitmodules", False), ("bin/tool", False), (".local/bin/x", False),
])
def test_names_at_the_root_of_a_writable_grant(path, protected):
    assert bool(rules.protected_reason(path)) is protected, path


def test_a_home_protects_its_own_start_up_names_too():
    home = Protection(roots=("/home/ann", WS), homes=("/home/ann",))
    for name in ("bin/git", ".local/bin/git", ".local/lib/python3.11/site-packages/x.pth", ".bash_aliases",
                 ".config/systemd/user/x.service", ".tmux.conf"):
        assert home.reason(f"/home/ann/{name}"), name
    assert home.reason(f"{WS}/bin/tool") is None  # a project's bin/ is its own


def test_discovered_git_directories_and_explicit_paths():
    rules = Protection(roots=(WS,), gitdirs=(f"{WS}/store/repo.git", f"{WS}/.git/modules/lib/a"),
                       explicit={f"{WS}/.husky": "hooksPath"}, masked=(f"{WS}/sub/.env",),
                       anchors=(f"{WS}/mnt",))
    assert rules.reason(f"{WS}/store/repo.git/hooks/post-receive")  # a bare repository
    assert rules.reason(f"{WS}/store/repo.git/objects/x") is None
    assert rules.reason(f"{WS}/.git/modules/lib/a/index") is None  # a submodule's own repository at work
    assert rules.reason(f"{WS}/.git/modules/lib/a/config")
    assert rules.reason(f"{WS}/.husky/pre-commit") == "hooksPath"
    assert "filesystem.deny" in rules.reason(f"{WS}/sub/.env")
    assert rules.blocks_move(f"{WS}/store")  # holds a repository whose rules are tied to where it is
    assert rules.blocks_move(f"{WS}/mnt")  # a mount hangs from it
    assert rules.blocks_move(f"{WS}/src") is None
    assert rules.holds_names(f"{WS}/.config")  # a moved-in tree would bring .config/git
    assert rules.holds_names(f"{WS}/.git/objects/info")  # ... or alternates
    assert rules.holds_names(f"{WS}/src") is None


def test_a_grant_of_a_protected_path_releases_it():
    rules = Protection(roots=(WS, f"{WS}/.git/hooks"))
    assert rules.reason(f"{WS}/.git/hooks/pre-commit") is None
    assert rules.reason(f"{WS}/.git/config")


def test_the_index_finds_repositories_and_reuses_unchanged_directories(tmp_path: Path):
    ws = tmp_path / "ws"
    (ws / "deep" / "er").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(ws / "deep" / "nested")], check=True)
    (ws / "deep" / "er" / ".env").write_text("K=v")
    (ws / "bare" / "objects").mkdir(parents=True)
    (ws / "bare" / "refs").mkdir()
    (ws / "bare" / "HEAD").write_text("ref: refs/heads/main\n")
    cache = tmp_path / "cache"
    first = scan(str(ws), (".env*",), cache)
    assert str(ws / "deep" / "nested" / ".git") in first.repositories and str(ws / "bare") in first.repositories
    assert first.matches == (str(ws / "deep" / "er" / ".env"),)
    (ws / "deep" / "er" / ".env.local").write_text("x")  # the directory's ctime changes: it is read again
    second = scan(str(ws), (".env*",), cache)
    assert set(second.matches) == {str(ws / "deep" / "er" / ".env"), str(ws / "deep" / "er" / ".env.local")}
    assert second.repositories == first.repositories and second.complete


def test_git_config_references(tmp_path: Path):
    config = tmp_path / "config"
    config.write_text('[core]\n\thooksPath = ".husky/_" ; husky 9\n[include]\n\tpath = ../shared.cfg\n'
                      '[includeIf "gitdir:~/w/"]\n\tpath = ~/w.cfg\n[Core]\n\tHooksPath = hooks2\n')
    refs = gitconfig.parse(config.read_text())
    assert refs.hooks_path == "hooks2" and refs.includes == ("../shared.cfg", "~/w.cfg")
    hooks, included = gitconfig.references(str(config), "/home/ann", "/ws")
    assert hooks == "/ws/hooks2"
    assert included == [str(tmp_path.parent / "shared.cfg"), "/home/ann/w.cfg"]


def test_json_keys_are_put_back_and_the_rest_kept(tmp_path: Path):
    state_file = tmp_path / "claude.json"
    state_file.write_text(json.dumps({"theme": "dark", "projects": {"/ws": {"allowedTools": []}}}))
    patterns = ["mcpServers", "projects.*.allowedTools"]
    before = jsonkeys.record(tuple((str(state_file), p) for p in patterns))[str(state_file)]
    projects = {"/ws": {"allowedTools": ["Bash"]}, "/new": {"allowedTools": ["*"]}}
    servers = {"x": {"command": "evil"}}
    state_file.write_text(json.dumps({"theme": "light", "mcpServers": servers, "projects": projects}))
    changed = jsonkeys.changed(str(state_file), before, patterns)
    assert changed == ["mcpServers", "projects./new.allowedTools", "projects./ws.allowedTools"]
    assert jsonkeys.put_back(str(state_file), before, changed)
    now = json.loads(state_file.read_text())
    assert now == {"theme": "light", "projects": {"/ws": {"allowedTools": []}, "/new": {}}}


def test_the_end_of_run_check_puts_back_only_what_the_sandbox_could_have_changed(tmp_path: Path):
    ws, state = tmp_path / "ws", tmp_path / "state"
    (ws / "hooks").mkdir(parents=True)
    (ws / "config").write_text("[core]\n")
    shot = Snapshot(state, "r1")
    shot.take((str(ws / "config"), str(ws / "hooks")), (str(ws / ".envrc"),))
    (ws / "config").write_text("[core]\n\tfsmonitor = evil\n")
    (ws / "hooks" / "pre-commit").write_text("evil")
    (ws / ".envrc").write_text("evil")
    reported = compare_and_restore(state, "r1", shot.entries, lambda path: False)  # the wall was whole
    assert {(Path(c.path).name, c.action) for c in reported} == {("config", "reported"), ("pre-commit", "reported"),
                                                                 (".envrc", "reported")}
    assert "evil" in (ws / "config").read_text()
    shot.mark(False)  # gVisor: the sandbox could have done it
    restored = {(Path(c.path).name, c.change, c.action) for c in shot.check()}
    assert restored == {("config", "modified", "restored"), ("pre-commit", "created", "removed"),
                        (".envrc", "created", "removed")}
    assert (ws / "config").read_text() == "[core]\n" and not (ws / ".envrc").exists()
    assert os.listdir(ws / "hooks") == []


def test_a_launch_whose_protected_names_are_all_absent_never_reads_the_hash_cache(tmp_path: Path, monkeypatch):
    """The cache is read at the first file to hash: none here, so neither launch nor end reads it
    (a protected file that appears is hashed, so read, at the end); a launch with a file reads it
    once for both (the Store is shared)."""
    import marshal

    from sandboxctl.protect import store

    ws, state = tmp_path / "ws", tmp_path / "state"
    ws.mkdir()
    cache = state / "protect" / "hashes.marshal"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(marshal.dumps({(0, 1, 1, 1, 1): "0" * 64}))
    reads = []
    real_loads = marshal.loads
    monkeypatch.setattr(store.marshal, "loads", lambda data: reads.append(len(data)) or real_loads(data))
    absent_only = Snapshot(state, "r0")
    absent_only.take((), (str(ws / ".envrc"),))
    absent_only.mark(False)
    assert absent_only.check() == [] and reads == []  # nothing appeared: nothing to hash
    (ws / "config").write_text("[core]\n")
    shot = Snapshot(state, "r1")
    shot.take((str(ws / "config"),), ())
    (ws / "config").write_text("[core]\n\thooksPath = /tmp/evil\n")
    shot.mark(False)
    assert [(c.change, c.action) for c in shot.check()] == [("modified", "restored")]
    assert (ws / "config").read_text() == "[core]\n" and len(reads) == 1
