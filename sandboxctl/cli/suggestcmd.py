"""`sandboxctl policy suggest --run ID`: the edge around policy/suggest.py — the log, the run's policy, the host."""

from __future__ import annotations

import fnmatch
import os
import sys
from pathlib import Path

from sandboxctl.errors import SandboxError


def _records(path: Path, run: str) -> tuple[str, list[dict]]:
    from sandboxctl.log.files import iter_records, log_files

    if not log_files(path):
        raise SandboxError(f"no action log at {path}", "pass --log PATH if the run wrote elsewhere")
    records = [r.data for r in iter_records(path, run=run)]
    runs = sorted({str(r.get("run")) for r in records if str(r.get("run", "")).startswith(run)})
    if not runs:
        raise SandboxError(f"no run {run!r} in {path}", "list the runs with: sandboxctl log runs")
    if len(runs) > 1:
        from sandboxctl.inert import inert

        raise SandboxError(f"{run!r} matches {len(runs)} runs: {inert(', '.join(runs[:5]))}", "give more of the run id")
    return runs[0], [r for r in records if r.get("run") == runs[0]]


def _extends(source: str | None, name: str | None, output: str | None) -> tuple[str, str | None]:
    """What the suggestion extends (a built-in name, or the run's policy file relative to where the
    suggestion will live), and the file to load now to know its deny list."""
    from sandboxctl.policy.load import BUILTIN_PREFIX, builtin_names

    if source and source.startswith(BUILTIN_PREFIX):
        return source.removeprefix(BUILTIN_PREFIX), None
    if source:
        from sandboxctl.policy.suggest import is_text

        base = Path(output).resolve().parent if output else Path.cwd()
        relative = os.path.relpath(source, base)
        if not is_text(relative):  # a byte that is not UTF-8, in the file's path or in the output's
            raise SandboxError(f"the suggestion cannot extend {source}: the path is not UTF-8 text, and a policy "
                               "file holds only text", "rename the policy file (or the output's directory) so its "
                               "path is text, then run and suggest again")
        return relative, source
    if name in builtin_names():  # a log written before run.start named its source
        return name, None
    raise SandboxError(f"the log does not say which policy file run used ({name!r})",
                       "a run logged by this sandboxctl records it; run the command again, then suggest")


def _protected(patterns: list[str]):
    """Why a path is protected (protect/names.py), judged beneath each of its ancestors: a grant that
    answered the denial would make that ancestor a writable root, where the name rules apply. This
    errs towards refusing. The policy's own filesystem.protect patterns too."""
    from sandboxctl.protect.rules import protected_reason

    def why(path: str) -> str | None:
        parts = path.strip("/").split("/")
        for depth in range(len(parts)):
            reason = protected_reason("/".join(parts[depth:]))
            if reason:
                return reason
        for pattern in patterns:
            if path == pattern or path.startswith(pattern.rstrip("/") + "/") or fnmatch.fnmatchcase(path, pattern):
                return f"filesystem.protect {pattern}"
        return None

    return why


def suggest_for_run(run: str, log_option: str | None, output: str | None) -> str | None:
    """The suggested policy's text, or None (said on stderr) when the run was denied nothing."""
    from sandboxctl import paths
    from sandboxctl.cli.logcmd import _log_path
    from sandboxctl.log.query import is_denial
    from sandboxctl.plan.facts import path_kind
    from sandboxctl.policy.suggest import Host, render, suggest

    log = _log_path(log_option)
    run_id, records = _records(log, run)
    start = next((r for r in records if r.get("event") == "run.start"), None)
    if start is None:
        raise SandboxError(f"run {run_id} has no run.start record (it never started)", "nothing to suggest")
    denials = [r for r in records if is_denial(r)]
    from sandboxctl.inert import inert

    if not denials:  # the run id is the log's, the policy's name the policy's: shown inert
        print(f"sandboxctl: run {inert(run_id, 80)} was denied nothing: no grant to suggest", file=sys.stderr)
        return None
    extends, policy_file = _extends(start.get("policy_source"), start.get("policy"), output)
    home = str(Path(paths.home_dir()).resolve())
    workspace = start.get("workspace") if isinstance(start.get("workspace"), str) else None
    from sandboxctl.policy.discover import load_named

    loaded = load_named(policy_file or extends)
    if loaded.policy.sha256 != start.get("policy_sha256"):
        print(f"sandboxctl: note: policy {inert(loaded.policy.name, 80)} changed since run {inert(run_id, 80)}; "
              "the suggestion extends it as it is now", file=sys.stderr)

    def expand(path: str) -> str:
        return paths.expand(path, workspace=workspace or "/nonexistent", home=home, state=str(paths.state_dir()))

    fs = loaded.policy.filesystem
    host = Host(home=home, workspace=workspace, kind=path_kind,
                denied=(*[expand(p) for p in fs.deny], str(paths.state_dir()), str(log.parent)),
                protected=_protected([expand(p) for p in fs.protect]))
    command = f"sandboxctl policy suggest --run {run_id}" + (f" --log {log_option}" if log_option else "")
    return render(suggest(records, host, loaded.policy.name, run_id), host, extends, command)
