"""Request rules of network.inspect (sandboxctl.network.rules): parsing, the canonical path, matching."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxctl.network.rules import (
    HostRules,
    PathRefused,
    canonical_path,
    compile_inspect,
    most_specific,
    parse_rule,
)
from sandboxctl.units import parse_host_pattern


@pytest.mark.parametrize("rule, method, path, expected", [
    ("GET /repos/acme/**", "GET", "/repos/acme", True),
    ("GET /repos/acme/**", "GET", "/repos/acme/", True),
    ("GET /repos/acme/**", "GET", "/repos/acme/x/y/z", True),
    ("GET /repos/acme/**", "GET", "/repos/acmeevil", False),
    ("GET /repos/acme/**", "GET", "/repos/acme-x/y", False),
    ("GET /repos/acme/**", "POST", "/repos/acme/x", False),
    ("POST /repos/acme/*/issues", "POST", "/repos/acme/widget/issues", True),
    ("POST /repos/acme/*/issues", "POST", "/repos/acme/a/b/issues", False),  # * never crosses /
    ("POST /repos/acme/*/issues", "POST", "/repos/acme//issues", False),  # a * segment is never empty
    ("POST /repos/acme/*/issues", "POST", "/repos/acme/widget/issues/1", False),
    ("* /status", "DELETE", "/status", True),
    ("* /status", "GET", "/status/x", False),
    ("GET /files/*.json", "GET", "/files/a.json", True),
    ("GET /files/*.json", "GET", "/files/a.json/x", False),
    ("GET /a/**/b", "GET", "/a/b", True),
    ("GET /a/**/b", "GET", "/a/x/y/b", True),
    ("GET /a/**/b", "GET", "/a/x/y/c", False),
    ("GET /**", "GET", "/", True),
    ("GET /**", "GET", "/anything/at/all", True),
    ("GET /", "GET", "/", True),
    ("GET /", "GET", "/x", False),
    ("GET /a.b", "GET", "/aXb", False),  # rule text is literal, not a regex
])
def test_rule_matching(rule: str, method: str, path: str, expected: bool) -> None:
    assert parse_rule(rule).matches(method, path) is expected


@pytest.mark.parametrize("text, reason", [
    ("GET", "a request rule is METHOD PATH"),
    ("GET  /x", "a request rule is METHOD PATH"),
    ("GET /x extra", "a request rule is METHOD PATH"),
    ("get /x", "not an HTTP method in upper case"),
    ("G$T /x", "not an HTTP method"),
    ("GET x", "must start with '/'"),
    ("GET /a?b=1", "query"),
    ("GET /a#f", "fragment"),
    ("GET /a%2Fb", "percent-escape"),
    ("GET /a\\b", "backslash"),
    ("GET /a/../b", "'.' and '..' segments"),
    ("GET /a/./b", "'.' and '..' segments"),
    ("GET /a**", "'**' must be a whole segment"),
    ("GET /a\x1b[2Jb", "control or format character"),
    ("GET /a\u202eb", "control or format character"),
])
def test_bad_rules_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_rule(text)


@pytest.mark.parametrize("target, expected", [
    ("/repos/acme/x?page=2", "/repos/acme/x"),  # the query is not part of what rules see
    ("/repos/%61cme/x", "/repos/acme/x"),  # escapes are decoded once
    ("/repos/acme/x%2Fy", "/repos/acme/x/y"),  # an encoded slash is a slash
    ("/caf%C3%A9", "/café"),
    ("/a;b", "/a;b"),
])
def test_canonical_path(target: str, expected: str) -> None:
    assert canonical_path(target) == expected


@pytest.mark.parametrize("target", [
    "/repos/acme/../other", "/repos/acme/%2e%2e/other", "/repos/acme/%2E%2E/other", "/repos/acme/.%2e/other",
    "/repos/acme/./x", "/repos/acme/..;/other", "/repos/acme/..", "/..", "/repos/acme/%2e",
    "/repos/acme%2F..%2Fother",  # decodes to a dot segment
    "/repos/acme/%252e%252e/other",  # a second decoding would make a dot segment
    "/repos/acme/%252Fx", "/a%5Cb", "/a\\b", "/a%00b", "/a%0Ab", "/a%zz", "/a%2", "/a%ff",
    "*", "http://x/", "", "/a#frag",
])
def test_paths_that_cannot_be_vouched_for_are_refused(target: str) -> None:
    with pytest.raises(PathRefused):
        canonical_path(target)


def test_a_rule_cannot_be_escaped_by_spelling() -> None:
    rules = HostRules(parse_host_pattern("api.github.com"), (parse_rule("GET /repos/acme/**"),))
    assert rules.judge("GET", "/repos/acme/widget?x=../../other").allowed  # the query is not the path
    for target in ("/repos/acme/../other/x", "/repos/acme/%2e%2e/other", "/repos/acme%2f..%2fother/x",
                   "/repos/acme/..;/other", "/repos/%2e%2e/acme", "/repos/acme/%252e%252e/x"):
        verdict = rules.judge("GET", target)
        assert not verdict.allowed and not verdict.askable and verdict.rule.startswith("bad request: "), target
    verdict = rules.judge("GET", "/repos/other/x")
    assert not verdict.allowed and verdict.askable
    assert verdict.rule == "not in network.inspect[api.github.com].allow"
    assert "GET /repos/other/x is not in this sandbox's network.inspect[api.github.com].allow" in verdict.reason
    assert rules.judge("GET", "/repos/acme/x").rule == "network.inspect[api.github.com]: GET /repos/acme/**"


def test_no_rules_allows_every_request_but_still_refuses_bad_paths() -> None:
    rules = HostRules(parse_host_pattern("api.example.com"), None)
    assert rules.judge("DELETE", "/anything").allowed
    assert not rules.judge("GET", "/a/../b").allowed


def test_the_most_specific_entry_speaks() -> None:
    entries = compile_inspect({"*.github.com": ["GET /**"], "api.github.com": ["POST /x"],
                               "*.api.github.com": None, "api.github.com:8443": []})
    assert most_specific(entries, "api.github.com", 443).pattern.host == "api.github.com"
    assert most_specific(entries, "api.github.com", 8443).pattern.port == 8443
    assert most_specific(entries, "a.api.github.com", 443).pattern.host == "*.api.github.com"
    assert most_specific(entries, "gist.github.com", 443).pattern.host == "*.github.com"
    assert most_specific(entries, "github.com", 443) is None  # *.x does not cover x
    assert most_specific(entries, "api.github.com", 8443).judge("GET", "/").askable  # allow: [] refuses all


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="/.%2eEfF5cC;aA\\?#x", max_size=24))
def test_fuzz_no_dot_segment_survives_canonicalization(target: str) -> None:
    """Whatever the spelling, a path that passes has no dot segment once decoded, even twice."""
    from urllib.parse import unquote

    try:
        path = canonical_path("/" + target)
    except PathRefused:
        return
    for form in (path, unquote(path)):
        for separator in ("/", "\\"):
            assert all(seg.split(";")[0] not in (".", "..") for seg in form.split(separator)), (target, form)
