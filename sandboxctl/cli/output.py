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
        print(f"  hint: {inert(named(hint), limit)}", file=sys.stderr)


_COMMANDS = ("run", "policy", "log", "doctor", "selftest", "approve", "completion", "shell-init", "export",
             "changes", "apply", "discard", "undo", "session", "exec", "proxy", "COMMAND", "--help", "--version")
_invoked: str | None = None


def invoked_as() -> str:
    """How the user can run this sandboxctl again, for hints: `sandboxctl` when that name on PATH is
    this very program; else the program as it was called (`.venv/bin/sandboxctl`, or the Python
    and `-m sandboxctl` of `python3 -m sandboxctl`), shell-quoted. A hint that names a bare
    `sandboxctl` nobody can run, or another install's, sends the user to the wrong program."""
    global _invoked
    if _invoked is None:
        _invoked = _invocation(list(getattr(sys, "orig_argv", []) or []), list(sys.argv))
    return _invoked


def _invocation(orig_argv: list[str], argv: list[str]) -> str:
    import shlex
    import shutil

    program = argv[0] if argv and argv[0] else ""
    if os.path.basename(program) == "__main__.py":  # python [flags] -m sandboxctl: as typed, flags too
        for index in range(1, len(orig_argv) - 1):
            if orig_argv[index:index + 2] == ["-m", "sandboxctl"]:
                on_path = shutil.which(orig_argv[0]) if "/" not in orig_argv[0] else orig_argv[0]
                # the same venv, not the same binary: a venv's python is a link to the system one
                same = on_path and os.path.abspath(on_path) == os.path.abspath(sys.executable)
                python = orig_argv[0] if same else sys.executable
                return " ".join(shlex.quote(part) for part in [python, *orig_argv[1:index], "-m", "sandboxctl"])
        return " ".join(shlex.quote(part) for part in [sys.executable, "-m", "sandboxctl"])
    if not program or program == "-c":
        return "sandboxctl"
    found = shutil.which("sandboxctl")
    if found and os.path.realpath(found) == os.path.realpath(program):
        return "sandboxctl"
    return shlex.quote(program)  # as called: a relative path still works from the same directory


def named(text: str) -> str:
    """`text` with each `sandboxctl COMMAND` of ours naming the program as invoked_as() says. Only
    the word at the start of a command (after a space, a quote or a bracket, never inside a path) and
    followed by one of our commands is changed, and once (named(named(t)) == named(t)); the text is
    still shown inert by its printer."""
    name = invoked_as()
    if name == "sandboxctl" or "sandboxctl" not in text:
        return text
    import re

    commands = "|".join(re.escape(c) for c in _COMMANDS)
    pattern = re.compile(r"(?:(?<=^)|(?<=[\s`'\"(\[]))sandboxctl(?= (?:" + commands + r")(?![\w-]))")
    prefix = name[: -len("sandboxctl")] if name.endswith("sandboxctl") else None

    def one(match: re.Match[str]) -> str:  # a command named already (python3 -m sandboxctl) stays as it is
        done = prefix is not None and text[: match.start()].endswith(prefix)
        return match.group(0) if done else name

    return pattern.sub(one, text)


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
