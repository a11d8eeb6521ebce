"""The planner is pure: invented host facts in, a plan out, nothing launched."""

from __future__ import annotations

import fnmatch
import os

import pytest

from sandboxctl.errors import SandboxError
from sandboxctl.launch import bwrap
from sandboxctl.plan.build import build_plan
from sandboxctl.plan.inputs import HostFacts, Invocation
from sandboxctl.policy.discover import load_named
from sandboxctl.policy.load import SourceFile, load_source

HOME = "/home/ann"
WS = "/home/ann/proj"


def fake_facts(files: dict[str, str], *, uid: int = 1000, cgroup: str | None = None,
               protected_code: tuple[str, ...] = ("/pkg/sandboxctl",),
               caller_env: dict[str, str] | None = None, interactive: bool = False) -> HostFacts:
    """files maps path -> dir | file | symlink:TARGET."""

    def kind(path: str) -> str:
        value = files.get(path, "missing")
        return "symlink" if value.startswith("symlink:") else value

    def readlink(path: str) -> str:
        return files[path].split(":", 1)[1]

    def realpath(path: str) -> str:
        value = files.get(path, "")
        if value.startswith("symlink:"):
            target = value.split(":", 1)[1]
            return target if target.startswith("/") else "/" + target
        return path

    def tree(root: str, patterns: tuple[str, ...], deep: bool):
        """protect.index.scan over the invented files: `.git` entries, and names matching patterns."""
        from sandboxctl.protect.index import TreeIndex

        inside = [p for p in files if p.startswith(root + "/") and (deep or "/" not in p[len(root) + 1:])
                  and ".git/" not in p[len(root):]]
        repositories = sorted(p for p in inside if os.path.basename(p) == ".git")
        gitdirs = sorted(p for p in repositories if files[p] == "dir")
        matches = sorted(p for p in inside if any(fnmatch.fnmatchcase(os.path.basename(p), pat) for pat in patterns))
        return TreeIndex(root, tuple(repositories), tuple(gitdirs), tuple(matches), 1)

    return HostFacts(
        home=HOME, user="ann", uid=uid, state_dir=f"{HOME}/.local/state/sandboxctl",
        caller_env=caller_env or {}, interactive=interactive, ci=False,
        shim_python="/usr/bin/python3.11", shim_python_prefix="/usr", shim_file="/pkg/sandboxctl/launch/shim.py",
        protected_code=protected_code,
        elf_loaders=("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",), cgroup=cgroup,
        kind=kind, readlink=readlink, realpath=realpath,
        glob=lambda pattern: sorted(p for p in files if fnmatch.fnmatch(p, pattern)),
        tree=tree,
    )


BASE_FILES = {
    "/usr": "dir", "/etc": "dir", "/bin": "symlink:usr/bin", "/lib": "symlink:usr/lib",
    "/lib64": "symlink:usr/lib64", "/sbin": "symlink:usr/sbin", "/tmp": "dir", "/var/tmp": "dir",
    "/etc/shadow": "file", "/etc/ssh": "dir", HOME: "dir", WS: "dir",
    "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": "file", "/usr/bin": "dir",
}


def policy_from_text(text: str, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_bytes(text.encode())
    return load_source(SourceFile(str(path), path, text.encode())).policy


def plan_for(policy="default", files=None, **kwargs):
    loaded = load_named(policy) if isinstance(policy, str) else None
    pol = loaded.policy if loaded else policy
    inv_fields = {k: kwargs.pop(k) for k in list(kwargs) if k in Invocation._fields}
    inv = Invocation(command=("true",), workspace=WS, run_id="r1", **inv_fields)
    return build_plan(pol, inv, fake_facts({**BASE_FILES, **(files or {})}, **kwargs))


def mounts(plan):
    return [(m.kind, m.target) for m in plan.mounts]


def test_default_plan_shape():
    plan = plan_for()
    kinds = dict((t, k) for k, t in mounts(plan))
    assert kinds[WS] == "rw" and kinds["/usr"] == "ro" and kinds[HOME] == "tmpfs"
    assert kinds["/bin"] == "symlink"
    assert kinds["/etc/shadow"] == "mask-file" and kinds["/etc/ssh"] == "mask-dir"
    assert plan.cwd == WS and plan.network.mode == "proxy"
    assert ("/proc", "proc") in [(t, k) for k, t in mounts(plan)]


def test_parents_are_mounted_before_children():
    targets = [m.target for m in plan_for().mounts]
    assert targets.index(HOME) < targets.index(WS)
    assert targets.index("/etc") < targets.index("/etc/shadow")


def test_environment_is_not_inherited():
    plan = plan_for(caller_env={"SECRET_CANARY": "x", "LANG": "C.UTF-8", "GITHUB_TOKEN": "t", "LC_ALL": "C"})
    env = dict(plan.env)
    assert "SECRET_CANARY" not in env and "GITHUB_TOKEN" not in env
    assert env["LANG"] == "C.UTF-8" and env["LC_ALL"] == "C"
    assert env["HOME"] == HOME and env["PATH"].startswith("/usr/local/sbin")


def test_credential_like_names_are_not_passed_by_globs(tmp_path):
    policy = policy_from_text("version: 1\nextends: base\nenv:\n  pass: ['MY_*', MY_NAMED_TOKEN]\n", tmp_path)
    plan = plan_for(policy, caller_env={"MY_TOKEN": "a", "MY_HOST": "h", "MY_NAMED_TOKEN": "n"})
    env = dict(plan.env)
    assert "MY_TOKEN" not in env and env["MY_HOST"] == "h" and env["MY_NAMED_TOKEN"] == "n"
    assert any("MY_TOKEN" in w for w in plan.warnings)
    assert not any("MY_NAMED_TOKEN" in w for w in plan.warnings)


def test_deny_glob_masks_dotenv_at_any_depth_in_workspace():
    plan = plan_for(files={f"{WS}/.env": "file", f"{WS}/.env.prod": "file", f"{WS}/env.txt": "file",
                           f"{WS}/sub": "dir", f"{WS}/sub/deep": "dir", f"{WS}/sub/deep/.env.local": "file"})
    masked = {t for k, t in mounts(plan) if k == "mask-file"}
    assert {f"{WS}/.env", f"{WS}/.env.prod", f"{WS}/sub/deep/.env.local"} <= masked
    assert f"{WS}/env.txt" not in masked
    assert f"{WS}/sub/deep/.env.local" in plan.protect.masked  # never written by the supervisor either


def test_protected_paths_are_read_only_binds_and_the_workspace_read_only_to_landlock():
    plan = plan_for(files={f"{WS}/.git": "dir", f"{WS}/.git/hooks": "dir", f"{WS}/.git/config": "file",
                           f"{WS}/.vscode": "dir"})
    kinds = {t: k for k, t in mounts(plan)}
    assert kinds[f"{WS}/.git/hooks"] == "ro" and kinds[f"{WS}/.git/config"] == "ro"
    assert kinds[f"{WS}/.vscode"] == "ro"
    assert f"{WS}/.git" not in kinds  # no pin: the supervisor refuses moving it
    assert f"{WS}/.envrc" not in kinds  # absent: no placeholder, the supervisor refuses creating it
    assert f"{WS}/.envrc" in plan.protect.absent and f"{WS}/.git/config" in plan.protect.record
    assert plan.protect.mediated and plan.seccomp.mediate and plan.protect.roots == (WS,)
    rules = {r.path: r.access for r in plan.landlock.paths}
    assert rules[WS] == ("read", "execute")  # the kernel writes nothing there itself


def test_every_writable_grant_gets_the_start_up_file_protections():
    plan = plan_for(files={f"{WS}/.bashrc": "file"})
    protection = plan.protection()
    for name in (".bashrc", ".zshrc", ".profile", ".gitconfig", ".codex/config.toml", ".cursor/mcp.json",
                 ".gemini/settings.json", ".continue/config.yaml", ".aider.conf.yml", ".windsurf/rules.md",
                 ".envrc", ".mcp.json", ".claude/settings.json", ".vscode/tasks.json", ".git", ".gitmodules"):
        assert protection.reason(f"{WS}/{name}"), name
    assert protection.reason(f"{WS}/src/main.py") is None
    assert ("ro", f"{WS}/.bashrc") in mounts(plan)


def test_git_file_is_protected_itself():
    plan = plan_for(files={f"{WS}/.git": "file"})
    assert ("ro", f"{WS}/.git") in mounts(plan)
    assert plan.protection().reason(f"{WS}/.git")


def test_state_dir_inside_a_writable_grant_is_masked_even_before_it_exists():
    plan = plan_for(files={})
    facts_state = f"{HOME}/.local/state/sandboxctl"
    assert ("mask-dir", facts_state) not in mounts(plan)  # HOME is a tmpfs: nothing to hide
    policy = load_named("default").policy
    inv = Invocation(command=("true",), workspace=HOME, run_id="r")
    plan = build_plan(policy, inv, fake_facts(BASE_FILES))
    assert ("mask-dir", facts_state) in mounts(plan)


def test_write_grant_that_does_not_exist_is_an_error(tmp_path):
    policy = policy_from_text("version: 1\nextends: base\nfilesystem:\n  write: [/nonexistent]\n", tmp_path)
    with pytest.raises(SandboxError, match="does not exist"):
        plan_for(policy)


def test_read_grant_that_does_not_exist_is_skipped_with_a_note(tmp_path):
    policy = policy_from_text("version: 1\nextends: base\nfilesystem:\n  read: [/opt/tool]\n", tmp_path)
    plan = plan_for(policy)
    assert "/opt/tool" not in [t for _, t in mounts(plan)]
    assert any("/opt/tool" in n for n in plan.notes)


def test_policy_grant_under_a_denied_path_is_dropped(tmp_path):
    policy = policy_from_text("version: 1\nextends: base\nfilesystem:\n  read: ['~/.ssh/config']\n", tmp_path)
    plan = plan_for(policy, files={f"{HOME}/.ssh": "dir", f"{HOME}/.ssh/config": "file"})
    assert f"{HOME}/.ssh/config" not in [t for _, t in mounts(plan)]


def test_cli_grants_that_widen_need_confirmation():
    plan = plan_for(files={"/data": "dir"}, allow_write=("/data",), net="host")
    assert any("--allow-write /data" in c for c in plan.confirmations)
    assert any("network: host" in c for c in plan.confirmations)


def test_exec_allow_restricts_landlock_execute_and_adds_the_elf_loader(tmp_path):
    policy = policy_from_text("version: 1\nextends: default\nexec:\n  allow: [/usr/bin]\n", tmp_path)
    plan = plan_for(policy)
    executable = [r.path for r in plan.landlock.paths if "execute" in r.access]
    assert "/usr/bin" in executable
    assert "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" in executable
    assert WS not in executable and "/usr" not in executable


def test_landlock_mirrors_the_mounts():
    plan = plan_for()
    rules = {r.path: r.access for r in plan.landlock.paths}
    assert rules[WS] == ("read", "execute")  # writable through the supervisor only
    assert rules["/tmp"] == ("read", "write", "execute")
    assert rules["/usr"] == ("read", "execute")
    assert "write" not in rules["/etc"]
    # servers inside by default: the private loopback is the namespace's business, not Landlock's
    assert not plan.landlock.restrict_tcp_bind and not plan.landlock.restrict_tcp_connect
    assert plan.landlock.minimum_abi == 1


def test_network_host_needs_landlock_scopes():
    plan = plan_for(net="host")
    assert plan.landlock.minimum_abi == 6
    # the host's interfaces: no port binds unless listed; connecting is what host mode allows
    assert plan.landlock.restrict_tcp_bind and plan.landlock.bind_tcp_ports == ()
    assert not plan.landlock.restrict_tcp_connect


def test_approval_mode_defaults_to_deny_without_a_terminal():
    assert plan_for(interactive=False).approval_mode == "deny"
    assert plan_for(interactive=True).approval_mode == "ask"
    assert plan_for(interactive=True, approve="allow").approval_mode == "allow"


def test_pids_limit_for_root_without_cgroup_is_reported_unenforced(tmp_path):
    policy = policy_from_text("version: 1\nextends: base\nlimits:\n  pids: 10\n", tmp_path)
    assert plan_for(policy, uid=1000).limits.pids_method == "rlimit"
    root = plan_for(policy, uid=0)
    assert root.limits.pids_method == "unenforced" and any("not enforced" in w for w in root.warnings)
    assert plan_for(policy, uid=0, cgroup="v1").limits.pids_method == "cgroup"


def test_seccomp_policy_adjustments(tmp_path):
    policy = policy_from_text("version: 1\nextends: base\nsyscalls:\n  deny: [chmod]\n  allow: [ptrace]\n",
                              tmp_path)
    plan = plan_for(policy)
    names = {r.syscall for r in plan.seccomp.rules}
    assert "chmod" in names and "ptrace" not in names and "process_vm_readv" not in names
    assert any("syscalls.allow" in c for c in plan.confirmations)


def test_every_seccomp_rule_says_why():
    assert all(rule.why for rule in plan_for().seccomp.rules)


def test_bwrap_argv_is_pure_and_carries_no_environment_values():
    plan = plan_for(caller_env={"LANG": "sekrit-lang"})
    fds = bwrap.LaunchFds(seccomp=3, control=4, stderr=5, empty_file="/state/empty")
    argv = bwrap.render(plan, fds)
    assert argv == bwrap.render(plan, fds)
    assert "--clearenv" in argv and "--setenv" not in argv
    assert "sekrit-lang" not in " ".join(argv)
    assert "--unshare-net" in argv and "--die-with-parent" in argv
    assert argv[argv.index("--seccomp") + 1] == "3"


def test_plan_is_json_serialisable():
    import json

    data = plan_for().to_dict()
    assert json.loads(json.dumps(data))["policy"] == "default"


@pytest.mark.parametrize("name", ["base", "default", "ci", "offline", "claude-code", "codex", "aider"])
def test_every_builtin_policy_plans(name):
    """On an account where nothing ever ran (filesystem.create covers the agents' state) and on one
    where the agents' state exists."""
    from sandboxctl.paths import expand

    policy = load_named(name).policy
    fresh = plan_for(name)
    assert fresh.mounts and fresh.seccomp.rules
    made = {c.path: c.kind for c in fresh.creations}
    writable = {expand(p, workspace=WS, home=HOME): made.get(expand(p, workspace=WS, home=HOME), "dir")
                for p in policy.filesystem.write}
    existing = plan_for(name, files=writable)
    assert existing.creations == () and existing.mounts and existing.seccomp.rules


def test_refuses_root_as_workspace():
    policy = load_named("default").policy
    with pytest.raises(SandboxError):
        build_plan(policy, Invocation(command=("true",), workspace="/", run_id="r"), fake_facts(BASE_FILES))


def test_supervisor_code_and_venv_are_protected():
    import sys

    from sandboxctl.plan.facts import gather

    facts = gather({})
    assert os.path.realpath(sys.prefix) in facts.protected_code
    assert any(p.endswith("sandboxctl") for p in facts.protected_code)
    plan = plan_for(files={f"{WS}/.venv": "dir"}, protected_code=(f"{WS}/.venv",))
    assert ("ro", f"{WS}/.venv") in mounts(plan)


def test_a_protected_path_beneath_a_recorded_directory_is_recorded_once():
    """The venv is sandboxctl's prefix and holds its dependencies' places (site-packages, yaml/):
    its record walks them already; recorded again they were hashed and compared twice a run."""
    venv = f"{WS}/.venv"
    site = f"{venv}/lib/python3.11/site-packages"
    files = {venv: "dir", f"{venv}/lib": "dir", f"{venv}/lib/python3.11": "dir", site: "dir", f"{site}/yaml": "dir",
             f"{WS}/.venv2": "dir"}
    plan = plan_for(files=files, protected_code=(venv, site, f"{site}/yaml", f"{WS}/.venv2"))
    assert plan.protect.record == (venv, f"{WS}/.venv2")  # (.venv2 is not beneath .venv)
    assert [m.target for m in plan.mounts if m.kind == "ro" and m.target.startswith(WS)] == [venv, f"{WS}/.venv2"]


def test_a_protected_path_beneath_a_recorded_symlinked_component_keeps_its_record():
    venv = f"{WS}/.venv"
    files = {venv: "dir", f"{venv}/lib": f"symlink:{WS}/elsewhere", f"{WS}/elsewhere": "dir",
             f"{WS}/elsewhere/site": "dir", f"{venv}/lib/site": "dir"}  # (the fake kind does not follow the link)
    plan = plan_for(files=files, protected_code=(venv, f"{venv}/lib/site"))
    assert plan.protect.record == (venv, f"{venv}/lib/site")  # the walk of .venv never follows lib


def test_granting_a_protected_path_by_name_releases_it_with_a_confirmation():
    hooks = f"{WS}/.git/hooks"
    files = {f"{WS}/.git": "dir", hooks: "dir", f"{WS}/.git/config": "file"}
    plan = plan_for(files=files, allow_write=(hooks,))
    assert ("rw", hooks) in mounts(plan) and ("ro", hooks) not in mounts(plan)
    assert any("releases a protected path" in c for c in plan.confirmations)
    assert ("ro", f"{WS}/.git/config") in mounts(plan)  # only what was named is released
    assert plan.protection().reason(f"{hooks}/pre-commit") is None
    assert plan.protection().reason(f"{WS}/.git/config")
    assert hooks not in plan.protect.record


def test_judge_write_names_the_mount_that_decides():
    plan = plan_for(files={f"{WS}/.git": "dir", f"{WS}/.git/config": "file"})
    assert plan.judge_write(f"{WS}/src/main.py")[0] is True
    assert plan.judge_write("/tmp/scratch")[0] is True
    inside, rule = plan.judge_write(f"{WS}/.git/config")
    assert not inside and "protected: .git/config" in rule
    inside, rule = plan.judge_write("/etc/passwd")
    assert not inside and "ro /etc" in rule
    assert plan.judge_write("/opt/nowhere")[1].startswith("outside the writable set (not granted")


def test_seccomp_rule_for_a_trapped_call():
    seccomp = plan_for().seccomp
    assert seccomp.rule_for("ptrace", [0] * 6).action == "errno:EPERM"
    packet = seccomp.rule_for("socket", [17, 3, 0, 0, 0, 0])  # AF_PACKET
    assert packet is not None and packet.action == "errno:EAFNOSUPPORT"
    assert seccomp.rule_for("socket", [2, 1, 0, 0, 0, 0]) is None  # AF_INET is allowed
    assert seccomp.rule_for("clone3", [0] * 6) is None  # ENOSYS fallback: static, not trapped


def test_a_writable_file_grant_is_not_a_root_for_protected_names(tmp_path):
    policy = policy_from_text("version: 1\nextends: default\nfilesystem:\n  write: ['~/.tool.json']\n", tmp_path)
    plan = plan_for(policy, files={f"{HOME}/.tool.json": "file"})
    assert not [m for m in plan.mounts if m.target.startswith(f"{HOME}/.tool.json/")]


def test_reading_a_short_or_vanished_caller_memory_is_an_oserror(tmp_path):
    import pytest as _pytest

    from sandboxctl.supervise.notify import ProcessMemory

    memory = ProcessMemory(os.getpid())
    try:
        with _pytest.raises(OSError):
            memory.word(8)  # unmapped page: nothing to read
        assert memory.string(0) == ""
    finally:
        memory.close()


def test_a_log_dir_holding_the_workspace_is_refused() -> None:
    """Its mask would hide the whole workspace: one clear error instead of a bubblewrap failure."""
    with pytest.raises(SandboxError) as info:
        plan_for(log_path=f"{WS}/actions.jsonl")
    assert "holds the workspace" in info.value.message
    with pytest.raises(SandboxError):
        plan_for(log_path=f"{HOME}/actions.jsonl")  # the workspace lies under HOME
    assert plan_for(log_path=f"{WS}/logs/actions.jsonl").log_path == f"{WS}/logs/actions.jsonl"
