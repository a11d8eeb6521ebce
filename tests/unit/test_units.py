"""The small value languages of policies: durations, sizes and network host patterns."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxctl import units
from sandboxctl.units import HostPattern, format_duration, format_size, parse_duration, parse_host_pattern, parse_size

# --- durations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("500ms", 0.5), ("1h30m", 5400),
    ("1m30s", 90), ("1h0m", 3600), ("0s1ms", 0.001), ("30M", 1800), (" 45s ", 45), ("007s", 7),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "reason"), [
    ("", "not a duration"), ("30", "not a duration"), ("s", "not a duration"), ("1.5h", "not a duration"),
    ("-5s", "not a duration"), ("30 m", "not a duration"), ("2w", "not a duration"), ("1h 30m", "not a duration"),
    ("30sec", "not a duration"), ("m30", "not a duration"), ("0s", "longer than zero"), ("0h0m", "longer than zero"),
    ("0ms", "longer than zero"),
])
def test_parse_duration_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        parse_duration(text)
    assert repr(text) in str(info.value)  # the message quotes what was written


@pytest.mark.parametrize(("seconds", "text"), [
    (0.5, "500ms"), (1, "1s"), (90, "90s"), (60, "1m"), (1800, "30m"), (3600, "1h"), (5400, "90m"), (3601, "3601s"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


@settings(max_examples=200, deadline=None, database=None)
@given(st.integers(min_value=1, max_value=10**7))
def test_format_duration_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


# --- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "size"), [
    ("512M", 512 << 20), ("4G", 4 << 30), ("1T", 1 << 40), ("64K", 64 << 10), ("64k", 64 << 10),
    ("1GiB", 1 << 30), ("1gib", 1 << 30), ("1GB", 1 << 30), ("2 G", 2 << 30), ("1024", 1024), ("10B", 10),
    (1, 1), (4096, 4096), (" 4G ", 4 << 30),
])
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(("text", "reason"), [
    ("", "not a size"), ("G", "not a size"), ("4X", "not a size"), ("1.5G", "not a size"), ("-1G", "not a size"),
    ("4 gigabytes", "not a size"), ("4GG", "not a size"), ("0", "larger than zero"), ("0G", "larger than zero"),
    (0, "larger than zero"), (-512, "larger than zero"), (True, "not a size"),
])
def test_parse_size_rejects(text: str | int, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_size(text)


@pytest.mark.parametrize(("size", "text"), [
    (1, "1"), (1000, "1000"), (1024, "1K"), (1536, "1536"), (512 << 20, "512M"), (4 << 30, "4G"), (3 << 40, "3T"),
    ((1 << 30) + (1 << 20), "1025M"),
])
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@settings(max_examples=200, deadline=None, database=None)
@given(st.integers(min_value=1, max_value=1 << 50))
def test_format_size_round_trips(size: int) -> None:
    assert parse_size(format_size(size)) == size


# --- host patterns -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "host", "port"), [
    ("pypi.org", "pypi.org", None),
    ("PyPI.org:443", "pypi.org", 443),
    ("files.pythonhosted.org:443", "files.pythonhosted.org", 443),
    ("example.com.", "example.com", None),
    ("*.github.com", "*.github.com", None),
    ("*.github.com:443", "*.github.com", 443),
    ("localhost:8080", "localhost", 8080),
    ("xn--bcher-kva.example", "xn--bcher-kva.example", None),
    ("a-b.c-d.io:1", "a-b.c-d.io", 1),
    ("10.0.0.1", "10.0.0.1", None),
    ("192.0.2.10:65535", "192.0.2.10", 65535),
    ("[::1]", "::1", None),
    ("[::1]:443", "::1", 443),
    ("[2001:DB8:0:0::1]:8443", "2001:db8::1", 8443),
    ("[fe80::1]", "fe80::1", None),
    ("[::ffff:10.0.0.1]", "::ffff:a00:1", None),
])
def test_parse_host_pattern(text: str, host: str, port: int | None) -> None:
    pattern = parse_host_pattern(text)
    assert pattern == HostPattern(host, port)
    assert parse_host_pattern(str(pattern)) == pattern  # str() writes it back in the policy syntax


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty host pattern"),
    ("   ", "empty host pattern"),
    ("*.", "not a host pattern"),
    ("*", "not a host pattern"),
    ("*.*.com", "not a host pattern"),
    ("a*.com", "not a host pattern"),
    ("pypi.*.org", "not a host pattern"),
    ("a..b", "not a host pattern"),
    (".example.com", "not a host pattern"),
    ("-a.com", "not a host pattern"),
    ("a-.com", "not a host pattern"),
    ("under_score.com", "not a host pattern"),
    ("a b.com", "not a host pattern"),
    ("x" * 64 + ".com", "not a host pattern"),
    (".".join(["abcdefgh"] * 30), "not a host pattern"),
    ("http://pypi.org", "a URL, not a host pattern; write pypi.org:80"),
    ("host:0", "port must be 1-65535"),
    ("host:70000", "port must be 1-65535"),
    ("host:", "port must be 1-65535"),
    ("host:-1", "port must be 1-65535"),
    ("host:http", "port must be 1-65535"),
    ("256.1.1.1", "not a valid IPv4 address or host name"),
    ("1.2.3", "not a valid IPv4 address or host name"),
    ("010.0.0.1", "not a valid IPv4 address or host name"),
    ("::1", "write IPv6 addresses in brackets"),
    ("fe80::1:443", "write IPv6 addresses in brackets"),
    ("2001:db8::1", "write IPv6 addresses in brackets"),
    ("[::1", "unclosed '['"),
    ("[::1]443", "expected ':PORT' after ']'"),
    ("[::1]:0", "port must be 1-65535"),
    ("[::1]:", "port must be 1-65535"),
    ("[fe80::zz]", "not an IPv6 address"),
    ("[10.0.0.1]", "not an IPv6 address"),
    ("[]", "not an IPv6 address"),
    ("[pypi.org]:443", "not an IPv6 address"),
])
def test_parse_host_pattern_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("(", r"\(")):
        parse_host_pattern(text)


def test_host_pattern_str() -> None:
    assert str(HostPattern("pypi.org")) == "pypi.org"
    assert str(HostPattern("pypi.org", 443)) == "pypi.org:443"
    assert str(HostPattern("::1", 443)) == "[::1]:443"
    assert str(HostPattern("::1")) == "[::1]"
    assert str(HostPattern("*.github.com", 443)) == "*.github.com:443"


@pytest.mark.parametrize(("pattern", "host", "port", "expected"), [
    # exact names: case and a trailing dot do not matter, other names never match
    ("pypi.org", "pypi.org", 443, True),
    ("pypi.org", "PyPI.ORG.", 80, True),
    ("pypi.org", "files.pypi.org", 443, False),
    ("pypi.org", "pypi.org.evil.com", 443, False),
    ("pypi.org", "evilpypi.org", 443, False),
    # ports
    ("pypi.org:443", "pypi.org", 443, True),
    ("pypi.org:443", "pypi.org", 80, False),
    # wildcards: any depth of subdomain, never the bare domain or a look-alike
    ("*.github.com", "api.github.com", 443, True),
    ("*.github.com", "a.b.github.com", 22, True),
    ("*.github.com", "API.GitHub.com.", 443, True),
    ("*.github.com", "github.com", 443, False),
    ("*.github.com", "evilgithub.com", 443, False),
    ("*.github.com", "github.com.evil.com", 443, False),
    ("*.github.com:443", "api.github.com", 80, False),
    # IPv4
    ("10.0.0.1", "10.0.0.1", 1, True),
    ("10.0.0.1", "10.0.0.2", 1, False),
    ("10.0.0.1", "[::ffff:10.0.0.1]", 1, True),
    ("10.0.0.1:80", "10.0.0.1", 443, False),
    # IPv6: brackets optional, any spelling of the same address
    ("[::1]", "::1", 443, True),
    ("[::1]", "[::1]", 443, True),
    ("[::1]", "0:0:0:0:0:0:0:1", 443, True),
    ("[::1]:443", "::1", 80, False),
    ("[2001:db8::1]", "2001:DB8:0::1", 443, True),
    ("[2001:db8::1]", "2001:db8::2", 443, False),
    # a wildcard or a name never matches an IP literal
    ("*.github.com", "140.82.112.3", 443, False),
    ("pypi.org", "151.101.0.223", 443, False),
])
def test_host_pattern_matches(pattern: str, host: str, port: int, expected: bool) -> None:
    assert parse_host_pattern(pattern).matches(host, port) is expected


def test_units_has_no_heavy_imports() -> None:
    """The shim-side planner imports units: it must stay dependency-free."""
    source = units.__loader__.get_source(units.__name__)
    imports = {line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"__future__", "ipaddress", "re", "typing", "sandboxctl.record"}
    from sandboxctl import record

    source = record.__loader__.get_source(record.__name__)
    assert {line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))} <= {
        "__future__", "collections", "sys"}  # sys: built in


@pytest.mark.parametrize(("seconds", "text"), [(1.5, "1500ms"), (10**6, "1000000s"), (0.0004, "0s")])
def test_format_duration_never_scientific(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
