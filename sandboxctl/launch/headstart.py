"""A head start: bubblewrap is spawned from the last identical run's launch, then checked.

`sandboxctl run` spends most of its start-up importing and planning before bubblewrap may start,
and the sandbox then takes as long again to build itself and start the shim. When this exact
command line (same arguments, directory, environment, user, signal dispositions) ran before
and its launch was remembered, the CLI spawns bubblewrap with that launch's argv and hands the
shim that launch's configuration at once, before importing anything heavy; the supervisor then
plans as always, renders the argv and the shim's configuration from the fresh plan, and only if
both are byte for byte what the sandbox was started with does it adopt the sandbox. Anything
else — a changed policy, file, mount, grant, environment — and the early sandbox is killed
before its command ever ran (the shim runs nothing without the supervisor's go) and bubblewrap
is started again from the fresh plan. So the walls are always the fresh plan's; what the cache
decides is only whether the work of building them started early.

Nothing of it may touch the host: bubblewrap creates a missing mount point, and inside a
writable bind that would be on the host, so a remembered launch is used only when every mount
point beneath a writable bind still exists with the kind it had. Runs with secrets, host-side
creations, sessions, launch-time confirmations, TLS inspection, an overlay workspace, a
workspace policy or the gvisor backend are never remembered (nor adopted: the fresh plan must be
one that could be), nor a launch naming its run id. The argv of an entry is executed before
any check, so entries are used only from the state dir's cache (which no sandbox can see or
write) when that directory and the entry are the user's and nobody else may write them; they
are named by the SHA-256 of everything the key holds; at most MAX_ENTRIES are kept.

When the remembered run had a cgroup (its limits), the run's cgroup is made as bubblewrap starts
and bubblewrap's first move into it begins at once: the kernel makes that move wait for an RCU
grace period (~10 ms), which then passes while the supervisor plans instead of after the shim is
ready. It holds no limit until the supervisor writes the fresh plan's (supervise/lifecycle.py),
before the command may start; a run that does not adopt it removes it.
"""

from __future__ import annotations

import marshal
import os
import sys
import time

from sandboxctl.digest import sha256
from sandboxctl.launch.config_frames import send_config

FORMAT = "2"
MAX_ENTRIES = 64
FD_MARKS = ("@@fd-seccomp", "@@fd-control", "@@fd-stderr")  # where argv holds descriptor numbers
RUN_MARK = "@@run-id"
CALLER_MARK = "@@caller-env"  # a value the sandbox got from the caller's environment: never written to disk
PREFIX = "headstart-"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sandboxctl.supervise.cgroups import CgroupLayout, RunCgroup


def cache_dir() -> str | None:
    """paths.state_dir()'s cache, or None when another user could change what that path names
    (paths.others_control): an entry's argv is executed before any check, so a cache reached
    through a directory others may write — where they could swap in a directory of ours that a
    sandbox wrote — is neither read nor written."""
    from sandboxctl import paths

    directory = paths.join(paths.state_dir(), "cache")
    return None if paths.others_control(directory) else directory


def key(run_args: list[str]) -> str:
    """Everything a run's launch could depend on that is known before planning."""
    import _signal

    parts = [FORMAT, sys.executable, os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
             os.getcwd(), repr(run_args), repr(sorted(os.environ.items())),
             repr((os.getuid(), os.geteuid(), os.getgid(), os.getegid())),
             repr([_signal.getsignal(s) is _signal.SIG_IGN for s in (_signal.SIGINT, _signal.SIGQUIT)]),
             repr([os.isatty(fd) for fd in (0, 1, 2)])]
    return sha256("\0".join(parts).encode(errors="surrogateescape")).hexdigest()[:40]


class HeadStart:
    """A bubblewrap started early; the supervisor adopts it (adopt) or kills it (abort)."""

    def __init__(self, pid: int, control, err_r: int, argv: list[str], config: dict[str, Any], run_id: str,
                 started: float, originals: dict[int, Any], fds: tuple[int, int, int], program: bytes = b"",
                 cgroup: RunCgroup | None = None):
        self.pid = pid
        self.control = control  # our end of the shim's socket
        self.err_r = err_r
        self.argv = argv  # exactly as spawned
        self.config = config  # exactly as sent to the shim
        self.run_id = run_id
        self.started = started
        self.originals = originals  # the signal dispositions before we ignored SIGINT/SIGQUIT
        self.fds = fds  # the numbers argv names (seccomp, the shim's end, stderr), closed in us after the spawn
        self.program = program  # the static seccomp program bubblewrap was given (argv names only its fd)
        self.cgroup = cgroup  # the run's cgroup, bubblewrap moving into it, no limits yet (take_cgroup)
        self.settled = False

    def matches(self, argv: list[str], config: dict[str, Any], program: bytes) -> bool:
        """Exactly what was started: the same words, the same seccomp program bubblewrap loaded,
        and the same configuration down to its types (repr: plain data only, lists in order;
        marshal's bytes differ with object identity)."""
        return argv == self.argv and program == self.program and repr(config) == repr(self.config)

    def take_cgroup(self, layout: CgroupLayout) -> RunCgroup | None:
        """The cgroup made early, now the caller's to limit and remove. If the cgroup tree is laid
        out otherwise by now, the head start is dropped (killed, its cgroup removed): bubblewrap
        must never be left in a cgroup that will not get the run's limits."""
        cgroup, self.cgroup = self.cgroup, None
        if cgroup is None or cgroup.layout == layout:
            return cgroup
        self.cgroup = cgroup
        self.abort()
        return None

    def adopt(self) -> None:
        self.settled = True

    def abort(self) -> None:
        """Kill the early sandbox (its command never ran) and wait for it."""
        if self.settled:
            return
        self.settled = True
        import _signal

        try:
            os.kill(self.pid, _signal.SIGKILL)  # --die-with-parent takes its children down with it
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        self.control.close()
        os.close(self.err_r)
        for signum, handler in self.originals.items():
            _signal.signal(signum, handler)
        if self.cgroup is not None:  # nobody took it: it held only the killed sandbox
            import contextlib  # not before bubblewrap is spawned: with collections and functools, ~3 ms

            cgroup, self.cgroup = self.cgroup, None
            with contextlib.suppress(Exception):
                cgroup.moved()
            cgroup.remove()


def try_start(run_args: list[str]) -> tuple[str, HeadStart | None]:
    """(the key, the head start if a remembered launch applies). Never raises: any problem is no head start."""
    try:
        this = key(run_args)
    except Exception:
        return "", None
    try:
        return this, _start(this)
    except Exception:
        return this, None


def _start(this: str) -> HeadStart | None:
    directory = cache_dir()
    if directory is None:
        return None
    try:
        held = os.lstat(directory)
    except OSError:
        return None
    # the entry is executed before any check (its argv[0] is run): only ours, in a directory of
    # ours that nobody else may write to (the state dir is never visible inside a sandbox); the
    # file is judged by the descriptor it is read from (no symlink, no swap after the check)
    uid = os.getuid()
    if held.st_uid != uid or held.st_mode & 0o022 or not os.path.isdir(directory) or os.path.islink(directory):
        return None
    try:
        fd = os.open(os.path.join(directory, f"{PREFIX}{this}.marshal"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != uid or st.st_mode & 0o077 or (st.st_mode & 0o170000) != 0o100000:  # a regular file
            return None
        data = b"".join(iter(lambda: os.read(fd, 1 << 16), b""))
    finally:
        os.close(fd)
    entry = marshal.loads(data)
    if entry.get("format") != FORMAT or not _mount_points_hold(entry["mount_points"]):
        return None
    import _signal
    import _socket

    run_id = _run_id()
    control, shim_end = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    err_r, err_w = os.pipe()
    seccomp_fd = os.memfd_create("sandboxctl-seccomp", 0)  # inheritable on purpose: bubblewrap reads it
    os.write(seccomp_fd, entry["seccomp"])
    os.lseek(seccomp_fd, 0, os.SEEK_SET)
    stderr_copy = os.dup(2)
    numbers = {FD_MARKS[0]: str(seccomp_fd), FD_MARKS[1]: str(shim_end.fileno()), FD_MARKS[2]: str(stderr_copy)}
    argv = [numbers.get(word, word) for word in entry["argv"]]
    config = entry["config"]
    environ = os.environ  # the key holds all of it: the same values as the remembered run's
    config["env"] = {name: run_id if value == RUN_MARK else environ[name] if value == CALLER_MARK else value
                     for name, value in config["env"].items()}
    originals = {s: _signal.getsignal(s) for s in (_signal.SIGINT, _signal.SIGQUIT)}
    for signum in originals:  # as Supervisor.launch does: Ctrl-C must reach the command, not bwrap
        _signal.signal(signum, _signal.SIG_IGN)
    try:
        from sandboxctl.supervise.spawn import spawn

        started = time.monotonic()
        pid = spawn(argv, stderr=err_w, pass_fds=(seccomp_fd, shim_end.fileno(), stderr_copy))
    except BaseException:
        for signum, handler in originals.items():
            _signal.signal(signum, handler)
        for fd in (err_r, err_w, seccomp_fd, stderr_copy):
            os.close(fd)
        control.close()
        shim_end.close()
        raise
    for fd in (err_w, seccomp_fd, stderr_copy):
        os.close(fd)
    shim_end.close()
    send_config(control, config)
    return HeadStart(pid, control, err_r, argv, config, run_id, started,
                     originals, (seccomp_fd, int(numbers[FD_MARKS[1]]), stderr_copy), entry["seccomp"],
                     _early_cgroup(run_id, pid) if entry["cgroup"] else None)


def _early_cgroup(run_id: str, pid: int) -> RunCgroup | None:
    """The run's cgroup (no limits yet) with bubblewrap's slow first move into it under way; None
    when it cannot be made here (lifecycle then makes it, and says why if it cannot either)."""
    from sandboxctl.supervise import cgroups

    layout = cgroups.detect()
    if layout is None:
        return None
    try:
        cgroup = cgroups.RunCgroup(layout, run_id, None, None)
    except OSError:
        return None
    cgroup.move_soon(pid)
    return cgroup


def _run_id() -> str:
    from sandboxctl.runid import new_run_id

    return new_run_id()


def _mount_points_hold(points: list[tuple[str, str]]) -> bool:
    """Each mount point beneath a writable bind is there, of the same kind (bwrap creates nothing)."""
    import stat

    for target, kind in points:
        try:
            mode = os.lstat(target).st_mode
        except OSError:
            return False
        if kind != ("dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else
                    "symlink" if stat.S_ISLNK(mode) else "other"):
            return False
    return True


# ---------------------------------------------------------------------- remembering (after a launch)

def eligible(plan, *, inherited_stdio: bool, forwards_signals: bool) -> bool:
    """Runs whose launch is remembered: none of what the head start cannot do before planning."""
    return (plan.backend == "bwrap" and not plan.secrets and not plan.creations and plan.session is None
            and not plan.confirmations and inherited_stdio and forwards_signals
            and not getattr(plan, "inspecting", False)  # a CA of the run's own, phantom secrets
            and getattr(plan, "overlay", None) is None  # a layer of the run's own
            and not plan.policy_source.endswith(".sandboxctl.yaml"))


def mount_points(plan) -> list[tuple[str, str]]:
    """The plan's mount points that lie beneath a writable bind (bwrap would create them on the host)."""
    from sandboxctl.paths import within

    writable = [m.target for m in plan.mounts if m.kind == "rw"]
    points = []
    for mount in plan.mounts:
        if any(mount.target != root and within(mount.target, root) for root in writable):
            try:
                mode = os.lstat(mount.target).st_mode
            except OSError:
                return [("/nonexistent/sandboxctl-head-start", "dir")]  # never holds: never used
            import stat

            kind = "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else \
                "symlink" if stat.S_ISLNK(mode) else "other"
            points.append((mount.target, kind))
    return points


def remember(this: str, plan, argv: list[str], fds: tuple[int, int, int], config: dict[str, Any],
             program: bytes) -> None:
    """Keep this launch for the next identical command line (a cache: failures only cost time).
    Values the sandbox's environment took from the caller's (env.pass, --env NAME: a token, say)
    are kept as a mark and taken from the caller again at the head start, never written here."""
    numbers = dict(zip(map(str, fds), FD_MARKS, strict=True))
    template = dict(config)
    template["env"] = {name: RUN_MARK if name == "SANDBOXCTL_RUN" and value == plan.run_id
                       else CALLER_MARK if os.environ.get(name) == value else value
                       for name, value in config["env"].items()}
    if plan.run_id in repr(template) or any(plan.run_id in word for word in argv):
        return  # the run id somewhere else (a path of the run's own): not a launch to replay
    entry = {"format": FORMAT, "argv": [numbers.get(word, word) for word in argv], "config": template,
             "seccomp": program, "mount_points": mount_points(plan),
             "cgroup": "cgroup" in (plan.limits.memory_method, plan.limits.pids_method)}
    directory = cache_dir()
    if directory is None:
        return
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        path = os.path.join(directory, f"{PREFIX}{this}.marshal")
        temporary = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"  # threads of one process too
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, marshal.dumps(entry))
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except (OSError, ValueError):
        return
    from sandboxctl import cachedir  # imported by then (launch/seccomp.py), never on the head start's own path

    cachedir.prune(directory, (PREFIX,), keep=MAX_ENTRIES)
