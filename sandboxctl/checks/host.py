"""The rest of the host: cgroups for limits, the private state dir, the launcher's Python."""

from __future__ import annotations

import os
import sys
import tempfile

from sandboxctl.checks.common import FAIL, OK, WARN, CheckResult, current_user, read_file


def cgroup_layout(mountinfo: str) -> tuple[str, str | None]:
    """('unified'|'hybrid'|'legacy'|'none', the cgroup2 mount point or None) from /proc/self/mountinfo."""
    types: dict[str, str] = {}
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        parts = left.split()
        if not sep or len(parts) < 5:
            continue
        types[parts[4].replace("\\040", " ")] = right.split()[0]
    if types.get("/sys/fs/cgroup") == "cgroup2":
        return "unified", "/sys/fs/cgroup"
    if types.get("/sys/fs/cgroup/unified") == "cgroup2":
        return "hybrid", "/sys/fs/cgroup/unified"
    v2 = sorted(m for m, t in types.items() if t == "cgroup2")
    if v2:
        return "unified", v2[0]
    if any(t == "cgroup" for t in types.values()):
        return "legacy", None
    return "none", None


def own_cgroup(proc_self_cgroup: str) -> str | None:
    for line in proc_self_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def assess_cgroup(layout: str, path: str | None, controllers: set[str] | None, subtree: set[str] | None,
                  writable: bool, user: str) -> CheckResult:
    """A memory limit is enforced per sandbox by a cgroup when one is delegated, else by RLIMIT_AS."""
    fallback = "memory limits via RLIMIT_AS (address space; coarser)"
    names = {"unified": "cgroup v2 (unified)", "hybrid": "hybrid cgroups (v1 controllers, v2 at "
             "/sys/fs/cgroup/unified)", "legacy": "cgroup v1 only", "none": "no cgroup file system"}
    layout_text = names.get(layout, layout)
    if layout in ("legacy", "none") or path is None:
        if path is None and layout not in ("legacy", "none"):
            layout_text += ", but this process is in no cgroup v2 group"
        return CheckResult("cgroup", WARN, f"{layout_text}: {fallback}",
                           "boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1 on the kernel command line)")
    ctl = " ".join(sorted(controllers)) if controllers else "none"
    sub = " ".join(sorted(subtree)) if subtree else "none"
    where = f"{layout_text}; this process's cgroup {path}: controllers {ctl}; enabled for children {sub}; " \
            f"{'writable' if writable else 'not writable'} by {user}"
    if controllers and "memory" in controllers and writable:
        return CheckResult("cgroup", OK, f"{where}: memory limits via cgroup")
    if layout == "hybrid" and not (controllers and "memory" in controllers):
        remedy = ("the memory controller is on cgroup v1; boot with cgroup v2 only "
                  "(systemd.unified_cgroup_hierarchy=1 on the kernel command line)")
    else:
        remedy = ("delegate the memory controller to your user: a systemd drop-in "
                  "/etc/systemd/system/user@.service.d/delegate.conf with [Service] Delegate=cpu io memory pids, "
                  "then sudo systemctl daemon-reload and log in again")
    return CheckResult("cgroup", WARN, f"{where}: {fallback}", remedy)


def check_cgroup() -> CheckResult:
    """A memory limit is enforced per sandbox by a cgroup when one is delegated, else by RLIMIT_AS."""
    from sandboxctl.supervise.cgroups import detect

    used = detect()  # exactly what `run` will use
    if used is not None:
        where = ", ".join(sorted(set(used.parents.values())))
        return CheckResult("cgroup", OK, f"per-run cgroups ({used.version}) under {where}: "
                                         "pids and memory limits via cgroup")
    user, _uid = current_user()
    layout, mount = cgroup_layout(read_file("/proc/self/mountinfo") or "")
    rel = own_cgroup(read_file("/proc/self/cgroup") or "")
    if mount is None or rel is None:
        return assess_cgroup(layout, None, None, None, False, user)
    directory = os.path.normpath(mount + "/" + rel.lstrip("/"))
    controllers = read_file(os.path.join(directory, "cgroup.controllers"))
    subtree = read_file(os.path.join(directory, "cgroup.subtree_control"))
    writable = os.access(directory, os.W_OK) and os.access(os.path.join(directory, "cgroup.procs"), os.W_OK)
    return assess_cgroup(layout, directory,
                         set(controllers.split()) if controllers is not None else None,
                         set(subtree.split()) if subtree is not None else None, writable, user)


def assess_state_dir(path: str, error: str | None) -> CheckResult:
    """The trust store and the action log live here; a run that cannot log does not start."""
    if error:
        return CheckResult("state-dir", FAIL, f"{path}: {error}",
                           "fix the permissions of that directory (it must belong to you, mode 0700), "
                           "or set XDG_STATE_HOME to a directory you own")
    return CheckResult("state-dir", OK, f"{path}: private to this user and writable")


def check_state_dir() -> CheckResult:
    """The trust store and the action log live here; a run that cannot log does not start."""
    from sandboxctl.errors import SandboxError
    from sandboxctl.paths import ensure_private_dir, state_dir

    path = state_dir()
    try:
        ensure_private_dir(path)
        fd, name = tempfile.mkstemp(prefix=".doctor-", dir=path)
        os.close(fd)
        os.unlink(name)
    except SandboxError as exc:
        return assess_state_dir(str(path), exc.message)
    except OSError as exc:
        return assess_state_dir(str(path), exc.strerror or str(exc))
    return assess_state_dir(str(path), None)


def assess_shim_python(executable: str, real: str, prefix: str) -> CheckResult:
    """The launcher inside the sandbox runs on this interpreter, so the sandbox must see it."""
    shown = executable if executable == real else f"{executable} → {real}"
    if real.startswith("/usr/"):
        return CheckResult("shim-python", OK, f"{shown}: under /usr, visible through the base policy")
    return CheckResult("shim-python", OK, f"{shown}: not under /usr; every sandbox also gets {prefix} "
                       "read-only so that the launcher can start")


def check_shim_python() -> CheckResult:
    """The launcher inside the sandbox runs on this interpreter, so the sandbox must see it."""
    return assess_shim_python(sys.executable, os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix))
