"""`sandboxctl log [runs]`: show, filter, follow and verify the action log.

Without --run or --since the view is the last run (the one that started last); `log runs` lists
every run. --json prints the raw lines (or one object per run), exactly as written, for pipes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from sandboxctl.errors import SandboxError

VIEWS = ("runs",)


def default_log_path() -> Path:
    from sandboxctl.paths import state_dir

    return Path(state_dir()) / "actions.jsonl"


def _log_path(option: str | None) -> Path:
    return Path(option).expanduser() if option else default_log_path()


def _require(path: Path) -> None:
    from sandboxctl.log.files import log_files

    if not log_files(path):
        raise SandboxError(f"no action log at {path}",
                           "nothing has run yet with this log; pass --log PATH to read another one")


def _since(text: str | None):
    if text is None:
        return None
    from sandboxctl.log.query import since_cutoff

    try:
        return since_cutoff(text)
    except ValueError as exc:
        raise SandboxError(f"--since {exc}", "use a duration such as 90s, 30m, 1h or 2d") from None


def _check_events(spec: str | None) -> None:
    import difflib

    from sandboxctl.log.query import EVENT_TYPES, unknown_events

    unknown = unknown_events(spec)
    if not unknown:
        return
    close = difflib.get_close_matches(unknown[0], list(EVENT_TYPES), n=1)
    known = ", ".join(EVENT_TYPES)
    raise SandboxError(f"--event {unknown[0]!r}: no such event type",
                       (f"did you mean {close[0]!r}? " if close else "") + f"event types: {known}")


def complete_events(incomplete: str) -> list[tuple[str, str]]:
    """--event values; after a comma, the list so far is kept and the next name completes."""
    from sandboxctl.log.query import EVENT_TYPES

    done, _, current = incomplete.rpartition(",")
    chosen = {name for name in done.split(",") if name}
    prefix = f"{done}," if done else ""
    return [(prefix + name, about) for name, about in EVENT_TYPES.items()
            if name.startswith(current) and name not in chosen]


def register(app: typer.Typer) -> None:
    @app.command("log")
    def log(
        view: str = typer.Argument(None, metavar="runs",
                                   help="`runs`: one line per run instead of the records of one run."),
        log_path: str = typer.Option(None, "--log", metavar="PATH",
                                     help="The action log (default: $XDG_STATE_HOME/sandboxctl/actions.jsonl)."),
        run: str = typer.Option(None, "--run", metavar="ID", help="Only this run (an id prefix is enough)."),
        denied: bool = typer.Option(False, "--denied", help="Only denied actions and denied/unanswered approvals."),
        event: str = typer.Option(None, "--event", metavar="TYPE", autocompletion=complete_events,
                                  help="Only these events: run, exec, file, net, http, syscall, approval, secret, "
                                       "limit, protect, create, tamper, log.forward, workspace, command "
                                       "(comma-separated)."),
        since: str = typer.Option(None, "--since", metavar="DURATION", help="Only the last DURATION, e.g. 1h."),
        all_runs: bool = typer.Option(False, "--all", help="Every run, not only the last one."),
        follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new records (Ctrl-C stops)."),
        as_json: bool = typer.Option(False, "--json", help="Raw JSON lines, for pipes."),
        verify: bool = typer.Option(False, "--verify",
                                    help="Check the hash chain across all files; exit 0 if intact, 1 if not."),
        against: str = typer.Option(None, "--against", metavar="FILE",
                                    help="With --verify: also check the local log against a collector's copy "
                                         "(log.forward), which shows what was rewritten locally."),
    ) -> None:
        """Show the action log: the last run by default, `log runs` for all runs, --verify the chain."""
        if view is not None and view not in VIEWS:
            raise SandboxError(f"unknown log view {view!r}",
                               "use `sandboxctl log` for records or `sandboxctl log runs` for runs")
        path = _log_path(log_path)
        cutoff = _since(since)
        _check_events(event)
        if against and not verify:
            raise SandboxError("--against needs --verify", "sandboxctl log --verify --against FILE")
        try:
            if verify:
                _verify(path, as_json, against)
            elif view == "runs":
                if follow:
                    raise SandboxError("--follow does not apply to `log runs`", "use `sandboxctl log --follow`")
                _require(path)
                _runs(path, run=run, denied=denied, since=cutoff, as_json=as_json)
            else:
                if not follow:  # following waits for a log that does not exist yet, like tail -F
                    _require(path)
                _records(path, run=run, event=event, denied=denied, since=cutoff, all_runs=all_runs,
                         follow=follow, as_json=as_json)
        except BrokenPipeError:  # `sandboxctl log --json | head`: the reader went away, not an error
            import os

            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(0) from None


# -- verify ------------------------------------------------------------------------------------


def _verify(path: Path, as_json: bool, against: str | None = None) -> None:
    from sandboxctl.log.verify import verify

    _require(path)
    try:
        result = verify(path)
    except OSError as exc:
        raise SandboxError(f"cannot read the action log {path}: {exc.strerror}", "pass --log PATH") from None
    compared = _against(path, against) if against else None
    if as_json:
        print(json.dumps({**result.as_dict(), **({"against": compared.as_dict()} if compared else {})}))
    else:
        if result.ok:
            files = "file" if result.files == 1 else "files"
            print(f"chain intact: {result.records} records in {result.files} {files}")
            if result.note:
                print(f"note: {result.note}")
            if result.unended:
                print(_unended(result.unended))
        else:
            print(f"chain broken at {result.where}: {result.reason}")
            print(f"({result.records} records verified before it)")
        if compared is not None:
            _print_against(compared, against)
    if not result.ok or (compared is not None and not compared.ok):
        raise typer.Exit(1)


def _unended(runs: tuple[str, ...]) -> str:
    """An intact chain says nothing of lines cut off at its end: a run without run.end is said."""
    from sandboxctl.log.render import clean

    shown = ", ".join(clean(run, 40) for run in runs[-5:])
    more = f" and {len(runs) - 5} more" if len(runs) > 5 else ""
    which = "run has" if len(runs) == 1 else "runs have"
    return (f"note: {len(runs)} {which} no run.end: {shown}{more} (still running, its supervisor killed, "
            "or the log cut after its last records; --against a forwarded copy tells which)")


def _against(path: Path, copy: str):
    from sandboxctl.log.against import check

    try:
        return check(path, Path(copy).expanduser())
    except OSError as exc:
        raise SandboxError(f"cannot read the collector's copy {copy}: {exc.strerror}",
                           "pass the file the collector writes (e.g. rsyslog's omfile target)") from None


def _print_against(compared, copy: str) -> None:
    from sandboxctl.inert import inert

    if compared.ok:
        print(f"matches the copy in {inert(copy)}: {compared.compared} records identical, "
              f"{compared.heads} run heads checked")
    else:
        print(f"differs from the copy in {inert(copy)}:")
        for problem in compared.problems:
            print(f"  {inert(problem)}")
    for note in compared.notes:
        print(f"note: {inert(note)}")


# -- records -----------------------------------------------------------------------------------


def _records(path: Path, *, run: str | None, event: str | None, denied: bool, since, all_runs: bool,
             follow: bool, as_json: bool) -> None:
    from sandboxctl.log import files, query
    from sandboxctl.log import follow as following

    scope = run
    if scope is None and since is None and not all_runs:
        scope = query.last_run_id(path)  # None for an empty (or not yet created) log
    keep = query.Filter(run=scope, event=event, denied=denied, since=since)
    if not follow:
        in_scope = list(files.iter_records(path, run=scope))
        if run is not None and not in_scope:
            _unknown_run(run, path)
        selected = [r for r in in_scope if keep(r)]
        if as_json:
            _print_raw(selected)
        else:
            _table(selected, path, scope)
            if not selected and scope is not None and run is None:  # the last run, by default
                print("  (the last run only: --all for every run, --run ID for another)", file=sys.stderr)
            _say_what_was_rotated_out(in_scope)
        return
    # Following: what is there now in the selected scope, then every new record that matches the
    # filters (with no --run, new runs too). One Follower reads both, so nothing is missed or doubled.
    keep_new = query.Filter(run=run, event=event, denied=denied, since=since)
    printer = _print_raw if as_json else _print_lines
    follower = following.Follower(path, from_start=True)
    try:
        printer([r for r in follower.drain() if keep(r)])
        for record in follower:
            if keep_new(record):
                printer([record])
    finally:
        follower.close()


def _say_what_was_rotated_out(records) -> None:
    """A run whose first kept record is not its seq 0 lost its beginning to rotation (a long or
    flooding run can push it out): say so, rather than show a part as the whole."""
    from sandboxctl.log.render import clean

    first: dict[str, int] = {}
    for record in records:
        seq = record.data.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            first[record.run] = min(seq, first.get(record.run, seq))
    for run, seq in sorted(first.items()):
        if seq > 0:
            print(f"note: the first {seq} records of run {clean(run, 40)} were rotated out of the local log "
                  "(log.forward keeps a copy elsewhere)", file=sys.stderr)


def _unknown_run(run: str, path: Path) -> None:
    raise SandboxError(f"no run {run} in {path}",
                       "list the runs with: sandboxctl log runs", exit_code=1)


def _print_raw(records) -> None:
    out = sys.stdout
    for record in records:
        out.write(record.text() + "\n")
    out.flush()


def _row(record) -> tuple[str, str, str, str, str]:
    """The columns of one record, each already inert (see log.render): print them as they are."""
    from sandboxctl.log.render import clean, decision, local_time, summarize

    data = record.data
    return (local_time(data.get("ts")), clean(record.event, 20), summarize(data), decision(data),
            clean(data.get("rule") or "", 60))


def _print_lines(records) -> None:
    out = sys.stdout
    for record in records:
        time_, event, what, verdict, rule = _row(record)
        line = f"{time_}  {event:<10} {what}"
        if verdict:
            line += f"  [{verdict}]"
        if rule:
            line += f"  rule: {rule}"
        out.write(line + "\n")
    out.flush()


def _table(records, path: Path, scope: str | None) -> None:
    from rich.table import Table
    from rich.text import Text

    from sandboxctl.cli.output import console
    from sandboxctl.log.render import clean

    if not records:
        print("no matching records" + (f" in run {clean(scope, 40)}" if scope else ""), file=sys.stderr)
        return

    runs = sorted({r.run for r in records})
    title = f"run {clean(runs[0], 40)}" if len(runs) == 1 else f"{len(runs)} runs"
    if not sys.stdout.isatty():  # a pipe: one whole record per line (a table of 80 columns cut paths mid-name)
        print(f"{title} — {clean(str(path), 200)}")
        _print_lines(records)
        return
    table = Table(title=Text(f"{title} — {clean(str(path), 200)}"), title_justify="left")
    for col in ("time", "event", "what", "decision", "rule"):
        table.add_column(col, overflow="fold")
    styles = {"deny": "red", "timeout": "red", "allow": "green"}
    for record in records:
        time_, event, what, verdict, rule = _row(record)
        table.add_row(Text(time_), Text(event, style="bold red" if record.event == "tamper" else ""), Text(what),
                      Text(verdict, style=styles.get(verdict, "")),
                      Text(rule))
    console().print(table)


# -- runs --------------------------------------------------------------------------------------


def _runs(path: Path, *, run: str | None, denied: bool, since, as_json: bool) -> None:
    from sandboxctl.log import files, query

    runs = query.list_runs(files.iter_records(path, run=run))
    if run is not None and not runs:
        _unknown_run(run, path)
    if since is not None:
        runs = [r for r in runs if (query.parse_ts(r.start) or since) >= since]
    if denied:
        runs = [r for r in runs if r.denied]
    if as_json:
        for summary in runs:
            print(json.dumps(summary.as_dict()))
        return
    if not runs:
        print("no matching runs", file=sys.stderr)
        return
    with_changes = any(s.changes for s in runs)
    if not sys.stdout.isatty():  # a pipe or a file: whole cells, nothing folded or cut
        _print_run_lines([_run_cells(s, with_changes, None) for s in runs], with_changes)
        return
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from sandboxctl.cli.output import console

    screen = console()
    rows = [_run_cells(s, with_changes, None) for s in runs]
    headers = RUN_COLUMNS[:8 if with_changes else 7]
    # every column but the command is never folded: what the command keeps of the terminal's real width
    fixed = sum(max(len(cell) for cell in column) for i, column in enumerate(zip(headers, *rows, strict=True))
                if i != 2) + len(headers) - 1
    room = screen.width - fixed
    if room < 10:  # no table fits (80 columns, overlay runs): whole lines the terminal wraps, never a cut column
        _print_run_lines(rows, with_changes)
        return
    rows = [_run_cells(s, with_changes, max(room, 60)) for s in runs]  # a long command: one line, or a few
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0))
    table.add_column("run", no_wrap=True)
    table.add_column("started", no_wrap=True)
    table.add_column("command", overflow="fold", min_width=10, ratio=3)
    table.add_column("policy", no_wrap=True)  # a name split in two ("defaul", "t") reads as two
    table.add_column("exit", no_wrap=True)
    table.add_column("duration", no_wrap=True, justify="right")
    table.add_column("denied", no_wrap=True, justify="right")
    if with_changes:  # overlay runs: what became of their held changes
        table.add_column("changes", no_wrap=True)
    for cells in rows:
        styles = [""] * len(cells)
        styles[4] = "yellow" if cells[4] == "running/crashed" else "" if cells[4] == "0" else "red"
        styles[6] = "" if cells[6] == "0" else "red"
        if with_changes:
            styles[7] = "yellow" if cells[7] == "held" else ""
        table.add_row(*(Text(cell, style=style) for cell, style in zip(cells, styles, strict=True)))
    screen.print(table)


RUN_COLUMNS = ("run", "started", "command", "policy", "exit", "duration", "denied", "changes")


def _run_cells(s, with_changes: bool, command_limit: int | None) -> list[str]:
    """One run's cells, each already inert (log.render); the command cut to `command_limit`
    columns (None: whole)."""
    from sandboxctl.log import render

    exit_text = "running/crashed" if not s.finished else ("timeout" if s.timed_out else str(s.exit_code))
    cells = [render.clean(s.run, 40), render.local_time(s.start, with_date=True)[5:16],
             render.format_argv(s.argv, command_limit) or "?", render.clean(s.policy or "?", 30), exit_text,
             render.format_seconds(s.duration_s) if s.finished else "-", str(s.denied)]
    if with_changes:
        cells.append(render.clean(s.changes or "", 16))
    return cells


def _print_run_lines(rows: list[list[str]], with_changes: bool) -> None:
    """Through a pipe: one whole run per line, columns aligned, never folded (a table squeezed into
    80 columns split policy names and cut the last column)."""
    headers = list(RUN_COLUMNS[:8 if with_changes else 7])
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    right = {"duration", "denied"}
    for cells in [headers, *rows]:
        line = "  ".join(cell.rjust(width) if name in right else cell.ljust(width)
                         for name, cell, width in zip(headers, cells, widths, strict=True))
        print(line.rstrip())
