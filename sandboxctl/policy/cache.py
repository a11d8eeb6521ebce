"""A cache of validated, merged policies, so a run does not import YAML or the schema.

An entry is keyed by the exact bytes of the policy file, and records the path and SHA-256 of
every file its `extends` chain read; it is used only while each of them still has those bytes,
and only if written by this version of the policy engine. Entries live in the private state
dir, which no sandbox can see, and are marshal data (plain dicts and lists), never code.
"""

from __future__ import annotations

import marshal
import os

from sandboxctl import cachedir
from sandboxctl.digest import sha256
from sandboxctl.paths import is_file, join, make_dirs

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from os import PathLike
    from typing import Any

ENGINE_FILES = ("definition.py", "schema.py", "model.py", "load.py", "yamlpos.py", "cache.py")


def _engine_stamp() -> str:
    """Changes whenever the policy engine's code changes (also in an editable checkout)."""
    here = os.path.dirname(__file__)
    parts = []
    for name in ENGINE_FILES:
        try:
            st = os.stat(os.path.join(here, name))
            parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{name}:-")
    return sha256("|".join(parts).encode()).hexdigest()[:16]


def _entry_name(label: str, content: bytes) -> str:
    # a path os.fsdecode could not decode holds surrogate escapes: its own bytes go into the key
    key = sha256(f"{_engine_stamp()}\0{label}\0".encode("utf-8", "surrogateescape") + content).hexdigest()[:40]
    return f"policy-{key}.marshal"


def lookup(cache_dir: str | PathLike[str], label: str, content: bytes) -> dict[str, Any] | None:
    """The cached {data, sha256, files} if every file of its chain is unchanged; each file entry
    also gets the `content` just read, so the caller re-hashes nothing."""
    path = join(cache_dir, _entry_name(label, content))
    try:
        st = os.lstat(path)
        if st.st_uid != os.getuid() or st.st_mode & 0o022 or not is_file(path):
            return None
        cachedir.mark_used(path, st.st_mtime)
        with open(path, "rb") as handle:
            entry = marshal.loads(handle.read())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), list):
        return None
    for item in entry["files"][1:]:  # the first is the file whose bytes we were given
        try:
            with open(item["path"], "rb") as handle:
                content = handle.read()
            if sha256(content).hexdigest() != item["sha256"]:
                return None
            item["content"] = content
        except (OSError, KeyError, TypeError):
            return None
    return entry if isinstance(entry.get("data"), dict) and isinstance(entry.get("sha256"), str) else None


def store(cache_dir: str | PathLike[str], label: str, content: bytes, data: dict[str, Any], sha256: str,
          files: list[dict[str, str]]) -> None:
    name = _entry_name(label, content)
    path = join(cache_dir, name)
    try:
        make_dirs(cache_dir, 0o700)
        tmp = join(cache_dir, f".{name}.{os.getpid()}.{os.urandom(4).hex()}")
        with open(tmp, "wb") as handle:
            handle.write(marshal.dumps({"data": data, "sha256": sha256, "files": files}))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        cachedir.prune_daily(cache_dir)
    except (OSError, ValueError):
        pass  # a cache we cannot write only costs time
