"""`sandboxctl doctor`: can this machine run a sandbox, and if not, what to do about it.

Each check is one function returning a CheckResult (name, ok|warn|fail, what was found, the
remedy). A check is split in two: a small impure part that looks at the machine, and an
`assess_*` function that only interprets what was seen, so tests can feed it any machine.
A `fail` means `sandboxctl run` with the built-in `default` policy would not start; a `warn`
means it would, with something weaker or missing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field

OK, WARN, FAIL = "ok", "warn", "fail"
PROBE_TIMEOUT_S = 5.0

CHECK_NAMES = ("bubblewrap", "user-namespaces", "landlock", "seccomp", "cgroup", "state-dir", "shim-python", "gvisor")

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

LANDLOCK_FEATURES = (
    (1, "file-system rules (what `landlock: required` needs)"),
    (2, "cross-directory rename/link control (REFER)"),
    (3, "truncate control"),
    (4, "TCP bind/connect rules"),
    (5, "device ioctl control"),
    (6, "signal and abstract-UNIX-socket scoping (`network: host` policies need it)"),
    (7, "audit logging control"),
    (9, "UNIX socket path rules (RESOLVE_UNIX): the kernel checks network.unix; below, the supervisor "
        "performs every connect() itself"),
)
LANDLOCK_GOOD_ABI = 6

SECCOMP_NOTIFY_API = 6
SECCOMP_NOTIFY_KERNEL = (5, 0)
SECCOMP_ADDFD_SEND_KERNEL = (5, 14)
PR_GET_SECCOMP = 21


@dataclass
class CheckResult:
    name: str
    status: str  # ok | warn | fail
    found: str
    remedy: str = ""
    details: list[dict[str, str]] = field(default_factory=list)  # a small table, same keys per row


# ------------------------------------------------------------------ small helpers
def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = _read(path)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def _run(argv: list[str], timeout: float = PROBE_TIMEOUT_S, **kwargs) -> tuple[int | None, str, str]:
    """(returncode or None on timeout, stdout, stderr); an exec failure is returncode 127/126."""
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=timeout, check=False, **kwargs)
    except subprocess.TimeoutExpired:
        return None, "", f"no answer within {timeout:g}s"
    except FileNotFoundError as exc:
        return 127, "", str(exc)
    except OSError as exc:
        return 126, "", str(exc)
    return proc.returncode, proc.stdout, proc.stderr


def current_user() -> tuple[str, int]:
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name, uid
    except KeyError:
        return str(uid), uid


def kernel_version(release: str) -> tuple[int, int, int]:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not match:
        return (0, 0, 0)
    return int(match[1]), int(match[2]), int(match[3] or 0)


def _true_binary() -> str:
    for path in ("/bin/true", "/usr/bin/true"):
        if os.access(path, os.X_OK):
            return path
    return shutil.which("true") or "/bin/true"


# ------------------------------------------------------------------ bubblewrap
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
    path = shutil.which("bwrap")
    if not path:
        return assess_bwrap(None)
    rc, out, err = _run([path, "--version"])
    help_rc, help_out, help_err = _run([path, "--help"])
    try:
        setuid = bool(os.stat(path).st_mode & stat.S_ISUID)
    except OSError:
        setuid = False
    return assess_bwrap(path, rc, out if rc == 0 else (err or out), help_out + help_err if help_rc == 0 else "",
                        setuid)


# ------------------------------------------------------------------ user namespaces
def read_userns_sysctls() -> dict[str, int | None]:
    return {name: _read_int(path) for name, path in SYSCTL_FILES.items()}


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
    rc, _out, err = _run([bwrap, *USERNS_PROBE, "--", _true_binary()])
    return assess_userns(bwrap, rc, err, uid, user, sysctls, _in_container())


# ------------------------------------------------------------------ Landlock
def landlock_table(abi: int) -> list[dict[str, str]]:
    return [{"ABI": f"≥ {n}", "feature": what, "here": "yes" if abi >= n else "no"}
            for n, what in LANDLOCK_FEATURES]


def assess_landlock(abi: int, lsm: str | None, error: str | None = None) -> CheckResult:
    """Landlock enforces the file-system grants a second time in the kernel; `default` requires it."""
    if lsm is None:
        lsm_note = "LSM list unreadable (/sys/kernel/security/lsm)"
    else:
        names = [n for n in lsm.strip().split(",") if n]
        lsm_note = f"LSM list: {','.join(names)}" + ("" if "landlock" in names else " (landlock is not in it)")
    if error:
        return CheckResult("landlock", FAIL, f"cannot query Landlock: {error}; {lsm_note}",
                           "pip install landlockpy (it ships with sandboxctl)")
    if abi <= 0:
        if lsm is not None and "landlock" not in lsm.split(","):
            boot = f"lsm={lsm.strip()},landlock"
        else:
            boot = "lsm=...,landlock (keep the current list, add landlock)"
        return CheckResult(
            "landlock", FAIL, f"Landlock is not available (ABI 0); {lsm_note}",
            "a kernel ≥ 5.13 built with CONFIG_SECURITY_LANDLOCK=y and landlock enabled at boot: add "
            f"`{boot}` to the kernel command line (GRUB_CMDLINE_LINUX in /etc/default/grub, then "
            "sudo update-grub and reboot); or set `landlock: best-effort` in the policy, which runs without "
            "that wall (the file-system rules then rest on the mount namespace alone)",
            landlock_table(abi))
    found = f"Landlock ABI {abi}; {lsm_note}"
    if abi < LANDLOCK_GOOD_ABI:
        missing = [what for n, what in LANDLOCK_FEATURES if n > abi]
        return CheckResult(
            "landlock", WARN, found + f"; missing: {'; '.join(missing)}",
            f"runs with the `default` policy; a newer kernel (ABI {LANDLOCK_GOOD_ABI} came with Linux 6.12) adds "
            "the missing walls, and policies with `network: host` need it",
            landlock_table(abi))
    return CheckResult("landlock", OK, found, details=landlock_table(abi))


def check_landlock() -> CheckResult:
    """Landlock enforces the file-system grants a second time in the kernel; `default` requires it."""
    lsm = _read("/sys/kernel/security/lsm")
    try:
        import landlockpy

        abi = int(landlockpy.abi_version())
    except Exception as exc:  # ImportError, or an unexpected errno from the probe
        return assess_landlock(0, lsm, f"{type(exc).__name__}: {exc}")
    return assess_landlock(abi, lsm)


# ------------------------------------------------------------------ seccomp
@dataclass
class SeccompFacts:
    kernel: str = ""
    status_mode: str | None = None  # /proc/self/status "Seccomp:"
    status_filters: str | None = None  # "Seccomp_filters:" (5.9+)
    prctl: int | None = None  # PR_GET_SECCOMP result, None when the call failed
    prctl_errno: int = 0
    actions: frozenset[str] | None = None  # /proc/sys/kernel/seccomp/actions_avail
    import_error: str | None = None  # pyseccomp/libseccomp could not load
    lib_version: tuple[int, int, int] | None = None
    api: int | None = None
    baseline_rules: int = 0
    baseline_bytes: int = 0
    compile_error: str | None = None
    load_error: str | None = None  # None: loaded by bwrap, or not tried
    load_tried: bool = False


def seccomp_table(facts: SeccompFacts) -> list[dict[str, str]]:
    kernel = kernel_version(facts.kernel)
    api = facts.api or 0
    has_notif = facts.actions is None or "user_notif" in facts.actions
    rows = [
        ("seccomp filters (bwrap --seccomp)", "kernel with CONFIG_SECCOMP_FILTER",
         facts.prctl is not None or facts.status_mode is not None),
        ("user notification (approvals)", f"libseccomp API ≥ {SECCOMP_NOTIFY_API}, kernel ≥ 5.0",
         api >= SECCOMP_NOTIFY_API and kernel >= SECCOMP_NOTIFY_KERNEL and has_notif),
        ("ADDFD with SEND (hand over an approved file)", "kernel ≥ 5.14",
         kernel >= SECCOMP_ADDFD_SEND_KERNEL and has_notif),
    ]
    return [{"feature": f, "needs": n, "here": "yes" if ok else "no"} for f, n, ok in rows]


def assess_seccomp(facts: SeccompFacts) -> CheckResult:
    """seccomp removes the dangerous system calls; the baseline must compile and load, or nothing runs."""
    table = seccomp_table(facts)
    if facts.prctl is None and facts.status_mode is None:
        return CheckResult("seccomp", FAIL, f"kernel {facts.kernel} has no seccomp "
                           f"(PR_GET_SECCOMP: {os.strerror(facts.prctl_errno) if facts.prctl_errno else 'failed'})",
                           "a kernel built with CONFIG_SECCOMP and CONFIG_SECCOMP_FILTER (every mainstream "
                           "distribution kernel has them)", table)
    this = f"this process: mode {facts.status_mode if facts.status_mode is not None else facts.prctl}"
    if facts.status_filters not in (None, "0"):
        this += f", already under {facts.status_filters} filter(s), e.g. a container's"
    kernel_part = f"kernel {facts.kernel}: seccomp available ({this})"
    if facts.import_error:
        return CheckResult("seccomp", FAIL, f"{kernel_part}; libseccomp unusable: {facts.import_error}",
                           "sudo apt-get install libseccomp2 (Fedora: sudo dnf install libseccomp); "
                           "the binding: pip install pyseccomp", table)
    version = ".".join(map(str, facts.lib_version)) if facts.lib_version else "version unknown"
    lib_part = f"libseccomp {version}, API level {facts.api}"
    if facts.compile_error:
        return CheckResult("seccomp", FAIL, f"{kernel_part}; {lib_part}; the baseline does not compile: "
                           f"{facts.compile_error}",
                           "upgrade libseccomp (libseccomp2): an old one does not know newer system calls", table)
    found = f"{kernel_part}; {lib_part}; baseline {facts.baseline_rules} rules, {facts.baseline_bytes} bytes BPF"
    if facts.load_error:
        return CheckResult("seccomp", FAIL, f"{found}; bubblewrap could not load it: {facts.load_error}",
                           "report this with the output of `sandboxctl doctor --json`", table)
    found += ", loaded by bwrap" if facts.load_tried else " (not test-loaded: no working bubblewrap)"
    missing = [row["feature"] for row in table[1:] if row["here"] == "no"]
    if missing:
        return CheckResult("seccomp", WARN, f"{found}; unavailable: {'; '.join(missing)}",
                           f"runs with the `default` policy; approvals of file writes need libseccomp API "
                           f"≥ {SECCOMP_NOTIFY_API} (libseccomp 2.5+) and a kernel ≥ 5.14", table)
    return CheckResult("seccomp", OK, found, details=table)


class _LibVersion(ctypes.Structure):
    _fields_ = (("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint))


def libseccomp_version(pyseccomp) -> tuple[int, int, int] | None:
    """seccomp_version() from the library pyseccomp loaded (the binding has no call for it)."""
    path = getattr(pyseccomp, "_libseccomp_path", None)
    if not path:
        path = ctypes.util.find_library("seccomp")
    if not path:
        return None
    try:
        func = ctypes.CDLL(path).seccomp_version
    except (OSError, AttributeError):
        return None
    func.argtypes = ()
    func.restype = ctypes.POINTER(_LibVersion)
    ptr = func()
    if not ptr:
        return None
    return ptr.contents.major, ptr.contents.minor, ptr.contents.micro


def _status_fields() -> dict[str, str]:
    fields = {}
    for line in (_read("/proc/self/status") or "").splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Seccomp"):
            fields[key] = value.strip()
    return fields


def _prctl_seccomp() -> tuple[int | None, int]:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl.restype = ctypes.c_int
        result = libc.prctl(PR_GET_SECCOMP, 0, 0, 0, 0)
    except (OSError, AttributeError):
        return None, errno.ENOSYS
    if result < 0:
        return None, ctypes.get_errno()
    return result, 0


def _load_probe(bwrap: str, program: bytes) -> str | None:
    fd = os.memfd_create("sandboxctl-doctor-seccomp", 0)
    try:
        os.write(fd, program)
        os.lseek(fd, 0, os.SEEK_SET)
        rc, _out, err = _run([bwrap, *USERNS_PROBE, "--seccomp", str(fd), "--", _true_binary()], pass_fds=(fd,))
    finally:
        os.close(fd)
    if rc == 0:
        return None
    return " ".join(err.split()) or ("timed out" if rc is None else f"exit status {rc}")


def check_seccomp(bwrap: str | None = None, namespaces_work: bool = False) -> CheckResult:
    """seccomp removes the dangerous system calls; the baseline must compile and load, or nothing runs."""
    fields = _status_fields()
    prctl, prctl_errno = _prctl_seccomp()
    actions_text = _read("/proc/sys/kernel/seccomp/actions_avail")
    facts = SeccompFacts(
        kernel=os.uname().release,
        status_mode=fields.get("Seccomp"),
        status_filters=fields.get("Seccomp_filters"),
        prctl=prctl,
        prctl_errno=prctl_errno,
        actions=frozenset(actions_text.split()) if actions_text is not None else None,
    )
    try:
        import pyseccomp
    except Exception as exc:  # ImportError, or RuntimeError/OSError when libseccomp is missing
        facts.import_error = f"{type(exc).__name__}: {exc}"
        return assess_seccomp(facts)
    facts.lib_version = libseccomp_version(pyseccomp)
    try:
        facts.api = int(pyseccomp.get_api())
    except Exception:
        facts.api = None
    from sandboxctl.errors import SandboxError
    from sandboxctl.launch.seccomp import compile_bpf
    from sandboxctl.plan import syscalls
    from sandboxctl.plan.model import SeccompPlan

    rules = syscalls.baseline_rules()
    facts.baseline_rules = len(rules)
    try:
        program = compile_bpf(SeccompPlan("allow", "kill_process", tuple(rules)))
    except SandboxError as exc:
        facts.compile_error = exc.message
        return assess_seccomp(facts)
    except Exception as exc:
        facts.compile_error = f"{type(exc).__name__}: {exc}"
        return assess_seccomp(facts)
    facts.baseline_bytes = len(program)
    if bwrap and namespaces_work:
        facts.load_tried = True
        facts.load_error = _load_probe(bwrap, program)
    return assess_seccomp(facts)


# ------------------------------------------------------------------ cgroup v2
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
    layout, mount = cgroup_layout(_read("/proc/self/mountinfo") or "")
    rel = own_cgroup(_read("/proc/self/cgroup") or "")
    if mount is None or rel is None:
        return assess_cgroup(layout, None, None, None, False, user)
    directory = os.path.normpath(mount + "/" + rel.lstrip("/"))
    controllers = _read(os.path.join(directory, "cgroup.controllers"))
    subtree = _read(os.path.join(directory, "cgroup.subtree_control"))
    writable = os.access(directory, os.W_OK) and os.access(os.path.join(directory, "cgroup.procs"), os.W_OK)
    return assess_cgroup(layout, directory,
                         set(controllers.split()) if controllers is not None else None,
                         set(subtree.split()) if subtree is not None else None, writable, user)


# ------------------------------------------------------------------ state dir
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


# ------------------------------------------------------------------ the shim's Python
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


# ------------------------------------------------------------------ gVisor
def _verdict(value: str | None, good: str) -> str:
    return "?" if value is None else ("yes" if value == good else "no")


def gvisor_table(probe: dict) -> list[dict[str, str]]:
    """What a sandbox has under `--backend gvisor` here, each row measured by the probe or fixed
    by how the backend works (a layer not measured is not claimed)."""
    chosen = probe.get("platform")
    inside = (probe.get("platforms", {}).get(chosen) or {}).get("inside", {}) if chosen else {}
    landlock = inside.get("landlock")
    listener = inside.get("seccomp_listener")
    automount = inside.get("stat_no_automount")
    rows = [
        ("mounts: grants, masks, workspace, protected paths", "yes" if chosen else "?",
         "the same plan as bubblewrap, served by gVisor's kernel and file proxy"),
        ("Landlock (second file-system wall, exec.allow)", "no" if landlock else "?",
         f"gVisor does not implement it (landlock_create_ruleset: {landlock})" if landlock else "not probed"),
        ("seccomp baseline", _verdict(inside.get("seccomp_mode"), "2"),
         "loaded by sandboxctl's launcher, enforced by gVisor's kernel"),
        ("seccomp user notification: exec/file/syscall events, file-write approvals",
         "no" if listener and listener != "ok" else _verdict(listener, "ok"),
         f"SECCOMP_FILTER_FLAG_NEW_LISTENER: {listener}" if listener else "not probed"),
        ("network: none", "yes" if chosen else "?", "gVisor's own loopback only (runsc --network=none)"),
        ("network: proxy (allowlist, approvals, net events)", "yes" if chosen else "?",
         "a forwarder on 127.0.0.1:3128 to the supervisor's host UNIX socket (runsc --host-uds=open)"),
        ("network: host", "no", "rootless runsc cannot share the host network"),
        ("limits: pids, file size, open files, memory", "yes" if chosen else "?",
         "rlimits enforced by gVisor's kernel (pids even for root; memory as address space, no cgroup)"),
        ("timeout, secrets, action log", "yes" if chosen else "?", "the supervisor, outside gVisor"),
        ("stat with AT_NO_AUTOMOUNT (coreutils 9 `ls`, `stat`)", _verdict(automount, "ok"),
         "" if automount in (None, "ok") else f"{automount} from this gVisor: `ls -l`/`stat` from coreutils 9 fail; "
         "newer gVisor releases (gVisor's apt repository) run them"),
    ]
    for name, result in sorted(probe.get("platforms", {}).items()):
        detail = f"{result.get('ms')} ms to start and stop a sandbox" if result.get("ok") else result.get("error", "")
        rows.append((f"platform {name}", "yes" if result.get("ok") else "no", detail))
    return [{"feature": f, "here": h, "how": w} for f, h, w in rows]


def assess_gvisor(path: str | None, probe: dict | None) -> CheckResult:
    """`--backend gvisor` runs the plan under runsc; optional: the default backend does not need it."""
    if not path:
        return CheckResult("gvisor", WARN, "runsc is not installed: `--backend gvisor` is unavailable "
                           "(the default bubblewrap backend does not need it)",
                           "sudo apt-get install runsc (Debian/Ubuntu), or gVisor's own apt repository for a newer one")
    probe = probe or {}
    chosen = probe.get("platform")
    table = gvisor_table(probe)
    found = f"{path}: runsc {probe.get('version', 'unknown version')}"
    if not chosen:
        errors = "; ".join(f"{name}: {r.get('error', 'failed')}" for name, r in probe.get("platforms", {}).items())
        return CheckResult("gvisor", WARN, f"{found}; no gVisor platform works here ({errors or 'not probed'})",
                           "run `runsc --rootless --network=none do /bin/true` to see runsc's own error", table)
    found += f"; `--backend gvisor` works, platform {chosen}"
    missing = [row["feature"] for row in table if row["here"] == "no" and not row["feature"].startswith("platform")]
    found += f"; not available under it: {'; '.join(missing)}" if missing else ""
    return CheckResult("gvisor", OK, found, details=table)


def check_gvisor() -> CheckResult:
    """`--backend gvisor` runs the plan under runsc; optional: the default backend does not need it."""
    from sandboxctl.errors import SandboxError
    from sandboxctl.launch import runsc

    path = runsc.find()
    if not path:
        return assess_gvisor(None, None)
    try:
        return assess_gvisor(path, runsc.probe(path))
    except SandboxError as exc:
        return CheckResult("gvisor", WARN, f"{path}: cannot probe gVisor: {exc.message}", exc.hint or "")


# ------------------------------------------------------------------ all of it
def run_checks() -> list[CheckResult]:
    bwrap = check_bwrap()
    path = shutil.which("bwrap")
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

