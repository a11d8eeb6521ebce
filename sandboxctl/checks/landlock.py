"""Landlock: the second, in-kernel wall over the file-system grants (and TCP ports, and scopes)."""

from __future__ import annotations

from sandboxctl.checks.common import FAIL, OK, WARN, CheckResult, read_file

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
    lsm = read_file("/sys/kernel/security/lsm")
    try:
        import landlockpy

        abi = int(landlockpy.abi_version())
    except Exception as exc:  # ImportError, or an unexpected errno from the probe
        return assess_landlock(0, lsm, f"{type(exc).__name__}: {exc}")
    return assess_landlock(abi, lsm)
