"""Compile the plan's seccomp rules to a classic-BPF program with libseccomp (via pyseccomp).

Compiled once in the supervisor and handed to bubblewrap as bytes (`--seccomp FD`): inside a
bare sandbox libseccomp cannot even be located, and the shim must stay small. Programs are
cached by a digest of the rules in the private state dir, which no sandbox can see.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from sandboxctl.errors import SandboxError
from sandboxctl.plan.model import SeccompPlan

CACHE_VERSION = "1"
_OPS = {"eq": "EQ", "ne": "NE", "lt": "LT", "le": "LE", "gt": "GT", "ge": "GE", "masked_eq": "MASKED_EQ"}


def plan_digest(plan: SeccompPlan) -> str:
    text = json.dumps(asdict(plan), sort_keys=True)
    return hashlib.sha256(f"{CACHE_VERSION}\0{os.uname().machine}\0{text}".encode()).hexdigest()


def _action(pyseccomp, name: str) -> int:
    if name == "allow":
        return pyseccomp.ALLOW
    if name == "kill_process":
        return pyseccomp.KILL_PROCESS
    if name.startswith("errno:"):
        return pyseccomp.ERRNO(getattr(errno, name.split(":", 1)[1]))
    raise ValueError(f"unknown seccomp action {name!r}")


def build_filter(plan: SeccompPlan):
    """The libseccomp filter object; also used by tests to inspect the pseudo-code."""
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError) as exc:
        raise SandboxError(f"seccomp is unavailable: {exc}",
                           "install libseccomp2 (Debian/Ubuntu: apt-get install libseccomp2)") from None
    flt = pyseccomp.SyscallFilter(_action(pyseccomp, plan.default_action))
    flt.set_attr(pyseccomp.Attr.ACT_BADARCH, _action(pyseccomp, plan.bad_arch_action))
    for rule in plan.rules:
        number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, rule.syscall)
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


def compile_bpf(plan: SeccompPlan) -> bytes:
    flt = build_filter(plan)
    with tempfile.TemporaryFile() as handle:
        flt.export_bpf(handle)
        handle.seek(0)
        program = handle.read()
    if not program or len(program) % 8:
        raise SandboxError("seccomp: libseccomp produced no valid program", "run sandboxctl doctor")
    return program


def load_or_compile(plan: SeccompPlan, cache_dir: Path) -> bytes:
    """Cached BPF bytes for this rule set; the cache lives in the sandbox-invisible state dir."""
    path = cache_dir / f"seccomp-{plan_digest(plan)[:32]}.bpf"
    try:
        st = path.lstat()
        if st.st_uid == os.getuid() and not st.st_mode & 0o022 and st.st_size % 8 == 0 and st.st_size:
            return path.read_bytes()
    except OSError:
        pass
    program = compile_bpf(plan)
    try:
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_bytes(program)
        tmp.chmod(0o600)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache we cannot write only costs time
    return program
