"""`sandboxctl doctor`: the command on this machine, and the interpretation of fake machines."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from sandboxctl.checks import common, doctor, host, namespaces
from sandboxctl.checks import landlock as landlock_check
from sandboxctl.checks import seccomp as seccomp_check
from sandboxctl.checks.common import FAIL, OK, WARN, CheckResult
from sandboxctl.checks.seccomp import SeccompFacts
from sandboxctl.cli.main import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


# ------------------------------------------------------------------ the real machine
def test_doctor_passes_on_this_machine(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["doctor"], capsys)
    assert code == 0, out + err
    for name in doctor.CHECK_NAMES:
        assert name in out
    assert "sandboxctl run will work here" in out
    assert "checked as" in out


def test_doctor_json_has_every_check(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run_cli(["doctor", "--json"], capsys)
    data = json.loads(out)
    assert code == 0
    assert data["ok"] is True
    assert data["uid"] == os.getuid()
    assert [c["name"] for c in data["checks"]] == list(doctor.CHECK_NAMES)
    for check in data["checks"]:
        assert check["status"] in (OK, WARN, FAIL)
        assert check["found"]
        assert set(check) == {"name", "status", "found", "remedy", "details"}
        if check["status"] != OK:
            assert check["remedy"]
    by_name = {c["name"]: c for c in data["checks"]}
    assert "Landlock ABI" in by_name["landlock"]["found"]
    assert len(by_name["landlock"]["details"]) == len(landlock_check.LANDLOCK_FEATURES)
    assert "libseccomp" in by_name["seccomp"]["found"]
    assert "memory limits via" in by_name["cgroup"]["found"]


def test_doctor_state_dir_is_the_private_one(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_cli(["doctor", "--json"], capsys)
    state = Path(os.environ["XDG_STATE_HOME"]) / "sandboxctl"
    assert state.is_dir()
    assert state.stat().st_mode & 0o777 == 0o700
    assert list(state.iterdir()) == []  # the write probe leaves nothing behind


def test_doctor_without_bwrap_exits_1(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    code, out, _err = run_cli(["doctor", "--json"], capsys)
    data = json.loads(out)
    assert code == 1
    assert data["ok"] is False
    by_name = {c["name"]: c for c in data["checks"]}
    assert by_name["bubblewrap"]["status"] == FAIL
    assert "sudo apt-get install bubblewrap" in by_name["bubblewrap"]["remedy"]
    assert by_name["user-namespaces"]["status"] == WARN
    assert "not checked" in by_name["user-namespaces"]["found"]


def test_table_output_names_the_failure(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    code, out, _err = run_cli(["doctor"], capsys)
    assert code == 1
    assert "will not work" in out
    assert "bubblewrap" in out
    assert "sudo apt-get install bubblewrap" in out


def test_real_libseccomp_version() -> None:
    import pyseccomp

    version = seccomp_check.libseccomp_version(pyseccomp)
    assert version is not None and version >= (2, 0, 0)


def test_exit_code_ignores_warnings() -> None:
    ok = CheckResult("a", OK, "fine")
    warn = CheckResult("b", WARN, "weaker", "do this")
    fail = CheckResult("c", FAIL, "broken", "do that")
    assert doctor.exit_code([ok, warn]) == 0
    assert doctor.exit_code([ok, warn, fail]) == 1


# ------------------------------------------------------------------ bubblewrap
def test_bwrap_missing_fails_with_install_hint() -> None:
    result = namespaces.assess_bwrap(None)
    assert result.status == FAIL
    assert "sudo apt-get install bubblewrap" in result.remedy


def test_bwrap_present_reports_version() -> None:
    result = namespaces.assess_bwrap("/usr/bin/bwrap", 0, "bubblewrap 0.8.0\n",
                                 "\n".join(f"    {o} ARG   text" for o in namespaces.REQUIRED_BWRAP_OPTIONS))
    assert result.status == OK
    assert "bubblewrap 0.8.0" in result.found


def test_bwrap_too_old_fails() -> None:
    help_text = "\n".join(f"    {o}  text" for o in namespaces.REQUIRED_BWRAP_OPTIONS
                          if o not in ("--clearenv", "--perms"))
    result = namespaces.assess_bwrap("/usr/bin/bwrap", 0, "bubblewrap 0.4.0", help_text)
    assert result.status == FAIL
    assert "--clearenv" in result.found and "--perms" in result.found
    assert "upgrade" in result.remedy


def test_bwrap_that_does_not_run_fails() -> None:
    result = namespaces.assess_bwrap("/usr/bin/bwrap", 126, "Permission denied")
    assert result.status == FAIL


# ------------------------------------------------------------------ user namespaces
NO_LIMITS: dict[str, int | None] = {
    "kernel.unprivileged_userns_clone": None,
    "user.max_user_namespaces": 63000,
    "kernel.apparmor_restrict_unprivileged_userns": None,
}


def test_userns_ok_as_user_names_the_user() -> None:
    result = namespaces.assess_userns("/usr/bin/bwrap", 0, "", 1000, "alice", NO_LIMITS)
    assert result.status == OK
    assert "alice (uid 1000)" in result.found
    assert "root" not in result.found


def test_userns_ok_as_root_says_so() -> None:
    result = namespaces.assess_userns("/usr/bin/bwrap", 0, "", 0, "root", NO_LIMITS)
    assert result.status == OK
    assert "checked as root" in result.found


def test_userns_apparmor_restriction_fails_with_remedy() -> None:
    sysctls = {**NO_LIMITS, "kernel.apparmor_restrict_unprivileged_userns": 1}
    stderr = "bwrap: setting up uid map: Permission denied\n"
    result = namespaces.assess_userns("/usr/bin/bwrap", 1, stderr, 1000, "alice", sysctls)
    assert result.status == FAIL
    assert "setting up uid map: Permission denied" in result.found
    assert "alice (uid 1000)" in result.found
    assert "/etc/apparmor.d/bwrap" in result.remedy
    assert "userns," in result.remedy
    assert "profile bwrap /usr/bin/bwrap" in result.remedy
    assert "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0" in result.remedy
    assert "Trade-off" in result.remedy


def test_userns_apparmor_restriction_with_a_profile_is_ok() -> None:
    sysctls = {**NO_LIMITS, "kernel.apparmor_restrict_unprivileged_userns": 1}
    result = namespaces.assess_userns("/usr/bin/bwrap", 0, "", 1000, "alice", sysctls)
    assert result.status == OK
    assert "AppArmor" in result.found


def test_userns_root_warns_when_unprivileged_users_are_blocked() -> None:
    sysctls = {**NO_LIMITS, "kernel.apparmor_restrict_unprivileged_userns": 1}
    result = namespaces.assess_userns("/usr/bin/bwrap", 0, "", 0, "root", sysctls)
    assert result.status == WARN
    assert "unprivileged" in result.found
    assert "/etc/apparmor.d/bwrap" in result.remedy


def test_userns_debian_sysctl() -> None:
    sysctls = {**NO_LIMITS, "kernel.unprivileged_userns_clone": 0}
    result = namespaces.assess_userns("/usr/bin/bwrap", 1, "bwrap: No permissions to creating new namespace", 1000,
                                  "alice", sysctls)
    assert result.status == FAIL
    assert "sysctl -w kernel.unprivileged_userns_clone=1" in result.remedy


def test_userns_max_zero() -> None:
    sysctls = {**NO_LIMITS, "user.max_user_namespaces": 0}
    stderr = "bwrap: Creating new namespace failed: No space left on device"
    result = namespaces.assess_userns("/usr/bin/bwrap", 1, stderr, 1000, "alice", sysctls)
    assert result.status == FAIL
    assert "user.max_user_namespaces=15000" in result.remedy


def test_userns_unknown_cause_lists_the_usual_suspects() -> None:
    stderr = "bwrap: Creating new namespace failed: Operation not permitted"
    result = namespaces.assess_userns("/usr/bin/bwrap", 1, stderr, 1000, "alice", NO_LIMITS, in_container=True)
    assert result.status == FAIL
    assert "Operation not permitted" in result.found
    assert "apparmor_restrict_unprivileged_userns" in result.remedy
    assert "container" in result.remedy


def test_userns_timeout_fails() -> None:
    result = namespaces.assess_userns("/usr/bin/bwrap", None, "", 1000, "alice", NO_LIMITS)
    assert result.status == FAIL
    assert "timed out" in result.found


def test_userns_not_checked_without_bwrap() -> None:
    result = namespaces.assess_userns(None, None, "", 1000, "alice", NO_LIMITS)
    assert result.status == WARN
    assert "not checked" in result.found


# ------------------------------------------------------------------ Landlock
def test_landlock_abi_0_fails_with_remedy() -> None:
    result = landlock_check.assess_landlock(0, "lockdown,capability,yama,apparmor\n")
    assert result.status == FAIL
    assert "landlock is not in it" in result.found
    assert "lsm=lockdown,capability,yama,apparmor,landlock" in result.remedy
    assert "5.13" in result.remedy
    assert "landlock: best-effort" in result.remedy


def test_landlock_abi_0_with_unknown_lsm_list() -> None:
    result = landlock_check.assess_landlock(0, None)
    assert result.status == FAIL
    assert "lsm=...,landlock" in result.remedy


def test_landlock_abi_3_warns() -> None:
    result = landlock_check.assess_landlock(3, "capability,landlock,yama\n")
    assert result.status == WARN
    assert "ABI 3" in result.found
    assert "TCP bind/connect rules" in result.found
    here = {row["ABI"]: row["here"] for row in result.details}
    assert here["≥ 1"] == here["≥ 3"] == "yes"
    assert here["≥ 4"] == here["≥ 7"] == "no"
    assert "landlock is not in it" not in result.found


def test_landlock_abi_6_and_later_ok() -> None:
    assert landlock_check.assess_landlock(6, None).status == OK
    result = landlock_check.assess_landlock(9, "landlock")
    assert result.status == OK
    assert all(row["here"] == "yes" for row in result.details)


def test_landlock_binding_missing_fails() -> None:
    result = landlock_check.assess_landlock(0, None, "ModuleNotFoundError: No module named 'landlockpy'")
    assert result.status == FAIL
    assert "landlockpy" in result.remedy


# ------------------------------------------------------------------ seccomp
GOOD_SECCOMP = SeccompFacts(
    kernel="6.8.0-45-generic", status_mode="0", status_filters="0", prctl=0,
    actions=frozenset(["kill_process", "kill_thread", "trap", "errno", "user_notif", "trace", "log", "allow"]),
    lib_version=(2, 5, 4), api=6, baseline_rules=180, baseline_bytes=2720, load_tried=True,
)


def test_seccomp_good() -> None:
    result = seccomp_check.assess_seccomp(GOOD_SECCOMP)
    assert result.status == OK
    assert "libseccomp 2.5.4, API level 6" in result.found
    assert "6.8.0-45-generic" in result.found
    assert "loaded by bwrap" in result.found


def test_seccomp_without_libseccomp_fails() -> None:
    result = seccomp_check.assess_seccomp(replace(GOOD_SECCOMP, import_error="RuntimeError: Unable to find libseccomp"))
    assert result.status == FAIL
    assert "libseccomp2" in result.remedy


def test_seccomp_kernel_without_seccomp_fails() -> None:
    facts = replace(GOOD_SECCOMP, prctl=None, prctl_errno=22, status_mode=None, status_filters=None)
    result = seccomp_check.assess_seccomp(facts)
    assert result.status == FAIL
    assert "CONFIG_SECCOMP" in result.remedy


def test_seccomp_baseline_that_does_not_compile_fails() -> None:
    result = seccomp_check.assess_seccomp(replace(GOOD_SECCOMP, compile_error="seccomp: unknown system call 'fsmount'"))
    assert result.status == FAIL
    assert "fsmount" in result.found


def test_seccomp_filter_that_bwrap_cannot_load_fails() -> None:
    facts = replace(GOOD_SECCOMP, load_error="bwrap: prctl(PR_SET_SECCOMP): Invalid argument")
    result = seccomp_check.assess_seccomp(facts)
    assert result.status == FAIL
    assert "Invalid argument" in result.found


def test_seccomp_old_api_warns_about_notification() -> None:
    result = seccomp_check.assess_seccomp(replace(GOOD_SECCOMP, api=5, lib_version=(2, 4, 4)))
    assert result.status == WARN
    assert "user notification" in result.found
    here = {row["feature"]: row["here"] for row in result.details}
    assert here["user notification (approvals)"] == "no"


def test_seccomp_old_kernel_has_no_addfd_send() -> None:
    result = seccomp_check.assess_seccomp(replace(GOOD_SECCOMP, kernel="5.10.0-28-amd64"))
    assert result.status == WARN
    here = {row["feature"]: row["here"] for row in result.details}
    assert here["user notification (approvals)"] == "yes"
    assert here["ADDFD with SEND (hand over an approved file)"] == "no"
    assert here[seccomp_check.FREEZE_FEATURE] == "no"


def test_seccomp_kernel_before_5_19_cannot_freeze_for_a_prompt() -> None:
    result = seccomp_check.assess_seccomp(replace(GOOD_SECCOMP, kernel="5.15.0-91-generic"))
    assert result.status == WARN and "approval.via: socket" in result.remedy
    here = {row["feature"]: row["here"] for row in result.details}
    assert here["ADDFD with SEND (hand over an approved file)"] == "yes"
    assert here[seccomp_check.FREEZE_FEATURE] == "no"
    assert seccomp_check.FREEZE_FEATURE in result.found


def test_seccomp_nested_filters_are_mentioned() -> None:
    result = seccomp_check.assess_seccomp(replace(GOOD_SECCOMP, status_mode="2", status_filters="1"))
    assert result.status == OK
    assert "already under 1 filter" in result.found


def test_kernel_version_parse() -> None:
    assert common.kernel_version("6.18.44-fc-v782") == (6, 18, 44)
    assert common.kernel_version("5.4-rc1") == (5, 4, 0)
    assert common.kernel_version("weird") == (0, 0, 0)


# ------------------------------------------------------------------ cgroup
UNIFIED = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"
HYBRID = (
    "25 24 0:22 / /sys/fs/cgroup rw,nosuid shared:9 - tmpfs tmpfs rw,mode=755\n"
    "26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n"
    "28 25 0:25 / /sys/fs/cgroup/memory rw,nosuid shared:12 - cgroup cgroup rw,memory\n"
)
LEGACY = (
    "25 24 0:22 / /sys/fs/cgroup rw,nosuid shared:9 - tmpfs tmpfs rw,mode=755\n"
    "28 25 0:25 / /sys/fs/cgroup/memory rw,nosuid shared:12 - cgroup cgroup rw,memory\n"
)


def test_cgroup_layouts() -> None:
    assert host.cgroup_layout(UNIFIED) == ("unified", "/sys/fs/cgroup")
    assert host.cgroup_layout(HYBRID) == ("hybrid", "/sys/fs/cgroup/unified")
    assert host.cgroup_layout(LEGACY) == ("legacy", None)
    assert host.cgroup_layout("") == ("none", None)


def test_own_cgroup() -> None:
    assert host.own_cgroup("4:memory:/x\n0::/user.slice/user-1000.slice/session-2.scope\n") == \
        "/user.slice/user-1000.slice/session-2.scope"
    assert host.own_cgroup("4:memory:/x\n") is None


def test_cgroup_delegated_memory_is_ok() -> None:
    result = host.assess_cgroup("unified", "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service",
                                  {"cpu", "memory", "pids"}, {"memory", "pids"}, True, "alice")
    assert result.status == OK
    assert "memory limits via cgroup" in result.found


def test_cgroup_not_delegated_warns() -> None:
    result = host.assess_cgroup("unified", "/sys/fs/cgroup/user.slice", {"cpu", "memory"}, set(), False, "alice")
    assert result.status == WARN
    assert "memory limits via RLIMIT_AS (address space; coarser)" in result.found
    assert "Delegate=" in result.remedy


def test_cgroup_hybrid_warns() -> None:
    result = host.assess_cgroup("hybrid", "/sys/fs/cgroup/unified", set(), set(), True, "root")
    assert result.status == WARN
    assert "RLIMIT_AS" in result.found
    assert "systemd.unified_cgroup_hierarchy=1" in result.remedy


def test_cgroup_legacy_warns() -> None:
    result = host.assess_cgroup("legacy", None, None, None, False, "alice")
    assert result.status == WARN


# ------------------------------------------------------------------ state dir, shim python
def test_state_dir_unwritable_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocker / "state"))  # under a file: not creatable, even by root
    result = host.check_state_dir()
    assert result.status == FAIL
    assert "XDG_STATE_HOME" in result.remedy


def test_state_dir_ok(home: Path) -> None:
    result = host.check_state_dir()
    assert result.status == OK


def test_shim_python_is_informational() -> None:
    under = host.assess_shim_python("/venv/bin/python", "/usr/bin/python3.11", "/usr")
    assert under.status == OK and "under /usr" in under.found
    outside = host.assess_shim_python("/opt/py/bin/python3", "/opt/py/bin/python3.12", "/opt/py")
    assert outside.status == OK and "/opt/py read-only" in outside.found


def test_overlay_check_says_what_works_and_what_to_do():
    from sandboxctl.checks.common import OK, WARN
    from sandboxctl.checks.overlay import assess_overlay

    good = assess_overlay(None, "ext4", "6.18.0")
    assert good.status == OK and "ext4" in good.found
    old = assess_overlay("the kernel refused an unprivileged overlayfs mount", "ext4", "5.10.0")
    assert old.status == WARN and "5.11" in old.remedy
    fs = assess_overlay("overlayfs refused the run's layer", "overlay", "6.18.0")
    assert fs.status == WARN and "XDG_STATE_HOME" in fs.remedy
