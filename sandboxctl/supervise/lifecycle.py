"""One run from end to end: what must hold before the command may start, and the clean-up after.

Secrets are resolved, the log is proven writable, absent writable grants the policy says how to
make (filesystem.create) are made, limits get their cgroup and the protected paths are recorded
before anything is launched; whatever way the run ends, the cgroup is removed, the protected
paths are compared with that record (a change is put back, kept aside and reported as a
`protect` event) and run.end is written: the run's last record, whatever still runs then
(log/late.py). A run also finishes the check of supervisors that were killed before they could.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

from sandboxctl.errors import EXIT_DENIED, SandboxError
from sandboxctl.launch import seccomp
from sandboxctl.log.writer import RUN_HEAD, ActionLog, LogWriteError
from sandboxctl.paths import ensure_private_dir, join
from sandboxctl.plan.model import Plan
from sandboxctl.protect.snapshot import Change, Snapshot, new_glob_names, new_repositories, recover
from sandboxctl.supervise import secrets as secret_store
from sandboxctl.supervise.cgroups import RunCgroup
from sandboxctl.supervise.cgroups import detect as detect_cgroups
from sandboxctl.supervise.create import make_all
from sandboxctl.supervise.denials import total as denial_total
from sandboxctl.supervise.processes import alive
from sandboxctl.supervise.runner import RunResult, Supervisor

FORWARD_FLUSH_S = 2.0


class _NoBytecode:
    """While any run is on, this process writes no bytecode: sandboxctl's own code is a protected
    path, checked at the run's end, and a module the run imports late (a stale .pyc after a `git
    pull` of an editable install) would be reported as changed during the run — under gVisor put
    back to its stale self, so changed again by the next run. Nested for concurrent runs."""

    lock = threading.Lock()
    runs = 0
    before = False

    def __enter__(self) -> None:
        with self.lock:
            if _NoBytecode.runs == 0:
                _NoBytecode.before, sys.dont_write_bytecode = sys.dont_write_bytecode, True
            _NoBytecode.runs += 1

    def __exit__(self, *_exc: object) -> None:
        with self.lock:
            _NoBytecode.runs -= 1
            if _NoBytecode.runs == 0:
                sys.dont_write_bytecode = _NoBytecode.before


def execute(plan: Plan, state: str, argv_for_log: list[str], status=None, *, supervisor_class=None,
            started=None, **supervisor_options) -> RunResult:
    """Everything that must hold before the command may start, then the run itself (see _execute)."""
    with _NoBytecode():
        return _execute(plan, state, argv_for_log, status, supervisor_class=supervisor_class, started=started,
                        **supervisor_options)


def _execute(plan: Plan, state: str, argv_for_log: list[str], status=None, *, supervisor_class=None,
             started=None, **supervisor_options) -> RunResult:
    """Everything that must hold before the command may start, then the run itself.

    status(message) gives a context manager around slow set-up steps (a status line on a TTY).
    supervisor_options go to the Supervisor (io, forward_signals, approver, notice: the library's; notice
    is also told of side effects on the host: the paths filesystem.create made);
    started(supervisor) is called once it exists (the library keeps it, to cancel the run)."""
    status = status or (lambda message: contextlib.nullcontext())
    ensure_private_dir(state)
    values = {}
    for secret in plan.secrets:
        slow = secret.source.startswith("command:")
        with status(f"getting secret {secret.name}…") if slow else contextlib.nullcontext():
            values[secret.name] = secret_store.resolve(secret, os.environ, plan.home)
    log = ActionLog(plan.log_path, plan.run_id, redact=tuple(values.values()))
    late = _LateRecords(plan.run_id, supervisor_options.get("notice"))
    log.on_refused = lambda event: late().refused(event)  # a record after run.end (or the close): refused, said
    forwarder = None
    if plan.log_forward:  # copies outside the user's files (log/forward.py): never blocks the run
        from sandboxctl.log.forward import Forwarder

        forwarder = log.forward = Forwarder(plan.log_forward)
    cgroup = None
    snapshot = Snapshot(state, plan.run_id)
    changes: list[Change] = recover(state, alive)  # supervisors killed before their own check
    result: RunResult | None = None
    layer = None
    supervisor = None
    try:
        lim = plan.limits
        if "cgroup" in (lim.memory_method, lim.pids_method):
            layout = detect_cgroups()
            if layout is None:
                raise SandboxError("the cgroup tree this plan relies on is no longer writable",
                                   "run sandboxctl doctor")
            pids = lim.pids + 2 if lim.pids_method == "cgroup" and lim.pids else None
            memory = lim.memory if lim.memory_method == "cgroup" else None
            early = supervisor_options.get("head_start")
            # a head start made the run's cgroup as bubblewrap started, its first (slow) move under way
            cgroup = early.take_cgroup(layout) if early is not None else None
            try:
                if cgroup is not None:
                    cgroup.limit(pids, memory)  # this plan's, before anything may run in it
                else:
                    cgroup = RunCgroup(layout, plan.run_id, pids, memory)
                    if early is not None and not early.settled:  # bubblewrap runs: its first (slow) move starts now
                        cgroup.move_soon(early.pid)
            except OSError as exc:
                raise SandboxError(f"cannot create the run's cgroup for its limits: {exc.strerror}",
                                   "run sandboxctl doctor") from None
        if plan.creations:
            made = make_all(plan.creations, plan.home, log.write)
            notice = supervisor_options.get("notice")
            if made and notice:
                from sandboxctl.inert import inert

                notice("sandboxctl: made before the run (filesystem.create): " + ", ".join(
                    f"{inert(c.path)} ({c.kind}{' ' + format(c.mode, '04o') if c.mode is not None else ''})"
                    for c in made))
        if plan.protect.record or plan.protect.absent or plan.protect.json_keys:
            snapshot.take(plan.protect.record, plan.protect.absent, plan.protect.json_keys)
            if plan.protect.roots and not plan.protect.mediated and snapshot.incomplete():
                _refuse_left_out_links(snapshot)
        if plan.overlay is not None:  # the run's own layer, before anything can write to it
            from sandboxctl.workspace import layer as overlay_layer

            layer = overlay_layer.create(plan, state)
        if supervisor_class is None:
            supervisor_class = Supervisor
            if plan.backend == "gvisor":  # the same plan under runsc (supervise/gvisor.py)
                from sandboxctl.supervise.gvisor import GvisorSupervisor

                supervisor_class = GvisorSupervisor
        supervisor = supervisor_class(plan, state, log, argv_for_log, cgroup, values, **supervisor_options)
        supervisor.defer_signals = True  # a SIGTERM as the run ends waits for run.end (restore_signals)
        if forwarder is not None:  # an unreachable collector is a record of the local log, once per outage
            forwarder.on_state = lambda **fields: supervisor._write_log("log.forward", **fields)
        supervisor.protected_inodes = snapshot.inodes()
        supervisor.protected_incomplete = cut = snapshot.cut_short()
        if cut and plan.protect.mediated and supervisor_options.get("notice"):
            from sandboxctl.inert import inert
            from sandboxctl.protect.snapshot import MAX_ENTRIES

            supervisor_options["notice"](
                f"sandboxctl: {inert(cut)} holds more than {MAX_ENTRIES} entries, too many to record whole: files "
                "with more than one name (hardlinks: uv, pnpm) cannot be written in place under the writable grants")
        supervisor.snapshot = snapshot
        if started is not None:
            started(supervisor)
        cache = join(state, "cache")
        if not seccomp.is_cached(plan.seccomp, cache):
            with status("building the seccomp filters (first run with this policy)…"):
                seccomp.load_or_compile(plan.seccomp, cache)
                seccomp.load_or_compile_notify(plan.seccomp, cache)
        history = _record_history(plan)
        result = supervisor.launch()
        changes += snapshot.check()  # every sandboxed process is gone: nothing can race this
        mediator = getattr(supervisor, "mediator", None)
        held_late = mediator.held_late() if mediator is not None else None
        if held_late:  # held once the host's git config named them: what changed there during the run
            from sandboxctl.protect.restore import changed_during

            changes += changed_during(held_late, snapshot.taken_ns, plan.run_id)
        if history:  # commits and index entries that bring a protected name in (protect/history.py)
            from sandboxctl.protect import history as git_history

            changes += git_history.check(history, plan.protect.homes, plan.protect.roots, plan.run_id)
        if plan.protect.roots and not plan.protect.mediated:  # gVisor: nothing refused a new repository
            changes += new_repositories(plan.protect.roots, plan.protect.repositories, plan.workspace, state,
                                        plan.run_id)
            changes += new_glob_names(plan.protect.roots, plan.protect.record, state, plan.run_id)
        gated = plan.fail_on_denial and bool(result.denials) and result.exit_code == 0 and result.error is None
        held = None
        if layer is not None:
            held = _hold(layer, supervisor.ready)
            layer = None
            not_copied = getattr(getattr(supervisor, "mediator", None), "not_copied", None)
            if held is not None and not_copied is not None and not_copied.count:
                held["not_copied"] = _not_copied(not_copied)
            result = result._replace(held=held)
        # What still runs, asked before the log is held: a worker that holds its own lock while it
        # waits for log_lock to write would otherwise wait on us while we wait on it.
        unfinished = supervisor.unfinished() if supervisor.ready else {}  # its later records are refused
        end_fields = supervisor.end_fields() if supervisor.ready else {}
        # the run's other writers (proxy connections, approvals still settling) wait while its last
        # records are written, so none slips in between them (supervise/run_log.py)
        with contextlib.suppress(LogWriteError), supervisor.log_lock:
            log.flush()  # exec records still queued (ActionLog.write_soon), before seq and head are read
            supervisor.flush_throttled()
            _log_changes(log, changes)
            if forwarder is not None:
                forwarder.flush(FORWARD_FLUSH_S)
                for loss in forwarder.losses():  # what a collector will not have, said before run.end
                    log.write("log.forward", **loss)
            if supervisor.ready:
                if unfinished:  # run.end says so first
                    from sandboxctl.log.late import unfinished_text

                    late().say(unfinished_text(unfinished))
                log.write_last("run.end", exit_code=result.exit_code,
                               signal=result.exit_code - 128 if result.exit_code > 128 else None,
                               duration_s=round(result.duration_s, 6), denied=denial_total(result.denials),
                               timed_out=result.timed_out, protect_changes=len(changes) or None, head=RUN_HEAD,
                               changes=_logged(held), **({"unfinished": unfinished} if unfinished else {}),
                               **({"failed_on_denial": True} if gated else {}), **end_fields)
                if held and held.get("layer"):
                    _remember_seq(held["layer"], log.seq)
        result = result._replace(protected=tuple(c._asdict() for c in changes))
        if log.scrubber is not None:  # what the caller shows (stderr, --summary-json) holds no secret value
            result = result._replace(denials=[log.scrubber.value(d) for d in result.denials],
                                     tampered=[log.scrubber.value(d) for d in result.tampered],
                                     held=log.scrubber.value(result.held) if result.held else None)
        if gated:  # the CI gate: a successful command that was denied something fails the step
            return result._replace(exit_code=EXIT_DENIED, command_exit_code=result.exit_code)
        return result
    finally:
        try:
            early = supervisor_options.get("head_start")
            if early is not None:  # launch never adopted it (a failure before): kill it, nothing ran in it
                early.abort()
            if layer is not None:  # the launch failed: nothing ran, so nothing is held
                _hold(layer, supervisor is not None and supervisor.ready)
            if supervisor is not None:
                supervisor.release()
            if result is None:  # launch failed or was interrupted: still compare (nothing ran, or it is gone)
                with contextlib.suppress(Exception):
                    _log_changes(log, snapshot.check() if snapshot.active else [])
            if cgroup:
                with contextlib.suppress(Exception):  # a move still under way (the launch failed before "ready")
                    cgroup.moved()
                cgroup.remove()
            if forwarder is not None:  # run.end too, if the collector takes it in time; what it did not: said
                from sandboxctl.log.late import close_forwarder

                close_forwarder(forwarder, FORWARD_FLUSH_S, late().say)
            log.close()
            late.returned()
        finally:  # whatever failed above: the caller's handlers come back
            if supervisor is not None:
                supervisor.restore_signals()  # and a SIGTERM that came as it ended is raised now


class _LateRecords:
    """The run's log/late.LateRecords, made (and imported) only once something comes late: the
    start-up of every run does not pay for it."""

    def __init__(self, run_id: str, notice) -> None:
        self.run_id, self.notice, self.made = run_id, notice, None

    def __call__(self):
        if self.made is None:
            from sandboxctl.log.late import LateRecords

            self.made = LateRecords(self.run_id, self.notice)
        return self.made

    def returned(self) -> None:
        self.notice = None
        if self.made is not None:
            self.made.returned()


def _record_history(plan: Plan) -> dict:
    """The refs and index of each repository at a writable grant's root, read before the command
    starts (an overlay run's writes land in its layer: nothing to record)."""
    if not plan.protect.roots or not plan.protect.repositories or plan.overlay is not None:
        return {}
    from sandboxctl.protect import history as git_history

    return git_history.record(plan.protect.roots, plan.protect.repositories)


def _refuse_left_out_links(snapshot: Snapshot) -> None:
    """gVisor mediates nothing: a protected file left out of a record cut short, with another
    name beneath a writable grant, would be rewritten through that name unseen (fail closed)."""
    linked = snapshot.left_out_linked()
    if linked is None:
        return
    from sandboxctl.inert import inert
    from sandboxctl.protect.snapshot import MAX_ENTRIES

    raise SandboxError(f"the protected paths hold more than {MAX_ENTRIES} entries, and {inert(linked)}, left out "
                       "of their record, has another name (a hardlink): under --backend gvisor it could be "
                       "rewritten through that name unseen",
                       "use --backend bwrap, or give such files one name (uv: UV_LINK_MODE=copy)")


def _hold(layer, started: bool) -> dict | None:
    """Seal an overlay run's layer once its sandbox is gone: what it holds, for run.end, the
    summary and the message on stderr (None: nothing ran, the layer is removed)."""
    if not started:
        from sandboxctl.workspace.layer import remove_tree

        remove_tree(layer.path)
        return None
    try:
        if layer.seal_if_empty():  # `run --overlay -- true`: nothing to compare, nothing to import
            summary, found = layer.meta["summary"], []
        else:
            from sandboxctl.workspace import seal

            summary, found = seal.seal_at_end(layer)
    except (OSError, SandboxError) as exc:
        why = exc.message if isinstance(exc, SandboxError) else (exc.strerror or str(exc))
        return {"run": layer.run_id, "layer": str(layer.path), "state": "held", "sealed": False, "error": why}
    return {"run": layer.run_id, "layer": str(layer.path), "state": "held", "sealed": True, **summary,
            "list": [{"path": c.path, "change": c.change, "conflict": c.conflict, "protected": c.protected}
                     for c in found]}


def _not_copied(not_copied) -> dict:
    """What overlayfs would not copy up, with the owner and group the host sees (the overlay is
    mounted over the workspace's own path: a path in the sandbox's view is the host's)."""
    paths = []
    for path in not_copied.paths:
        try:
            st = os.lstat(path)
        except OSError:
            paths.append({"path": path})
            continue
        paths.append({"path": path, "uid": st.st_uid, "gid": st.st_gid})
    return {"count": not_copied.count, "paths": paths, "uid": os.getuid(), "gid": os.getgid()}


def _logged(held: dict | None) -> dict | None:
    if held is None:
        return None
    return {k: v for k, v in held.items() if k != "list"}


def _remember_seq(layer_dir: str, seq: int) -> None:
    """apply/discard/undo continue the run's seq in the log: the next one is kept in the layer."""
    from pathlib import Path  # an overlay run's: the layer module is pathlib's anyway

    from sandboxctl.workspace.layer import Layer

    with contextlib.suppress(OSError, SandboxError):
        Layer(Path(layer_dir)).update(log_seq=seq)


def _log_changes(log: ActionLog, changes: list[Change]) -> None:
    for change in changes:
        log.write("protect", path=change.path, change=change.change, action=change.action, kept=change.kept,
                  for_run=change.run if change.run != log.run_id else None)
