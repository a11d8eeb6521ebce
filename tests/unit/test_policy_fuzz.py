"""Fuzzing the policy loader: whatever the input, the answer is a valid policy or a PolicyError.

Anything else (a KeyError, a RecursionError, a hang) would reach the user as "internal error"
or worse, so every example also has a one-second deadline. The whole module stays near 10 s.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandboxctl.policy.definition import POLICY_SCHEMA
from sandboxctl.policy.errors import PolicyError
from sandboxctl.policy.load import SourceFile, load_source, validate_source
from sandboxctl.policy.schema import (
    Boolean,
    Choice,
    FlagOrList,
    Integer,
    ListOf,
    MapOf,
    Nullable,
    OneOrMany,
    Record,
    Report,
    SizeValue,
    Text,
    Version,
)
from sandboxctl.policy.yamlpos import load_yaml

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "sandboxctl/policy/policy.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

FUZZ = settings(max_examples=250, deadline=1000, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def source(content: bytes, name: str = "fuzz.yaml") -> SourceFile:
    return SourceFile(name, Path("/nonexistent-sandboxctl-fuzz") / name, content)


def _problems_are_well_formed(exc: PolicyError) -> None:
    assert exc.problems
    for problem in exc.problems:
        assert problem.source == "fuzz.yaml"
        assert problem.line is None or problem.line >= 1
        assert str(problem).startswith("fuzz.yaml")


def only_policy_errors(content: bytes | str) -> None:
    raw = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
    try:
        load_yaml(content, "fuzz.yaml")
    except PolicyError as exc:
        _problems_are_well_formed(exc)
    try:
        data = validate_source(source(raw))
    except PolicyError as exc:
        _problems_are_well_formed(exc)
    else:
        assert data["version"] == 1


# --- (a) unstructured: bytes and text ------------------------------------------------------------

YAML_ALPHABET = st.sampled_from(list("-:[]{}&*!|>'\"%@`#,?~<=\\ \t\n\r.0123456789") + list("abxyzNUL_")
                                + ["version", "version: 1\n", "\u00e9", "\ufeff", "\x00", "\x85", "\u2028"])
YAMLISH = st.lists(YAML_ALPHABET, max_size=80).map("".join)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes(content: bytes) -> None:
    only_policy_errors(content)


@settings(FUZZ, max_examples=150)
@given(st.text(max_size=300))
def test_random_text(content: str) -> None:
    only_policy_errors(content)


@FUZZ
@given(YAMLISH)
def test_yaml_punctuation(content: str) -> None:
    only_policy_errors(content)
    only_policy_errors("version: 1\n" + content)


# --- (b) structured: policy-shaped documents -----------------------------------------------------


def _schema_keys(node, out: set[str]) -> set[str]:
    """Every key the real schema knows, at any depth, so generated maps hit real branches."""
    if isinstance(node, Record):
        out.update(node.fields)
        for child in node.fields.values():
            _schema_keys(child, out)
    elif isinstance(node, ListOf | OneOrMany):
        _schema_keys(node.item, out)
    elif isinstance(node, MapOf):
        _schema_keys(node.value, out)
    elif isinstance(node, Nullable):
        _schema_keys(node.item, out)
    return out


SCHEMA_KEYS = sorted(_schema_keys(POLICY_SCHEMA, set()))
JUNK_KEYS = ["", "<<", "Version", "netwrok", "GITHUB_TOKEN", "LANG", "1BAD", "a b", "*", "~", "\u00e9"]
KEYS = st.sampled_from(SCHEMA_KEYS + JUNK_KEYS) | st.text(max_size=8)

PLAUSIBLE = [
    # durations, sizes, paths, hosts, env patterns, secret sources, choices, names
    "90s", "30m", "1h30m", "0s", "500ms", "30", "2w", "512M", "4G", "1GiB", "0", "4 gigabytes",
    "/usr", "~/.cache", "~", "{workspace}/x", "{home}/y", "{foo}/z", "rel/path", "/a/../b", "~root", "/u*",
    "pypi.org", "*.github.com:443", "[::1]:443", "::1", "host:0", "a..b", "10.0.0.1:80",
    "LANG", "LC_*", "LC-*", "env:TOKEN", "file:/run/x", "command:gh auth token", "vault:x",
    "rw", "ro", "none", "proxy", "host", "ask", "deny", "allow", "tty", "socket", "file", "env",
    "required", "best-effort", "write", "all", "bwrap", "gvisor", "ptrace", "PTRACE",
    "base", "default", "ci", "offline", "nosuch", "./parent.yaml", "/abs.yaml", "",
    "GET /repos/acme/**", "* /**", "POST /a/*/b", "get /x", "GET /a?b", "GET /../x", "GET /a/**b",
    "syslog", "syslog+udp://127.0.0.1:514", "syslog+tcp://[::1]:6514", "udp://x:1", "syslog+tcp://h",
    "~/.claude.json#mcpServers", "~/.x.json#projects.*.allowedTools", "/x.json#", "rel.json#a", "~/y#a..b",
]
SCALARS = (
    st.sampled_from(PLAUSIBLE)
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.sampled_from([0, 1, 2, 16, 512, True, False, None, 1.0, 1.5, float("inf")])
    | st.text(max_size=12)
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=30,
)
SECTIONS = st.dictionaries(st.sampled_from(SCHEMA_KEYS + JUNK_KEYS), VALUES, max_size=6)
VERSIONS = st.sampled_from([1, 1, 1, 1, 2, "1", True, None, "absent"])
POLICIES = st.tuples(VERSIONS, SECTIONS).map(
    lambda pair: ({} if pair[0] == "absent" else {"version": pair[0]})
    | {k: v for k, v in pair[1].items() if k != "version"}
)


STRUCTURED = settings(max_examples=200, deadline=1000, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                             HealthCheck.filter_too_much])


def _accepts(node, value) -> bool:
    report = Report()
    node.check(value, (), report)
    return not report.problems


def _mostly(good: st.SearchStrategy, bad: st.SearchStrategy = VALUES) -> st.SearchStrategy:
    """Nine times in ten a value the schema accepts, else anything: near-valid documents."""
    return st.integers(0, 9).flatmap(lambda roll: bad if roll == 0 else good)


def from_schema(node, key: str = "") -> st.SearchStrategy:
    """Values shaped by the real schema node, so most documents are valid and mutations are local."""
    if isinstance(node, Version):
        return st.just(1)
    if isinstance(node, Record):
        fields = {name: _mostly(from_schema(child, name)) for name, child in node.fields.items()}
        required = {name: fields.pop(name) for name in node.required}
        if "version" in required:
            required["version"] = _mostly(st.just(1), VERSIONS.filter(lambda v: v != "absent"))
        junk = st.dictionaries(st.sampled_from(JUNK_KEYS), SCALARS, max_size=1)
        return st.tuples(st.fixed_dictionaries(required, optional=fields),
                         st.integers(0, 9).flatmap(lambda roll: junk if roll == 0 else st.just({})),
                         ).map(lambda pair: pair[0] | pair[1])
    if isinstance(node, MapOf):
        if node.key_parse is not None:  # network.inspect: host patterns
            names = st.sampled_from(["api.github.com", "*.example.com", "[::1]:443", "bad host", "x:0"])
        else:
            names = st.sampled_from(["TOKEN", "LANG", "A_1", "_x", "PIP_NO_INPUT"])
        return st.dictionaries(names, _mostly(from_schema(node.value)), max_size=3)
    if isinstance(node, Nullable):
        return st.none() | from_schema(node.item)
    if isinstance(node, ListOf):
        return st.lists(_mostly(from_schema(node.item)), max_size=4)
    if isinstance(node, OneOrMany):
        one = st.sampled_from(["base", "default", "ci", "offline"]) if key == "extends" else from_schema(node.item)
        return one | st.lists(one, max_size=3)
    if isinstance(node, FlagOrList):
        return st.booleans() | st.lists(_mostly(from_schema(node.item)), max_size=4)
    if isinstance(node, Choice):
        return st.sampled_from(node.options)
    if isinstance(node, Integer):
        return st.integers(node.minimum, node.maximum)
    if isinstance(node, Boolean):
        return st.booleans()
    if isinstance(node, SizeValue):
        return st.sampled_from(["512M", "4G", "1GiB", "64k", "1 T"]) | st.integers(1, 2**40)
    if isinstance(node, Text):
        pool = [c for c in PLAUSIBLE if _accepts(node, c)]
        if node.parse is None and node.pattern is None:
            return st.text(max_size=16)
        if node.pattern is not None:
            return st.sampled_from(pool) | st.from_regex(node.pattern, fullmatch=True) if pool else \
                st.from_regex(node.pattern, fullmatch=True)
        return st.sampled_from(pool)
    raise AssertionError(f"no strategy for {type(node).__name__}")  # a new node type needs one


NEAR_VALID = from_schema(POLICY_SCHEMA)


def _engine_then_schema(document: dict) -> dict | None:
    text = yaml.safe_dump(document, allow_unicode=True, sort_keys=False)
    try:
        data = validate_source(source(text.encode("utf-8", "surrogatepass")))
    except PolicyError as exc:
        _problems_are_well_formed(exc)
        return None
    # The engine is the stricter of the two: what it accepts, the JSON Schema accepts too.
    assert VALIDATOR.is_valid(yaml.safe_load(text)), text
    assert data["version"] == 1
    return data


@STRUCTURED
@given(POLICIES)
def test_policy_shaped_documents(document: dict) -> None:
    _engine_then_schema(document)


@STRUCTURED
@given(NEAR_VALID)
def test_schema_shaped_documents(document: dict) -> None:
    _engine_then_schema(document)


@settings(STRUCTURED, max_examples=60)
@given(document=NEAR_VALID)
def test_accepted_documents_load_into_a_policy(tmp_path_factory, document: dict) -> None:
    """Merging with built-in parents and building the frozen Policy never fails on valid data."""
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "fuzz.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8", errors="surrogatepass")
    try:
        loaded = load_source(SourceFile("fuzz.yaml", path, path.read_bytes()))
    except PolicyError as exc:
        assert exc.problems
        return
    assert loaded.policy.name
    assert loaded.files[0].path == path
    # what extends produced is itself a valid policy, to the engine and to the JSON Schema
    assert _accepts(POLICY_SCHEMA, loaded.data), loaded.data
    assert VALIDATOR.is_valid(loaded.data), loaded.data


GRAPHS = st.dictionaries(st.sampled_from("abcd"), st.lists(st.sampled_from("abcd"), max_size=3, unique=True),
                         min_size=1)


def _reaches_cycle(graph: dict[str, list[str]], start: str) -> bool:
    def visit(node: str, path: tuple[str, ...]) -> bool:
        if node in path:
            return True
        return any(visit(parent, (*path, node)) for parent in graph.get(node, []))

    return visit(start, ())


@FUZZ
@given(GRAPHS)
def test_extends_graphs(tmp_path_factory, graph: dict[str, list[str]]) -> None:
    """Random extends graphs among four files: a file loads exactly when no cycle is reachable."""
    folder = tmp_path_factory.mktemp("graph")
    for name in "abcd":
        parents = [f"{p}.yaml" for p in graph.get(name, [])]
        (folder / f"{name}.yaml").write_text(f"version: 1\nextends: {json.dumps(parents)}\n")
    for name in graph:
        path = folder / f"{name}.yaml"
        try:
            loaded = load_source(SourceFile(path.name, path, path.read_bytes()))
        except PolicyError as exc:
            assert _reaches_cycle(graph, name), str(exc)
            assert "extends cycle: " in exc.problems[0].message
            assert exc.problems[0].line == 2
        else:
            assert not _reaches_cycle(graph, name)
            assert loaded.files[0].path == path
