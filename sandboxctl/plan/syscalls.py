"""The seccomp baseline: system calls removed from every sandbox, each with one line of why.

Rules are data (plan.SeccompRule); launch/seccomp.py compiles them with libseccomp. Integer
arguments are compared on their low 32 bits only (masked_eq with 0xffffffff), because the kernel
ignores the high half of an int argument and a plain 64-bit compare could be bypassed with junk
in it.
"""

from __future__ import annotations

import os

from sandboxctl.plan.model import SeccompCondition, SeccompRule

EPERM = "errno:EPERM"
# chattr +F makes an empty directory case-insensitive (casefold), where `.GIT` names `.git` and
# `.git/CONFIG` its config; the other flags (append-only, nodump, project ids) have no use inside
FILE_ATTRIBUTES_WHY = ("inode flags (chattr): +F would make a directory case-insensitive, where .GIT is .git; "
                       "answered as a file system without them")
LOW32 = 0xFFFFFFFF

CLONE_NEWUSER = 0x10000000
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
NETLINK_ROUTE = 0
IPPROTO_MPTCP = 262
# personality(2): the only values a normal program sets — PER_LINUX, PER_LINUX32, UNAME26 with
# either — and 0xffffffff, which only queries.
PERSONALITY_FREE_BITS = (3, 17)

_SIMPLE: list[tuple[tuple[str, ...], str, str]] = [
    (("mount", "umount2", "pivot_root", "chroot"), EPERM,
     "changing the mount tree could uncover what the sandbox masks"),
    (("move_mount", "open_tree", "open_tree_attr", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr"), EPERM,
     "the new mount API: same power as mount"),
    (("kexec_load", "kexec_file_load"), EPERM, "would replace the running kernel"),
    (("init_module", "finit_module", "delete_module"), EPERM, "loads or removes kernel code"),
    (("bpf",), EPERM, "kernel programs: large attack surface, can read kernel memory"),
    (("perf_event_open",), EPERM, "side channels into other processes and the kernel"),
    (("keyctl", "add_key", "request_key"), EPERM,
     "the kernel keyring is not namespaced: it holds other sessions' keys"),
    (("userfaultfd",), EPERM, "stalls kernel threads at will; a staple of kernel exploits"),
    (("open_by_handle_at", "name_to_handle_at"), EPERM,
     "opens files by handle, bypassing the mount tree (the 'shocker' escape)"),
    (("ptrace",), EPERM, "would read and control other processes"),
    (("process_vm_readv", "process_vm_writev"), EPERM, "reads and writes another process's memory"),
    (("pidfd_getfd",), EPERM, "steals file descriptors from another process"),
    (("setns",), EPERM, "joining other namespaces is never needed inside"),
    (("clone3",), "errno:ENOSYS",
     "its flags live in memory seccomp cannot inspect; libc falls back to clone, which is checked"),
    (("io_uring_setup", "io_uring_enter", "io_uring_register"), EPERM,
     "io_uring performs I/O that seccomp never sees"),
    (("swapon", "swapoff"), EPERM, "host memory management"),
    (("reboot",), EPERM, "host power state"),
    (("settimeofday", "clock_settime", "clock_adjtime", "adjtimex"), EPERM, "the host's clock"),
    (("acct",), EPERM, "host process accounting"),
    (("quotactl", "quotactl_fd"), EPERM, "host disk quotas"),
    (("syslog",), EPERM, "the kernel log leaks addresses useful to exploits"),
    (("iopl", "ioperm"), EPERM, "raw hardware port I/O"),
    (("vhangup",), EPERM, "hangs up the controlling terminal of others"),
    (("fanotify_init",), EPERM, "watches the whole file system"),
    (("setxattr", "lsetxattr", "fsetxattr", "setxattrat", "removexattr", "lremovexattr", "fremovexattr",
      "removexattrat"), "errno:EOPNOTSUPP",
     "an ACL re-modes a file as chmod does, unseen by Landlock and the supervisor"),
    (("file_setattr",), "errno:EOPNOTSUPP", FILE_ATTRIBUTES_WHY),
    (("lookup_dcookie", "uselib", "ustat", "sysfs", "_sysctl", "nfsservctl"), EPERM,
     "obsolete interfaces nobody needs; attack surface only"),
]


def _iow(kind: str, number: int, size: int, machine: str) -> int:
    """_IOW(kind, number, size) as the machine encodes ioctl requests (powerpc: 3 direction bits,
    write = 4; the others sandboxctl runs on: 2 bits, write = 1)."""
    direction = 4 << 29 if machine.startswith(("ppc", "powerpc")) else 1 << 30
    return direction | size << 16 | ord(kind) << 8 | number


def file_attribute_requests(machine: str) -> dict[int, str]:
    """The ioctl requests that set inode flags or fsxattr flags (chattr): FS_IOC_SETFLAGS (the
    long and the int-sized encoding) and FS_IOC_FSSETXATTR (struct fsxattr, 28 bytes)."""
    return {_iow("f", 2, 8, machine): "FS_IOC_SETFLAGS", _iow("f", 2, 4, machine): "FS_IOC32_SETFLAGS",
            _iow("X", 32, 28, machine): "FS_IOC_FSSETXATTR"}


def _low32(arg: int, value: int) -> SeccompCondition:
    return SeccompCondition(arg, "masked_eq", value, LOW32)


def baseline_rules() -> list[SeccompRule]:
    rules = [SeccompRule(name, action, why) for names, action, why in _SIMPLE for name in names]
    for name in ("unshare", "clone"):
        rules.append(SeccompRule(
            name, EPERM, "a new user namespace would give back every capability inside it",
            (SeccompCondition(0, "masked_eq", CLONE_NEWUSER, CLONE_NEWUSER),),
        ))
    for request, what in ((TIOCSTI, "TIOCSTI"), (TIOCLINUX, "TIOCLINUX")):
        rules.append(SeccompRule(
            "ioctl", EPERM, f"{what} types keystrokes into the user's terminal (runs commands outside)",
            (_low32(1, request),),
        ))
    for request, what in file_attribute_requests(os.uname().machine).items():
        rules.append(SeccompRule("ioctl", "errno:EOPNOTSUPP", f"{what}: {FILE_ATTRIBUTES_WHY}", (_low32(1, request),)))
    allowed_families = {AF_UNIX, AF_INET, AF_INET6, AF_NETLINK}
    for family in range(64):
        if family not in allowed_families:
            rules.append(SeccompRule(
                "socket", "errno:EAFNOSUPPORT",
                "only UNIX, IPv4, IPv6 and route-netlink sockets: raw/packet/bluetooth/… are attack surface",
                (_low32(0, family),),
            ))
    rules.append(SeccompRule(
        "socket", "errno:EAFNOSUPPORT",
        "netlink only for NETLINK_ROUTE (interface and address queries that libc and ip need)",
        (_low32(0, AF_NETLINK), SeccompCondition(2, "ne", NETLINK_ROUTE)),
    ))
    rules.append(SeccompRule(
        "socket", "errno:EPROTONOSUPPORT",
        "MPTCP is not covered by Landlock's TCP rules; programs fall back to TCP",
        (_low32(2, IPPROTO_MPTCP),),
    ))
    rules.extend(_personality_rules())
    return rules


def _personality_rules() -> list[SeccompRule]:
    """Allow exactly 0, 8, 0x20000, 0x20008 and the 0xffffffff query, one condition per rule."""
    why = "only the default execution domain: no ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, …"
    rules = []
    top = 1 << 31
    for bit in range(31):
        if bit not in PERSONALITY_FREE_BITS:  # a flag bit set while this is not the query
            rules.append(SeccompRule("personality", EPERM, why,
                                     (SeccompCondition(0, "masked_eq", 1 << bit, (1 << bit) | top),)))
        # the top bit set but not all bits: not the query either
        rules.append(SeccompRule("personality", EPERM, why,
                                 (SeccompCondition(0, "masked_eq", top, (1 << bit) | top),)))
    return rules


# Calls that can create, remove, rename, truncate or re-mode a directory entry, besides opens:
# under writable host grants the supervisor performs them (supervise/mediate.py).
MEDIATED_CALLS = ("mkdir", "mkdirat", "mknod", "mknodat", "unlink", "unlinkat", "rmdir", "rename", "renameat",
                  "renameat2", "link", "linkat", "symlink", "symlinkat", "truncate", "chmod", "fchmod",
                  "fchmodat", "fchmodat2", "umask", "bind")
OPEN_CALLS = ("open", "openat", "openat2", "creat")

# What each relaxing `syscalls.allow` entry takes out of the baseline, so related calls go together.
RELEASE_GROUPS = {
    "ptrace": ("ptrace", "process_vm_readv", "process_vm_writev"),
    "io_uring": ("io_uring_setup", "io_uring_enter", "io_uring_register"),
}


def apply_policy(rules: list[SeccompRule], deny: tuple[str, ...], allow: tuple[str, ...]) -> list[SeccompRule]:
    released: set[str] = set()
    for name in allow:
        released.update(RELEASE_GROUPS.get(name, (name,)))
    kept = [rule for rule in rules if rule.syscall not in released]
    present = {rule.syscall for rule in kept if not rule.conditions}
    for name in deny:
        if name not in present:
            kept.append(SeccompRule(name, EPERM, "denied by the policy (syscalls.deny)"))
            present.add(name)
    return kept
