"""An overlay run's layer: its own directory in the state dir, what it records, and its state.

    state/workspaces/RUN/
        meta.json      the run (workspace, policy, command, when it started) and its state
        upper/ work/   overlayfs' upper and work directories (work is removed when the run ends)
        manifest.json  every entry of upper/ with its hash, written when the run ended ("sealed")
        apply.jsonl    one line per change `apply` made, written before making it: what undo reverses
        backup/        what apply replaced or deleted, kept for undo

The state dir is masked inside every sandbox, so the layer changes only through the overlay while
the run lasts; the manifest then shows whether anything touched it afterwards. A supervisor that
is killed leaves the layer held but unsealed: the next command that reads it seals it ("late").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sandboxctl.errors import SandboxError
from sandboxctl.plan.build import LAYERS_DIR

CLOCK_REALTIME_COARSE = 5  # the clock the kernel stamps inode change times (ctime) from
RUN_ID = re.compile(r"^[0-9]{8}T[0-9]{6}-[0-9a-f]{6}$")
# held: changes wait for a decision; "partly applied": apply left some out (conflicts, a full disk)
STATES = ("running", "held", "applied", "partly applied", "discarded", "undone")


def coarse_now_ns() -> int:
    """The kernel's coarse clock: a file changed after this instant has a ctime at or after it."""
    return time.clock_gettime_ns(CLOCK_REALTIME_COARSE)


def process_start(pid: int) -> int | None:
    """When a process started (clock ticks since boot): a pid and this name one process, even
    after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()
    return int(fields[19]) if len(fields) > 19 else None


class Layer:
    def __init__(self, path: Path):
        self.path = path
        self._meta: dict[str, Any] | None = None

    run_id = property(lambda self: self.path.name)
    upper = property(lambda self: self.path / "upper")
    work = property(lambda self: self.path / "work")
    backup = property(lambda self: self.path / "backup")
    manifest_path = property(lambda self: self.path / "manifest.json")
    journal_path = property(lambda self: self.path / "apply.jsonl")

    # ------------------------------------------------------------------ meta
    @property
    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            try:
                self._meta = json.loads((self.path / "meta.json").read_text())
            except (OSError, ValueError) as exc:
                raise SandboxError(f"run {self.run_id}: its layer's record is unreadable ({exc})",
                                   f"remove {self.path} if the run is of no use") from None
        return self._meta

    def update(self, **fields: Any) -> None:
        """Rewrite meta.json atomically (a crash leaves the old or the new record, never half)."""
        meta = {**self.meta, **fields}
        write_json(self.path / "meta.json", meta)
        self._meta = meta

    @property
    def state(self) -> str:
        state = self.meta.get("state", "held")
        if state == "running" and not self.running():
            return "held"  # the supervisor is gone (killed): its changes are held all the same
        return state

    @property
    def workspace(self) -> str:
        return str(self.meta.get("workspace", ""))

    @property
    def started_ns(self) -> int:
        return int(self.meta.get("started_ns", 0))

    @property
    def sealed(self) -> bool:
        return bool(self.meta.get("sealed")) and self.manifest_path.exists()

    def running(self) -> bool:
        """Is the supervisor that made this layer still running its sandbox?"""
        owner = self.meta.get("supervisor") or {}
        if self.meta.get("state") != "running" or not isinstance(owner.get("pid"), int):
            return False
        return process_start(owner["pid"]) == owner.get("start")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One apply, undo, discard or seal of a run at a time."""
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SandboxError(f"run {self.run_id} is being applied, undone or discarded by another "
                                   "sandboxctl", "wait for it to finish") from None
            self._meta = None  # re-read under the lock
            yield
        finally:
            os.close(fd)

    def seal_if_empty(self) -> bool:
        """Seal a layer the run left empty (what seal.seal would record, without reading a tree)."""
        try:
            if os.listdir(self.upper):
                return False
        except OSError:
            return False
        if not remove_empty_work(self.work):
            remove_tree(self.work)
        write_json(self.manifest_path, {"version": 1, "entries": {}})
        self.update(state="held", sealed={"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "late": False},
                    summary={"counts": {}, "changes": 0, "conflicts": 0, "protected": 0})
        return True

    # ------------------------------------------------------------------ the action log
    def log(self, action: str, **fields: Any) -> None:
        """A `workspace` record of this run in the run's action log: apply, discard and undo are
        actions of their own. seq continues the run's (the supervisor left the next one in meta)."""
        from sandboxctl.log.writer import ActionLog, LogWriteError

        path = self.meta.get("log")
        if not path:
            return
        seq = self.meta.get("log_seq")
        if not isinstance(seq, int):
            seq = _next_seq(path, self.run_id)
        try:
            with ActionLog(path, self.run_id) as log:
                log.seq = seq
                log.write("workspace", action=action, workspace=self.workspace, **fields)
                self.update(log_seq=log.seq)
        except LogWriteError as exc:
            raise SandboxError(f"{action} done, but the action log could not be written: {exc.message}",
                               exc.hint) from None


def _next_seq(log_path: str, run_id: str) -> int:
    from sandboxctl.log.files import iter_records

    last = -1
    with contextlib.suppress(OSError):
        for record in iter_records(log_path, run=run_id):
            if record.run == run_id and isinstance(record.data.get("seq"), int):
                last = max(last, record.data["seq"])
    return last + 1


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        payload = json.dumps(data, separators=(",", ":")).encode()
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)


# ---------------------------------------------------------------------- creating one
def layers_dir(state: str | os.PathLike[str]) -> Path:
    return Path(state) / LAYERS_DIR


def create(plan, state: str | os.PathLike[str]) -> Layer:
    """The run's layer, before launch: upper and work empty, the start instant recorded (conflicts
    are paths the host changed after it)."""
    from sandboxctl.paths import ensure_private_dir

    overlay = plan.overlay
    ensure_private_dir(state)
    ensure_private_dir(layers_dir(state))
    path = Path(overlay.layer_dir)
    try:
        path.mkdir(mode=0o700)
        for sub in ("upper", "work"):
            (path / sub).mkdir(mode=0o700)
    except OSError as exc:
        raise SandboxError(f"cannot create the run's overlay layer in {path.parent}: {exc.strerror}",
                           "free some space in the state dir, or set XDG_STATE_HOME") from None
    # upper/ is the workspace's root in the overlay: it must carry the workspace's own mode
    with contextlib.suppress(OSError):
        os.chmod(path / "upper", os.stat(overlay.lower).st_mode & 0o7777)
    layer = Layer(path)
    layer._meta = {}
    try:
        layer.update(version=1, run=plan.run_id, workspace=overlay.lower, started_ns=coarse_now_ns(),
                     started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), policy=plan.policy,
                     command=list(plan.command), log=plan.log_path, state="running",
                     supervisor={"pid": os.getpid(), "start": process_start(os.getpid())})
    except OSError as exc:
        remove_tree(path)
        raise SandboxError(f"cannot record the run's overlay layer: {exc.strerror}",
                           "free some space in the state dir") from None
    return layer


def remove_tree(path: Path) -> None:
    """rmtree that also clears overlayfs' work dir (it leaves `work/work` with mode 0)."""
    import shutil  # not on the path of a run that wrote nothing: see remove_empty_work

    def unlock(function, name, _exc):
        for directory in (os.path.dirname(name), name):  # never chmod through a symlink
            with contextlib.suppress(OSError):
                if stat.S_ISDIR(os.lstat(directory).st_mode):
                    os.chmod(directory, 0o700)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            if function in (os.rmdir, os.unlink, os.remove):
                function(name)
            elif stat.S_ISDIR(os.lstat(name).st_mode):  # a directory that could not be opened
                shutil.rmtree(name, onerror=unlock)

    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=unlock)


def remove_empty_work(work: Path) -> bool:
    """overlayfs leaves work/work (mode 0) behind, empty after a clean unmount: two rmdirs."""
    try:
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(work / "work")
        os.rmdir(work)
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------- finding one
def all_layers(state: str | os.PathLike[str]) -> list[Layer]:
    """Every layer in the state dir, oldest first."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(layers_dir(state)):
            if RUN_ID.match(entry.name) and entry.is_dir(follow_symlinks=False):
                layer = Layer(Path(entry.path))
                with contextlib.suppress(SandboxError):
                    layer.meta  # noqa: B018 - unreadable records are skipped
                    found.append(layer)
    return sorted(found, key=lambda layer: (layer.started_ns, layer.run_id))


def find(state: str | os.PathLike[str], run: str | None, workspace: str | None, prefer: tuple[str, ...] = ()) -> Layer:
    """A run by id (a unique prefix is enough), else the latest overlay run of this workspace —
    the latest in one of the `prefer` states if there is one."""
    layers = all_layers(state)
    if run:
        matches = [layer for layer in layers if layer.run_id.startswith(run)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise SandboxError(f"no overlay run {run!r} in {layers_dir(state)}",
                               "list runs with `sandboxctl log runs`")
        raise SandboxError(f"{run!r} names {len(matches)} overlay runs", "give more of the run id")
    mine = [layer for layer in layers if workspace and layer.workspace == workspace]
    if not mine:
        raise SandboxError(f"no overlay run of the workspace {workspace}",
                           "run one with `sandboxctl run --overlay -- COMMAND`, or pass -w DIR or a run id")
    preferred = [layer for layer in mine if layer.state in prefer]
    return (preferred or mine)[-1]


def newest(state: str | os.PathLike[str], workspace: str, verb: str = "discard") -> Layer:
    """The newest overlay run of this workspace, unless it was discarded: for a bare `discard`,
    which must never reach past it. Run twice, the second one would otherwise drop the next older
    run, held and perhaps never reviewed, without a word; it is refused instead, and the hint names
    the older runs that still hold changes, to be named on purpose. (An applied or running newest
    run is discard's own refusal, with its own remedy.)"""
    latest = find(state, None, workspace)
    if latest.state != "discarded":
        return latest
    holding = [layer for layer in all_layers(state) if layer.workspace == workspace
               and layer.run_id != latest.run_id and layer.state in ("held", "partly applied", "undone")]
    if not holding:
        hint = "no older run of this workspace holds changes: nothing is left to discard"
    else:
        listed = ", ".join(f"{layer.run_id} ({layer.state})" for layer in holding[-3:][::-1])
        more = f" and {len(holding) - 3} more" if len(holding) > 3 else ""
        hint = (f"older runs still hold changes: {listed}{more}; name one to {verb} it: "
                f"sandboxctl {verb} {holding[-1].run_id}")
    raise SandboxError(f"the latest overlay run of {workspace}, {latest.run_id}, was discarded already; "
                       f"a bare `{verb}` acts on the latest run only", hint)


def looks_like_run(text: str, state: Path) -> bool:
    """Is this argument a run id (or a prefix of one) rather than a path? (apply RUN PATH…)"""
    if RUN_ID.match(text):
        return True
    return len(text) >= 4 and any(layer.run_id.startswith(text) for layer in all_layers(state)) \
        and not os.path.lexists(text)


# ---------------------------------------------------------------------- discarding one
def discard(layer: Layer, *, force: bool = False) -> dict[str, Any]:
    """Drop a run's changes: its upper layer, and whatever apply kept for undo (refused for an
    applied run unless forced: undo would be impossible afterwards)."""
    with layer.locked():
        state = layer.state
        if state == "running":
            raise SandboxError(f"run {layer.run_id} is still running", "wait for it to end")
        if state == "discarded":
            raise SandboxError(f"run {layer.run_id} was discarded already")
        if state in ("applied", "partly applied") and not force:
            raise SandboxError(f"run {layer.run_id} was applied: discarding it drops what `undo` needs",
                               f"`sandboxctl undo {layer.run_id}` first, or discard --force")
        counts = (layer.meta.get("summary") or {}).get("counts") or {}
        for part in (layer.upper, layer.work, layer.backup):
            remove_tree(part)
        with contextlib.suppress(FileNotFoundError):
            layer.manifest_path.unlink()
        layer.update(state="discarded", discarded=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    layer.log("discard", previous=state, changes=counts)
    return {"run": layer.run_id, "previous": state, "changes": counts}


def errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))
