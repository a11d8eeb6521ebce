"""The library's arguments, checked before anything starts: Python values -> the CLI's option text.

A wrong type is a SandboxError (exit code 125) naming the argument, like a bad option on the
command line; the values themselves are then checked by the CLI's own code (api/options.py).
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Callable, Iterable, Mapping

from sandboxctl.errors import SandboxError

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any


def _type_error(what: str, expected: str, value: Any) -> SandboxError:
    return SandboxError(f"{what}: expected {expected}, got {type(value).__name__}")


def text(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise _type_error(what, "a string", value)
    return value


def strings(values: Any, what: str) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str | bytes | os.PathLike) or not isinstance(values, Iterable):
        raise _type_error(what, "a list of strings", values)
    return [text(item, f"{what}[{i}]") or "" for i, item in enumerate(values)]


def argv(values: Any) -> list[str]:
    """A command is a list of strings, never one string a shell would split."""
    if isinstance(values, str | bytes):
        raise SandboxError(f"argv: expected a list of strings, got {type(values).__name__} {str(values)[:60]!r}",
                           "pass the command as a list, e.g. run(['pytest', '-q']), or run(['sh', '-c', TEXT])")
    items = strings(values, "argv")
    if not items:
        raise SandboxError("no command given", "usage: sandboxctl run [OPTIONS] -- COMMAND [ARG...]")
    for item in items:
        if "\0" in item:
            raise SandboxError("argv: an argument contains a NUL byte")
    return items


def env_items(env: Any, what: str) -> list[str]:
    """{"NAME": "VALUE"} or ["NAME=VALUE", "NAME"] (NAME alone: taken from this process)."""
    if isinstance(env, Mapping):
        items = []
        for name, value in env.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise SandboxError(f"{what}: names and values must be strings ({name!r})")
            items.append(f"{name}={value}")
        return items
    return strings(env, what)


def duration(value: Any, what: str) -> str | None:
    """'90s', '10m', or a number of seconds -> the CLI's duration text."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _type_error(what, 'a duration ("90s", "10m") or seconds', value)
    if isinstance(value, str):
        return value
    from sandboxctl import units

    return units.format_duration(float(value)) if value > 0 else "0s"


def size(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _type_error(what, 'a size ("512M", "4G") or bytes', value)
    return str(value)


def input_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise _type_error("input", "str or bytes", value)


def callback(value: Any, what: str) -> None:
    if value is not None and not callable(value):
        raise _type_error(what, "a function", value)


def cwd(value: Any, base: str) -> str | None:
    """Where the command starts inside the sandbox: absolute, or relative to the plan's directory."""
    path = text(value, "cwd")
    if path is None:
        return None
    if "\0" in path:
        raise SandboxError("cwd: contains a NUL byte")
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(base, path))


class Decoders:
    """Bytes to text for the result and for stream callbacks, chunk by chunk (a UTF-8 character
    split across two reads is decoded whole)."""

    def __init__(self, text: bool):
        self.text = text
        self.decoders = {1: codecs.getincrementaldecoder("utf-8")("replace"),
                         2: codecs.getincrementaldecoder("utf-8")("replace")}

    def sink(self, stream: int, callback: Callable[[Any], None] | None) -> Callable[[bytes], None] | None:
        if callback is None:
            return None
        if not self.text:
            return callback
        decoder = self.decoders[stream]

        def decoded(chunk: bytes) -> None:
            piece = decoder.decode(chunk)
            if piece:
                callback(piece)

        return decoded

    def whole(self, data: bytes) -> str | bytes:
        return data.decode("utf-8", "replace") if self.text else data
