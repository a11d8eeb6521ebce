"""Gather HostFacts from the real machine: the one impure input of the planner."""

from __future__ import annotations

import _frozen_importlib_external  # importlib.machinery's own, loaded already: the importlib package is not
import contextlib
import os
import pwd
import stat
import sys
from collections.abc import Mapping

from sandboxctl.launch.shim_code import cached_path
from sandboxctl.paths import home_dir, join, parent, resolve, runtime_dir, state_dir
from sandboxctl.plan.inputs import HostFacts

_LOADER_PATTERNS = ("/lib64/ld-linux*.so*", "/lib/ld-linux*.so*", "/lib/ld-musl-*.so*",
                    "/lib/*-linux-gnu/ld-linux*.so*")


def _elf_loaders() -> tuple[str, ...]:
    """The ELF loaders _LOADER_PATTERNS name (what glob would find, realpath'd), in one listing per
    directory: glob's fnmatch over /lib/*-linux-gnu (thousands of names) cost ~1 ms of every run."""
    def names(directory: str, prefix: str) -> list[str]:
        try:
            entries = os.listdir(directory)
        except OSError:
            return []
        return [f"{directory}/{n}" for n in entries if n.startswith(prefix) and ".so" in n[len(prefix):]]

    found = names("/lib64", "ld-linux") + names("/lib", "ld-linux") + names("/lib", "ld-musl-")
    try:
        arches = [n for n in os.listdir("/lib") if n.endswith("-linux-gnu") and not n.startswith(".")]
    except OSError:
        arches = []
    for arch in arches:
        if os.path.isdir(f"/lib/{arch}"):
            found += names(f"/lib/{arch}", "ld-linux")
    return tuple(sorted({os.path.realpath(path) for path in found}))


def path_kind(path: str) -> str:
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return "missing"
    except OSError:
        return "missing"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


def _find_spec(name: str):
    """Where a top-level package would be imported from, without importing it (or importlib.util)."""
    return _frozen_importlib_external.PathFinder.find_spec(name, sys.path)


def _all_suffixes() -> list[str]:
    """importlib.machinery.all_suffixes(): every suffix a module file may have."""
    machinery = _frozen_importlib_external
    return machinery.SOURCE_SUFFIXES + machinery.BYTECODE_SUFFIXES + machinery.EXTENSION_SUFFIXES


def _listdir(path: str) -> list[str]:
    from sandboxctl.protect.index import listdir

    return listdir(path)


def _glob(pattern: str) -> list[str]:
    """The planner's glob (filesystem grants with wildcards): glob compiles regular expressions at
    import, ~1 ms that a run whose policy has no wildcard need not pay."""
    import glob

    return sorted(glob.glob(pattern, include_hidden=True))


SUPERVISOR_DEPENDENCIES = ("landlockpy", "pyseccomp", "yaml", "typer", "rich", "psutil")
STARTUP_MODULES = ("sitecustomize", "usercustomize")  # what `site` imports from sys.path itself


def _supervisor_code(package: str, policies: str) -> tuple[str, ...]:
    """Everything the next run's supervisor will import or read: never writable inside a sandbox
    (say, a .venv inside the workspace), or a sandbox could rewrite the code that confines the next."""
    places = {package, policies, os.path.realpath(sys.prefix)}
    clone = parent(package)
    if not clone.startswith(os.path.realpath(sys.prefix) + "/"):
        # an editable install: the clone is on sys.path (its .pth file), and `site` imports these
        # from any sys.path entry before sandboxctl runs (cli/main.entry forgets the clone after)
        for name in STARTUP_MODULES:
            places.update(f"{clone}/{name}{suffix}" for suffix in ("", *_all_suffixes()))
    for name in SUPERVISOR_DEPENDENCIES:
        spec = _find_spec(name)
        origin = spec.origin if spec else None
        if origin and origin not in ("built-in", "frozen"):
            places.add(os.path.dirname(os.path.realpath(origin)))
    return tuple(sorted(places))


def _shim_python() -> tuple[str, str]:
    """The interpreter that runs the shim, and the directory tree it needs to be visible."""
    executable = os.path.realpath(sys.executable)
    return executable, os.path.realpath(sys.base_prefix)


def _cgroup_version() -> str | None:
    from sandboxctl.supervise.cgroups import detect

    layout = detect()
    return layout.version if layout else None


def _runtime_dirs(env: Mapping[str, str]) -> tuple[str, ...]:
    """Where gvisor runs keep their bundles and file secrets (launch/runsc.runtime_base's choices),
    if they exist: masked in every sandbox, like the state dir. runsc takes tempfile.gettempdir();
    this looks in every directory gettempdir may choose (tempfile costs start-up time)."""
    uid = os.getuid()
    temporary = [env.get(name) for name in ("TMPDIR", "TEMP", "TMP")] + ["/tmp", "/var/tmp", "/usr/tmp"]
    with contextlib.suppress(OSError):
        temporary.append(os.getcwd())
    candidates = [f"/dev/shm/sandboxctl-{uid}"]
    candidates += [os.path.join(base, f"sandboxctl-{uid}") for base in temporary if base]
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        candidates.insert(0, os.path.join(xdg, "sandboxctl"))
    return tuple(dict.fromkeys(os.path.realpath(c) for c in candidates if os.path.isdir(c)))


def gather(environ: Mapping[str, str] | None = None) -> HostFacts:
    env = dict(os.environ if environ is None else environ)
    package = parent(parent(resolve(__file__)))
    from sandboxctl.policy.load import builtin_dir

    python, prefix = _shim_python()
    home = os.path.realpath(home_dir())
    loaders = _elf_loaders()
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = str(os.getuid())
    return HostFacts(
        home=home,
        user=user,
        uid=os.getuid(),
        state_dir=state_dir(),
        caller_env=env,
        interactive=os.isatty(0) or os.isatty(1),
        ci=env.get("CI", "").lower() in ("true", "1", "yes"),
        shim_python=python,
        shim_python_prefix=prefix,
        shim_file=join(package, "launch", "shim.py"),
        shim_code=cached_path(join(package, "launch", "shim.py"), join(state_dir(), "cache")),
        gvisor_init_file=join(package, "launch", "gvisor_init.py"),
        machine=os.uname().machine,
        runtime_dirs=_runtime_dirs(env),
        protected_code=_supervisor_code(package, resolve(builtin_dir())),
        elf_loaders=tuple(loaders),
        cgroup=_cgroup_version(),
        kind=path_kind,
        readlink=os.readlink,
        realpath=os.path.realpath,
        glob=_glob,
        listdir=_listdir,
        runtime_dir=runtime_dir(),
        tree=_tree,
        git_refs=lambda config, worktree: _git_refs(config, worktree, home),
        closed_to_sandbox=_closed_to_sandbox(),
        spelt_otherwise=_spelt_otherwise(),
    )


def _closed_to_sandbox():
    """path -> whether a directory above it is closed to the sandbox's user. Its user namespace
    maps our uid and gid alone, so no capability reaches an inode with another owner: as root
    we may enter another user's private directory, but bubblewrap and the command cannot. The
    kernel judges by the directory's ACL where it has one (a named entry for our uid or one of
    our groups opens a 0700 directory): so does this. A directory of our own is never closed,
    whatever its mode: the sandbox may chmod it open (its masks are kept; where bubblewrap cannot
    reach them to mount, the launch fails: never a secret left bare)."""
    uid, gids = os.getuid(), {os.getgid(), *os.getgroups()}
    searchable: dict[str, bool] = {}

    def search(directory: str) -> bool:
        if directory not in searchable:
            try:
                st = os.stat(directory)
            except OSError:
                searchable[directory] = True  # missing: nothing beneath it to reach
            else:
                if st.st_uid == uid:  # ours: the sandbox may chmod it open
                    searchable[directory] = True
                else:
                    by_acl = _acl_searches(directory, st, uid, gids)
                    bit = 0o010 if st.st_gid in gids else 0o001
                    searchable[directory] = by_acl if by_acl is not None else bool(st.st_mode & bit)
        return searchable[directory]

    def closed(path: str) -> bool:
        parent = os.path.dirname(path)
        chain = []
        while parent not in ("/", ""):
            chain.append(parent)
            parent = os.path.dirname(parent)
        return not all(search(d) for d in reversed(chain))

    return closed


# File systems whose names are case-sensitive, or folded by the kernel itself (one dentry per
# entry, so a mount over it holds for every spelling): not probed. FUSE, NFS, SMB, 9p, ZFS… are.
ONE_DENTRY_PER_ENTRY = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "f2fs", "vfat", "msdos",
                                  "exfat", "ntfs3", "hfs", "hfsplus", "iso9660", "udf", "jfs", "squashfs", "erofs",
                                  "bcachefs", "devtmpfs", "proc", "sysfs"})


def _spelt_otherwise():
    """path -> a spelling of one of its components (its case swapped) that reaches the same entry
    through a dentry of its own, or None. A case-insensitive directory whose folding the kernel
    knows (ext4/tmpfs casefold, vfat, exfat) has one dentry per entry, so a mount over it holds
    for every spelling. Under FUSE (or NFS, SMB to a case-insensitive server) each spelling is a
    dentry of its own, and a file, or a directory given an inode of its own per spelling, escapes
    a mask mounted over the entry. Only paths on such file systems are probed (one stat each
    otherwise)."""
    listings: dict[str, set[str]] = {}
    types: dict[int, str] = {}

    def listed(directory: str) -> set[str]:
        if directory not in listings:
            try:
                listings[directory] = set(os.listdir(directory))
            except OSError:
                listings[directory] = set()
        return listings[directory]

    def fstype(device: int) -> str:
        if not types:
            types.update(_mounted_types())
        return types.get(device, "")

    def other(path: str) -> str | None:
        try:
            device = os.stat(os.path.dirname(path) or "/").st_dev
        except OSError:
            return None
        if fstype(device) in ONE_DENTRY_PER_ENTRY:
            return None
        parent = "/"
        for name in path.strip("/").split("/"):
            alias = name.swapcase()
            if alias != name:
                found = _alias_of(parent, name, alias, listed)
                if found:
                    return os.path.join(parent, found)
            parent = os.path.join(parent, name)
        return _file_alias(path)

    return other


def _file_alias(path: str) -> str | None:
    """Another name of a file or directory that reaches it through a dentry of its own (a FUSE
    server gives each name one, and a mount covers only the one it is on): NTFS keeps a DOS (8.3)
    name for Windows (`ENV~1` for `.env`), which ntfs-3g resolves even mounted case-sensitively
    and shows as `system.ntfs_dos_name`. ntfs-3g is a path-based FUSE server: each name is an
    inode of its own to the kernel, a directory's too, though stat shows one number (proven:
    `SECRE~1/key` read a masked `secrets/key`). A file's DOS name counts in its links, as any hard
    link does."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        return None
    try:
        dos = os.getxattr(path, "system.ntfs_dos_name", follow_symlinks=False).decode(errors="replace")
    except OSError:
        dos = ""
    if dos and dos.lower() != os.path.basename(path).lower():
        return os.path.join(os.path.dirname(path), dos)
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        return f"another of its {st.st_nlink} names (a DOS name or a hard link)"
    return None


def _mounted_types() -> dict[int, str]:
    """device number -> file system type, from /proc/self/mountinfo (field 3 is major:minor)."""
    found: dict[int, str] = {-1: ""}
    with contextlib.suppress(OSError, ValueError), open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if " - " not in line or len(fields) < 3:
                continue
            major, minor = fields[2].split(":")
            found.setdefault(os.makedev(int(major), int(minor)), line.split(" - ", 1)[1].split()[0])
    return found


def _alias_of(parent: str, name: str, alias: str, listed) -> str | None:
    try:
        st = os.lstat(os.path.join(parent, name))  # looks the entry up first: its dentry is cached
    except OSError:
        return None
    try:
        fd = os.open(os.path.join(parent, alias), os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None  # case-sensitive here (the usual answer: one failed lookup)
    try:
        named = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        other = os.fstat(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    if named == name or alias in listed(parent):
        return None  # the kernel's own folding (one dentry), or another entry really spelt so
    if stat.S_ISDIR(st.st_mode) and (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
        return None  # one directory inode has one dentry: a mount over it holds whatever the spelling
    return alias


ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def _acl_searches(directory: str, st: os.stat_result, uid: int, gids: set[int]) -> bool | None:
    """Whether the directory's POSIX access ACL lets uid (with gids) search it, as the kernel's
    acl_permission_check decides; None when it has no ACL (the mode bits say). An ACL that cannot
    be read or parsed counts as searchable: masks are kept (bubblewrap then fails, never leaks)."""
    import struct

    try:
        blob = os.getxattr(directory, "system.posix_acl_access")
    except OSError:
        return None  # no ACL (ENODATA), or a file system without them
    if len(blob) < 4 or (len(blob) - 4) % 8 or struct.unpack_from("<I", blob)[0] != 2:
        return True
    entries = [struct.unpack_from("<HHI", blob, at) for at in range(4, len(blob), 8)]
    mask = next((perm for tag, perm, _id in entries if tag == ACL_MASK), 7)
    if st.st_uid == uid:
        return any(tag == ACL_USER_OBJ and perm & 1 for tag, perm, _id in entries)
    named = [perm for tag, perm, who in entries if tag == ACL_USER and who == uid]
    if named:
        return bool(named[0] & mask & 1)
    groups = [perm for tag, perm, who in entries
              if (tag == ACL_GROUP_OBJ and st.st_gid in gids) or (tag == ACL_GROUP and who in gids)]
    if groups:
        return any(perm & mask & 1 for perm in groups)
    return any(tag == ACL_OTHER and perm & 1 for tag, perm, _id in entries)


def _tree(root: str, patterns: tuple[str, ...], deep: bool):
    from sandboxctl.protect.index import scan

    return scan(root, patterns, join(state_dir(), "cache"), deep)


def _git_refs(config: str, worktree: str | None, home: str):
    from sandboxctl.protect.gitconfig import references

    return references(config, home, worktree)
