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
