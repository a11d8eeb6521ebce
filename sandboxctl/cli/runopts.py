"""The options of `sandboxctl run`, declared once.

Two parsers read this table: typer (for `--help`, completion and the documented CLI) and, on the
hot path, stdlib argparse — importing typer costs ~100 ms, more than the whole sandbox start-up
budget, so `sandboxctl run ...` must not pay for it. A test checks both parse alike.
"""

from __future__ import annotations

from typing import NamedTuple


class RunOption(NamedTuple):
    dest: str
    flags: tuple[str, ...]
    help: str
    kind: str = "value"  # value | multi | flag
    metavar: str | None = None
    choices: tuple[str, ...] | None = None


RUN_OPTIONS: tuple[RunOption, ...] = (
    RunOption("policy", ("-p", "--policy"), "Built-in policy name or YAML file.", metavar="NAME|PATH"),
    RunOption("workspace", ("-w", "--workspace"), "Project directory (default: the current one).",
              metavar="DIR"),
    RunOption("allow_read", ("--allow-read",), "Extra read-only path (repeatable).", "multi", "PATH"),
    RunOption("allow_write", ("--allow-write",), "Extra writable path (repeatable).", "multi", "PATH"),
    RunOption("allow_net", ("--allow-net",), "Extra network destination (repeatable).", "multi",
              "HOST[:PORT]"),
    RunOption("net", ("--net",), "Override the policy's network mode.", metavar="none|proxy|host",
              choices=("none", "proxy", "host")),
    RunOption("env", ("--env",), "Pass NAME from the caller, or set NAME=VALUE (repeatable).", "multi",
              "NAME[=VALUE]"),
    RunOption("timeout", ("--timeout",), "Kill the whole sandbox after this long, e.g. 90s, 30m, 2h.",
              metavar="DURATION"),
    RunOption("memory", ("--memory",), "Memory limit, e.g. 512M, 4G.", metavar="SIZE"),
    RunOption("approve", ("--approve",), "How escapes are answered (default: ask on a TTY, else deny).",
              metavar="ask|deny|allow", choices=("ask", "deny", "allow")),
    RunOption("log", ("--log",), "Action log file.", metavar="PATH"),
    RunOption("dry_run", ("--dry-run",), "Print the full plan and exit without running anything.", "flag"),
    RunOption("json", ("--json",), "With --dry-run: print the plan as JSON.", "flag"),
    RunOption("yes", ("-y", "--yes"), "Accept launch-time confirmations (not runtime escapes).", "flag"),
    RunOption("summary_json", ("--summary-json",), "Write a machine-readable run summary here.",
              metavar="PATH"),
    RunOption("fail_on_denial", ("--fail-on-denial",),
              "Exit 123 when the command succeeds but anything was denied (a CI gate; policy: ci.fail_on_denial).",
              "flag"),
    RunOption("backend", ("--backend",), "Isolation backend.", metavar="bwrap|gvisor",
              choices=("bwrap", "gvisor")),
    RunOption("overlay", ("--overlay",), "Workspace as an overlay: the command's writes are held for "
              "`sandboxctl changes` / `apply` / `discard` (workspace: overlay).", "flag"),
    RunOption("quiet", ("-q", "--quiet"), "No notes or summaries on stderr.", "flag"),
    RunOption("verbose", ("-v", "--verbose"), "More detail on stderr (all plan notes).", "flag"),
)


def defaults() -> dict[str, object]:
    return {o.dest: ([] if o.kind == "multi" else False if o.kind == "flag" else None) for o in RUN_OPTIONS}


def parse_fast(args: list[str]) -> tuple[dict[str, object], list[str]]:
    """Parse `run` arguments with argparse; options end at `--` or at the first non-option."""
    import argparse

    from sandboxctl.errors import SandboxError

    class Parser(argparse.ArgumentParser):
        def error(self, message: str):  # one line + hint, exit 125 (SPEC), never argparse's usage dump
            raise SandboxError(message, "see `sandboxctl run --help`")

    parser = Parser(prog="sandboxctl run", add_help=False, allow_abbrev=False)
    for option in RUN_OPTIONS:
        if option.kind == "flag":
            parser.add_argument(*option.flags, dest=option.dest, action="store_true")
        elif option.kind == "multi":
            parser.add_argument(*option.flags, dest=option.dest, action="append", default=[])
        else:
            parser.add_argument(*option.flags, dest=option.dest, choices=option.choices)
    if "--" in args:
        cut = args.index("--")
        options, command = args[:cut], args[cut + 1 :]
    else:
        command = _command_after_options(args)
        options = args[: len(args) - len(command)]
    return vars(parser.parse_args(options)), command


def _command_after_options(args: list[str]) -> list[str]:
    """Without `--`, the command starts at the first token that is not an option or its value."""
    takes_value = {flag for o in RUN_OPTIONS if o.kind != "flag" for flag in o.flags}
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("-") or token == "-":
            return args[i:]
        name = token.split("=", 1)[0]
        i += 2 if name in takes_value and "=" not in token else 1
    return []


def wants_slow_path(args: list[str]) -> bool:
    """`run --help` (before any `--`) goes through typer for the full help text; a bare `run` stays on
    the fast path, which answers it with one line (no command given) and the usage as a hint."""
    head = args[: args.index("--")] if "--" in args else args
    return any(a in ("-h", "--help") for a in head)
