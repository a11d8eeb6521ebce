"""Record: an immutable record class declared like typing.NamedTuple, made without typing.

    class Mount(Record):
        kind: str
        target: str
        source: str | None = None

is a collections.namedtuple class (fields, defaults, methods, docstring, `_replace`,
`_asdict`), exactly what typing.NamedTuple makes. typing.NamedTuple also checks every field's
annotation when the class is made — with `from __future__ import annotations` that compiles
each annotation string into a ForwardRef, ~0.1 ms a class: ~5 ms for the classes one `sandboxctl
run` imports, plus importing typing (~2 ms). Type checkers are told it is typing.NamedTuple.
"""

from __future__ import annotations

import collections

TYPE_CHECKING = False  # typing costs start-up time; type checkers read the block below
if TYPE_CHECKING:
    from typing import NamedTuple as Record
else:
    # what typing.NamedTuple refuses to have overwritten, and what it does not copy
    _PROHIBITED = frozenset({"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults",
                             "_make", "_replace", "_asdict", "_source"})
    _SPECIAL = frozenset({"__module__", "__name__", "__annotations__"})

    class _RecordMeta(type):
        def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict):
            if not bases:  # Record itself
                return super().__new__(mcls, name, bases, namespace)
            if bases != (Record,):
                raise TypeError("a Record derives from Record alone")
            fields = namespace.get("__annotations__", {})
            defaults = [namespace[field] for field in fields if field in namespace]
            if any(field not in namespace for field in list(fields)[len(fields) - len(defaults):]):
                raise TypeError(f"{name}: a field without a default follows one with a default")
            record = collections.namedtuple(name, fields, defaults=defaults, module=namespace["__module__"])
            record.__annotations__ = dict(fields)
            for key, value in namespace.items():
                if key in _PROHIBITED:
                    raise AttributeError(f"{name}: cannot overwrite the record attribute {key}")
                if key not in _SPECIAL and key not in fields:
                    setattr(record, key, value)
            return record

    class Record(metaclass=_RecordMeta):
        """Base of record classes: `class Name(Record): field: type [= default]`."""
