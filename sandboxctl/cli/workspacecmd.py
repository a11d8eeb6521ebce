"""`sandboxctl changes | apply | discard | undo`: decide what an overlay run's changes do.

Thin clients of sandboxctl/workspace/. Without RUN, each picks the latest overlay run of the
workspace (-w DIR, default the current directory): the latest held one for changes/apply, the
latest held or undone one for discard, the latest applied one for undo. Every path and link text
shown comes from the run: inert.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from sandboxctl.errors import SandboxError
from sandboxctl.inert import inert

WORKSPACE_HELP = "The workspace (default: the current directory)."
EXIT_HELD_BACK = 1  # something was not applied / put back: listed


def _state_dir() -> Path:
    from sandboxctl.paths import state_dir

    return Path(state_dir())


def _workspace(option: str | None) -> str:
    return os.path.realpath(os.path.expanduser(option or os.getcwd()))


def _layer(run: str | None, workspace: str | None, prefer: tuple[str, ...]):
    from sandboxctl.workspace.layer import find

    return find(_state_dir(), run, _workspace(workspace), prefer)


def _relative(path: str, workspace: str) -> str:
    """PATH as the user typed it, as a path in the workspace (relative to the current directory
    when that is inside the workspace, else to the workspace)."""
    here = os.getcwd()
    base = here if here == workspace or here.startswith(workspace.rstrip("/") + "/") else workspace
    full = os.path.normpath(os.path.join(base, os.path.expanduser(path)))
    if full != workspace and not full.startswith(workspace.rstrip("/") + "/"):
        raise SandboxError(f"{path} is not in the workspace {workspace}")
    relative = os.path.relpath(full, workspace)
    if relative == ".":
        raise SandboxError(f"{path} is the whole workspace", "give no PATH to apply everything")
    return relative


def _describe(change) -> str:
    old, new = change.old, change.new
    shown = inert(change.path) + ("/" if (new or old) and (new or old).kind == "dir" else "")
    if new is not None and new.kind == "symlink":
        shown += f" -> {inert(new.target)}"
    extra = []
    if change.change == "type-changed":
        extra.append(f"{old.kind} -> {new.kind}")
    if change.change == "mode-changed":
        extra.append(f"{old.mode:04o} -> {new.mode:04o}")
    if change.entries:
        extra.append(f"{change.entries} entr{'y' if change.entries == 1 else 'ies'}")
    if new is not None and new.special:
        extra.append(new.kind)
    extra += list(change.notes)
    return shown + (f"  ({'; '.join(extra)})" if extra else "")


def _print_changes(review, patch: bool) -> None:
    from sandboxctl.workspace.changes import diff

    layer = review.layer
    meta = layer.meta
    print(f"run {layer.run_id} ({layer.state}): {inert(layer.workspace)}, started {meta.get('started')}, "
          f"policy {inert(meta.get('policy'))}")
    if review.late:
        print("note: sealed after the run (its supervisor did not end it): nothing vouches for the layer "
              "between the run's end and that seal")
    for problem in review.tampered:
        print(f"warning: the layer is not what the run left: {inert(problem)}")
    if not review.changes:
        print("no changes")
        return
    for change in review.changes:
        flags = []
        if change.conflict:
            flags.append(f"conflict: {inert(change.conflict)}")
        if change.protected:
            flags.append(f"protected: {inert(change.protected)}")
        print(f"  {change.change:<13} {_describe(change)}" + (f"  [{'; '.join(flags)}]" if flags else ""))
        if patch:
            for line in diff(change, str(layer.upper), layer.workspace):
                print(f"    {inert(line)}")
    conflicts = sum(1 for c in review.changes if c.conflict)
    protected = sum(1 for c in review.changes if c.protected)
    tail = f"{len(review.changes)} change{'' if len(review.changes) == 1 else 's'}"
    if conflicts:
        tail += f"; {conflicts} in conflict (not applied without --force)"
    if protected:
        tail += f"; {protected} protected (applied only when named with --include-protected PATH)"
    print(tail)


def _outcome_lines(title: str, items, why) -> None:
    if not items:
        return
    print(f"{title}:", file=sys.stderr)
    for item in items[:50]:
        print(f"  {why(item)}", file=sys.stderr)
    if len(items) > 50:
        print(f"  … and {len(items) - 50} more (--json lists them all)", file=sys.stderr)


def register(app: typer.Typer) -> None:
    @app.command("changes")
    def changes(
        run: str = typer.Argument(None, metavar="[RUN]", help="Run id (or a prefix); default: the latest held."),
        patch: bool = typer.Option(False, "-p", "--patch", help="A unified diff of each text file."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object: the run and its changes."),
        workspace: str = typer.Option(None, "-w", "--workspace", metavar="DIR", help=WORKSPACE_HELP),
    ) -> None:
        """What an overlay run changed: added, modified, deleted, type- and mode-changed paths."""
        from sandboxctl.workspace import seal

        layer = _layer(run, workspace, ("held", "partly applied", "running"))
        seal.ensure_sealed(layer)
        review = seal.review(layer)
        if as_json:
            print(json.dumps({"run": layer.run_id, "state": layer.state, "workspace": layer.workspace,
                              "started": layer.meta.get("started"), "sealed_late": review.late,
                              "tampered": review.tampered, "changes": [c.as_dict() for c in review.changes]}))
            return
        _print_changes(review, patch)

    @app.command("apply")
    def apply(
        args: list[str] = typer.Argument(None, metavar="[RUN] [PATH...]",
                                         help="Run id (default: the latest held), then paths to apply only."),
        force: bool = typer.Option(False, "--force", help="Take the run's version of paths in conflict."),
        include_protected: list[str] = typer.Option(None, "--include-protected", metavar="PATH",
                                                    help="Apply this protected path too (repeatable)."),
        as_json: bool = typer.Option(False, "--json", help="Print what was applied and what was not as JSON."),
        workspace: str = typer.Option(None, "-w", "--workspace", metavar="DIR", help=WORKSPACE_HELP),
    ) -> None:
        """Write an overlay run's changes into the workspace (each file atomically; `undo` puts back)."""
        from sandboxctl.workspace.apply import apply as apply_changes
        from sandboxctl.workspace.layer import looks_like_run

        args = list(args or [])
        run = args.pop(0) if args and looks_like_run(args[0], _state_dir()) else None
        layer = _layer(run, workspace, ("held", "partly applied"))
        paths = [_relative(p, layer.workspace) for p in args]
        included = [_relative(p, layer.workspace) for p in include_protected or []]
        outcome = apply_changes(layer, paths, force=force, include_protected=included)
        if as_json:
            print(json.dumps(outcome.as_dict()))
        else:
            print(f"run {outcome.run}: {len(outcome.applied)} applied; now {outcome.state}", file=sys.stderr)
            _outcome_lines("not applied, the host changed them since the run started (--force takes the run's)",
                           outcome.conflicts, lambda c: f"{_describe(c)}: {inert(c.conflict)}")
            _outcome_lines("not applied, protected (--include-protected PATH applies one)", outcome.protected,
                           lambda c: f"{_describe(c)}: {inert(c.protected)}")
            _outcome_lines("not applied, special files", outcome.skipped, _describe)
            _outcome_lines("not applied, failed (the workspace keeps its own version of each)", outcome.failed,
                           lambda item: f"{_describe(item[0])}: {inert(item[1])}")
            if outcome.applied:
                print(f"undo with: sandboxctl undo {outcome.run}", file=sys.stderr)
        raise typer.Exit(EXIT_HELD_BACK if outcome.conflicts or outcome.protected or outcome.skipped or outcome.failed
                         else 0)

    @app.command("discard")
    def discard(
        run: str = typer.Argument(None, metavar="[RUN]",
                                  help="Run id (or a prefix); default: the latest run of the workspace."),
        force: bool = typer.Option(False, "--force", help="Also for an applied run (undo is then impossible)."),
        workspace: str = typer.Option(None, "-w", "--workspace", metavar="DIR", help=WORKSPACE_HELP),
    ) -> None:
        """Drop an overlay run's changes (the workspace is not touched)."""
        from sandboxctl.workspace.layer import discard as drop

        if run is None:  # the latest run only: a second bare discard must not drop an older one unseen
            from sandboxctl.workspace.layer import newest

            layer = newest(_state_dir(), _workspace(workspace))
        else:
            layer = _layer(run, workspace, ("held", "partly applied", "undone"))
        result = drop(layer, force=force)
        print(f"run {result['run']}: discarded ({result['previous']} before)", file=sys.stderr)

    @app.command("undo")
    def undo(
        run: str = typer.Argument(None, metavar="[RUN]", help="Run id (or a prefix); default: the latest applied."),
        force: bool = typer.Option(False, "--force",
                                   help="Put back what can be, leaving the paths the host changed since."),
        as_json: bool = typer.Option(False, "--json", help="Print what was put back as JSON."),
        workspace: str = typer.Option(None, "-w", "--workspace", metavar="DIR", help=WORKSPACE_HELP),
    ) -> None:
        """Put back what `apply` replaced or deleted, checked by content hash."""
        from sandboxctl.workspace.undo import undo as undo_apply

        layer = _layer(run, workspace, ("applied", "partly applied"))
        outcome = undo_apply(layer, force=force)
        if as_json:
            print(json.dumps(outcome.as_dict()))
        elif outcome.refused and not outcome.restored:
            print(f"run {outcome.run}: not undone — the host changed these since apply:", file=sys.stderr)
            for path, why in outcome.refused[:50]:
                print(f"  {inert(path)}: {inert(why)}", file=sys.stderr)
            print("  --force puts back everything else", file=sys.stderr)
        else:
            print(f"run {outcome.run}: {len(outcome.restored)} put back; now {outcome.state}", file=sys.stderr)
            for path, why in [*outcome.refused, *outcome.failed][:50]:
                print(f"  left as it is: {inert(path)}: {inert(why)}", file=sys.stderr)
        raise typer.Exit(EXIT_HELD_BACK if outcome.refused or outcome.failed else 0)
