"""Seal a layer when its run ends, and review it later against the seal.

Sealing records every entry of upper/ (kind, mode, size, SHA-256 or link text, opaque) in
manifest.json, and a summary of the changes for run.end, `--summary-json` and `log runs`.
Reviewing (what `changes` and `apply` start with) compares the layer with the host again and
with its manifest: a layer whose manifest is gone, or that holds anything else than the manifest
says, is tampered with, and `apply` refuses it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sandboxctl.errors import SandboxError
from sandboxctl.record import Record
from sandboxctl.workspace import changes as changes_mod
from sandboxctl.workspace import journal
from sandboxctl.workspace.changes import Change, Thresholds
from sandboxctl.workspace.layer import Layer, remove_tree, write_json
from sandboxctl.workspace.tree import Node


def manifest_entry(node: Node) -> dict[str, Any]:
    entry = node.describe()
    if node.opaque:
        entry["opaque"] = True
    return entry


def thresholds(layer: Layer) -> Thresholds:
    return Thresholds(layer.started_ns, journal.read(layer.journal_path).own_writes)


def _compare(layer: Layer) -> tuple[list[Change], dict[str, Node]]:
    seen: dict[str, Node] = {}
    try:
        found = changes_mod.compare(str(layer.upper), layer.workspace, thresholds(layer), seen)
    except FileNotFoundError as exc:
        missing = "the workspace" if exc.filename in (None, layer.workspace) else "its layer"
        raise SandboxError(f"run {layer.run_id}: {missing} is missing ({exc.filename or layer.workspace})",
                           f"`sandboxctl discard {layer.run_id}` drops the run") from None
    except PermissionError as exc:
        # the command may chmod 000 what it made, and the layer is read as you, without privilege
        raise SandboxError(f"run {layer.run_id}: cannot read its layer or the workspace: {exc}",
                           f"an entry the command made unreadable to you stops the review; `chmod -R u+rwX "
                           f"{layer.upper}` makes it reviewable (its changes then carry those modes), or "
                           f"`sandboxctl discard {layer.run_id}` drops the run") from None
    except OSError as exc:
        raise SandboxError(f"run {layer.run_id}: cannot read its layer or the workspace: {exc}",
                           "check the permissions of both") from None
    return found, seen


def summary(found: list[Change]) -> dict[str, Any]:
    return {"counts": changes_mod.counts(found), "changes": len(found),
            "conflicts": sum(1 for c in found if c.conflict), "protected": sum(1 for c in found if c.protected)}


def seal(layer: Layer, *, late: bool = False) -> tuple[dict[str, Any], list[Change]]:
    """Record the layer as the run left it; the run's state becomes `held`."""
    remove_tree(layer.work)
    found, seen = _compare(layer)
    write_json(layer.manifest_path, {"version": 1, "entries": {p: manifest_entry(n) for p, n in seen.items()}})
    result = summary(found)
    sealed = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "late": late}
    layer.update(state="held" if layer.meta.get("state") == "running" else layer.meta.get("state"),
                 sealed=sealed, summary=result)
    return result, found


class Review(Record):
    layer: Layer
    changes: list[Change]
    tampered: list[str]  # how the layer differs from its seal (empty: intact)
    late: bool  # sealed after the run, not by its supervisor (it was killed, or the disk was full)


def ensure_sealed(layer: Layer) -> None:
    """Seal now the layer of a run whose supervisor could not (killed; a full state dir)."""
    if layer.meta.get("sealed") or layer.running() or layer.meta.get("state") == "discarded":
        return
    with layer.locked():
        if not layer.meta.get("sealed") and layer.upper.is_dir():
            try:
                seal(layer, late=True)
            except OSError as exc:
                raise SandboxError(f"run {layer.run_id}: cannot seal its layer: {exc.strerror}",
                                   "free some space in the state dir") from None


def review(layer: Layer) -> Review:
    """The run's changes now, and whether its layer is still what was sealed (seal it first:
    ensure_sealed)."""
    if layer.meta.get("state") == "discarded":
        raise SandboxError(f"run {layer.run_id} was discarded: nothing is held")
    if not layer.upper.is_dir() or layer.upper.is_symlink():
        raise SandboxError(f"run {layer.run_id}: its layer {layer.upper} is missing",
                           f"nothing can be applied; `sandboxctl discard {layer.run_id}` drops the record")
    found, seen = _compare(layer)
    tampered = [] if layer.running() else check(layer, seen)
    return Review(layer, found, tampered, bool((layer.meta.get("sealed") or {}).get("late")))


def check(layer: Layer, seen: dict[str, Node]) -> list[str]:
    """Differences between the layer as read now and its manifest, worded for a human."""
    try:
        recorded = json.loads(layer.manifest_path.read_text())["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        return ["its manifest (the hashes recorded when the run ended) is missing or unreadable"]
    problems = []
    for path in sorted(set(recorded) | set(seen)):
        if path not in seen:
            problems.append(f"{path}: removed from the layer")
        elif path not in recorded:
            problems.append(f"{path}: added to the layer")
        elif manifest_entry(seen[path]) != recorded[path]:
            problems.append(f"{path}: changed in the layer")
    return problems


def seal_at_end(layer: Layer) -> tuple[dict[str, Any], list[Change]]:
    """At the end of the run (the sandbox is gone). Raises OSError when the state dir is full: the
    layer stays held, unsealed, and the next command that reads it seals it."""
    with layer.locked():
        return seal(layer)
