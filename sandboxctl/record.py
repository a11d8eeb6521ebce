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

collections.namedtuple itself compiles a `__new__` for every class (eval of its source, ~23 of
its ~42 µs a class, ~1.2 ms of the ~50 classes a run makes): here the class is put together as
namedtuple puts it together, and `__new__` is one compiled function per number of fields, its
parameters renamed (CodeType.replace), taken from record_arity.py (written out, so cached as bytecode):
no class compiles anything up to 40 fields.
"""

from __future__ import annotations

import sys

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
            record = _namedtuple(name, tuple(fields), tuple(defaults), namespace["__module__"])
            record.__annotations__ = dict(fields)
            for key, value in namespace.items():
                if key in _PROHIBITED:
                    raise AttributeError(f"{name}: cannot overwrite the record attribute {key}")
                if key not in _SPECIAL and key not in fields:
                    setattr(record, key, value)
            return record

    _NEW_BY_ARITY: dict = {}  # number of fields -> the code of `lambda _cls, <fields>: tuple.__new__(...)`

    def _new_code(names: tuple[str, ...]):
        """The code of namedtuple's `__new__` for these field names (compiled once per arity)."""
        template = _NEW_BY_ARITY.get(len(names))
        if template is None and len(names) < len(_written_out()):
            template = _NEW_BY_ARITY[len(names)] = _written_out()[len(names)].__code__
        if template is None:
            params = [f"f{i}" for i in range(len(names))]
            arguments = ", ".join(params) + ("," if len(params) == 1 else "")
            template = _NEW_BY_ARITY[len(names)] = compile(
                f"lambda _cls, {arguments}: _tuple_new(_cls, ({arguments}))", "<record>", "eval").co_consts[0]
        return template.replace(co_varnames=("_cls", *names), co_name="__new__")

    def _written_out() -> tuple:
        from sandboxctl.record_arity import NEW

        return NEW

    def _namedtuple(typename: str, field_names: tuple[str, ...], defaults: tuple, module: str) -> type:
        """collections.namedtuple(typename, field_names, defaults=defaults, module=module), but
        its `__new__` is not compiled for each class (the rest is namedtuple's own code)."""
        import _collections

        for name in (typename, *field_names):
            if not name.isidentifier() or name in _KEYWORDS:
                raise ValueError(f"Type names and field names must be valid identifiers: {name!r}")
        if len(set(field_names)) != len(field_names) or any(n.startswith("_") for n in field_names):
            raise ValueError(f"{typename}: field names must be unique and not start with an underscore")
        typename = sys.intern(typename)
        field_names = tuple(map(sys.intern, field_names))
        num_fields = len(field_names)
        field_defaults = dict(zip(field_names[num_fields - len(defaults):], defaults, strict=True))
        arg_list = ", ".join(field_names) + ("," if num_fields == 1 else "")
        repr_fmt = "(" + ", ".join(f"{name}=%r" for name in field_names) + ")"
        tuple_new = tuple.__new__
        __new__ = _FunctionType(_new_code(field_names), {"_tuple_new": tuple_new, "__builtins__": {}},
                                "__new__", defaults or None)
        __new__.__doc__ = f"Create new instance of {typename}({arg_list})"

        @classmethod
        def _make(cls, iterable):
            result = tuple_new(cls, iterable)
            if len(result) != num_fields:
                raise TypeError(f"Expected {num_fields} arguments, got {len(result)}")
            return result

        _make.__func__.__doc__ = f"Make a new {typename} object from a sequence or iterable"

        def _replace(self, /, **kwds):
            result = self._make(map(kwds.pop, field_names, self))
            if kwds:
                raise ValueError(f"Got unexpected field names: {list(kwds)!r}")
            return result

        _replace.__doc__ = f"Return a new {typename} object replacing specified fields with new values"

        def __repr__(self):
            "Return a nicely formatted representation string"
            return self.__class__.__name__ + repr_fmt % self

        def _asdict(self):
            "Return a new dict which maps field names to their values."
            return dict(zip(self._fields, self, strict=False))

        def __getnewargs__(self):
            "Return self as a plain tuple.  Used by copy and pickle."
            return tuple(self)

        for method in (__new__, _make.__func__, _replace, __repr__, _asdict, __getnewargs__):
            method.__qualname__ = f"{typename}.{method.__name__}"
        class_namespace = {
            "__doc__": f"{typename}({arg_list})", "__slots__": (), "_fields": field_names,
            "_field_defaults": field_defaults, "__new__": __new__, "_make": _make, "_replace": _replace,
            "__repr__": __repr__, "_asdict": _asdict, "__getnewargs__": __getnewargs__,
            "__match_args__": field_names,
        }
        for index, name in enumerate(field_names):
            class_namespace[name] = _collections._tuplegetter(index, sys.intern(f"Alias for field number {index}"))
        result = type(typename, (tuple,), class_namespace)
        result.__module__ = module
        return result

    _FunctionType = type(_new_code)
    _KEYWORDS = frozenset({"False", "None", "True", "and", "as", "assert", "async", "await", "break", "class",
                           "continue", "def", "del", "elif", "else", "except", "finally", "for", "from", "global",
                           "if", "import", "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return",
                           "try", "while", "with", "yield"})

    class Record(metaclass=_RecordMeta):
        """Base of record classes: `class Name(Record): field: type [= default]`."""
