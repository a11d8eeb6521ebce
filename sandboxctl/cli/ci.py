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


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def annotate(plan, result) -> None:
    for change in getattr(result, "protected", ()):
        title = _escape_property("sandboxctl: a protected path changed")
        message = _escape_data(f"{change['path']} {change['change']}; {change['action']}"
                               + (f" (changed content kept at {change['kept']})" if change.get("kept") else "")
                               + f" (run {plan.run_id})")
        print(f"::error title={title}::{message}", file=sys.stdout, flush=True)
    for denial in result.denials:
        title = _escape_property(f"sandboxctl denied {denial.get('kind')}")
        message = _escape_data(f"{denial.get('target')} — {denial.get('rule')} (run {plan.run_id}, "
                               f"policy {plan.policy})")
        print(f"::warning title={title}::{message}", file=sys.stdout, flush=True)
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return
    lines = [f"### sandboxctl: `{_cell(' '.join(plan.command))[:200]}`", "",
             f"Policy **{plan.policy}**, run `{plan.run_id}`, exit code **{result.exit_code}**, "
             f"{result.duration_s:.1f} s, **{len(result.denials)}** denied.", ""]
    if getattr(result, "protected", ()):
        lines += ["**Protected paths changed (put back):**", "", "| path | change | action |", "|---|---|---|"]
        lines += [f"| {_cell(c['path'])} | {_cell(c['change'])} | {_cell(c['action'])} |" for c in result.protected]
        lines.append("")
    if result.denials:
        lines += ["| kind | target | rule |", "|---|---|---|"]
        lines += [f"| {_cell(d.get('kind'))} | {_cell(d.get('target'))} | {_cell(d.get('rule'))} |"
                  for d in result.denials[:50]]
        if len(result.denials) > 50:
            lines.append(f"| … | {len(result.denials) - 50} more | `sandboxctl log --run {plan.run_id} --denied` |")
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n\n")
