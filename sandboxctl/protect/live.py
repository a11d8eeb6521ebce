"""Git config the host changes while a run goes on: what it then points at is held from then on.

The planner reads core.hooksPath and includes once, at launch. A session (or a long run) outlives
that: the user's `npm install` runs husky, which sets `core.hooksPath = .husky/_` in .git/config,
and from then on the host's next commit runs `.husky/pre-commit` — which the sandbox could still
rewrite (red team rt14, judged by the host's git). The sandbox cannot write these config files
(they are protected), so a change of one is the host's: the mediator asks `poll()` before it
judges a call, and holds the new targets as the planner would have.

Cost: one stat per config file, at most once per POLL_S (a run of 10 000 writes in a second stats
them 100 times), and never more than 1/SPACING of the time (a workspace of thousands of nested
repositories is looked at less often). A target becomes held within POLL_S of the host's change (never before it:
what the sandbox wrote there until then is its, as any file of the workspace the user then
chooses to run).
"""

from __future__ import annotations

import os
import time

from sandboxctl.protect import gitconfig, names

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from sandboxctl.protect.restore import Change

POLL_S = 0.01
SPACING = 50  # a poll costs at most 1/50 of the time between two (thousands of nested repositories)
GLOBAL_GIT_CONFIGS = ("{home}/.gitconfig", "{home}/.config/git/config", "/etc/gitconfig")


def _signature(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class LiveGitRefs:
    """The git config files of the repositories found at launch, and the host's global ones."""

    def __init__(self, gitdirs: tuple[str, ...], repositories: tuple[str, ...], home: str):
        worktrees = sorted({os.path.dirname(r) for r in repositories if names.is_git_name(os.path.basename(r))})
        self.configs: list[tuple[str, str | None, list[str]]] = []
        for gitdir in gitdirs:
            worktree = os.path.dirname(gitdir) if names.is_git_name(os.path.basename(gitdir)) else None
            for name in ("config", "config.worktree"):
                self.configs.append((f"{gitdir}/{name}", worktree, [worktree] if worktree else []))
        for template in GLOBAL_GIT_CONFIGS:
            self.configs.append((template.replace("{home}", home), None, worktrees))
        self.home = home
        self.seen = {path: _signature(path) for path, _, _ in self.configs}
        self.next_poll = time.monotonic() + POLL_S

    def poll(self) -> list[tuple[str, str]]:
        """(path, why) for what a config file changed since the last poll now points at (all of
        its references: the caller keeps what is new and under its roots)."""
        now = time.monotonic()
        if now < self.next_poll:
            return []
        found: list[tuple[str, str]] = []
        for path, worktree, worktrees in self.configs:
            signature = _signature(path)
            if signature == self.seen[path]:
                continue
            self.seen[path] = signature
            hooks, includes = gitconfig.references(path, self.home, worktree)
            found += gitconfig.held_targets(path, hooks, includes, worktrees)
        done = time.monotonic()
        self.next_poll = done + max(POLL_S, (done - now) * SPACING)
        return found


LATE = ("left as it is: it became protected while the run went on (the host's git config came to name it), "
        "and it changed during the run — review it before the host's next git command there")
MAX_LATE = 100  # entries said per target; past that, one line says how many more


def changed_during(paths: list[str], since_ns: int, run_id: str) -> list[Change]:
    """What beneath each path held late (LiveGitRefs) changed during the run: the sandbox may have
    written it before the host's config named it, or through a descriptor opened before (a write
    on an open descriptor is no call the supervisor sees). Said, never put back (no launch record
    of it exists). A change's ctime cannot be set back, so ctime since launch is a change since."""
    from sandboxctl.protect.restore import Change

    changes: list[Change] = []
    for top in paths:
        found = []
        for path in _entries(top, MAX_LATE * 100):
            try:
                if os.lstat(path).st_ctime_ns >= since_ns:
                    found.append(path)
            except OSError:
                continue
        changes += [Change(path, "modified", LATE, None, run_id) for path in found[:MAX_LATE]]
        if len(found) > MAX_LATE:
            changes.append(Change(f"{top} ({len(found) - MAX_LATE} more entries)", "modified", LATE, None, run_id))
    return changes


def _entries(top: str, limit: int) -> list[str]:
    """top and what lies beneath it, never through a symlink, at most limit entries."""
    out, queue = [top], [top]
    while queue and len(out) < limit:
        directory = queue.pop()
        fd = None
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            names = os.listdir(fd)
        except OSError:
            continue
        finally:
            if fd is not None:
                os.close(fd)
        for name in names[:max(0, limit - len(out))]:
            path = f"{directory}/{name}"
            out.append(path)
            queue.append(path)  # a file fails the directory open above, and is left
    return out
