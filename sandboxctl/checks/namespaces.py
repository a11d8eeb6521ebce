"""bubblewrap and the user namespaces it creates: without both, no sandbox starts."""

from __future__ import annotations

import os
import re
import stat

from sandboxctl.checks.common import FAIL, OK, WARN, CheckResult, current_user, read_int, run_probe, true_binary
from sandboxctl.supervise.spawn import which  # absolute PATH entries only: never the workspace

# Every bubblewrap option that launch/bwrap.py may put on a `default` policy's command line.
REQUIRED_BWRAP_OPTIONS = (
    "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
    "--unshare-net", "--die-with-parent", "--cap-drop", "--clearenv", "--hostname", "--ro-bind",
    "--bind", "--tmpfs", "--dev", "--proc", "--symlink", "--perms", "--remount-ro", "--chdir",
    "--seccomp", "--info-fd",
)

USERNS_PROBE = ("--unshare-user", "--unshare-pid", "--unshare-net", "--ro-bind", "/", "/",
                "--dev", "/dev", "--proc", "/proc")

SYSCTL_FILES = {
    "kernel.unprivileged_userns_clone": "/proc/sys/kernel/unprivileged_userns_clone",
    "user.max_user_namespaces": "/proc/sys/user/max_user_namespaces",
    "kernel.apparmor_restrict_unprivileged_userns": "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
}


def assess_bwrap(path: str | None, version_rc: int | None = 0, version_out: str = "",
                 help_text: str = "", setuid: bool = False) -> CheckResult:
    """bubblewrap builds the namespaces and the mount tree: without it nothing runs."""
    if not path:
        return CheckResult("bubblewrap", FAIL, "bwrap is not on PATH",
                           "sudo apt-get install bubblewrap (Fedora: sudo dnf install bubblewrap; "
                           "Arch: sudo pacman -S bubblewrap)")
    if version_rc != 0:
        return CheckResult("bubblewrap", FAIL, f"{path} does not run: {version_out.strip() or 'no output'}",
                           "reinstall bubblewrap: sudo apt-get install --reinstall bubblewrap")
    version = version_out.strip() or "unknown version"
    found = f"{path}: {version}" + (" (installed setuid root)" if setuid else "")
    missing = [opt for opt in REQUIRED_BWRAP_OPTIONS if help_text and not re.search(
        rf"(^|\s){re.escape(opt)}(\s|$)", help_text, re.M)]
    if missing:
        return CheckResult("bubblewrap", FAIL, f"{found}; lacks {', '.join(missing)}",
                           "upgrade bubblewrap (0.5.0 or newer has every option sandboxctl uses)")
    return CheckResult("bubblewrap", OK, found)


def check_bwrap() -> CheckResult:
    """bubblewrap builds the namespaces and the mount tree: without it nothing runs."""
    path = which("bwrap")
    if not path:
        return assess_bwrap(None)
    rc, out, err = run_probe([path, "--version"])
    help_rc, help_out, help_err = run_probe([path, "--help"])
    try:
        setuid = bool(os.stat(path).st_mode & stat.S_ISUID)
    except OSError:
        setuid = False
    return assess_bwrap(path, rc, out if rc == 0 else (err or out), help_out + help_err if help_rc == 0 else "",
                        setuid)


def read_userns_sysctls() -> dict[str, int | None]:
    return {name: read_int(path) for name, path in SYSCTL_FILES.items()}


def apparmor_remedy(bwrap: str) -> str:
    return (
        "AppArmor blocks unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1, "
        "the Ubuntu 24.04+ default). Either:\n"
        f"  (a) allow bubblewrap alone: create /etc/apparmor.d/bwrap containing\n"
        "        abi <abi/4.0>,\n"
        "        include <tunables/global>\n"
        f"        profile bwrap {bwrap} flags=(unconfined) {{\n"
        "          userns,\n"
        "          include if exists <local/bwrap>\n"
        "        }\n"
        "      then: sudo apparmor_parser -r /etc/apparmor.d/bwrap\n"
        "      Trade-off: any program that can run bwrap gets user namespaces through it (that is bwrap's "
        "job); every other program stays restricted.\n"
        "  (b) or lift the restriction: sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 "
        "(persist it in /etc/sysctl.d/)\n"
        "      Trade-off: every unprivileged program regains user namespaces, re-opening the kernel attack "
        "surface that Ubuntu closed; prefer (a)."
    )


def _userns_blockers(sysctls: dict[str, int | None], bwrap: str, stderr: str = "") -> list[str]:
    """Remedies for each restriction the sysctls (or bwrap's message) point at."""
    remedies = []
    if sysctls.get("user.max_user_namespaces") == 0 or "No space left on device" in stderr:
        remedies.append("user.max_user_namespaces=0 allows no user namespaces at all: "
                        "sudo sysctl -w user.max_user_namespaces=15000 (persist it in /etc/sysctl.d/)")
    if sysctls.get("kernel.unprivileged_userns_clone") == 0:
        remedies.append("kernel.unprivileged_userns_clone=0 (older Debian kernels) keeps them from unprivileged "
                        "users: sudo sysctl -w kernel.unprivileged_userns_clone=1 (persist it in /etc/sysctl.d/)")
    if sysctls.get("kernel.apparmor_restrict_unprivileged_userns") == 1:
        remedies.append(apparmor_remedy(bwrap))
    return remedies


def assess_userns(bwrap: str | None, returncode: int | None, stderr: str, uid: int, user: str,
                  sysctls: dict[str, int | None], in_container: bool = False) -> CheckResult:
    """The sandbox is a set of namespaces that bwrap creates as the calling user: they must really work."""
    who = f"{user} (uid {uid})"
    if not bwrap:
        return CheckResult("user-namespaces", WARN, "not checked: bubblewrap is missing",
                           "install bubblewrap, then run sandboxctl doctor again")
    as_root = uid == 0
    root_note = ("; checked as root, which may create namespaces where unprivileged users cannot: "
                 "run sandboxctl doctor as the user who will run sandboxctl") if as_root else ""
    settings = ", ".join(f"{k}={v}" for k, v in sysctls.items() if v is not None) or "no restricting sysctls"
    if returncode == 0:
        found = f"bwrap created user, PID and network namespaces as {who} ({settings}){root_note}"
        if as_root:
            blocked = [r for r in _userns_blockers(sysctls, bwrap) if "max_user_namespaces" not in r]
            if blocked:
                return CheckResult("user-namespaces", WARN,
                                   f"works as {who}, but unprivileged users are restricted ({settings})",
                                   "for unprivileged users: " + "\n".join(blocked))
        elif sysctls.get("kernel.apparmor_restrict_unprivileged_userns") == 1:
            found += "; AppArmor restricts user namespaces, but a profile lets bwrap create them"
        return CheckResult("user-namespaces", OK, found)
    message = " ".join(stderr.split()) or ("timed out" if returncode is None else f"exit status {returncode}")
    found = f"as {who}, bwrap could not create the sandbox's namespaces: {message} ({settings})"
    remedies = _userns_blockers(sysctls, bwrap, stderr)
    if not remedies:
        remedies = ["no restricting sysctl found; check kernel.unprivileged_userns_clone (older Debian), "
                    "user.max_user_namespaces and, on Ubuntu 24.04+, "
                    "kernel.apparmor_restrict_unprivileged_userns"]
        if in_container:
            remedies.append("this looks like a container: its runtime may forbid namespaces (Docker's default "
                            "seccomp profile does); run sandboxctl on the host, or give the container "
                            "--security-opt seccomp=unconfined --security-opt apparmor=unconfined")
    return CheckResult("user-namespaces", FAIL, found, "\n".join(remedies))


def _in_container() -> bool:
    if os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv"):
        return True
    return bool(os.environ.get("container"))  # noqa: SIM112 (systemd's lower-case convention)


def check_userns(bwrap: str | None) -> CheckResult:
    """The sandbox is a set of namespaces that bwrap creates as the calling user: they must really work."""
    user, uid = current_user()
    sysctls = read_userns_sysctls()
    if not bwrap:
        return assess_userns(None, None, "", uid, user, sysctls)
    rc, _out, err = run_probe([bwrap, *USERNS_PROBE, "--", true_binary()])
    return assess_userns(bwrap, rc, err, uid, user, sysctls, _in_container())
