"""Loading policies: `extends` and its merge rules, the messages for mistakes, and workspace trust."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from sandboxctl.errors import SandboxError
from sandboxctl.policy import discover
from sandboxctl.policy.errors import PolicyError
from sandboxctl.policy.load import (
    LoadedPolicy,
    builtin_names,
    builtin_source,
    load_source,
    merge,
    read_source,
    validate_source,
)
from sandboxctl.units import HostPattern


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load(path: Path) -> LoadedPolicy:
    return load_source(read_source(path, str(path)))


def problems_of(path: Path) -> list:
    with pytest.raises(PolicyError) as info:
        load(path)
    return info.value.problems


# --- merge() -------------------------------------------------------------------------------------


def test_maps_merge_key_by_key() -> None:
    parent = {"network": {"mode": "proxy", "allow": ["a"]}, "limits": {"pids": 10}}
    child = {"network": {"allow_private": True}, "workspace": "rw"}
    assert merge(parent, child) == {
        "network": {"mode": "proxy", "allow": ["a"], "allow_private": True},
        "limits": {"pids": 10},
        "workspace": "rw",
    }


def test_nested_maps_merge_at_every_depth() -> None:
    parent = {"secrets": {"A": {"from": "env:A", "ttl": "30m"}, "B": {"from": "env:B"}}}
    child = {"secrets": {"A": {"as": "env"}, "C": {"from": "env:C"}}}
    assert merge(parent, child) == {"secrets": {
        "A": {"from": "env:A", "ttl": "30m", "as": "env"}, "B": {"from": "env:B"}, "C": {"from": "env:C"}}}


def test_lists_are_joined_without_duplicates_parent_first() -> None:
    assert merge(["/usr", "/etc", "/lib"], ["/opt", "/etc", "/usr", "/srv"]) == ["/usr", "/etc", "/lib", "/opt", "/srv"]
    assert merge([], ["a"]) == ["a"]
    assert merge(["a"], []) == ["a"]


def test_child_scalars_win() -> None:
    assert merge({"workspace": "none", "limits": {"pids": 1}}, {"workspace": "rw", "limits": {"pids": 2}}) == {
        "workspace": "rw", "limits": {"pids": 2}}
    assert merge({"network": {"allow_private": True}}, {"network": {"allow_private": False}}) == {
        "network": {"allow_private": False}}


def test_merge_does_not_change_its_inputs() -> None:
    parent = {"filesystem": {"read": ["/usr"]}, "env": {"set": {"A": "1"}}}
    child = {"filesystem": {"read": ["/opt"]}, "env": {"set": {"B": "2"}}}
    before = copy.deepcopy((parent, child))
    merge(parent, child)
    assert (parent, child) == before


# --- extends through files -----------------------------------------------------------------------


def test_extends_builtin_by_name(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "version: 1\nname: p\nextends: default\nworkspace: ro\n")
    loaded = load(path)
    default = load_source(builtin_source("default"))
    assert loaded.policy.workspace == "ro"  # child wins
    assert loaded.policy.network.mode == default.policy.network.mode  # inherited
    assert set(default.policy.filesystem.deny) <= set(loaded.policy.filesystem.deny)
    assert [f.label for f in loaded.files] == [str(path), "builtin:default", "builtin:base"]


def test_extends_relative_path_and_list(tmp_path: Path) -> None:
    write(tmp_path, "team/one.yaml",
          "version: 1\nnetwork:\n  mode: proxy\n  allow: [a.org, b.org]\nlimits:\n  memory: 1G\n  pids: 10\n")
    write(tmp_path, "team/two.yaml",
          "version: 1\nnetwork:\n  mode: none\n  allow: [c.org, a.org]\nlimits:\n  memory: 2G\n")
    child = write(tmp_path, "project/child.yaml",
                  "version: 1\nextends: [../team/one.yaml, ../team/two.yaml]\nlimits:\n  pids: 99\n")
    policy = load(child).policy
    assert policy.network.mode == "none"  # the later parent wins over the earlier one
    assert policy.network.allow == (HostPattern("a.org"), HostPattern("b.org"), HostPattern("c.org"))
    assert policy.limits.memory == 2 << 30
    assert policy.limits.pids == 99  # the child wins over every parent

    write(tmp_path, "project/reversed.yaml", "version: 1\nextends: [../team/two.yaml, ../team/one.yaml]\n")
    policy = load(tmp_path / "project/reversed.yaml").policy
    assert policy.network.mode == "proxy"
    assert policy.network.allow == (HostPattern("c.org"), HostPattern("a.org"), HostPattern("b.org"))
    assert policy.limits.memory == 1 << 30
    assert policy.limits.pids == 10


def test_extends_string_and_one_item_list_are_the_same(tmp_path: Path) -> None:
    write(tmp_path, "parent.yaml", "version: 1\nworkspace: ro\n")
    one = write(tmp_path, "one.yaml", "version: 1\nextends: parent.yaml\n")
    many = write(tmp_path, "many.yaml", "version: 1\nextends: [parent.yaml]\n")
    assert load(one).policy.workspace == load(many).policy.workspace == "ro"


def test_diamond_extends_keeps_lists_unique(tmp_path: Path) -> None:
    write(tmp_path, "root.yaml", "version: 1\nfilesystem:\n  read: [/usr]\n")
    write(tmp_path, "left.yaml", "version: 1\nextends: root.yaml\nfilesystem:\n  read: [/opt]\n")
    write(tmp_path, "right.yaml", "version: 1\nextends: root.yaml\nfilesystem:\n  read: [/srv, /usr]\n")
    child = write(tmp_path, "child.yaml", "version: 1\nextends: [left.yaml, right.yaml]\n")
    assert load(child).policy.filesystem.read == ("/usr", "/opt", "/srv")


def test_parent_problem_names_the_parent(tmp_path: Path) -> None:
    write(tmp_path, "parent.yaml", "version: 1\nnetwork:\n  mode: open\n")
    child = write(tmp_path, "child.yaml", "version: 1\nextends: parent.yaml\n")
    [problem] = problems_of(child)
    assert (Path(problem.source).name, problem.line, problem.key) == ("parent.yaml", 3, "network.mode")


def test_missing_parent_points_at_the_extends_entry(tmp_path: Path) -> None:
    child = write(tmp_path, "child.yaml", "version: 1\nextends:\n  - base\n  - ./gone.yaml\n")
    [problem] = problems_of(child)
    assert (problem.source, problem.line, problem.key) == (str(child), 4, "extends[1]")
    assert "'./gone.yaml': no such file" in problem.message


def test_unknown_builtin_lists_the_builtins(tmp_path: Path) -> None:
    child = write(tmp_path, "child.yaml", "version: 1\nextends: defualt\n")
    [problem] = problems_of(child)
    assert (problem.line, problem.key) == (2, "extends")
    assert "no built-in policy" in problem.message
    assert all(name in problem.hint for name in builtin_names())


def test_directory_as_parent_is_a_policy_error(tmp_path: Path) -> None:
    (tmp_path / "dir.yaml").mkdir()
    child = write(tmp_path, "child.yaml", "version: 1\nextends: dir.yaml\n")
    [problem] = problems_of(child)
    assert "no such file" in problem.message


def test_unreadable_parent_is_a_policy_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = write(tmp_path, "parent.yaml", "version: 1\n")
    parent.chmod(0)
    if os.geteuid() == 0:  # root reads whatever the mode: fail the read the way open() would
        from sandboxctl.policy import load as load_module

        real = load_module.read_source

        def read_source_denied(path: Path, label: str | None = None):
            if Path(path).name == "parent.yaml":
                raise SandboxError(f"{label or path}: cannot read: Permission denied")
            return real(path, label)

        monkeypatch.setattr(load_module, "read_source", read_source_denied)
    child = write(tmp_path, "child.yaml", "version: 1\nextends: parent.yaml\n")
    [problem] = problems_of(child)
    assert (problem.source, problem.line, problem.key) == (str(child), 2, "extends")
    assert "cannot read" in problem.message


def test_cycle_error_shows_the_chain(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "version: 1\n# a comment\nextends: b.yaml\n")
    write(tmp_path, "b.yaml", "version: 1\nextends: [base, c.yaml]\n")
    write(tmp_path, "c.yaml", "version: 1\nextends: a.yaml\n")
    [problem] = problems_of(tmp_path / "a.yaml")
    assert problem.message == "extends cycle: a.yaml -> b.yaml -> c.yaml -> a.yaml"
    assert (Path(problem.source).name, problem.line, problem.key) == ("a.yaml", 3, "extends")
    assert problem.hint

    [problem] = problems_of(tmp_path / "c.yaml")
    assert problem.message == "extends cycle: c.yaml -> a.yaml -> b.yaml -> c.yaml"


def test_self_cycle(tmp_path: Path) -> None:
    path = write(tmp_path, "me.yaml", "version: 1\nextends: ./me.yaml\n")
    [problem] = problems_of(path)
    assert problem.message == "extends cycle: me.yaml -> me.yaml"


def test_long_chain_is_refused(tmp_path: Path) -> None:
    for index in range(20):
        write(tmp_path, f"p{index}.yaml", f"version: 1\nextends: p{index + 1}.yaml\n")
    write(tmp_path, "p20.yaml", "version: 1\n")
    [problem] = problems_of(tmp_path / "p0.yaml")
    assert "deeper than 16" in problem.message
    assert load(tmp_path / "p10.yaml").policy  # ten levels are fine


def test_builtins_extend_builtins_only() -> None:
    for name in builtin_names():
        loaded = load_source(builtin_source(name))
        assert all(f.builtin for f in loaded.files), name
        assert loaded.policy.name == name


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    assert load(write(tmp_path, "my-agent.yaml", "version: 1\n")).policy.name == "my-agent"


# --- messages ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "key", "hint"), [
    ("version: 1\nnetwrok: {}\n", "netwrok", "did you mean 'network'?"),
    ("version: 1\nworkspce: rw\n", "workspce", "did you mean 'workspace'?"),
    ("version: 1\nfilesystem:\n  raed: []\n", "filesystem.raed", "did you mean 'read'?"),
    ("version: 1\nlimits:\n  timout: 1h\n", "limits.timout", "did you mean 'timeout'?"),
    ("version: 1\nnetwork:\n  allow_privat: true\n", "network.allow_privat", "did you mean 'allow_private'?"),
    ("version: 1\nsecrets:\n  T:\n    form: env:T\n", "secrets.T.form", "did you mean 'from'?"),
])
def test_misspelt_key_gets_did_you_mean(tmp_path: Path, text: str, key: str, hint: str) -> None:
    path = write(tmp_path, "p.yaml", text)
    problems = problems_of(path)
    unknown = [p for p in problems if p.message == "unknown key"]
    assert [(p.key, p.hint) for p in unknown] == [(key, hint)]
    assert str(unknown[0]) == f"{path}:{text.count(chr(10), 0, text.index(key.split('.')[-1])) + 1}: {key}: unknown key"


def test_unknown_key_far_from_any_lists_the_known_ones(tmp_path: Path) -> None:
    [problem] = problems_of(write(tmp_path, "p.yaml", "version: 1\nzzzzzz: 1\n"))
    assert problem.hint.startswith("known keys: version, name")


def test_validate_source_collects_all_problems_in_order(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "version: 1\nworkspace: x\nlimits:\n  pids: 0\n  memory: lots\nbogus: 1\n")
    with pytest.raises(PolicyError) as info:
        validate_source(read_source(path, "p.yaml"))
    assert [str(p) for p in info.value.problems] == [
        "p.yaml:2: workspace: 'x': must be one of rw, ro, none, overlay",
        "p.yaml:4: limits.pids: 0: must be between 1 and 4194304",
        "p.yaml:5: limits.memory: 'lots': not a size (use e.g. 512M, 4G)",
        "p.yaml:6: bogus: unknown key",
    ]
    assert str(info.value) == "p.yaml:2: workspace: 'x': must be one of rw, ro, none, overlay"


def test_read_source_of_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SandboxError) as info:
        read_source(tmp_path / "nope.yaml", "nope.yaml")
    assert str(info.value) == "nope.yaml: no such policy file"


# --- discovery and trust -------------------------------------------------------------------------


@pytest.fixture()
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(folder))
    return folder


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


WORKSPACE_POLICY = "version: 1\nname: project\nextends: default\nnetwork:\n  allow: [pypi.org]\n"


def test_no_workspace_policy_means_default(state: Path, workspace: Path) -> None:
    loaded, how = discover.choose_policy(None, workspace)
    assert (loaded.policy.name, how) == ("default", "default")


def test_untrusted_workspace_policy_is_refused(state: Path, workspace: Path) -> None:
    write(workspace, ".sandboxctl.yaml", WORKSPACE_POLICY)
    with pytest.raises(SandboxError) as info:
        discover.choose_policy(None, workspace)
    assert not isinstance(info.value, PolicyError)
    assert info.value.exit_code == 125
    assert "is not trusted yet" in info.value.message
    assert "sandboxctl policy trust" in info.value.hint


def test_trusted_workspace_policy_is_used_until_it_changes(state: Path, workspace: Path) -> None:
    path = write(workspace, ".sandboxctl.yaml", WORKSPACE_POLICY)
    with pytest.raises(SandboxError):
        discover.choose_policy(None, workspace)

    discover.trust(load(path))
    loaded, how = discover.choose_policy(None, workspace)
    assert (loaded.policy.name, how) == ("project", "workspace")
    assert loaded.policy.network.allow == (HostPattern("pypi.org"),)

    # the trust store is private and outside the workspace
    store = state / "sandboxctl" / "trust.json"
    assert store.is_file() and store.stat().st_mode & 0o077 == 0
    assert (state / "sandboxctl").stat().st_mode & 0o077 == 0
    assert sorted(p.name for p in workspace.iterdir()) == [".sandboxctl.yaml"]
    assert list(json.loads(store.read_text())) == [str(path.resolve())]

    path.write_text(WORKSPACE_POLICY.replace("pypi.org", "evil.example"), encoding="utf-8")
    with pytest.raises(SandboxError) as info:
        discover.choose_policy(None, workspace)
    assert info.value.exit_code == 125
    assert "has changed since it was trusted" in info.value.message
    assert "sandboxctl policy trust" in info.value.hint

    discover.trust(load(path))
    loaded, _ = discover.choose_policy(None, workspace)
    assert loaded.policy.network.allow == (HostPattern("evil.example"),)


def test_changing_a_parent_file_revokes_trust(state: Path, workspace: Path) -> None:
    parent = write(workspace, "policies/team.yaml", "version: 1\nworkspace: ro\n")
    path = write(workspace, ".sandboxctl.yaml", "version: 1\nextends: policies/team.yaml\n")
    discover.trust(load(path))
    assert discover.choose_policy(None, workspace)[0].policy.workspace == "ro"
    parent.write_text("version: 1\nworkspace: rw\n", encoding="utf-8")
    with pytest.raises(SandboxError) as info:
        discover.choose_policy(None, workspace)
    assert "has changed since it was trusted" in info.value.message


def test_trust_is_for_one_path(state: Path, workspace: Path, tmp_path: Path) -> None:
    path = write(workspace, ".sandboxctl.yaml", WORKSPACE_POLICY)
    discover.trust(load(path))
    other = tmp_path / "other"
    other.mkdir()
    write(other, ".sandboxctl.yaml", WORKSPACE_POLICY)  # the same bytes elsewhere are not trusted
    with pytest.raises(SandboxError) as info:
        discover.choose_policy(None, other)
    assert "is not trusted yet" in info.value.message
    assert discover.choose_policy(None, workspace)[1] == "workspace"


def test_corrupt_trust_store_trusts_nothing(state: Path, workspace: Path) -> None:
    write(workspace, ".sandboxctl.yaml", WORKSPACE_POLICY)
    store = state / "sandboxctl" / "trust.json"
    store.parent.mkdir(parents=True)
    for junk in ("{not json", "[1, 2]", '"text"'):
        store.write_text(junk)
        with pytest.raises(SandboxError) as info:
            discover.choose_policy(None, workspace)
        assert "is not trusted yet" in info.value.message


def test_policy_option_skips_the_workspace_policy(state: Path, workspace: Path) -> None:
    write(workspace, ".sandboxctl.yaml", WORKSPACE_POLICY)
    loaded, how = discover.choose_policy("offline", workspace)
    assert (loaded.policy.name, how) == ("offline", "--policy")
    mine = write(workspace, "mine.yaml", "version: 1\nname: mine\n")
    loaded, how = discover.choose_policy(str(mine), workspace)
    assert (loaded.policy.name, how) == ("mine", "--policy")


def test_unknown_policy_name(state: Path, workspace: Path) -> None:
    with pytest.raises(SandboxError) as info:
        discover.choose_policy("no-such-policy", workspace)
    assert "no built-in policy named 'no-such-policy'" in info.value.message
    assert "default" in info.value.hint


def test_invalid_workspace_policy_is_a_policy_error(state: Path, workspace: Path) -> None:
    write(workspace, ".sandboxctl.yaml", "version: 1\nnetwork: {mode: everything}\n")
    with pytest.raises(PolicyError) as info:
        discover.choose_policy(None, workspace)
    assert info.value.problems[0].key == "network.mode"
