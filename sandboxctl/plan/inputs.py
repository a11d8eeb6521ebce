"""What the planner reads besides the policy: the invocation, and facts about the host.

Facts are gathered once at the edge (facts.gather); tests hand the planner invented ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sandboxctl.record import Record

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any


def _no_tree(root: str) -> Any:
    from sandboxctl.protect.index import TreeIndex

    return TreeIndex(root, (), (), (), 0)


class Invocation(Record):
    command: tuple[str, ...]
    workspace: str
    run_id: str
    allow_read: tuple[str, ...] = ()
    allow_write: tuple[str, ...] = ()
    allow_net: tuple[str, ...] = ()
    net: str | None = None
    env: tuple[str, ...] = ()  # NAME (pass from caller) or NAME=VALUE
    timeout: float | None = None
    memory: int | None = None
    approve: str | None = None
    log_path: str | None = None
    backend: str | None = None  # --backend: overrides the policy's
    fail_on_denial: bool = False  # --fail-on-denial (or the policy's ci.fail_on_denial)
    session: str | None = None  # a session's name: no command of its own; a server starts each one
    workspace_mode: str | None = None  # --overlay: overrides the policy's `workspace`


class HostFacts(Record):
    home: str
    user: str
    uid: int
    state_dir: str
    caller_env: Mapping[str, str]
    interactive: bool  # stdin and stderr are terminals: TERM is passed, approvals can ask
    ci: bool
    shim_python: str
    shim_python_prefix: str
    shim_file: str
    protected_code: tuple[str, ...]  # sandboxctl's own code and policies: never writable inside
    elf_loaders: tuple[str, ...]
    cgroup: str | None  # v1 | v2: a writable cgroup tree for pids/memory limits; None: rlimits only
    kind: Callable[[str], str]  # dir | file | symlink | missing | other
    readlink: Callable[[str], str]
    realpath: Callable[[str], str]
    glob: Callable[[str], list[str]] = lambda pattern: []
    listdir: Callable[[str], list[str]] = lambda path: []  # a directory's names (protect.names.listdir)
    runtime_dir: str = ""  # where approval sockets live (masked inside like the state dir)
    gvisor_init_file: str = ""  # the in-sandbox launcher of the gvisor backend (launch/gvisor_init.py)
    machine: str = ""  # os.uname().machine: the gvisor backend's native launcher is x86-64 code
    runtime_dirs: tuple[str, ...] = ()  # existing gvisor run-dir bases: bundles and file secrets of live runs
    shim_code: str = ""  # the shim compiled for this interpreter, in the state cache (launch/shim_code.py)
    # protect.index.scan: repositories and names matching patterns beneath a root (deep: the whole
    # tree, else only the root's own entries); an empty index where the tests give none
    tree: Callable[[str, tuple[str, ...], bool], Any] = lambda root, patterns, deep: _no_tree(root)
    # protect.gitconfig.references: (core.hooksPath, included files) that a git config file leads to
    git_refs: Callable[[str, str | None], tuple[str | None, list[str]]] = lambda config, worktree: (None, [])
    # a directory above path that the sandbox's user cannot search, though we could (plan/facts.py)
    closed_to_sandbox: Callable[[str], bool] = lambda path: False
    # another spelling of path (`.ENV` for `.env`) that reaches it through a dentry of its own, as on a
    # case-insensitive FUSE file system: a mount over path does not cover that spelling (plan/facts.py)
    spelt_otherwise: Callable[[str], str | None] = lambda path: None
