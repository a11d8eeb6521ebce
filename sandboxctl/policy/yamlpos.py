"""YAML loading with safe_load semantics that remembers the line of every key.

PyYAML's composer gives us nodes with marks; we build plain values ourselves so that only the
plain YAML types exist (no tags, no aliases, no duplicate keys) and every value keeps its line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sandboxctl.policy.errors import PolicyError, Problem, format_key

MAX_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_NODES = 10_000

_PLAIN_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
}
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAP_TAG = "tag:yaml.org,2002:map"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _NoAliasLoader(yaml.SafeLoader):
    """Refuses aliases while composing, so an alias bomb never expands.

    Depth and size are also limited here, as the parser goes: checked only after composing, a
    250 KiB file of tiny values or deep brackets kept the pure-Python parser busy for seconds.
    """

    def __init__(self, stream: str):
        super().__init__(stream)
        self.depth = 0
        self.nodes = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:  # type: ignore[override]
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed in policies", event.start_mark
            )
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise yaml.composer.ComposerError(None, None, f"too many values (more than {MAX_NODES})",
                                              event.start_mark)
        if self.depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                              event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


@dataclass
class Document:
    source: str
    data: Any
    lines: dict[tuple[str | int, ...], int] = field(default_factory=dict)

    def line_of(self, key: tuple[str | int, ...]) -> int | None:
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return self.lines.get((), None)


class _Builder:
    def __init__(self, source: str):
        self.source = source
        self.lines: dict[tuple[str | int, ...], int] = {}
        self.count = 0
        self.constructor = yaml.SafeLoader("")

    def fail(self, node: Node, key: tuple[str | int, ...], message: str, hint: str | None = None):
        raise PolicyError([Problem(self.source, node.start_mark.line + 1, format_key(key), message, hint)])

    def build(self, node: Node, key: tuple[str | int, ...], depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            self.fail(node, key, f"too many values (more than {MAX_NODES})")
        if depth > MAX_DEPTH:
            self.fail(node, key, f"nested deeper than {MAX_DEPTH} levels")
        self.lines.setdefault(key, node.start_mark.line + 1)
        if isinstance(node, ScalarNode):
            if node.tag not in _PLAIN_TAGS:
                self.fail(node, key, f"unsupported YAML tag or type {_short_tag(node.tag)}",
                          "policies use only strings, numbers, booleans, lists and maps")
            return self.constructor.construct_object(node, deep=True)
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ_TAG:
                self.fail(node, key, f"unsupported YAML tag {_short_tag(node.tag)}")
            return [self.build(item, (*key, i), depth + 1) for i, item in enumerate(node.value)]
        if isinstance(node, MappingNode):
            if node.tag != _MAP_TAG:
                self.fail(node, key, f"unsupported YAML tag {_short_tag(node.tag)}")
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:  # the resolver tags '<<' itself; say why, and what instead
                    self.fail(key_node, key, "YAML merge keys (<<) are not allowed; use 'extends'")
                if not isinstance(key_node, ScalarNode) or key_node.tag not in _PLAIN_TAGS:
                    self.fail(key_node, key, "map keys must be plain strings")
                name = self.constructor.construct_object(key_node)
                if not isinstance(name, str):
                    self.fail(key_node, key, f"map key {name!r} must be a string")
                if name == "<<":
                    self.fail(key_node, key, "YAML merge keys (<<) are not allowed; use 'extends'")
                if name in result:
                    self.fail(key_node, (*key, name), "duplicate key")
                self.lines[(*key, name)] = key_node.start_mark.line + 1
                result[name] = self.build(value_node, (*key, name), depth + 1)
            return result
        self.fail(node, key, "unsupported YAML node")  # pragma: no cover


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org") else tag


def load_yaml(raw: bytes | str, source: str) -> Document:
    """Parse one policy file; any problem raises PolicyError naming source and line."""

    def problem(line: int | None, message: str, hint: str | None = None) -> PolicyError:
        return PolicyError([Problem(source, line, "", message, hint)])

    if isinstance(raw, bytes):
        if len(raw) > MAX_BYTES:
            raise problem(None, f"file is larger than {MAX_BYTES // 1024} KiB; a policy is a short text")
        if b"\0" in raw:
            raise problem(raw[: raw.index(b"\0")].count(b"\n") + 1, "file contains NUL bytes; not a text file")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise problem(raw[: exc.start].count(b"\n") + 1, "file is not valid UTF-8") from None
    else:
        text = raw
        if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
            raise problem(None, f"file is larger than {MAX_BYTES // 1024} KiB; a policy is a short text")
    try:
        node = yaml.compose(text, Loader=_NoAliasLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        hint = "indent with spaces, not tabs" if "\\t" in message or "\t" in text else None
        raise problem(mark.line + 1 if mark else None, f"invalid YAML: {message}", hint) from None
    except yaml.YAMLError as exc:
        raise problem(None, f"invalid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise problem(None, "invalid YAML: nested too deeply") from None
    if node is None:
        raise problem(1, "file is empty", "a policy starts with 'version: 1'")
    builder = _Builder(source)
    data = builder.build(node, (), 0)
    return Document(source, data, builder.lines)
