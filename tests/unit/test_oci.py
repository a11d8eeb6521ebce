"""The gvisor backend without launching anything: planning, the OCI bundle (pure), runsc's log,
and doctor's reading of a probe."""

from __future__ import annotations

import json

import pytest

from sandboxctl.checks import gvisor as gvisor_check
from sandboxctl.checks.common import OK, WARN
from sandboxctl.errors import SandboxError
from sandboxctl.launch import oci
from sandboxctl.launch.runsc import first_error
from sandboxctl.plan.build import GVISOR_INIT, GVISOR_WARNING, SECRETS_DIR
from sandboxctl.plan.model import Mount
from tests.unit.test_plan import HOME, WS, plan_for, policy_from_text

PATHS = oci.BundlePaths(bundle="/r", rootfs="/r/rootfs", empty_file="/r/empty-file", empty_dir="/r/empty-dir",
                        launch="/r/launch", state="/r/state", log="/r/runsc.log", secrets=None, proxy="/r/proxy")


def gv_plan(policy="default", **kwargs):
    return plan_for(policy, backend="gvisor", **kwargs)


def by_target(config: dict) -> dict[str, dict]:
    return {m["destination"]: m for m in config["mounts"]}


# ------------------------------------------------------------------ planning
def test_backend_comes_from_the_option_or_the_policy(tmp_path):
    assert plan_for().backend == "bwrap"
    assert gv_plan().backend == "gvisor"
    policy = policy_from_text("version: 1\nextends: default\nbackend: gvisor\n", tmp_path)
    assert plan_for(policy).backend == "gvisor"
    assert plan_for(policy, backend="bwrap").backend == "bwrap"  # the command line wins


def test_gvisor_plan_claims_no_landlock_and_no_notification():
    plan = gv_plan()
    assert plan.landlock.paths == () and plan.landlock.required is False
    assert plan.seccomp.trap_denials is False and plan.seccomp.notify_exec is False
    assert plan.seccomp.file_events == "none" and plan.file_events == "none"
    assert len(plan.seccomp.rules) == len(plan_for().seccomp.rules)  # the whole baseline, statically
    assert plan.warnings[0] == GVISOR_WARNING


def test_gvisor_plan_has_the_same_mounts_but_its_own_launcher():
    bw, gv = plan_for(), gv_plan()
    launcher = {"/run/sandboxctl/shim.py", GVISOR_INIT}
    assert [m for m in bw.mounts if m.target not in launcher] == [m for m in gv.mounts if m.target not in launcher]
    init = next(m for m in gv.mounts if m.target == GVISOR_INIT)
    assert init.kind == "ro" and init.source.endswith("launch/gvisor_init.py")
    assert not any("landlockpy" in m.target for m in gv.mounts)


def test_gvisor_limits_are_rlimits_enforced_by_gvisor_even_for_root():
    plan = gv_plan(uid=0, cgroup="v2")
    assert plan.limits.pids_method == "rlimit" and plan.limits.pids == 1024
    assert not any("not enforced" in w for w in plan.warnings)
    assert gv_plan(memory=1 << 30).limits.memory_method == "rlimit-as"


def test_exec_allow_is_refused_unless_landlock_is_best_effort(tmp_path):
    strict = policy_from_text("version: 1\nextends: default\nexec:\n  allow: [/usr/bin]\n", tmp_path)
    with pytest.raises(SandboxError, match=r"exec\.allow cannot be enforced under gVisor"):
        plan_for(strict, backend="gvisor")
    relaxed = policy_from_text("version: 1\nextends: default\nexec:\n  allow: [/usr/bin]\nlandlock: best-effort\n",
                               tmp_path)
    plan = plan_for(relaxed, backend="gvisor")
    assert any("exec.allow is not enforced under gVisor" in w for w in plan.warnings)


def test_network_host_is_refused_under_gvisor():
    with pytest.raises(SandboxError, match="network: host is not available under gVisor"):
        gv_plan(net="host")
    assert gv_plan(net="none").network.mode == "none"


# ------------------------------------------------------------------ the bundle
def test_config_is_pure_and_json():
    plan = gv_plan()
    first, second = oci.config(plan, PATHS), oci.config(gv_plan(), PATHS)
    assert first == second
    assert json.loads(json.dumps(first)) == first


def test_mount_kinds_map_to_oci_mounts():
    plan = gv_plan(files={f"{WS}/.env": "file", f"{WS}/.git": "dir", f"{WS}/.git/hooks": "dir"})
    mounts = by_target(oci.config(plan, PATHS))
    assert mounts["/usr"] == {"destination": "/usr", "type": "bind", "source": "/usr", "options": list(oci.BIND_RO)}
    assert mounts[WS]["options"] == list(oci.BIND_RW) and mounts[WS]["source"] == WS
    assert mounts[HOME]["type"] == "tmpfs" and mounts["/tmp"]["type"] == "tmpfs"
    assert mounts["/proc"]["type"] == "proc"
    assert mounts["/etc/shadow"]["source"] == PATHS.empty_file and "ro" in mounts["/etc/shadow"]["options"]
    assert mounts["/etc/ssh"]["source"] == PATHS.empty_dir
    assert mounts[f"{WS}/.env"]["source"] == PATHS.empty_file
    assert mounts[f"{WS}/.git/hooks"]["options"] == list(oci.BIND_RO)  # protected
    assert mounts[f"{WS}/.git"]["options"] == list(oci.BIND_RW)  # pinned: gVisor has no mediation
    assert f"{WS}/.envrc" not in mounts  # no placeholders: absent names are checked at the end of the run
    assert mounts[oci.LAUNCH_FILE]["source"] == PATHS.launch
    assert mounts[oci.PROXY_DIR]["source"] == PATHS.proxy


def test_mounts_keep_the_plan_order_parents_first():
    destinations = [m["destination"] for m in oci.config(gv_plan(), PATHS)["mounts"]]
    assert destinations.index(HOME) < destinations.index(WS)
    assert destinations.index("/etc") < destinations.index("/etc/shadow")
    assert destinations[-2:] == [oci.LAUNCH_FILE, oci.PROXY_DIR]


def test_top_level_symlinks_go_in_the_root_and_deeper_ones_become_binds():
    plan = gv_plan(files={f"{HOME}/.gitconfig": "symlink:/etc/gitconfig", "/etc/gitconfig": "file"})
    assert ("/bin", "usr/bin") in oci.rootfs_symlinks(plan)
    mounts = by_target(oci.config(plan, PATHS))
    assert "/bin" not in mounts  # a symlink in the private root, as on the host
    assert ("symlink", f"{HOME}/.gitconfig") in [(m.kind, m.target) for m in plan.mounts]
    assert mounts[f"{HOME}/.gitconfig"] == {"destination": f"{HOME}/.gitconfig", "type": "bind",
                                             "source": "/etc/gitconfig", "options": list(oci.BIND_RO)}
    relative = Mount("symlink", f"{HOME}/.gitconfig", "dotfiles/gitconfig")
    assert oci.symlink_target(relative) == f"{HOME}/dotfiles/gitconfig"


def test_secrets_come_from_the_private_directory_never_the_config(tmp_path):
    policy = policy_from_text("version: 1\nextends: default\nsecrets:\n  T:\n    from: env:SRC\n"
                              "  E:\n    from: env:SRC\n    as: env\n", tmp_path)
    plan = plan_for(policy, backend="gvisor", caller_env={"SRC": "value-never-here"})
    paths = oci.dry_paths(plan, "/r")
    config = oci.config(plan, paths)
    mounts = by_target(config)
    assert mounts[SECRETS_DIR]["source"] == "/r/secrets" and "ro" in mounts[SECRETS_DIR]["options"]
    assert f"{SECRETS_DIR}/T" not in mounts  # the file is in the bound directory
    assert config["process"]["env"] == []
    assert "value-never-here" not in json.dumps(config)
    with pytest.raises(ValueError, match="secrets directory"):
        oci.config(plan, PATHS)


def test_process_runs_the_launcher_as_mapped_root_without_capabilities():
    plan = gv_plan("offline")
    process = oci.config(plan, PATHS)["process"]
    python = [plan.shim_python, "-I", "-S", "-B", GVISOR_INIT, oci.LAUNCH_FILE]
    assert process["args"] == ([oci.LAUNCH_FILE] if oci.native_launcher(plan) else python)  # no forwarder
    assert oci.config(gv_plan("default"), PATHS)["process"]["args"] == python  # the forwarder needs python
    assert process["user"] == {"uid": 0, "gid": 0} and process["cwd"] == WS
    assert all(caps == [] for caps in process["capabilities"].values())
    assert process["noNewPrivileges"] is True and process["terminal"] is False
    assert oci.launch_config(plan, None, {}, [], 317)["drop_capabilities"] is False


def test_under_proxy_the_launcher_may_only_change_ids_and_must_drop_everything():
    """The forwarder becomes another user (out of the command's kill(-1) reach): the launcher gets
    exactly what that takes, never inheritable or ambient, and is told to drop it all before exec."""
    plan = gv_plan("default")
    caps = oci.config(plan, PATHS)["process"]["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        assert caps[kind] == ["CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"]
    assert caps["inheritable"] == [] and caps["ambient"] == []
    launch = oci.launch_config(plan, None, {}, [], 317)
    assert launch["drop_capabilities"] is True
    assert launch["proxy"]["alive"] == f"{oci.PROXY_DIR}/{oci.ALIVE_SOCKET_NAME}"


def test_limits_become_rlimits():
    rlimits = {r["type"]: r["hard"] for r in oci.config(gv_plan(memory=1 << 29), PATHS)["process"]["rlimits"]}
    assert rlimits == {"RLIMIT_NOFILE": 4096, "RLIMIT_FSIZE": 16 << 30, "RLIMIT_NPROC": 1024, "RLIMIT_AS": 1 << 29}


def test_root_is_the_private_read_only_directory():
    config = oci.config(gv_plan(), PATHS)
    assert config["root"] == {"path": "/r/rootfs", "readonly": True}
    assert config["hostname"] == "sandbox"
    assert [n["type"] for n in config["linux"]["namespaces"]] == list(oci.NAMESPACES)


def test_skipped_masks_are_left_out():
    config = oci.config(gv_plan(), PATHS, skip=frozenset({"/etc/shadow"}))
    mounts = by_target(config)
    assert "/etc/shadow" not in mounts and "/etc/ssh" in mounts


def test_runsc_argv():
    argv = oci.runsc_argv(gv_plan(), PATHS, runsc="/usr/bin/runsc", platform="ptrace")
    assert argv[:5] == ["/usr/bin/runsc", "--rootless", "--ignore-cgroups", "--network=none", "--platform=ptrace"]
    assert "--root=/r/state" in argv and "--log=/r/runsc.log" in argv
    assert "--host-uds=open" in argv  # network: proxy: the proxy's socket is the way out
    assert argv[-4:] == ["run", "--bundle", "/r", "sandboxctl-r1"]
    offline = oci.runsc_argv(gv_plan(net="none"), PATHS)
    assert "--host-uds=open" not in offline and oci.PROXY_DIR not in by_target(oci.config(gv_plan(net="none"),
                                                                                           PATHS))


def test_launch_config_carries_what_the_launcher_needs():
    plan = gv_plan()
    launch = oci.launch_config(plan, b"\0" * 8, {"A": "1"}, [2], 317)
    assert launch["argv"] == ["true"] and launch["env"] == {"A": "1"} and launch["seccomp"] == b"\0" * 8
    assert launch["proxy"] == {"port": 3128, "socket": f"{oci.PROXY_DIR}/{oci.PROXY_SOCKET_NAME}",
                               "alive": f"{oci.PROXY_DIR}/{oci.ALIVE_SOCKET_NAME}"}
    assert oci.launch_config(gv_plan(net="none"), None, {}, [], 317)["proxy"] is None


def test_dry_paths_only_name_what_the_plan_needs():
    paths = oci.dry_paths(gv_plan(net="none"))
    assert paths.proxy is None and paths.secrets is None and paths.rootfs == "{run}/rootfs"


# ------------------------------------------------------------------ runsc's log and doctor
def test_first_error_of_a_concatenated_runsc_log():
    text = ('{"msg":"error setting up FS: mounting /etc/gshadow: permission denied","level":"error","time":"t"}'
            '{"msg":"Error reading mounts file","level":"error","time":"t"}\n'
            '{"msg":"running container: cannot create sandbox","level":"error","time":"t"}')
    assert first_error(text) == "error setting up FS: mounting /etc/gshadow: permission denied"
    assert first_error('{"msg":"just info","level":"info"}') is None
    assert first_error("") is None and first_error("garbage {not json") is None


PROBE = {
    "version": "0.0~20221219.0", "platform": "ptrace",
    "platforms": {
        "ptrace": {"platform": "ptrace", "ok": True, "ms": 300,
                   "inside": {"landlock": "ENOSYS", "seccomp_mode": "2", "seccomp_listener": "EINVAL",
                              "stat_no_automount": "EINVAL"}},
        "kvm": {"platform": "kvm", "ok": False, "error": "no answer within 5s"},
    },
}


def test_doctor_reports_what_the_probe_measured():
    result = gvisor_check.assess_gvisor("/usr/bin/runsc", PROBE)
    assert result.status == OK and "platform ptrace" in result.found
    rows = {row["feature"]: row for row in result.details}
    assert rows["Landlock (second file-system wall, exec.allow)"]["here"] == "no"
    assert "ENOSYS" in rows["Landlock (second file-system wall, exec.allow)"]["how"]
    assert rows["seccomp baseline"]["here"] == "yes"
    notify = next(r for f, r in rows.items() if f.startswith("seccomp user notification"))
    assert notify["here"] == "no" and "EINVAL" in notify["how"]
    assert rows["network: host"]["here"] == "no" and rows["platform kvm"]["here"] == "no"
    assert rows["platform ptrace"]["here"] == "yes"
    assert "network: host" in result.found  # listed as not available


def test_doctor_without_runsc_or_without_a_working_platform_only_warns():
    absent = gvisor_check.assess_gvisor(None, None)
    assert absent.status == WARN and "apt-get install runsc" in absent.remedy
    broken = gvisor_check.assess_gvisor("/usr/bin/runsc", {"platform": None, "platforms": {
        "ptrace": {"ok": False, "error": "boom"}}})
    assert broken.status == WARN and "boom" in broken.found
    assert all(row["here"] in ("?", "no") for row in broken.details if row["feature"] != "network: host")


def test_dry_run_prints_the_bundle_not_the_bwrap_argv(workspace, capsys):
    from sandboxctl.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(["run", "--backend", "gvisor", "--dry-run", "--json", "-w", str(workspace), "--env", "X_SECRET=v4lue",
              "--", "true"])
    captured = capsys.readouterr()
    out = captured.out
    assert info.value.code == 0, captured.err
    data = json.loads(out)
    assert data["backend"] == "gvisor" and "bwrap_argv" not in data
    assert data["oci_config"]["process"]["env"] == [] and data["runsc_argv"][-1] == f"sandboxctl-{data['run_id']}"
    assert "v4lue" not in out  # a credential-looking value is redacted, and never in the bundle


def test_the_runtime_dir_of_gvisor_runs_is_masked_wherever_it_is_granted():
    """It holds other runs' bundles and file secrets: never visible, like the state dir."""
    from sandboxctl.plan.build import build_plan
    from sandboxctl.plan.inputs import Invocation
    from sandboxctl.policy.discover import load_named
    from tests.unit.test_plan import BASE_FILES, fake_facts

    shm = "/dev/shm/sandboxctl-1000"
    facts = fake_facts({**BASE_FILES, "/dev/shm": "dir", shm: "dir"})._replace(runtime_dirs=(shm,))
    for backend in ("bwrap", "gvisor"):
        inv = Invocation(command=("true",), workspace=WS, run_id="r1", allow_read=("/dev/shm",), backend=backend)
        plan = build_plan(load_named("default").policy, inv, facts)
        assert ("mask-dir", shm) in [(m.kind, m.target) for m in plan.mounts]
