"""What a run answers without importing `re` is what `re` (and fnmatch, and ipaddress) answered.

sandboxctl/lazyre.py, the hand parsers in units.py and plan/build.credential_like stand in for
patterns on the run path (`re` with its enum module: ~2.5 ms of import, and the compiles). Each is
compared with the pattern it replaces, on exhaustive short strings and on random ones.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import itertools
import random
import re
import sys

import pytest

from sandboxctl import lazyre, units
from sandboxctl.plan.build import CREDENTIAL_LIKE, credential_like

UNICODE = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]


def test_backslash_d_and_s_are_isdecimal_and_isspace():
    """The premise of the hand parsers: in a str pattern, \\d is str.isdecimal, \\s str.isspace."""
    digit, space = re.compile(r"\d"), re.compile(r"\s")
    assert [c for c in UNICODE if bool(digit.fullmatch(c)) != c.isdecimal()] == []
    assert [c for c in UNICODE if bool(space.fullmatch(c)) != c.isspace()] == []


def _strings(alphabet: str, longest: int, randoms: int, seed: int) -> list[str]:
    every = ["".join(p) for n in range(longest + 1) for p in itertools.product(alphabet, repeat=n)]
    rng = random.Random(seed)
    return every + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(randoms)]


def test_durations_parse_as_the_patterns_did():
    for text in [*_strings("0m5shd\u0663 x", 4, 20_000, 1), "1h30m", "500ms", "1msm", "10mss", "٣m", "1m\n"]:
        value = text.strip().lower()
        expected = re.findall(units._DURATION_PART, value) if re.fullmatch(units._DURATION_FULL, value) else None
        assert units._duration_parts(value) == (expected or None), repr(text)


def test_sizes_parse_as_the_pattern_did():
    texts = [*_strings("01Kmg tiIbB\t", 4, 20_000, 2), "4G", "1GiB", "512 MiB", "7\x1cK", "1\u212a", "٣G", "1ıB",
             "1İB", "2 K\u0131b", "5\u00a0M"]
    for text in texts:
        stripped = text.strip()
        match = re.fullmatch(units._SIZE, stripped)
        assert units._size_parts(stripped) == (match.group(1, 2) if match else None), repr(text)


def test_host_labels_are_the_patterns():
    texts = [*_strings("a-0Z.é_", 4, 5_000, 3), *("a" * n for n in (62, 63, 64)), "a" + "-" * 61 + "b", "-a", "a-"]
    for text in texts:
        assert units._is_label(text) == bool(re.fullmatch(units._LABEL, text)), repr(text)


def test_an_address_is_never_taken_for_a_name():
    """may_be_address is False only where ip_address must fail: ipaddress is then not imported."""
    literals = ["::1", "fe80::1%eth0", "1.2.3.4", "::ffff:1.2.3.4", "١.1.1.1"]
    for text in [*_strings("0192.:af%/ x", 4, 20_000, 4), *literals]:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            continue
        assert units.may_be_address(text), repr(text)


def test_parse_host_pattern_is_unchanged_for_names_and_addresses():
    for text in ("pypi.org", "PyPI.org.:443", "*.example.com", "1.2.3.4:80", "01.2.3.4", "[::1]:443", "256.1.1.1",
                 "1.2.3", "a_b.com", "xn--bcher-kva.example", "1.2.3.4.5", "-a.com"):
        try:
            got = units.parse_host_pattern(text)
        except ValueError as exc:
            got = str(exc)
        assert got == _host_pattern_as_before(text), text


def _host_pattern_as_before(text: str):
    """parse_host_pattern as it was, ipaddress and the label pattern used for every name."""
    original, text = text, text.strip().lower()
    port = None
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[1:end], text[end + 1:]
        port = int(rest[1:]) if rest else None
        return units.HostPattern(str(ipaddress.IPv6Address(host)), port)
    host, sep, port_text = text.partition(":")
    port = int(port_text) if sep else None
    try:
        return units.HostPattern(str(ipaddress.IPv4Address(host)), port)
    except ValueError:
        pass
    name = host[2:] if host.startswith("*.") else host
    labels = name.rstrip(".").split(".")
    if not name or len(name) > 253 or not all(re.fullmatch(units._LABEL, label) for label in labels):
        return f"{original!r}: not a host pattern (use host, host:port or *.domain[:port])"
    if labels[-1].isdigit():
        return f"{original!r}: not a valid IPv4 address or host name"
    return units.HostPattern(host.rstrip("."), port)


def test_credential_like_is_the_pattern():
    names = ["GITHUB_TOKEN", "github_token", "MY_Key", "X_CREDENTIAL", "X_CREDENTIALS", "PASSWD", "AWS_REGION",
             "aws", "GH_", "LC_ALL", "LANG", "A_TOKEN\n", "A_TOKEN\nB", "\nGH_X", "X_\u212aEY", "GCP_ſ", "X_ſECRET",
             "X_AUTHx", "gcp_x", "A_KEY\n\n", ""]
    names += _strings("AGH_TOKEYS\n", 3, 20_000, 5)
    for name in names:
        assert credential_like(name) == bool(re.match(CREDENTIAL_LIKE, name)), repr(name)


PATTERNS = ["LC_*", "LANG", "", "*", "**", ".env*", "a*b", "a?c", "[ab]*", "x[", "*.yaml", "/home/u/.ssh/*",
            "a\\*", "a/*", "*/b", ".*", "LC_\n*", "é*"]
NAMES = ["", "LC_ALL", "LC_", "LC", "LANG", "LANGUAGE", ".env", ".env.local", ".ENV", "ab", "axb", "abc", "a/b",
         "x[", "a\\b", "a*", "/home/u/.ssh/id_rsa", "/home/u/.ssh", "LC_\nX", "éa", "a\nb"]


def test_fnmatchcase_answers_as_fnmatch():
    for pattern, name in itertools.product(PATTERNS, NAMES):
        assert lazyre.fnmatchcase(name, pattern) == fnmatch.fnmatchcase(name, pattern), (name, pattern)


@pytest.mark.parametrize("text", [r"^/proc/(self|thread-self|\d+)(/task/(\d+))?/mem$", r"^/proc/(self|\d+)/fd/(\d+)$",
                                  r"^[^~/]{1,8}~[0-9]{1,7}(?:\.[^./]{0,3})?$"])
def test_a_lazy_pattern_is_the_compiled_one(text):
    pattern = lazyre.Pattern(text)
    for subject in ("/proc/self/mem", "/proc/12/task/3/mem\n", "/proc/self/fd/4", "PROGRA~1", "README~1.TXT", "x"):
        for method in ("match", "fullmatch", "search"):
            got, want = getattr(pattern, method)(subject), getattr(re.compile(text), method)(subject)
            assert (got and got.groups()) == (want and want.groups())
    assert pattern.compiled is re.compile(text)  # re's own cache: the same object


def _path_subjects() -> list[str]:
    """Paths made of the pieces the mediator's patterns look for, and near misses of them."""
    heads = ["/proc/", "/proc", "//proc/", "/dev/", "/dev", "/de", "/", "", "x/proc/", "/PROC/"]
    middles = ["self", "thread-self", "12", "1x", "self/task/3", "12/task/3", "selfish", "std", ""]
    tails = ["/mem", "/fd/4", "/fd/", "/cwd", "/root", "/cwd/a/b", "/mem\n", "", "in", "out", "err", "null",
             "fd/3", "fd/3/x", "stdout", "stdout/x", "/fd/4x"]
    return [h + m + t for h in heads for m in middles for t in tails]


def test_a_pattern_with_prefixes_answers_as_re_and_compiles_only_for_them():
    from sandboxctl.supervise import mediate_calls, mediate_changes, sandbox_paths

    for lazy in (mediate_calls._MAGIC, mediate_changes._MAGIC_FD, sandbox_paths.PROC_MEMORY):
        compiled = re.compile(lazy.text)
        for subject in _path_subjects():
            for method in ("match", "fullmatch"):
                got, want = getattr(lazy, method)(subject), getattr(compiled, method)(subject)
                assert (got and got.groups()) == (want and want.groups()), (lazy.text, method, subject)
        fresh = lazyre.Pattern(lazy.text, lazy.starts)
        assert fresh.match("/dev/null") is None and fresh.match("/work/repo/.git/index.lock") is None
        assert fresh._compiled is None  # git's /dev/null and an ordinary path never compile it
