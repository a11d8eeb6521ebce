"""sandboxctl.record.Record makes the same classes typing.NamedTuple does, without typing."""

from __future__ import annotations

import pickle
import subprocess
import sys
from typing import NamedTuple

import pytest

from sandboxctl.record import Record


class Point(Record):
    """A point."""

    x: int
    y: int = 0
    label: str = ""

    def norm(self) -> int:
        return abs(self.x) + abs(self.y)

    @property
    def named(self) -> bool:
        return bool(self.label)


class TypedPoint(NamedTuple):
    """A point."""

    x: int
    y: int = 0
    label: str = ""


def test_a_record_is_what_typing_namedtuple_makes():
    point = Point(3, -4)
    assert point == (3, -4, "") == TypedPoint(3, -4)
    assert Point._fields == TypedPoint._fields and Point._field_defaults == TypedPoint._field_defaults
    assert Point.__annotations__ == {"x": "int", "y": "int", "label": "str"}  # as written (not checked)
    assert Point.__doc__ == "A point." and Point.__module__ == __name__ and Point.__qualname__ == "Point"
    assert point.norm() == 7 and not point.named and point._replace(label="a").named
    assert point._asdict() == {"x": 3, "y": -4, "label": ""} and Point._make([1, 2, "b"]) == Point(1, 2, "b")
    assert isinstance(point, tuple) and pickle.loads(pickle.dumps(point)) == point
    with pytest.raises(AttributeError):
        point.x = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]


def test_a_record_refuses_what_typing_namedtuple_refuses():
    with pytest.raises(TypeError):
        class Bad(Record):  # a field without a default after one with a default
            a: int = 0
            b: int
    with pytest.raises(AttributeError):
        class Clash(Record):
            a: int

            def _replace(self):
                return self
    with pytest.raises(TypeError):
        class Mixed(Record, int):  # type: ignore[misc]
            a: int


def test_making_records_does_not_import_typing():
    code = "import sys, sandboxctl.record, sandboxctl.plan.model; print('typing' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


class One(Record):
    only: str


class Some(Record):
    a: int
    b: str
    c: tuple = ()
    d: int | None = None


class AllDefaults(Record):
    x: int = 1
    y: int = 2


def _shapes():
    """(a Record class, the collections.namedtuple made from the same declaration)."""
    import collections

    return [(One, collections.namedtuple("One", ["only"], module=__name__)),
            (Some, collections.namedtuple("Some", ["a", "b", "c", "d"], defaults=[(), None], module=__name__)),
            (AllDefaults, collections.namedtuple("AllDefaults", ["x", "y"], defaults=[1, 2], module=__name__))]


def _outcome(call):
    try:
        return ("value", repr(call()))
    except Exception as exc:
        return (type(exc).__name__, str(exc))


@pytest.mark.parametrize(("ours", "theirs"), _shapes(), ids=lambda cls: cls.__name__)
def test_a_record_behaves_as_collections_namedtuple_does(ours, theirs):
    """Record puts the class together without namedtuple's per-class compile: everything a
    caller can see must be namedtuple's, down to the error messages of a wrong call."""
    import copy
    import inspect

    assert ours._fields == theirs._fields and ours._field_defaults == theirs._field_defaults
    assert ours.__match_args__ == theirs.__match_args__ and ours.__slots__ == theirs.__slots__ == ()
    assert str(inspect.signature(ours)) == str(inspect.signature(theirs))
    assert ours.__new__.__doc__ == theirs.__new__.__doc__ and ours.__new__.__defaults__ == theirs.__new__.__defaults__
    for field in ours._fields:
        assert getattr(ours, field).__doc__ == getattr(theirs, field).__doc__
    calls = [(), (1,), (1, "b"), (1, "b", (2,), 3), (1, "b", (), 4, 5), ("x", "y", "z")]
    keywords = [{}, {"a": 1, "b": "b"}, {"only": "o"}, {"x": 5}, {"nope": 1}, {"a": 1, "b": 2, "c": 3, "d": 4}]
    for args in calls:
        for kwargs in keywords:
            mine = _outcome(lambda a=args, k=kwargs: ours(*a, **k))
            assert mine == _outcome(lambda a=args, k=kwargs: theirs(*a, **k))
    sample_args = tuple(range(len(ours._fields)))
    mine, reference = ours(*sample_args), theirs(*sample_args)
    assert repr(mine) == repr(reference) and mine == reference and hash(mine) == hash(reference)
    assert mine._asdict() == reference._asdict() and mine.__getnewargs__() == reference.__getnewargs__()
    field = ours._fields[0]
    assert _outcome(lambda: mine._replace(**{field: "new"})) == _outcome(lambda: reference._replace(**{field: "new"}))
    assert _outcome(lambda: mine._replace(bogus=1)) == _outcome(lambda: reference._replace(bogus=1))
    assert _outcome(lambda: ours._make([1] * 9)) == _outcome(lambda: theirs._make([1] * 9))
    assert pickle.loads(pickle.dumps(mine)) == mine and copy.copy(mine) == mine and copy.deepcopy(mine) == mine
    assert type(pickle.loads(pickle.dumps(mine))) is ours


def test_every_written_out_new_takes_its_arity_in_order_and_beyond_it_one_is_compiled():
    """record_arity.py is generated: each entry must build the tuple of exactly its own
    parameters, in order (a slip there would swap the fields of every class of that arity)."""
    from sandboxctl.record import _namedtuple
    from sandboxctl.record_arity import NEW

    assert NEW[0] is None
    for arity in range(1, len(NEW) + 3):  # and a little past the table: compiled there
        fields = tuple(f"field{i}" for i in range(arity))
        made = _namedtuple(f"Wide{arity}", fields, (), __name__)
        values = tuple(range(100, 100 + arity))
        assert made(*values) == values and made(**dict(zip(fields, values, strict=True))) == values
        assert made.__new__.__code__.co_varnames[: arity + 1] == ("_cls", *fields)
        if arity < len(NEW):
            assert NEW[arity].__code__.co_argcount == arity + 1
