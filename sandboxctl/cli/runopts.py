"""The options of `sandboxctl run`, declared once.

Two parsers read this table: typer (for `--help`, completion and the documented CLI) and, on the
hot path, parse_fast below — importing typer costs ~100 ms, more than the whole sandbox start-up
budget, so `sandboxctl run ...` must not pay for it (nor argparse's ~2 ms). A test checks that
parse_fast parses as argparse does.
"""

from __future__ import annotations

from sandboxctl.record import Record


class RunOption(Record):
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
    RunOption("allow_write", ("--allow-write",),
              "Extra writable path (repeatable; outside the workspace it needs --yes or a yes on the terminal).",
              "multi", "PATH"),
    RunOption("allow_net", ("--allow-net",),
              "Extra network destination (repeatable; needs --yes or a yes on the terminal).", "multi",
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
    """Parse `run` arguments as argparse would (without importing it: ~2 ms of every run):
    --name VALUE, --name=VALUE, -n VALUE, -nVALUE, flags combined (-qy); options end at `--`
    or at the first non-option. Any mistake is one line and a hint (exit 125), never a usage dump."""
    if "--" in args:
        cut = args.index("--")
        options, command = args[:cut], args[cut + 1 :]
    else:
        command = _command_after_options(args)
        options = args[: len(args) - len(command)]
    values: dict[str, object] = defaults()
    by_flag = {flag: option for option in RUN_OPTIONS for flag in option.flags}
    i = 0
    while i < len(options):
        token = options[i]
        i += 1
        if token.startswith("--"):
            name, has_value, value = token.partition("=")
            option = by_flag.get(name)
            if option is None:
                _usage(f"unrecognized arguments: {token}")
            if option.kind == "flag":
                if has_value:
                    _usage(f"argument {_names(option)}: ignored explicit argument {value!r}")
                values[option.dest] = True
                continue
            if not has_value:
                value, i = _value(options, i, option)
            _store(values, option, value)
        elif token.startswith("-") and len(token) > 1:
            rest = token[1:]
            while rest:  # short flags may be combined; a short value option takes the rest or the next
                option = by_flag.get("-" + rest[0])
                if option is None:
                    _usage(f"unrecognized arguments: {token}")
                if option.kind == "flag":
                    values[option.dest] = True
                    rest = rest[1:]
                    continue
                value = rest[1:].removeprefix("=")  # argparse: -pX and -p=X, attached, are X
                if not rest[1:]:
                    value, i = _value(options, i, option)  # the next token as it is ('=' included)
                _store(values, option, value)
                rest = ""
        else:
            _usage(f"unrecognized arguments: {' '.join(options[i - 1:])}")
    return values, command


def _names(option: RunOption) -> str:
    return "/".join(option.flags)


def _usage(message: str):
    from sandboxctl.errors import SandboxError

    raise SandboxError(message, "see `sandboxctl run --help`")


def _value(options: list[str], i: int, option: RunOption) -> tuple[str, int]:
    """The next token as the option's value; one that looks like an option is not (a negative
    number is, as argparse has it: no option of ours looks like one)."""
    if i >= len(options) or (options[i].startswith("-") and options[i] != "-" and not _negative(options[i])):
        _usage(f"argument {_names(option)}: expected one argument")
    return options[i], i + 1


def _negative(token: str) -> bool:
    """argparse's r'^-\\d+$|^-\\d*\\.\\d+$' ($ also before a final newline)."""
    number = token[1:].removesuffix("\n")
    whole, dot, fraction = number.partition(".")
    if not dot:
        return number.isdecimal()
    return (not whole or whole.isdecimal()) and fraction.isdecimal()


def _store(values: dict[str, object], option: RunOption, value: str) -> None:
    if option.choices and value not in option.choices:
        choices = ", ".join(repr(c) for c in option.choices)
        _usage(f"argument {_names(option)}: invalid choice: {value!r} (choose from {choices})")
    if option.kind == "multi":
        values[option.dest] = [*values[option.dest], value]  # type: ignore[misc]
    else:
        values[option.dest] = value


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
