"""`sandboxctl selftest [-p POLICY] [--json] [--keep]`: the standard escapes, tried for real."""

from __future__ import annotations

import os
import sys

import typer

STYLES = {"blocked": "green", "ESCAPED": "bold red", "n/a": "yellow"}


def render(report) -> None:
    """The attempts as a rich table, then one summary line."""
    from rich.table import Table
    from rich.text import Text

    from sandboxctl.cli.output import console

    out = console()
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = 120  # a log or a pipe: room for the observations rather than rich's 80 columns
    out.print(Text(f"sandboxctl selftest: policy {report.policy} ({report.source})", style="bold"))
    table = Table(show_lines=True)
    for col in ("#", "attempt", "expected", "observed", "verdict"):
        table.add_column(col, overflow="fold")
    for number, attempt in enumerate(report.attempts, 1):
        table.add_row(str(number), Text(attempt.attempt), Text(attempt.expected), Text(attempt.observed),
                      Text(attempt.label, style=STYLES.get(attempt.verdict, "")))
    out.print(table)
    counts = report.to_dict()["counts"]
    summary = f"{counts['blocked']} blocked, {counts['ESCAPED']} escaped, {counts['n/a']} not applicable"
    if report.escaped:
        out.print(Text(f"{summary}: ESCAPED: {', '.join(a.key for a in report.escaped)}", style="bold red"))
    else:
        out.print(Text(f"{summary}: nothing escaped", style="green"))
    if report.kept:
        out.print(Text(f"kept for inspection: {report.kept}"), soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command("selftest")
    def selftest(
        policy: str = typer.Option(None, "-p", "--policy", metavar="NAME|PATH",
                                   help="Policy to test (default: the one `sandboxctl run` would use here)."),
        json_output: bool = typer.Option(False, "--json", help="Print the results as JSON."),
        keep: bool = typer.Option(False, "--keep", help="Keep the temporary directory for inspection."),
    ) -> None:
        """Try the standard escapes for real under a policy, in a throwaway HOME and workspace, and
        judge each from outside. Exit 0 if nothing escaped, 1 if anything did, 125 on setup errors."""
        import json

        from sandboxctl.checks.selftest import run_selftest
        from sandboxctl.cli import output

        def progress(message: str) -> None:
            if not json_output and not output.QUIET:
                print(f"sandboxctl: {message}", file=sys.stderr)

        report = run_selftest(policy, keep=keep, progress=progress)
        if json_output:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            render(report)
        raise typer.Exit(report.exit_code)
