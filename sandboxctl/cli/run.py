"""`sandboxctl run`: policy -> plan -> (dry-run | confirm -> launch -> supervise) -> exit code.

The work is in `execute_run`, which both the typer command and the fast path (cli.main) call.
"""

from __future__ import annotations

import os
import sys

from sandboxctl.cli.runopts import RUN_OPTIONS, defaults
from sandboxctl.errors import SandboxError

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any


def _ask(prompt: str) -> str:
    """A question before the run, on the terminal: the prompt goes to stderr with the lines it
    asks about (stdout may be a pipe, `sandboxctl run ... | tee log`, where input() would put the
    prompt out of sight and into the command's output). EOF: EOFError, as input() raises."""
    sys.stderr.write(prompt)
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


def _confirm(confirmations: tuple[str, ...], yes: bool) -> None:
    """Launch-time confirmations: --yes accepts; a terminal asks; otherwise refuse."""
    if not confirmations or yes:
        return
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise SandboxError("this run widens the policy: " + "; ".join(confirmations),
                           "pass --yes to accept (non-interactive runs never widen silently)")
    from sandboxctl.inert import inert

    for item in confirmations:  # they name paths and rules from the policy file (maybe the workspace's)
        print(f"sandboxctl: {inert(item)}", file=sys.stderr)
    answer = _ask("Run anyway? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise SandboxError("not confirmed; nothing was run")


def _accept_untrusted(loaded, why: str, yes: bool) -> bool:
    """An untrusted workspace policy is used only once the user trusts that exact content: on a
    terminal they may do it here (pinned, as `policy trust` does). --yes never does: it accepts
    the caller's own options, and a workspace policy is written by whoever wrote the repository
    (a pull request could give its own CI run the network and the CI's tokens)."""
    from sandboxctl.inert import inert  # the policy's name and description come from the workspace

    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    print(f"sandboxctl: {inert(why)}", file=sys.stderr)
    description = inert(loaded.policy.description or "no description", 200)
    print(f"  policy {inert(repr(loaded.policy.name), 80)} ({description}), "
          f"merged from {inert(' <- '.join(loaded.policy.chain), 400)}", file=sys.stderr)
    print("  review it with: sandboxctl policy show " + inert(loaded.policy.chain[0]), file=sys.stderr)
    if _ask("Trust this exact content and run? [y/N] ").strip().lower() not in ("y", "yes"):
        raise SandboxError("not confirmed; nothing was run")
    from sandboxctl.policy.discover import trust

    trust(loaded)
    return True


def execute_run(opts: dict[str, Any], command: list[str], head_start=None, head_start_key: str = "",
                on_go=None) -> int:
    """`run` as a client of the library: the same Sandbox, plan and supervisor; the terminal's
    part (plan view, warnings, confirmation, denial table, CI annotations) stays here.
    head_start: a bubblewrap cli.main started early (launch/headstart.py): the supervisor adopts
    it only if this run's fresh plan launches exactly that; in every other case it is killed.
    on_go: called once the command is let go (cli.main's garbage collector)."""
    try:
        return _execute_run(opts, command, head_start, head_start_key, on_go)
    finally:
        if head_start is not None:
            head_start.abort()  # nothing once it was adopted


def _execute_run(opts: dict[str, Any], command: list[str], head_start, head_start_key: str, on_go) -> int:
    from sandboxctl import units
    from sandboxctl.api.sandbox import Sandbox
    from sandboxctl.cli import output

    opts = {**defaults(), **opts}
    opts["quiet"] = opts["quiet"] or output.QUIET
    opts["verbose"] = (opts["verbose"] or output.VERBOSE) and not opts["quiet"]
    if not command:
        raise SandboxError("no command given", "usage: sandboxctl run [OPTIONS] -- COMMAND [ARG...]")
    box = Sandbox.from_options(opts, accept=lambda candidate, why: _accept_untrusted(candidate, why, opts["yes"]))
    plan = box.plan(command, run_id=head_start.run_id if head_start is not None else None)
    if opts["dry_run"]:
        from sandboxctl.cli import planview

        planview.show(plan, as_json=opts["json"])
        return 0
    if not opts["quiet"] and (plan.warnings or (opts["verbose"] and plan.notes)):
        from sandboxctl.inert import inert

        for warning in plan.warnings:  # they name paths from the policy
            print(f"sandboxctl: warning: {inert(warning)}", file=sys.stderr)
        if opts["verbose"]:
            for note in plan.notes:
                print(f"sandboxctl: note: {inert(note)}", file=sys.stderr)
    _confirm(plan.confirmations, opts["yes"])
    from sandboxctl.cli.output import progress

    interactive = sys.stderr.isatty() and not opts["quiet"] and os.environ.get("CI", "").lower() not in ("true", "1")
    early = {"head_start": head_start, "head_start_key": head_start_key} if head_start_key else {}
    if on_go is not None:
        early["on_go"] = on_go
    def notice(message: str) -> None:
        print(output.named(message), file=sys.stderr)

    result = box.execute(plan, status=progress(interactive), notice=None if opts["quiet"] else notice, **early)
    if opts["summary_json"]:
        _write_summary(opts["summary_json"], plan, result)
    if result.error:
        from sandboxctl.cli.output import report

        report(result.error)
    if result.protected:
        _print_protected(result.protected, plan.run_id)
    if result.denials and not opts["quiet"]:
        _print_denials(result.denials, plan.run_id)
        print(f"sandboxctl: the least grants for these denials: {suggest_command(plan)}", file=sys.stderr)
    if result.tampered and not opts["quiet"]:
        from sandboxctl.supervise.denials import total

        print(f"sandboxctl: warning: {total(result.tampered)} exec records were contradicted by what ran (a path "
              f"swapped during the exec); see: sandboxctl log --run {plan.run_id} --event tamper", file=sys.stderr)
    if result.command_exit_code is not None:  # the denial gate (errors.EXIT_DENIED), never silent
        from sandboxctl.cli.output import error
        from sandboxctl.supervise.denials import total

        error(f"the command succeeded, but {total(result.denials)} action(s) were denied: the run fails on "
              f"denials (exit {result.exit_code})", f"allow what it needs ({suggest_command(plan)}), or stop it trying")
    if os.environ.get("GITHUB_ACTIONS") == "true":
        from sandboxctl.cli import ci

        ci.annotate(plan, result)
    if result.held and not opts["quiet"]:
        _print_held(result.held)
    if result.timed_out and not opts["quiet"]:
        print(f"sandboxctl: timeout: the run exceeded {units.format_duration(plan.limits.timeout or 0)};"
              " the whole sandbox was killed", file=sys.stderr)
    if result.interrupted:  # the command died of the terminal's Ctrl-C: so do we, once all is done (cli/main.py)
        output.INTERRUPTED = True
    return result.exit_code



def suggest_command(plan) -> str:
    """The command that turns this run's denials into a policy (named after the denial table)."""
    import shlex

    from sandboxctl.cli.output import invoked_as
    from sandboxctl.paths import state_dir

    default = os.path.join(state_dir(), "actions.jsonl")
    log = "" if os.path.abspath(plan.log_path) == os.path.abspath(default) else f" --log {shlex.quote(plan.log_path)}"
    return f"{invoked_as()} policy suggest --run {plan.run_id}{log}"


def _print_denials(denials: list[dict], run_id: str) -> None:
    """SPEC: at the end of every run with denials, a short summary table on stderr. Identical
    denials are one row with a count; every value is shown inert (it comes from the sandbox)."""
    from rich.table import Table
    from rich.text import Text

    from sandboxctl.cli.output import console
    from sandboxctl.inert import inert
    from sandboxctl.supervise.denials import collapse, total

    rows = collapse(denials)
    table = Table(title=Text(f"sandboxctl: {total(denials)} denied in run {inert(run_id, 40)}"), title_justify="left")
    for column in ("kind", "target", "rule"):
        table.add_column(column, overflow="fold")
    table.add_column("count", justify="right", no_wrap=True)
    for item in rows[:20]:
        table.add_row(Text(inert(item.get("kind"), 12)), Text(inert(item.get("target"), 160)),
                      Text(inert(item.get("rule"), 100)), Text(str(item["count"])))
    if len(rows) > 20:
        hidden = total(rows[20:])
        table.add_row("…", f"{len(rows) - 20} more ({hidden} denials)", f"sandboxctl log --run {run_id} --denied", "")
    console(stderr=True).print(table)


def _print_held(held: dict) -> None:
    """An overlay run ends by saying what it holds and how to decide about it."""
    from sandboxctl.cli.output import named

    run = held["run"]
    if held.get("not_copied"):
        _print_not_copied(held["not_copied"])
    if not held.get("sealed"):
        from sandboxctl.inert import inert

        print(named(f"sandboxctl: run {run} holds its changes, but could not record them: "
                    f"{inert(held.get('error'))}; nothing landed. Once the cause is gone (a full disk, a directory "
                    f"the run made unreadable in its layer), `sandboxctl changes {run}` records them; "
                    f"`sandboxctl discard {run}` drops them"), file=sys.stderr)
        return
    counts = held.get("counts") or {}
    if not counts:
        print(f"sandboxctl: run {run} changed nothing in the workspace", file=sys.stderr)
        return
    what = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    extra = "".join(f"; {held[k]} {label}" for k, label in (("conflicts", "in conflict"),
                                                           ("protected", "protected")) if held.get(k))
    count = held.get("changes")
    print(named(f"sandboxctl: run {run} holds {count} change{'' if count == 1 else 's'} ({what}{extra}); "
                "the workspace is untouched. "
                f"Review: sandboxctl changes {run} -p; then sandboxctl apply {run} or sandboxctl discard {run}"),
          file=sys.stderr)


def _print_not_copied(not_copied: dict) -> None:
    """The command saw only EOVERFLOW ("Value too large for defined data type"): say why, and
    what to do, once per run. Paths come from the sandbox: each line is made inert whole."""
    from sandboxctl.inert import inert

    shown = (not_copied.get("paths") or [])[:3]
    named = ", ".join(str(p.get("path")) + (f" (owner {p['uid']}, group {p['gid']})" if "uid" in p else "")
                      for p in shown)
    others = len(not_copied.get("paths") or []) - len(shown)
    message = (f"the overlay could not change {named}{f' and {others} more' if others > 0 else ''} "
               f"({not_copied.get('count')} call(s) failed with EOVERFLOW): overlayfs copies a file up with its "
               f"owner and group, and the sandbox maps only uid {not_copied.get('uid')} and gid "
               f"{not_copied.get('gid')}")
    print(f"sandboxctl: note: {inert(message)}", file=sys.stderr)
    print("  hint: give those files your own group (chgrp) and owner, or run without --overlay (workspace: rw)",
          file=sys.stderr)


def _print_protected(changes, run_id: str) -> None:
    """Always shown, even with -q: a protected path changed while a run went on. Put back where the
    sandbox could have done it; otherwise (the kernel wall was whole, a killed run's change after
    its last beat) said, and left as it is."""
    from sandboxctl.inert import inert

    for change in changes:
        where = f"; what was there is kept at {inert(change['kept'])}" if change.get("kept") else ""
        run = f" (run {inert(change['run'])}, whose supervisor was killed)" if change.get("run") != run_id else ""
        action = change["action"]
        if action == "left in git" and change["change"] != "created":  # protect/history.py: not all checked
            print(f"sandboxctl: the git history of {inert(change['path'])}: review new commits before the host's "
                  "git checkout, reset, restore, stash or pull", file=sys.stderr)
            continue
        if action == "left in git":  # protect/history.py: a commit or the index brings it in
            print(f"sandboxctl: protected path {inert(change['path'])} was committed or staged during a run: the "
                  "host's git checkout, reset, restore, stash or pull would write it into the workspace; review it "
                  "(git show, git diff --cached) first", file=sys.stderr)
            continue
        if action == "reported":
            action = ("not put back, and left as it is: not the sandbox's doing as far as sandboxctl can tell "
                      "(it could not write there, or it changed after the supervisor stopped)")
        print(f"sandboxctl: protected path {inert(change['path'])} was {change['change']} during a run{run}: "
              f"{action}{where}", file=sys.stderr)


def _write_summary(path: str, plan, result) -> None:
    import json

    from sandboxctl.supervise.denials import collapse, total

    summary = {
        "run": plan.run_id, "policy": plan.policy, "command": list(plan.command),
        "exit_code": result.exit_code, "timed_out": result.timed_out,
        "command_exit_code": result.exit_code if result.command_exit_code is None else result.command_exit_code,
        "failed_on_denial": result.command_exit_code is not None,
        "duration_s": round(result.duration_s, 3), "denied": total(result.denials),
        "denials": collapse(result.denials),
        "error": result.error.message if result.error else None, "log": plan.log_path,
        "protected": list(result.protected),
    }
    if plan.overlay is not None:  # what a later pipeline step may show, apply or discard
        summary["changes"] = result.held
    from sandboxctl.paths import pure

    with open(pure(path), "w") as handle:  # the file Path(path) named (a trailing slash dropped)
        handle.write(json.dumps(summary, indent=2) + "\n")


def register(app) -> None:
    """Build the typer `run` command from RUN_OPTIONS (so help and completion match the fast path)."""
    import inspect

    import typer

    def run(**kwargs):  # the real signature is __signature__, built below
        command = kwargs.pop("command") or []
        raise typer.Exit(execute_run(kwargs, list(command)))

    params = [inspect.Parameter(
        "command", inspect.Parameter.KEYWORD_ONLY, annotation=list[str] | None,
        default=typer.Argument(None, metavar="-- COMMAND [ARG...]", help="The command to run."))]
    for option in RUN_OPTIONS:
        if option.kind == "flag":
            annotation: Any = bool
            default: Any = typer.Option(False, *option.flags, help=option.help)
        elif option.kind == "multi":
            annotation = list[str] | None
            default = typer.Option(None, *option.flags, help=option.help, metavar=option.metavar)
        else:
            annotation = str | None
            default = typer.Option(None, *option.flags, help=option.help, metavar=option.metavar)
        params.append(inspect.Parameter(option.dest, inspect.Parameter.KEYWORD_ONLY,
                                        annotation=annotation, default=default))
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__doc__ = "Run COMMAND inside the sandbox described by the policy."

    def normalised(**kwargs):
        for option in RUN_OPTIONS:
            if option.kind == "multi" and kwargs.get(option.dest) is None:
                kwargs[option.dest] = []
        run(**kwargs)

    normalised.__signature__ = run.__signature__  # type: ignore[attr-defined]
    normalised.__doc__ = run.__doc__
    app.command("run", context_settings={"allow_interspersed_args": False})(normalised)
