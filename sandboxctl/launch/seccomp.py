"""Compile the plan's seccomp rules to a classic-BPF program with libseccomp (via pyseccomp).

Compiled once in the supervisor and handed to bubblewrap as bytes (`--seccomp FD`): inside a
bare sandbox libseccomp cannot even be located, and the shim must stay small. Programs are
cached by a digest of the rules in the private state dir, which no sandbox can see.
"""

from __future__ import annotations

import contextlib
import errno
import os

from sandboxctl import cachedir
from sandboxctl.digest import sha256
from sandboxctl.errors import SandboxError
from sandboxctl.paths import exists, join, make_dirs
from sandboxctl.plan.model import SeccompCondition, SeccompPlan, SeccompRule

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from os import PathLike

CACHE_VERSION = "7"
# __NR_seccomp per machine: the shim makes the raw call (libseccomp is not reachable inside)
SECCOMP_SYSCALL = {"x86_64": 317, "aarch64": 277, "riscv64": 277, "ppc64le": 358, "s390x": 348}


# Calls newer than some libseccomp releases know (resolve_syscall: -1). Since Linux 5.1 a new call
# has the same number on every architecture sandboxctl supports.
NEWER_CALLS = {"setxattrat": 463, "removexattrat": 466, "open_tree_attr": 467, "file_setattr": 469}


def syscall_number(pyseccomp, name: str) -> int:
    """The native number of a call: libseccomp's, or NEWER_CALLS' when it has never heard of it."""
    number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    return NEWER_CALLS.get(name, number) if number == -1 else number


def syscall_numbers(names: list[str]) -> dict[int, str]:
    """Native numbers of the given calls (for reading notifications)."""
    import pyseccomp

    numbers = {}
    for name in names:
        number = syscall_number(pyseccomp, name)
        if number >= 0:
            numbers[number] = name
    return numbers
_OPS = {"eq": "EQ", "ne": "NE", "lt": "LT", "le": "LE", "gt": "GT", "ge": "GE", "masked_eq": "MASKED_EQ"}


_digests: dict[int, tuple[SeccompPlan, str]] = {}


def plan_digest(plan: SeccompPlan) -> str:
    """Cache key of a rule set: the repr of frozen dataclasses is complete and deterministic
    (and much cheaper than asdict + JSON for a few hundred rules); computed once per plan."""
    known = _digests.get(id(plan))
    if known and known[0] is plan:
        return known[1]
    from sandboxctl.plan.syscalls import MEDIATED_CALLS  # code, not plan data: part of the key all the same

    digest = sha256(f"{CACHE_VERSION}\0{os.uname().machine}\0{MEDIATED_CALLS}\0{plan!r}".encode()).hexdigest()
    _digests[id(plan)] = (plan, digest)
    return digest


def _action(pyseccomp, name: str) -> int:
    if name == "allow":
        return pyseccomp.ALLOW
    if name == "kill_process":
        return pyseccomp.KILL_PROCESS
    if name == "notify":
        return pyseccomp.NOTIFY
    if name.startswith("errno:"):
        return pyseccomp.ERRNO(getattr(errno, name.split(":", 1)[1]))
    raise ValueError(f"unknown seccomp action {name!r}")


def build_filter(plan: SeccompPlan, which: str = "static"):
    """The libseccomp filter object (static: for bubblewrap; notify: loaded by the shim with a
    listener); also used by tests to inspect the pseudo-code."""
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError) as exc:
        raise SandboxError(f"seccomp is unavailable: {exc}",
                           "install libseccomp2 (Debian/Ubuntu: apt-get install libseccomp2)") from None
    flt = pyseccomp.SyscallFilter(_action(pyseccomp, plan.default_action))
    flt.set_attr(pyseccomp.Attr.ACT_BADARCH, _action(pyseccomp, plan.bad_arch_action))
    # a binary tree over the syscall numbers (libseccomp >= 2.5) instead of one comparison after
    # another: the notify filter tests ~80 calls, and an openat (for reading too: its flags decide)
    # came 80th — paid by every open of every program inside
    with contextlib.suppress(OSError, ValueError, AttributeError):
        flt.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)
    if which == "notify":
        rules = [r._replace(action="notify") for r in plan.rules if plan.trapped(r)]
        if plan.notify_exec:
            rules += [SeccompRule(name, "notify", "exec event") for name in ("execve", "execveat")]
        rules += file_open_rules(plan.file_events)
        present = {r.syscall for r in rules if not r.conditions}
        if plan.mediate:
            rules += [r for r in mediated_rules() if r.syscall not in present]
        if plan.exec_guard and "memfd_create" not in present:
            rules.append(SeccompRule("memfd_create", "notify", "exec.allow: memory files made non-executable"))
        rules += plan.net_rules
    else:
        rules = [r for r in plan.rules if not plan.trapped(r)]
    for rule in rules:
        number = syscall_number(pyseccomp, rule.syscall)
        if number < 0 and rule.why == MEDIATED_WHY:
            continue  # not on this architecture (aarch64 has only the *at calls)
        if number == -1:  # __NR_SCMP_ERROR: libseccomp has never heard of it
            raise SandboxError(f"seccomp: unknown system call {rule.syscall!r}",
                               "check the spelling in syscalls.deny / syscalls.allow")
        args = []
        for cond in rule.conditions:
            op = getattr(pyseccomp, _OPS[cond.op])
            if cond.op == "masked_eq":
                args.append(pyseccomp.Arg(cond.arg, op, cond.mask, cond.value))
            else:
                args.append(pyseccomp.Arg(cond.arg, op, cond.value))
        try:
            flt.add_rule(_action(pyseccomp, rule.action), number, *args)
        except OSError as exc:
            raise SandboxError(f"seccomp: cannot add the rule for {rule.syscall}: {exc.strerror}",
                               "report this: the baseline should always compile") from None
    return flt


# open(2) flags that mean the caller intends to write or create
WRITE_INTENT = {"O_WRONLY": 0o1, "O_RDWR": 0o2, "O_CREAT": 0o100, "O_TRUNC": 0o1000}
OPEN_FLAGS_ARG = {"open": 1, "openat": 2}


def file_open_rules(mode: str) -> list[SeccompRule]:
    """Notify rules for file events. In `write` mode the flags are tested in BPF, so opens for
    reading never leave the kernel; openat2 keeps its flags in memory BPF cannot see, and creat
    always creates, so both are always trapped."""
    if mode == "none":
        return []
    rules = [SeccompRule("creat", "notify", "file event"), SeccompRule("openat2", "notify", "file event")]
    for name, arg in OPEN_FLAGS_ARG.items():
        if mode == "all":
            rules.append(SeccompRule(name, "notify", "file event"))
            continue
        rules += [SeccompRule(name, "notify", f"file event: {flag}", (SeccompCondition(arg, "masked_eq", bit, bit),))
                  for flag, bit in WRITE_INTENT.items()]
    return rules


MEDIATED_WHY = "changes beneath a writable grant are made by the supervisor"


def mediated_rules() -> list[SeccompRule]:
    """Every call that can create, remove, rename, truncate or re-mode a directory entry (opens
    come from file_open_rules): the mediator performs them under writable host grants."""
    from sandboxctl.plan.syscalls import MEDIATED_CALLS

    return [SeccompRule(name, "notify", MEDIATED_WHY) for name in MEDIATED_CALLS]


def compile_bpf(plan: SeccompPlan, which: str = "static") -> bytes:
    import tempfile

    flt = build_filter(plan, which)
    with tempfile.TemporaryFile() as handle:
        flt.export_bpf(handle)
        handle.seek(0)
        program = handle.read()
    if not program or len(program) % 8:
        raise SandboxError("seccomp: libseccomp produced no valid program", "run sandboxctl doctor")
    return program


def is_cached(plan: SeccompPlan, cache_dir: str | PathLike[str]) -> bool:
    digest = plan_digest(plan)[:32]
    return exists(join(cache_dir, f"seccomp-static-{digest}.bpf")) and \
        exists(join(cache_dir, f"seccomp-notify-{digest}.marshal"))


def _write_entry(cache_dir: str | PathLike[str], name: str, data: bytes) -> None:
    """A cache entry written whole under a temporary name, then renamed into place."""
    make_dirs(cache_dir, 0o700)
    tmp = join(cache_dir, f".{name}.{os.getpid()}.{os.urandom(4).hex()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, join(cache_dir, name))


def load_or_compile(plan: SeccompPlan, cache_dir: str | PathLike[str], which: str = "static") -> bytes:
    """Cached BPF bytes for this rule set; the cache lives in the sandbox-invisible state dir."""
    name = f"seccomp-{which}-{plan_digest(plan)[:32]}.bpf"
    path = join(cache_dir, name)
    try:
        st = os.lstat(path)
        if st.st_uid == os.getuid() and not st.st_mode & 0o022 and st.st_size % 8 == 0 and st.st_size:
            cachedir.mark_used(path, st.st_mtime)
            with open(path, "rb") as handle:
                return handle.read()
    except OSError:
        pass
    program = compile_bpf(plan, which)
    try:
        _write_entry(cache_dir, name, program)
        cachedir.prune_daily(cache_dir)
    except OSError:
        pass  # a cache we cannot write only costs time
    return program


def load_or_compile_notify(plan: SeccompPlan, cache_dir: str | PathLike[str]) -> tuple[bytes, dict[int, str]]:
    """The shim's notify program and the number -> name map to read its notifications, cached
    together so a run imports neither pyseccomp nor libseccomp when nothing changed."""
    import marshal

    name = f"seccomp-notify-{plan_digest(plan)[:32]}.marshal"
    path = join(cache_dir, name)
    try:
        st = os.lstat(path)
        if st.st_uid == os.getuid() and not st.st_mode & 0o022:
            with open(path, "rb") as handle:
                entry = marshal.loads(handle.read())
            cachedir.mark_used(path, st.st_mtime)
            return entry["program"], entry["numbers"]
    except (OSError, ValueError, EOFError, KeyError, TypeError):
        pass
    program = compile_bpf(plan, "notify")
    names = sorted({r.syscall for r in plan.rules if plan.trapped(r)} | {"execve", "execveat"}
                   | {r.syscall for r in file_open_rules(plan.file_events)}
                   | ({r.syscall for r in mediated_rules()} if plan.mediate else set())
                   | ({"memfd_create"} if plan.exec_guard else set()) | {r.syscall for r in plan.net_rules})
    numbers = syscall_numbers(names)
    try:
        _write_entry(cache_dir, name, marshal.dumps({"program": program, "numbers": numbers}))
        cachedir.prune_daily(cache_dir)
    except OSError:
        pass
    return program, numbers

