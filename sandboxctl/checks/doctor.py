"""`sandboxctl doctor`: can this machine run a sandbox, and if not, what to do about it.

Each check (one module per subject in this package) returns a CheckResult (name, ok|warn|fail,
what was found, the remedy). A `fail` means `sandboxctl run` with the built-in `default` policy
would not start; a `warn` means it would, with something weaker or missing.
"""

from __future__ import annotations

import os
from dataclasses import asdict

from sandboxctl.checks.common import FAIL, CheckResult, current_user
from sandboxctl.checks.gvisor import check_gvisor
from sandboxctl.checks.host import check_cgroup, check_shim_python, check_state_dir
from sandboxctl.checks.landlock import check_landlock
from sandboxctl.checks.namespaces import check_bwrap, check_userns
from sandboxctl.checks.overlay import check_overlay
from sandboxctl.checks.seccomp import check_seccomp
from sandboxctl.supervise.spawn import which  # absolute PATH entries only: never the workspace

CHECK_NAMES = ("bubblewrap", "user-namespaces", "landlock", "seccomp", "cgroup", "state-dir", "shim-python", "gvisor",
               "overlay")


def run_checks() -> list[CheckResult]:
    bwrap = check_bwrap()
    path = which("bwrap")
    userns = check_userns(path)
    return [
        bwrap,
        userns,
        check_landlock(),
        check_seccomp(path, bool(path) and userns.status != FAIL),
        check_cgroup(),
        check_state_dir(),
        check_shim_python(),
        check_gvisor(),
        check_overlay(),
    ]


def exit_code(results: list[CheckResult]) -> int:
    """0 when `sandboxctl run` would work with the `default` policy (warnings allowed), else 1."""
    return 1 if any(r.status == FAIL for r in results) else 0


def to_json(results: list[CheckResult]) -> dict:
    user, uid = current_user()
    return {
        "ok": exit_code(results) == 0,
        "user": user,
        "uid": uid,
        "kernel": os.uname().release,
        "checks": [asdict(r) for r in results],
    }
