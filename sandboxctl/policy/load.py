"""Load policy files, validate them, and resolve `extends` into one merged policy."""

from __future__ import annotations

import os

from sandboxctl.digest import sha256
from sandboxctl.paths import is_file, join, name, pure, stem
from sandboxctl.paths import resolve as resolve_path
from sandboxctl.policy.errors import PolicyError, Problem, format_key
from sandboxctl.policy.model import Policy, policy_from_data
from sandboxctl.record import Record

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from os import PathLike
    from typing import Any

    from sandboxctl.policy.yamlpos import Document

BUILTIN_PREFIX = "builtin:"


def builtin_dir() -> str:
    """Built-ins ship inside the wheel as sandboxctl/policies; a source checkout has them at the root."""
    from sandboxctl.paths import is_dir, parent

    here = parent(parent(resolve_path(__file__)))
    for candidate in (join(here, "policies"), join(parent(here), "policies")):
        if is_dir(candidate):
            return candidate
    return join(here, "policies")


def builtin_names() -> list[str]:
    """Path.glob("*.yaml")'s names (hidden ones too, any kind of entry), without their suffix."""
    try:
        with os.scandir(builtin_dir()) as entries:
            return sorted(stem(entry.name) for entry in entries if entry.name.endswith(".yaml"))
    except OSError:  # pathlib's glob lists nothing of a directory it cannot read
        return []


class SourceFile(Record):
    """One policy file as read: its bytes are hashed and parsed from the same read (no TOCTOU)."""

    label: str  # what messages call it: a path, or builtin:NAME
    path: str  # as pathlib normalised it (paths.pure)
    content: bytes

    @property
    def builtin(self) -> bool:
        return self.label.startswith(BUILTIN_PREFIX)

    @property
    def sha256(self) -> str:
        return sha256(self.content).hexdigest()


def read_source(path: str | PathLike[str], label: str | None = None) -> SourceFile:
    from sandboxctl.errors import SandboxError

    path = pure(path)
    try:
        with open(path, "rb") as handle:
            content = handle.read(512 * 1024 + 1)
    except FileNotFoundError:
        raise SandboxError(f"{label or path}: no such policy file",
                           f"built-in policies: {', '.join(builtin_names())}") from None
    except IsADirectoryError:
        raise SandboxError(f"{label or path}: is a directory, not a policy file") from None
    except OSError as exc:
        raise SandboxError(f"{label or path}: cannot read: {exc.strerror}") from None
    return SourceFile(label or path, path, content)


def builtin_source(name: str) -> SourceFile:
    return read_source(join(builtin_dir(), f"{name}.yaml"), f"{BUILTIN_PREFIX}{name}")


def validate_source(source: SourceFile) -> dict[str, Any]:
    """Parse and check one file; raises PolicyError listing every problem in it."""
    return _validate(source)[0]


def _validate(source: SourceFile) -> tuple[dict[str, Any], Document]:
    """As validate_source, also returning the lines, so `extends` problems can point at theirs."""
    from sandboxctl.policy.definition import POLICY_SCHEMA  # the parser and schema load only on a
    from sandboxctl.policy.schema import Report  # cache miss: a run normally skips both
    from sandboxctl.policy.yamlpos import load_yaml

    document = load_yaml(source.content, source.label)
    report = Report()
    data = POLICY_SCHEMA.check(document.data, (), report)
    if report.problems:
        raise PolicyError([
            Problem(source.label, document.line_of(key), format_key(key), message, hint)
            for key, message, hint in report.problems
        ])
    return data, document


def merge(parent: Any, child: Any) -> Any:
    """SPEC: maps merge key by key, lists are joined without duplicates, the child's scalars win."""
    if isinstance(parent, dict) and isinstance(child, dict):
        merged = dict(parent)
        for key, value in child.items():
            merged[key] = merge(parent[key], value) if key in parent else value
        return merged
    if isinstance(parent, list) and isinstance(child, list):
        return parent + [item for item in child if item not in parent]
    return child


def _resolve_parent(reference: str, child: SourceFile, where: tuple[int | None, str]) -> SourceFile:
    """Find the file `reference` names; any failure is a PolicyError at the child's `extends` line."""
    from sandboxctl.errors import SandboxError

    line, key = where
    is_path = "/" in reference or reference.endswith((".yaml", ".yml"))
    if not is_path:
        if reference not in builtin_names():
            raise PolicyError([Problem(child.label, line, key,
                                       f"{reference!r}: no built-in policy of that name",
                                       f"built-in policies: {', '.join(builtin_names())}")])
        return builtin_source(reference)
    from sandboxctl.paths import parent

    target = resolve_path(join(parent(child.path), reference))
    label = f"{BUILTIN_PREFIX}{stem(target)}" if child.builtin else target
    if not is_file(target):
        raise PolicyError([Problem(child.label, line, key, f"{reference!r}: no such file ({target})")])
    try:
        return read_source(target, label)
    except SandboxError as exc:  # unreadable: still a problem of this policy, reported like the others
        raise PolicyError([Problem(child.label, line, key, exc.message)]) from None


def resolve(source: SourceFile) -> tuple[dict[str, Any], list[SourceFile]]:
    """Validate a file and its ancestors; return the merged data and every file involved."""
    files: list[SourceFile] = []
    # where each file on the current chain names its parents, for the cycle message
    extends_line: dict[str, int | None] = {}

    def walk(current: SourceFile, stack: tuple[str, ...]) -> dict[str, Any]:
        key = resolve_path(current.path)
        if key in stack:
            names = [*stack[stack.index(key):], key]
            raise PolicyError([Problem(current.label, extends_line.get(key), "extends",
                                       "extends cycle: " + " -> ".join(name(n) for n in names),
                                       "a policy may not extend itself, directly or through its parents")])
        if len(stack) >= 16:
            raise PolicyError([Problem(current.label, None, "extends", "extends chain deeper than 16 files")])
        data, document = _validate(current)
        files.append(current)
        extends_line[key] = document.line_of(("extends",))
        merged: dict[str, Any] = {}
        single = isinstance(document.data.get("extends"), str)
        for index, reference in enumerate(data.get("extends", [])):
            item = ("extends",) if single else ("extends", index)
            parent = _resolve_parent(reference, current, (document.line_of(item), format_key(item)))
            merged = merge(merged, walk(parent, (*stack, key)))
        own = {k: v for k, v in data.items() if k != "extends"}
        return merge(merged, own)

    return walk(source, ()), files


def canonical_digest(data: dict[str, Any]) -> str:
    import json

    return sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def chain_digest(files: list[SourceFile]) -> str:
    """What trust pins: the exact bytes of every non-built-in file the policy is made of."""
    digest = sha256()
    for item in sorted((f for f in files if not f.builtin), key=lambda f: str(f.path)):
        digest.update(f"{resolve_path(item.path)}\0{item.sha256}\n".encode())
    return digest.hexdigest()


class LoadedPolicy(Record):
    policy: Policy
    data: dict[str, Any]
    files: tuple[SourceFile, ...]

    @property
    def chain_sha256(self) -> str:
        return chain_digest(list(self.files))


def load_source(source: SourceFile, cache_dir: str | PathLike[str] | None = None) -> LoadedPolicy:
    """Validate and merge; with cache_dir, reuse a validated result while every file is unchanged."""
    from sandboxctl.policy import cache

    entry = cache.lookup(cache_dir, source.label, source.content) if cache_dir else None
    if entry is not None:
        files = [source] + [SourceFile(f["label"], pure(f["path"]), f["content"]) for f in entry["files"][1:]]
        data, digest = entry["data"], entry["sha256"]
    else:
        data, files = resolve(source)
        data.setdefault("name", stem(source.path))
        digest = canonical_digest(data)
        if cache_dir:
            cache.store(cache_dir, source.label, source.content, data, digest,
                        [{"label": f.label, "path": str(f.path), "sha256": f.sha256} for f in files])
    policy = policy_from_data(data, source=source.label, chain=tuple(f.label for f in files), sha256=digest)
    return LoadedPolicy(policy, data, tuple(files))
