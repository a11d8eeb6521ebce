"""`sandboxctl doctor`: the machine checks of sandboxctl/checks/, as a table or as JSON."""

from __future__ import annotations

import typer

STYLES = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def render(results: list, user: str, uid: int, kernel: str) -> None:
    """The checks as a rich table, then the feature tables, then what to do about each problem."""
    from rich.table import Table
    from rich.text import Text

    from sandboxctl.checks.common import FAIL, OK
    from sandboxctl.checks.doctor import exit_code
    from sandboxctl.cli.output import console

    out = console()
    out.print(Text(f"sandboxctl doctor: checked as {user} (uid {uid}), kernel {kernel}"))
    table = Table(show_lines=True)
    for col in ("check", "status", "found"):
        table.add_column(col, overflow="fold")
    for result in results:
        table.add_row(Text(result.name), Text(result.status, style=STYLES.get(result.status, "")),
                      Text(result.found))
    out.print(table)
    for result in results:
        if result.details:
            sub = Table(title=Text(f"{result.name}: what this machine has"), title_justify="left")
            for key in result.details[0]:
                sub.add_column(key, overflow="fold")
            for row in result.details:
                sub.add_row(*(Text(str(row.get(key, "")),
                                   style={"yes": "green", "no": "yellow"}.get(row.get(key, ""), ""))
                              for key in result.details[0]))
            out.print(sub)
    problems = [r for r in results if r.status != OK and r.remedy]
    if problems:
        out.print(Text("What to do", style="bold"))
        for result in problems:
            out.print(Text.assemble((f"{result.name} ({result.status}): ", STYLES.get(result.status, "")),
                                    result.remedy))
    failed = [r.name for r in results if r.status == FAIL]
    if exit_code(results) == 0:
        out.print(Text("sandboxctl run will work here with the default policy"
                       + (" (see the warnings above)" if problems else ""), style="green"))
    else:
        out.print(Text(f"sandboxctl run will not work here with the default policy: {', '.join(failed)} failed",
                       style="bold red"))


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor(json_output: bool = typer.Option(False, "--json", help="Print the checks as JSON.")) -> None:
        """Check bubblewrap, user namespaces, Landlock, seccomp, cgroups, the state dir and gVisor; say how
        to fix what is missing. Exit 0 when `sandboxctl run` would work with the default policy, else 1."""
        import json
        import os

        from sandboxctl.checks.common import current_user
        from sandboxctl.checks.doctor import exit_code, run_checks, to_json

        _finish_killed_runs()
        results = run_checks()
        if json_output:
            print(json.dumps(to_json(results), indent=2, ensure_ascii=False))
        else:
            user, uid = current_user()
            render(results, user, uid, os.uname().release)
        raise typer.Exit(exit_code(results))


def _finish_killed_runs() -> None:
    """A run whose supervisor was killed left its end-of-run check of protected paths undone:
    finish it here (as the next run would), and say what was put back."""
    import sys

    from sandboxctl.inert import inert
    from sandboxctl.paths import state_dir
    from sandboxctl.protect.snapshot import recover
    from sandboxctl.supervise.processes import alive

    for change in recover(state_dir(), alive):
        kept = f"; what was there is kept at {inert(change.kept)}" if change.kept else ""
        print(f"sandboxctl: protected path {inert(change.path)} was {change.change} during run {inert(change.run)}, "
              f"whose supervisor was killed: {change.action}{kept}", file=sys.stderr)
