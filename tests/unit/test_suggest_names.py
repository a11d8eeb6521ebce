"""policy suggest and the names a sandboxed program can give its files.

A path in the log is whatever bytes the program used, decoded with os.fsdecode: bytes that are
not UTF-8 arrive as lone surrogates (\\udcff), and a name may hold controls, characters past
U+FFFF, wildcards or braces. The suggestion must stay a policy: YAML that any YAML reader takes
(libyaml refuses a surrogate escape), that loads to exactly the paths that were denied, and that
the policy loader accepts; a name no policy can hold is listed as refused, shown inert.
"""

from __future__ import annotations

import os
import unicodedata

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxctl.paths import expand
from sandboxctl.plan.facts import path_kind
from sandboxctl.policy.load import SourceFile, load_source
from sandboxctl.policy.suggest import Host, render, suggest

HOME = "/home/ann"
WS = "/home/ann/proj"
LOADERS = [yaml.SafeLoader, *([yaml.CSafeLoader] if yaml.__with_libyaml__ else [])]


def file(op: str, path: str) -> dict:
    return {"event": "file", "op": op, "path": path, "decision": "deny", "rule": "outside the writable set (ro …)"}


def suggested(records: list[dict], kinds: dict[str, str]):
    host = Host(home=HOME, workspace=WS, kind=lambda p: kinds.get(p, "missing"))
    result = suggest(records, host, "default", "r1")
    return result, render(result, host, "default", "sandboxctl policy suggest --run r1")


def check_policy(text: str) -> dict:
    """Valid YAML for every reader, the same data from each, and a policy the loader accepts."""
    datas = [yaml.load(text, Loader=loader) for loader in LOADERS]
    assert all(data == datas[0] for data in datas)
    assert yaml.safe_load(yaml.safe_dump(datas[0])) == datas[0]
    load_source(SourceFile("suggested.yaml", "/nonexistent/suggested.yaml", text.encode()))
    for char in text:  # nothing a terminal would act on, or draw as nothing, reaches the reader
        assert char == "\n" or unicodedata.category(char) not in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"), repr(char)
    return datas[0]


def grants(data: dict) -> list[str]:
    return [expand(p, workspace=WS, home=HOME) for p in data.get("filesystem", {}).get("write", [])]


def test_a_name_that_is_not_utf8_is_refused_and_shown_as_its_bytes():
    name = "/srv/data/in\udcff\x1b[2J.csv"
    result, text = suggested([file("write", name)], {"/srv/data": "dir", name: "file"})
    data = check_policy(text)
    assert "filesystem" not in data
    [(label, why)] = result.refused.items()
    assert "in\\xff\\x1b[2J.csv" in label and "not UTF-8" in why


def test_a_name_past_the_basic_plane_is_granted_exactly():
    name = f"{HOME}/.config/tool/\U0001f600 notes\u202e.txt"
    _result, text = suggested([file("create", name)], {f"{HOME}/.config/tool": "dir"})
    data = check_policy(text)
    assert grants(data) == [name]  # not two surrogate halves: the character itself
    assert data["filesystem"]["create"] == [{"path": name.replace(HOME, "~"), "kind": "file"}]


@pytest.mark.parametrize("name, why", [
    ("/srv/data/report[1].csv", "wildcards"),
    ("/srv/data/a*b", "wildcards"),
    ("/srv/data/{home}", "{home} may only start a path"),
    ("/srv/data/{x}", "unknown variable {x}"),
    ("/srv/data/a{b", "unbalanced braces"),
    ("/srv/data/line\nbreak", "control characters"),
])
def test_a_name_a_policy_path_cannot_hold_is_refused_with_why(name: str, why: str):
    result, text = suggested([file("write", name)], {"/srv/data": "dir", name: "file"})
    data = check_policy(text)
    assert "filesystem" not in data, data
    [reason] = result.refused.values()
    assert why in reason


def test_a_forged_path_that_no_file_system_can_hold_is_refused_not_looked_up():
    """A NUL byte, or a surrogate that is no undecodable byte: os.lstat would raise, not answer."""
    host = Host(home=HOME, workspace=WS, kind=path_kind)
    records = [file("write", "/tmp/a\0b"), file("write", "/tmp/c\ud800d")]
    result = suggest(records, host, "default", "r1")
    check_policy(render(result, host, "default", "sandboxctl policy suggest --run r1"))
    assert len(result.refused) == 2 and all("log" in why for why in result.refused.values())


NAME_CHARS = st.one_of(
    st.sampled_from(list("ab._- ~*?[]{}\\\"'#:!&%@`")),
    st.characters(codec="utf-8", categories=("Cc", "Cf", "Zs", "Zl", "Zp", "So", "Lo", "Mn")),
    st.integers(0x80, 0xFF).map(lambda b: chr(0xDC00 + b)),  # os.fsdecode's undecodable bytes
)


@settings(max_examples=200, deadline=1000, database=None)
@given(names=st.lists(st.text(NAME_CHARS, min_size=1, max_size=12).filter(lambda n: n not in (".", "..")
                                                                           and "/" not in n and "\0" not in n),
                      min_size=1, max_size=4, unique=True),
       existing=st.booleans(), under_home=st.booleans())
def test_whatever_the_names_the_suggestion_is_a_policy_granting_only_what_was_denied(names, existing, under_home):
    parent = f"{HOME}/.config/tool" if under_home else "/srv/data"
    paths = [os.path.normpath(f"{parent}/{name}") for name in names]
    kinds = {parent: "dir", **{p: "file" for p in paths if existing}}
    result, text = suggested([file("write" if existing else "create", p) for p in paths], kinds)
    data = check_policy(text)
    for grant in grants(data):
        assert grant == parent or grant in paths, (grant, paths)
    assert len(result.refused) + sum(len(v) for v in result.write.values()) >= len(paths)
