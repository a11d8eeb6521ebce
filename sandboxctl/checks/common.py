"""What every machine check shares: the result record and small, safe ways to look at the machine.

A check is split in two: a small impure part that looks at the machine, and an `assess_*`
function that only interprets what was seen, so tests can feed it any machine.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
from dataclasses import dataclass, field

OK, WARN, FAIL = "ok", "warn", "fail"
PROBE_TIMEOUT_S = 5.0


@dataclass
class CheckResult:
    name: str
    status: str  # ok | warn | fail
    found: str
    remedy: str = ""
    details: list[dict[str, str]] = field(default_factory=list)  # a small table, same keys per row


def read_file(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def read_int(path: str) -> int | None:
    text = read_file(path)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def run_probe(argv: list[str], timeout: float = PROBE_TIMEOUT_S, **kwargs) -> tuple[int | None, str, str]:
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


def true_binary() -> str:
    for path in ("/bin/true", "/usr/bin/true"):
        if os.access(path, os.X_OK):
            return path
    from sandboxctl.supervise.spawn import which  # absolute PATH entries only: never the workspace

    return which("true") or "/bin/true"
