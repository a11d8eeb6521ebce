"""The policy schema, declared once: it validates policies and it generates the JSON Schema.

Each node checks a value and returns it normalised; problems are collected, not raised, so
`policy validate` can report every mistake in a file at once.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sandboxctl import units

Key = tuple[str | int, ...]


class Report:
    def __init__(self) -> None:
        self.problems: list[tuple[Key, str, str | None]] = []

    def add(self, key: Key, message: str, hint: str | None = None) -> None:
        self.problems.append((key, message, hint))


_INVALID = object()


class Node:
    description = ""

    def check(self, value: Any, key: Key, report: Report) -> Any:  # pragma: no cover
        raise NotImplementedError

    def json_schema(self) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def _described(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self.description:
            schema["description"] = self.description
        return schema


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "a map", type(None): "empty"}.get(type(value), type(value).__name__)


@dataclass
class Text(Node):
    """A string checked by an optional parser that raises ValueError with the reason."""

    description: str = ""
    parse: Callable[[str], Any] | None = None
    pattern: str | None = None
    keep_parsed: bool = False
    max_length: int = 4096

    def check(self, value: Any, key: Key, report: Report) -> Any:
        if not isinstance(value, str):
            report.add(key, f"expected a string, got {_type_name(value)}")
            return _INVALID
        if len(value) > self.max_length:
            report.add(key, f"string longer than {self.max_length} characters")
            return _INVALID
        parsed = value
        if self.parse:  # first: its message explains ("not a duration (use e.g. 90s…)"), a regex does not
            try:
                parsed = self.parse(value)
            except ValueError as exc:
                report.add(key, str(exc))
                return _INVALID
        if self.pattern and not re.fullmatch(self.pattern, value):
            report.add(key, f"{value!r}: does not match {self.pattern}")
            return _INVALID
        return parsed if self.keep_parsed else value

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "maxLength": self.max_length}
        if self.pattern:
            schema["pattern"] = f"^(?:{self.pattern})$"
        return self._described(schema)


@dataclass
class Choice(Node):
    options: tuple[str, ...] = ()
    description: str = ""

    def check(self, value: Any, key: Key, report: Report) -> Any:
        if not isinstance(value, str):
            # YAML 1.1 reads yes/no/on/off as booleans: say what was read, not a made-up value
            hint = "quote the word: YAML reads yes/no/on/off as true/false" if isinstance(value, bool) else None
            report.add(key, f"expected one of {', '.join(self.options)}, got {_type_name(value)}", hint)
            return _INVALID
        if value not in self.options:
            report.add(key, f"{value!r}: must be one of {', '.join(self.options)}")
            return _INVALID
        return value

    def json_schema(self) -> dict[str, Any]:
        return self._described({"type": "string", "enum": list(self.options)})


@dataclass
class Integer(Node):
    minimum: int = 0
    maximum: int = 2**31
    description: str = ""

    def check(self, value: Any, key: Key, report: Report) -> Any:
        if not isinstance(value, int) or isinstance(value, bool):
            report.add(key, f"expected a whole number, got {_type_name(value)}")
            return _INVALID
        if not self.minimum <= value <= self.maximum:
            report.add(key, f"{value}: must be between {self.minimum} and {self.maximum}")
            return _INVALID
        return value

    def json_schema(self) -> dict[str, Any]:
        return self._described({"type": "integer", "minimum": self.minimum, "maximum": self.maximum})


@dataclass
class Boolean(Node):
    description: str = ""

    def check(self, value: Any, key: Key, report: Report) -> Any:
        if not isinstance(value, bool):
            report.add(key, f"expected true or false, got {_type_name(value)}")
            return _INVALID
        return value

    def json_schema(self) -> dict[str, Any]:
        return self._described({"type": "boolean"})


@dataclass
class SizeValue(Node):
    """A size: '512M', '4G' or a byte count."""

    description: str = ""

    def check(self, value: Any, key: Key, report: Report) -> Any:
        if isinstance(value, bool) or not isinstance(value, str | int):
            report.add(key, f"expected a size such as 512M or 4G, got {_type_name(value)}")
            return _INVALID
        try:
            units.parse_size(value)
        except ValueError as exc:
            report.add(key, str(exc))
            return _INVALID
        return value

    def json_schema(self) -> dict[str, Any]:
        return self._described({
            "anyOf": [
                {"type": "string", "pattern": r"^\d+\s*([KMGTkmgt]?)([Ii]?[Bb])?$"},  # as units._SIZE
                {"type": "integer", "minimum": 1},
            ]
        })


@dataclass
class ListOf(Node):
    item: Node = field(default_factory=Text)
    max_items: int = 512
    description: str = ""

    def check(self, value: Any, key: Key, report: Report) -> Any:
        if not isinstance(value, list):
            report.add(key, f"expected a list, got {_type_name(value)}",
                       "write a list as [a, b] or one '- item' per line")
            return _INVALID
        if len(value) > self.max_items:
            report.add(key, f"more than {self.max_items} entries")
            return _INVALID
        checked = [self.item.check(v, (*key, i), report) for i, v in enumerate(value)]
        return [] if _INVALID in checked else checked

    def json_schema(self) -> dict[str, Any]:
        return self._described({"type": "array", "items": self.item.json_schema(),
                                "maxItems": self.max_items})


@dataclass
class MapOf(Node):
    """A map with free keys (checked by key_pattern) and uniform values."""

    value: Node = field(default_factory=Text)
    key_pattern: str = r"[A-Za-z_][A-Za-z0-9_]*"
    key_meaning: str = "an environment variable name"
    max_items: int = 512
    description: str = ""
    key_parse: Callable[[str], Any] | None = None  # raises ValueError with the reason, after the pattern

    def check(self, value: Any, key: Key, report: Report) -> Any:
        if not isinstance(value, dict):
            report.add(key, f"expected a map, got {_type_name(value)}")
            return _INVALID
        if len(value) > self.max_items:
            report.add(key, f"more than {self.max_items} entries")
            return _INVALID
        result = {}
        for name, item in value.items():
            if not isinstance(name, str) or not re.fullmatch(self.key_pattern, name):
                report.add((*key, str(name)), f"{name!r}: not {self.key_meaning}")
                continue
            if self.key_parse is not None:
                try:
                    self.key_parse(name)
                except ValueError as exc:
                    report.add((*key, name), str(exc))
                    continue
            checked = self.value.check(item, (*key, name), report)
            if checked is not _INVALID:
                result[name] = checked
        return result

    def json_schema(self) -> dict[str, Any]:
        return self._described({
            "type": "object",
            "propertyNames": {"pattern": f"^(?:{self.key_pattern})$"},
            "additionalProperties": self.value.json_schema(),
            "maxProperties": self.max_items,
        })


@dataclass
class Record(Node):
    """A map with a fixed set of keys; unknown keys get a 'did you mean' hint."""

    fields: dict[str, Node] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    description: str = ""
    # checks between keys: (checked map) -> [(message, hint)]; the JSON Schema does not carry them
    consistency: Callable[[dict[str, Any]], list[tuple[str, str | None]]] | None = None

    def check(self, value: Any, key: Key, report: Report) -> Any:
        if not isinstance(value, dict):
            report.add(key, f"expected a map, got {_type_name(value)}")
            return _INVALID
        result = {}
        for name, item in value.items():
            node = self.fields.get(name)
            if node is None:
                close = difflib.get_close_matches(name, list(self.fields), n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(self.fields)}"
                report.add((*key, name), "unknown key", hint)
                continue
            checked = node.check(item, (*key, name), report)
            if checked is not _INVALID:
                result[name] = checked
        for name in self.required:
            if name not in value:
                report.add(key, f"missing required key '{name}'")
        for problem in self.consistency(result) if self.consistency else ():
            report.add(key, *problem)
        return result

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {name: node.json_schema() for name, node in self.fields.items()},
            "additionalProperties": False,
        }
        if self.required:
            schema["required"] = list(self.required)
        return self._described(schema)


@dataclass
class Nullable(Node):
    """A value that may also be left empty (YAML `key:` with nothing after it): None then."""

    item: Node = field(default_factory=Text)
    description: str = ""

    def check(self, value: Any, key: Key, report: Report) -> Any:
        return None if value is None else self.item.check(value, key, report)

    def json_schema(self) -> dict[str, Any]:
        return self._described({"anyOf": [{"type": "null"}, self.item.json_schema()]})


@dataclass
class OneOrMany(Node):
    """A single string or a list of them (used by 'extends')."""

    item: Text = field(default_factory=Text)
    max_items: int = 16
    description: str = ""

    def check(self, value: Any, key: Key, report: Report) -> Any:
        if isinstance(value, str):
            checked = self.item.check(value, key, report)
            return _INVALID if checked is _INVALID else [checked]
        if isinstance(value, list):
            return ListOf(self.item, max_items=self.max_items).check(value, key, report)
        report.add(key, f"expected a name or a list of names, got {_type_name(value)}")
        return _INVALID

    def json_schema(self) -> dict[str, Any]:
        return self._described({"anyOf": [self.item.json_schema(),
                                           ListOf(self.item, max_items=self.max_items).json_schema()]})


@dataclass
class FlagOrList(Node):
    """true, false, or a list (network.listen: any port, none, or only these)."""

    item: Node = field(default_factory=Text)
    max_items: int = 512
    description: str = ""

    def check(self, value: Any, key: Key, report: Report) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, list):
            return ListOf(self.item, max_items=self.max_items).check(value, key, report)
        report.add(key, f"expected true, false or a list, got {_type_name(value)}")
        return _INVALID

    def json_schema(self) -> dict[str, Any]:
        return self._described({"anyOf": [{"type": "boolean"},
                                           ListOf(self.item, max_items=self.max_items).json_schema()]})


@dataclass
class Version(Node):
    description: str = "Schema version of this policy file; only 1 exists."

    def check(self, value: Any, key: Key, report: Report) -> Any:
        if value != 1 or isinstance(value, bool):
            report.add(key, f"{value!r}: unknown policy version", "this sandboxctl reads 'version: 1'")
            return _INVALID
        return 1

    def json_schema(self) -> dict[str, Any]:
        return self._described({"const": 1})
