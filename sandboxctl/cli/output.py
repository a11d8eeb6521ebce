"""One place that prints errors and hints, so every failure looks the same (SPEC: one line + hint)."""

from __future__ import annotations

import os
import sys

from sandboxctl.errors import SandboxError

DEBUG = os.environ.get("SANDBOXCTL_DEBUG") == "1"
QUIET = False  # -q/--quiet before any command: no notes, status lines or summaries on stderr
VERBOSE = False  # -v/--verbose before any command: every note
GLOBAL_FLAGS = {"--debug": "DEBUG", "-q": "QUIET", "--quiet": "QUIET", "-v": "VERBOSE", "--verbose": "VERBOSE"}


def take_global_flags(args: list[str]) -> list[str]:
    """Global flags may precede any command (`sandboxctl -q run …`); consume them here so every
    command, the fast `run` path included, sees them."""
    import sys

    module = sys.modules[__name__]
    while args and args[0] in GLOBAL_FLAGS:
        setattr(module, GLOBAL_FLAGS[args.pop(0)], True)
    return args


def error(message: str, hint: str | None = None, limit: int | None = None) -> None:
    """Messages name paths, commands and hosts that may come from a sandbox: shown inert, each on
    one line (callers pass raw values and never escape them themselves: escaped twice, a name's
    ESC would read as a backslash it never held). `limit`: columns of each, for words of a sandbox."""
    from sandboxctl.inert import inert

    print(f"sandboxctl: error: {inert(message, limit)}", file=sys.stderr)
    if hint:
        print(f"  hint: {inert(hint, limit)}", file=sys.stderr)


INTERRUPTED = False  # a Ctrl-C came, or killed the command (cli/main.py, cli/run.py): end by SIGINT


def die_of_sigint() -> None:
    """End as a program that Ctrl-C interrupted does: killed by SIGINT, not exit 130 — a calling
    shell stops its script or loop only then (wait-and-cooperative-exit; Python itself ends so on
    an uncaught KeyboardInterrupt). Called once everything is cleaned up and said."""
    import contextlib
    import os
    import signal

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)


def report(exc: SandboxError) -> int:
    error(exc.message, exc.hint)
    return exc.exit_code


def warn(message: str) -> None:
    if not QUIET:
        print(f"sandboxctl: {message}", file=sys.stderr)


def progress(enabled: bool):
    """A factory of status lines for slow set-up steps: rich on a terminal, nothing otherwise."""
    import contextlib

    if not enabled:
        return lambda message: contextlib.nullcontext()

    def status(message: str):
        return console(stderr=True).status(message)

    return status


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)
