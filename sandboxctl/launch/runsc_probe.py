"""Which gVisor platform works on this machine, and runsc's version: probed, then cached.

The platform probe starts a real (tiny) sandbox per candidate platform, so it is cached in the
runtime dir (per user, gone at reboot, when /dev/kvm may change too), keyed by the runsc binary,
the user, the kernel and whether /dev/kvm is usable. A run reads the cache (platform_for_run);
`sandboxctl doctor` probes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from sandboxctl.errors import SandboxError
from sandboxctl.launch import oci
from sandboxctl.launch.runsc import RunDir, runtime_base

PLATFORMS = ("kvm", "ptrace")  # preference order when both work; ptrace needs nothing but ptrace(2)
PROBE_TIMEOUT_S = 5.0  # a working platform answers in well under a second; kvm may hang
CACHE_FILE = "gvisor-probe.json"
VERSION_FILE = "runsc-version.json"
CACHE_VERSION = 2


def version(runsc: str) -> str:
    import subprocess

    try:
        out = subprocess.run([runsc, "--version"], capture_output=True, text=True, timeout=10,
                             stdin=subprocess.DEVNULL, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = out.strip().splitlines()[0] if out.strip() else "unknown"
    return first.removeprefix("runsc version ").strip()


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


PROBE_CODE = r"""
import ctypes, errno, json, os, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = {"x86_64": {"seccomp": 317, "newfstatat": 262}, "aarch64": {"seccomp": 277, "newfstatat": 79}}
nr = NR.get(os.uname().machine, {})
def call(*args):
    return "ok" if libc.syscall(*args) >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
out = {"landlock": call(444, None, 0, 1)}
status = open("/proc/self/status").read()
out["seccomp_mode"] = next((l.split(":")[1].strip() for l in status.splitlines() if l.startswith("Seccomp:")), "?")
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
allow = ctypes.create_string_buffer(struct.pack("HBBI", 6, 0, 0, 0x7FFF0000), 8)
prog = Prog(1, ctypes.cast(allow, ctypes.c_void_p))
if nr:
    out["seccomp_listener"] = call(nr["seccomp"], 1, 8, ctypes.byref(prog))
    out["stat_no_automount"] = call(nr["newfstatat"], -100, b"/", ctypes.create_string_buffer(256), 0x800)
print(json.dumps(out))
"""


def _probe_key(runsc: str) -> dict[str, Any]:
    real = os.path.realpath(runsc)
    try:
        st = os.stat(real)
        stamp = [st.st_size, st.st_mtime_ns]
    except OSError:
        stamp = []
    return {"version": CACHE_VERSION, "runsc": real, "stamp": stamp, "uid": os.getuid(), "kvm": kvm_usable(),
            "kernel": os.uname().release}


def _cache_dir() -> Path:
    return runtime_base() / "cache"


def cached_probe(runsc: str) -> dict[str, Any] | None:
    """The last probe of this runsc for this user, if nothing it depends on changed."""
    try:
        data = json.loads((_cache_dir() / CACHE_FILE).read_text())
    except (OSError, ValueError, SandboxError):
        return None
    return data if isinstance(data, dict) and data.get("key") == _probe_key(runsc) else None


def probe_platform(runsc: str, platform: str, timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Start a real sandbox (the `base` policy, the gvisor launcher and seccomp filter) on one
    platform, and ask gVisor from inside which kernel features it offers."""
    import subprocess
    import sys

    from sandboxctl.launch import seccomp
    from sandboxctl.plan.build import build_plan
    from sandboxctl.plan.facts import gather
    from sandboxctl.plan.inputs import Invocation
    from sandboxctl.policy.discover import load_named

    facts = gather()
    base = runtime_base()
    run_id = f"probe{platform}-{os.urandom(3).hex()}"
    plan = build_plan(load_named("base").policy,
                      Invocation(command=(facts.shim_python, "-I", "-S", "-c", PROBE_CODE), workspace=str(base),
                                 run_id=run_id, backend="gvisor"), facts)
    run_dir = RunDir(base, run_id)
    started = time.monotonic()
    result: dict[str, Any] = {"platform": platform}
    try:
        program = seccomp.compile_bpf(plan.seccomp)
        nr = seccomp.SECCOMP_SYSCALL.get(os.uname().machine, 317)
        paths = run_dir.create(plan, oci.launch_config(plan, program, dict(plan.env), [], nr), {})
        argv = oci.runsc_argv(plan, paths, runsc=runsc, platform=platform)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            result.update(ok=False, error=f"no answer within {timeout:g}s")
            return result
        result["ms"] = round((time.monotonic() - started) * 1000)
        try:
            facts_inside = json.loads(out.decode(errors="replace").strip().splitlines()[-1])
        except (ValueError, IndexError):
            detail = run_dir.runsc_error() or " ".join(err.decode(errors="replace").split())[:300]
            result.update(ok=False, error=detail or f"exit status {proc.returncode}")
            return result
        result.update(ok=proc.returncode == 0, inside=facts_inside)
        return result
    except (OSError, SandboxError) as exc:
        result.update(ok=False, error=str(exc))
        return result
    finally:
        run_dir.destroy()
        sys.stdout.flush()


def probe(runsc: str, refresh: bool = False) -> dict[str, Any]:
    """Which platforms work here (ptrace always tried; kvm when /dev/kvm is usable), cached."""
    if not refresh:
        cached = cached_probe(runsc)
        if cached:
            return cached
    key = _probe_key(runsc)
    results = {}
    for platform in PLATFORMS:
        if platform == "kvm" and not key["kvm"]:
            results[platform] = {"platform": platform, "ok": False, "error": "/dev/kvm is absent or not usable "
                                 "by this user"}
            continue
        results[platform] = probe_platform(runsc, platform)
    working = [p for p in PLATFORMS if results[p].get("ok")]
    data = {"key": key, "version": version(runsc), "platforms": results,
            "platform": working[0] if working else None, "probed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                     time.gmtime())}
    with contextlib.suppress(OSError, SandboxError):
        cache = _cache_dir()
        cache.mkdir(mode=0o700, exist_ok=True)
        tmp = cache / f".{CACHE_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, cache / CACHE_FILE)
    return data


def cached_platform(runsc: str | None) -> str:
    """The probed platform without starting anything (for --dry-run); ptrace when not probed."""
    cached = cached_probe(runsc) if runsc else None
    return (cached or {}).get("platform") or "ptrace"


def platform_for_run(runsc: str) -> tuple[str, str]:
    """The platform a run uses (the probe's choice, else ptrace, which needs nothing) and runsc's
    version (asked once per binary: starting runsc just for that costs ~30 ms a run)."""
    cached = cached_probe(runsc)
    if cached and cached.get("platform"):
        return cached["platform"], cached.get("version") or "unknown"
    path = _cache_dir() / VERSION_FILE
    key = _probe_key(runsc)
    with contextlib.suppress(OSError, ValueError, KeyError, AttributeError):
        data = json.loads(path.read_text())
        if data.get("key", {}).get("stamp") == key["stamp"] and data["key"].get("runsc") == key["runsc"]:
            return "ptrace", str(data["version"])
    found = version(runsc)
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = path.with_name(f".{VERSION_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "version": found}))
        os.replace(tmp, path)
    return "ptrace", found
