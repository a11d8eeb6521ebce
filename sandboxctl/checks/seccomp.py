"""seccomp: the baseline filter must compile and load, and user notification carries approvals."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from dataclasses import dataclass

from sandboxctl.checks.common import FAIL, OK, WARN, CheckResult, kernel_version, read_file, run_probe, true_binary
from sandboxctl.checks.namespaces import USERNS_PROBE

SECCOMP_NOTIFY_API = 6
SECCOMP_NOTIFY_KERNEL = (5, 0)
SECCOMP_ADDFD_SEND_KERNEL = (5, 14)
SECCOMP_WAIT_KILLABLE_KERNEL = (5, 19)  # SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (supervise/freeze.py)
FREEZE_FEATURE = "freeze the sandbox while a terminal prompt waits (WAIT_KILLABLE_RECV)"
PR_GET_SECCOMP = 21


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
        (FREEZE_FEATURE, "kernel ≥ 5.19", kernel >= SECCOMP_WAIT_KILLABLE_KERNEL and has_notif),
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
                           f"≥ {SECCOMP_NOTIFY_API} (libseccomp 2.5+) and a kernel ≥ 5.14; without a kernel ≥ "
                           "5.19 the command runs while a terminal prompt waits and may draw over it "
                           "(use approval.via: socket)", table)
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
    for line in (read_file("/proc/self/status") or "").splitlines():
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
        rc, _out, err = run_probe([bwrap, *USERNS_PROBE, "--seccomp", str(fd), "--", true_binary()], pass_fds=(fd,))
    finally:
        os.close(fd)
    if rc == 0:
        return None
    return " ".join(err.split()) or ("timed out" if rc is None else f"exit status {rc}")


def check_seccomp(bwrap: str | None = None, namespaces_work: bool = False) -> CheckResult:
    """seccomp removes the dangerous system calls; the baseline must compile and load, or nothing runs."""
    fields = _status_fields()
    prctl, prctl_errno = _prctl_seccomp()
    actions_text = read_file("/proc/sys/kernel/seccomp/actions_avail")
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
