"""The shim, compiled once: its interpreter starts on every run and would compile it every time.

Python runs a .pyc file given as the script; we write one per shim source and interpreter (the
name holds the SHA-256 of both, so an edited shim or another Python is a new file) into the
state dir's cache, which no sandbox can see or write, and bind it read-only at
/run/sandboxctl/shim.pyc. Its code names /run/sandboxctl/shim.py, the source mounted beside it,
so a traceback inside still shows the lines.
"""

from __future__ import annotations

import contextlib
import os

from sandboxctl.digest import sha256

ENTRY = "/run/sandboxctl/shim.pyc"
SOURCE_INSIDE = "/run/sandboxctl/shim.py"


def _magic() -> bytes:
    import _frozen_importlib_external  # importlib's own, already loaded: importlib.util costs start-up time

    return _frozen_importlib_external.MAGIC_NUMBER


def cached_path(source_file: str, cache_dir: str) -> str:
    """Where the compiled shim for this source and this interpreter lives (it may not exist yet)."""
    with open(source_file, "rb") as handle:
        digest = sha256(_magic() + handle.read()).hexdigest()[:32]
    return os.path.join(cache_dir, f"shim-{digest}.pyc")


def ensure(source_file: str, compiled: str) -> None:
    """Write the compiled shim if it is not there yet (atomically: a rename of our own file)."""
    if os.path.isfile(compiled) and not os.path.islink(compiled):
        return
    import marshal

    with open(source_file, "rb") as handle:
        code = compile(handle.read(), SOURCE_INSIDE, "exec", dont_inherit=True)
    directory = os.path.dirname(compiled)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # a .pyc header: magic, flags (0b01: hash-based, not checked against a source), 8 bytes unused here
    data = _magic() + (1).to_bytes(4, "little") + bytes(8) + marshal.dumps(code)
    # a name of this call's own: two threads of one process (the library's arun) may both get here,
    # and a killed writer's leftover must not make every later run fail
    temporary = f"{compiled}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, compiled)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def ensure_for(plan) -> None:
    """Before a launch: the compiled shim the plan mounts exists (it names source and file)."""
    sources = {mount.target: mount.source for mount in plan.mounts}
    if sources.get(ENTRY) and sources.get(SOURCE_INSIDE):
        ensure(sources[SOURCE_INSIDE], sources[ENTRY])
