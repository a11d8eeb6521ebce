"""GitHub Actions integration: each denial as a ::warning annotation, and a step summary.

Annotations are workflow commands on stdout (the runner reads them there); the summary is
markdown appended to $GITHUB_STEP_SUMMARY. Nothing here runs outside GitHub Actions.
"""

from __future__ import annotations

import os
import sys


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _cell(text: object, limit: int = 200) -> str:
    from sandboxctl.inert import inert

    return inert(text, limit).replace("|", "\\|").replace("`", "\\`")


def annotate(plan, result) -> None:
    """One annotation per changed protected path and per distinct denial (with its count): an error
    when the run fails on denials (the step is red because of them), else a warning; and the step
    summary. Values inert, as on a terminal."""
    from sandboxctl.inert import inert
    from sandboxctl.supervise.denials import collapse, total

    failed = getattr(result, "command_exit_code", None) is not None
    level = "error" if failed else "warning"
    for change in getattr(result, "protected", ()):
        title = _escape_property("sandboxctl: a protected path changed")
        message = _escape_data(f"{inert(change['path'], 300)} {change['change']}; {change['action']}"
                               + (f" (changed content kept at {inert(change['kept'], 300)})" if change.get("kept")
                                  else "")
                               + f" (run {plan.run_id})")
        print(f"::error title={title}::{message}", file=sys.stdout, flush=True)
    rows = collapse(result.denials)
    for denial in rows:
        title = _escape_property(f"sandboxctl denied {inert(denial.get('kind'), 20)}")
        times = f" ×{denial['count']}" if denial["count"] > 1 else ""
        message = _escape_data(f"{inert(denial.get('target'), 300)} — {inert(denial.get('rule'), 200)}{times} "
                               f"(run {plan.run_id}, policy {inert(plan.policy, 60)})")
        print(f"::{level} title={title}::{message}", file=sys.stdout, flush=True)
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return
    lines = [f"### sandboxctl: `{_cell(' '.join(plan.command))}`", "",
             f"Policy **{plan.policy}**, run `{plan.run_id}`, exit code **{result.exit_code}**, "
             f"{result.duration_s:.1f} s, **{total(result.denials)}** denied.", ""]
    if failed:
        lines[2:2] = [f"**Failed on denials**: the command itself exited {result.command_exit_code}, but the run "
                      f"fails when anything is denied (`--fail-on-denial` or `ci.fail_on_denial`); exit "
                      f"{result.exit_code}.", ""]
    if getattr(result, "protected", ()):
        lines += ["**Protected paths changed (put back):**", "", "| path | change | action |", "|---|---|---|"]
        lines += [f"| {_cell(c['path'])} | {_cell(c['change'])} | {_cell(c['action'])} |" for c in result.protected]
        lines.append("")
    if rows:
        lines += ["| kind | target | rule | count |", "|---|---|---|---|"]
        lines += [f"| {_cell(d.get('kind'))} | {_cell(d.get('target'))} | {_cell(d.get('rule'))} | {d['count']} |"
                  for d in rows[:50]]
        if len(rows) > 50:
            lines.append(f"| … | {len(rows) - 50} more | `sandboxctl log --run {plan.run_id} --denied` | |")
        from sandboxctl.cli.run import suggest_command

        lines += ["", f"The least grants for these denials: `{suggest_command(plan)}`"]
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n\n")
