"""`sandboxctl run`'s own parser (no argparse on the hot path) parses exactly as argparse does."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sandboxctl.cli.runopts import RUN_OPTIONS, _command_after_options, parse_fast
from sandboxctl.errors import SandboxError


class _Refused(Exception):
    pass


def reference(args: list[str]):
    """What parse_fast replaced: argparse built from the same table."""
    class Parser(argparse.ArgumentParser):
        def error(self, message: str):
            raise _Refused(message)

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
        options, command = args[:cut], args[cut + 1:]
    else:
        command = _command_after_options(args)
        options = args[: len(args) - len(command)]
    return vars(parser.parse_args(options)), command


def outcome(parse, args):
    try:
        return parse(args)
    except (SandboxError, _Refused):
        return "refused"


CASES = [
    ["-p", "ci", "--", "true"], ["-pci", "--", "true"], ["--policy=ci", "true"], ["-q", "-y", "true"],
    ["-qy", "true"], ["-qpci", "--", "x"], ["--allow-read", "/a", "--allow-read=/b", "--", "ls"],
    ["--net", "none", "--", "true"], ["--net", "bogus", "--", "true"], ["--net"], ["-p"], ["-p", "--", "x"],
    ["--dry-run", "--json", "--", "true"], ["--bogus", "--", "true"], ["-Z", "true"], ["--quiet=1", "true"],
    ["-w", "/tmp", "-p", "a", "-p", "b", "true", "-q"], ["true", "--net", "x"], ["--env", "A=1", "--env", "B"],
    ["--timeout", "-5", "--", "true"], ["--timeout", "-5.", "--", "x"], ["--timeout", "-.5", "--", "x"],
    ["-p", "-", "--", "x"], ["-p=ci", "--", "x"], [], ["--"], ["x", "--", "y"],
    ["--backend", "gvisor", "--approve", "allow", "--", "a"], ["-v", "--verbose", "--", "a"], ["stray", "--", "a"],
]


@pytest.mark.parametrize("args", CASES)
def test_parses_as_argparse(args: list[str]) -> None:
    assert outcome(parse_fast, args) == outcome(reference, args)


TOKENS = st.sampled_from(["-p", "ci", "-q", "-y", "-qy", "--net", "none", "proxy", "nope", "--allow-read", "/x",
                          "--allow-read=/y", "-w", "--json", "--dry-run", "--", "true", "-", "--env", "A=1",
                          "-pci", "--timeout", "30s", "--bogus", "-v", "--policy=ci", "=", "-p=x", "--approve",
                          "-5", "-.5"])


@settings(max_examples=400, deadline=None)
@given(st.lists(TOKENS, max_size=8))
@example(["-p", "="])  # found by CI: a separate value is taken as it is, '=' and all
@example(["-p", "=x"])
@example(["-p="])
def test_parses_as_argparse_whatever_the_tokens(args: list[str]) -> None:
    assert outcome(parse_fast, args) == outcome(reference, args)
