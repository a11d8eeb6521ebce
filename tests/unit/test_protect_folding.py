"""Protected names on case-insensitive file systems: every spelling some folding makes equal to a
protected name is that name (`.GIT/config`, `.git/CONFIG`, `config.`, a Kelvin sign for a `k`),
judged by the pure rules; the attacks themselves run in tests/integration/test_casefold.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxctl.protect import names, rules
from sandboxctl.protect.index import scan
from sandboxctl.protect.rules import Protection
from sandboxctl.supervise import aliases

WS = "/ws"


@pytest.mark.parametrize(("name", "folded"), [
    (".GIT", ".git"), (".Git", ".git"), ("CONFIG", "config"), ("config.", "config"), ("config. .", "config"),
    ("hooks ", "hooks"), ("hoo\u212as", "hooks"),  # KELVIN SIGN folds to k
    ("hook\u017f", "hooks"),  # LATIN SMALL LETTER LONG S folds to s
    (".g\u0131t", ".git"),  # dotless i: its upper case is I (exFAT's and NTFS's up-case tables)
    (".g\u200cit", ".git"), (".gi\ufefft", ".git"),  # code points older casefolding and HFS+ ignore
    ("\uff0e\uff27\uff29\uff34", ".git"),  # fullwidth: compatibility-decomposed
    ("config::$DATA", "config"), ("config:x", "config"), (":x", ":x"),
    (".", "."), ("..", ".."), ("...", "..."),
])
def test_fold_name(name, folded):
    assert names.fold_name(name) == folded


@pytest.mark.parametrize("name", [".g\u00eet", ".gi", ".gits", "con fig", ".git~1", "git", ".g\u0130t"])
def test_names_that_no_folding_makes_git(name):
    assert not names.is_git_name(name)


@pytest.mark.parametrize("path", [
    ".GIT", ".Git/config", ".GIT/HOOKS/pre-commit", ".git/CONFIG", ".git/Config.Lock", ".git/hooks./x",
    ".git/COMMONDIR", ".git/Objects/Info/Alternates", ".git/REFS/REPLACE/x", "sub/.GIT", "sub/.gIT/Hooks/x",
    ".ENVRC", ".VSCode/tasks.json", ".Claude/settings.json", ".MCP.json", ".Config/Git/config", ".BASHRC",
    ".envrc.", ".envrc ", ".GITMODULES", ".git\u200c/config", "a/b/.G\u0131T/config", ".git/hoo\u212as/x",
    ".venv/bin/bwrap", "deep/down/BWRAP", "x/runsc", "x/runsc/y",  # run by the supervisor from a later PATH
])
def test_every_spelling_of_a_protected_name_is_protected(path):
    assert rules.protected_reason(path), path


@pytest.mark.parametrize("path", [
    ".GIT/objects/ab/cd", ".Git/refs/heads/main", ".GIT/HEAD", ".git/INDEX", ".git/logs/HEAD", "src/Config",
    "SUB/.ENVRC", "Hooks/x", ".config/Other",
])
def test_what_git_writes_in_normal_work_stays_writable_whatever_the_case(path):
    assert not rules.protected_reason(path), path


def test_explicit_gitdirs_masks_and_homes_are_matched_folded():
    rules = Protection(roots=(WS, "/home/Ann"), gitdirs=(f"{WS}/repo.git",),
                       explicit={f"{WS}/Makefile": "filesystem.protect"}, masked=(f"{WS}/.env",),
                       homes=("/home/Ann",))
    assert rules.reason(f"{WS}/MAKEFILE") == "filesystem.protect"
    assert rules.reason(f"{WS}/REPO.GIT/hooks/post-receive")
    assert rules.reason(f"{WS}/.ENV")
    assert rules.reason("/home/ann/BIN/git") and rules.reason("/HOME/ANN/.Local/Bin/x")
    assert rules.root_of(f"{WS}/x") == WS and rules.root_of("/home/ann/x") == "/home/Ann"  # as the plan names it
    assert rules.blocks_move(f"{WS}/.GIT") and rules.blocks_move(f"{WS}/Repo.Git")
    assert rules.holds_names(WS) == f"holds {WS}/Makefile (filesystem.protect)"  # named as the plan has it
    assert rules.holds_names(f"{WS}/.CONFIG")  # it would bring .config/git in
    assert rules.gitdir_of(f"{WS}/sub/.GIT/objects") == f"{WS}/sub/.git"
    assert not rules.reason(f"{WS}/src/makefile.txt")


def test_the_index_finds_a_git_directory_spelt_otherwise(tmp_path: Path):
    """On a case-insensitive directory git takes `.GIT` for `.git`: the planner must find it (and
    bind and record what it holds) as it would `.git`."""
    (tmp_path / "sub" / ".GIT" / "hooks").mkdir(parents=True)
    (tmp_path / "sub" / ".GIT" / "HEAD").write_text("ref: refs/heads/main\n")
    found = scan(str(tmp_path))
    assert found.repositories == (f"{tmp_path}/sub/.GIT",)
    assert f"{tmp_path}/sub/.GIT" in found.gitdirs


def test_a_marker_in_another_case_still_makes_a_repository():
    assert names.gitdir_marker("head") == "HEAD" and names.gitdir_marker("OBJECTS") == "objects"
    assert names.gitdir_marker("Refs.") == "refs" and names.gitdir_marker("heads") is None


@pytest.mark.parametrize(("name", "short"), [
    ("GIT~1", True), ("git~1", True), ("PRE-CO~1.YAM", True), ("GITMOD~12", True), ("A~1.TXT", True),
    ("file~", False), ("foo.c.~1~", False), ("a-long-name~1", False), ("x~y", False), ("GIT~1.YAML", False),
])
def test_what_looks_like_an_8_3_short_name(name, short):
    assert bool(aliases.SHORT_NAME.match(name)) is short


def test_a_long_name_shaped_like_a_short_one_is_its_own(tmp_path: Path):
    """Listed by its directory: it is its own name (a short alias never is: readdir gives long names)."""
    (tmp_path / "DOC~1").mkdir()
    (tmp_path / "DOC~1" / "A~1.TXT").write_text("x")
    root = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        assert aliases.short_alias(root, f"{tmp_path}/DOC~1/A~1.TXT", str(tmp_path)) is None
        assert aliases.short_alias(root, f"{tmp_path}/DOC~1/NEW~1.TXT", str(tmp_path)) is None  # being created
    finally:
        os.close(root)


def test_masked_names_are_matched_folded(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".ENV.local").write_text("x")
    (tmp_path / ".env").write_text("x")
    assert scan(str(tmp_path), (".env*",)).matches == (f"{tmp_path}/.env", f"{tmp_path}/a/.ENV.local")


def test_no_other_spelling_on_a_case_sensitive_file_system(tmp_path: Path):
    from sandboxctl.plan.facts import _spelt_otherwise

    (tmp_path / "Dir").mkdir()
    (tmp_path / "Dir" / ".env").write_text("x")
    (tmp_path / "Dir" / ".ENV").write_text("another file, really spelt so")
    spelt_otherwise = _spelt_otherwise()
    assert spelt_otherwise(f"{tmp_path}/Dir/.env") is None
    assert spelt_otherwise(f"{tmp_path}/missing/.env") is None


@pytest.mark.parametrize("path", ["/w/.git/config::$DATA", "/w/.envrc:x", "/w/.GIT/Config.", "/w/a b /c",
                                  "/w/.git/hooks/pre-commit", "/w/.g\u0131t/config"])
def test_a_folded_path_is_its_folded_names(path):
    # the ASCII fast path of fold_path must fold as fold_name does (an NTFS stream name included)
    assert names.fold_path(path) == "/".join(names.fold_name(part) if part else part for part in path.split("/"))


def test_a_stream_of_a_protected_file_is_protected():
    assert names.root_name_reason((".envrc::$DATA",)) is not None


def test_a_hard_link_or_dos_name_of_a_masked_file_is_another_spelling(tmp_path: Path):
    """_file_alias (asked only on file systems that give every name a dentry of its own, FUSE):
    a second name of a masked file (ntfs-3g counts a DOS name among the links) reaches it past
    the mask."""
    from sandboxctl.plan.facts import _file_alias

    (tmp_path / ".env").write_text("x")
    (tmp_path / "d").mkdir()
    assert _file_alias(f"{tmp_path}/.env") is None and _file_alias(f"{tmp_path}/d") is None
    os.link(tmp_path / ".env", tmp_path / "ENV~1")
    assert "2 names" in _file_alias(f"{tmp_path}/.env")


def test_folding_a_pathological_path_stays_cheap():
    """fold_path runs on every path of a mediated call: a 4 KiB path of names that decompose the
    most (U+FDFA: 18 code points in 3 bytes) costs ~0.6 ms (measured); generous bound."""
    import time

    path = "/".join(["\ufdfa" * 85] * 16)  # 255-byte names, PATH_MAX
    names.fold_path("/\u00e9")  # the first call's imports (unicodedata) are not the cost measured
    spent = []
    for _ in range(3):  # the least of three: a loaded machine's pauses are not the path's cost
        names._fold_unicode.cache_clear()
        start = time.perf_counter()
        names.fold_path(path)
        spent.append(time.perf_counter() - start)
    assert min(spent) < 0.1, spent
