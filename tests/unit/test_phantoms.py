"""Phantom secrets (sandboxctl.network.phantoms): placeholders, injection per host, leaks, expiry, masking."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxctl.network.phantoms import PREFIX, BodyScanner, PhantomSecrets, PhantomSpec

REAL = "ghp_realvalue0123456789"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def phantoms(clock: Clock) -> PhantomSecrets:
    return PhantomSecrets([PhantomSpec("GITHUB_TOKEN", REAL, ["api.github.com"], ttl=60),
                           PhantomSpec("OTHER", "other-real-value", ["*.other.example"])], clock=clock)


def test_placeholders_are_unguessable_and_never_the_value(phantoms: PhantomSecrets) -> None:
    placeholder = phantoms.placeholders["GITHUB_TOKEN"]
    assert placeholder.startswith(PREFIX) and len(placeholder) == len(PREFIX) + 40
    assert REAL not in placeholder and placeholder != phantoms.placeholders["OTHER"]
    assert PhantomSecrets([PhantomSpec("A", "v", ["x.com"])]).placeholders["A"] != \
        PhantomSecrets([PhantomSpec("A", "v", ["x.com"])]).placeholders["A"]
    assert REAL not in repr(phantoms.items) and REAL not in repr(PhantomSpec("A", REAL, ["x"]))


def test_injected_in_any_header_toward_its_host_over_tls(phantoms: PhantomSecrets) -> None:
    p = phantoms.placeholders["GITHUB_TOKEN"].encode()
    headers = [(b"Authorization", b"Bearer " + p), (b"X-Api-Key", p), (b"Accept", b"*/*")]
    outcome = phantoms.rewrite_headers(headers, "api.github.com", 443, tls=True)
    assert outcome.headers == [(b"Authorization", b"Bearer " + REAL.encode()), (b"X-Api-Key", REAL.encode()),
                               (b"Accept", b"*/*")]
    assert outcome.injected == ["GITHUB_TOKEN"] and not outcome.leaked


def test_basic_auth_is_opened_and_closed_again(phantoms: PhantomSecrets) -> None:
    p = phantoms.placeholders["GITHUB_TOKEN"]
    header = b"Basic " + base64.b64encode(f"x-access-token:{p}".encode())
    outcome = phantoms.rewrite_headers([(b"Authorization", header)], "api.github.com", 443, tls=True)
    assert outcome.headers[0][1] == b"Basic " + base64.b64encode(f"x-access-token:{REAL}".encode())
    assert outcome.injected == ["GITHUB_TOKEN"]
    leaked = phantoms.rewrite_headers([(b"Authorization", header)], "evil.example", 443, tls=True)
    assert leaked.leaked == ["GITHUB_TOKEN"] and leaked.headers[0][1] == header


def test_each_secret_goes_only_to_its_own_hosts(phantoms: PhantomSecrets) -> None:
    a, b = phantoms.placeholders["GITHUB_TOKEN"].encode(), phantoms.placeholders["OTHER"].encode()
    # A's placeholder toward B's host is a leak of A, not an injection
    outcome = phantoms.rewrite_headers([(b"X", a), (b"Y", b)], "api.other.example", 443, tls=True)
    assert outcome.leaked == ["GITHUB_TOKEN"] and outcome.injected == ["OTHER"]
    assert phantoms.leaks_in(b"/search?q=" + a, "api.github.com", 443) == []
    assert phantoms.leaks_in(b"/search?q=" + a, "evil.example", 443) == ["GITHUB_TOKEN"]
    encoded = "".join(f"%{c:02x}" for c in a)  # percent-encoded all the way
    assert phantoms.leaks_in(b"/x?q=" + encoded.encode(), "evil.example", 80) == ["GITHUB_TOKEN"]
    assert phantoms.rewrite_headers([(a, b"1")], "evil.example", 443, tls=True).leaked == ["GITHUB_TOKEN"]


def test_never_over_cleartext_and_not_after_expiry(phantoms: PhantomSecrets, clock: Clock) -> None:
    p = phantoms.placeholders["GITHUB_TOKEN"].encode()
    plain = phantoms.rewrite_headers([(b"Authorization", p)], "api.github.com", 80, tls=False)
    assert plain.cleartext == ["GITHUB_TOKEN"] and plain.headers[0][1] == p and not plain.injected
    clock.now += 61
    expired = phantoms.rewrite_headers([(b"Authorization", p)], "api.github.com", 443, tls=True)
    assert expired.expired == ["GITHUB_TOKEN"] and expired.headers[0][1] == p
    fresh = phantoms.rewrite_headers([(b"X", phantoms.placeholders["OTHER"].encode())], "a.other.example", 443,
                                     tls=True)
    assert fresh.injected == ["OTHER"]  # no ttl: never expires
    phantoms.expire("OTHER")
    assert phantoms.rewrite_headers([(b"X", phantoms.placeholders["OTHER"].encode())], "a.other.example", 443,
                                    tls=True).expired == ["OTHER"]


def test_a_proxy_secret_needs_hosts_and_a_value_that_fits_a_header() -> None:
    with pytest.raises(ValueError, match="needs hosts"):
        PhantomSecrets([PhantomSpec("A", "v", [])])
    with pytest.raises(ValueError, match="line break"):
        PhantomSecrets([PhantomSpec("A", "line1\r\nX-Injected: 1", ["x.com"])])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300), st.lists(st.integers(1, 80), min_size=1, max_size=12))
def test_body_scanner_finds_a_placeholder_across_any_split(before: bytes, after: bytes, sizes: list[int]) -> None:
    phantoms = PhantomSecrets([PhantomSpec("T", "value", ["good.example"])])
    placeholder = phantoms.placeholders["T"].encode()
    body = before + placeholder + after
    scanner = phantoms.body_scanner("evil.example", 443)
    assert scanner is not None
    forwarded, start = b"", 0
    for size in sizes * (len(body) // sum(sizes) + 1):
        piece, start = body[start:start + size], start + size
        forwarded += scanner.feed(piece)
        if scanner.leaked or start >= len(body):
            break
    assert scanner.leaked == "T"
    assert placeholder not in forwarded


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(1, 64), min_size=1, max_size=8))
def test_body_scanner_forwards_everything_else_unchanged(body: bytes, sizes: list[int]) -> None:
    scanner = BodyScanner(PhantomSecrets([PhantomSpec("T", "v", ["x.com"])]).items)
    out, start = b"", 0
    while start < len(body):
        for size in sizes:
            out += scanner.feed(body[start:start + size])
            start += size
    out += scanner.finish()
    assert out == body and scanner.leaked is None


def test_a_stream_is_held_back_only_while_a_match_is_possible() -> None:
    phantoms = PhantomSecrets([PhantomSpec("T", "secret-value-xyz", ["api.example"])])
    masker = phantoms.masker(["T"])
    assert masker is not None
    assert masker.feed(b"data: token 1\n") == b"data: token 1\n"  # an event stream is never delayed
    assert masker.feed(b"echo: secret-val") == b"echo: "  # could be the value: wait for more
    assert masker.feed(b"ue-xyz done") == b"*" * len("secret-value-xyz") + b" done"
    assert masker.feed(b"tail s") == b"tail "
    assert masker.finish() == b"s"
    assert masker.masked == 1


def test_the_value_is_masked_in_base64_too_wherever_it_starts():
    """An echo of `Authorization: Basic base64(user:VALUE)` (the proxy put VALUE there) must not hand
    the value back: every base64 text that holds it, at any alignment, either alphabet, is masked."""
    value = "secret-value-xyz-0123456789"
    phantoms = PhantomSecrets([PhantomSpec("T", value, ["api.example.com"])])
    for prefix in (b"", b"x:", b"ab:", b"user:"):
        for suffix in (b"", b"!", b"!!"):
            for encode in (base64.b64encode, base64.urlsafe_b64encode):
                masker = phantoms.masker(["T"])
                shown = masker.feed(b'{"auth": "Basic ' + encode(prefix + value.encode() + suffix) + b'"}')
                shown += masker.finish()
                decoded = base64.b64decode(shown.split(b"Basic ")[1].split(b'"')[0].replace(b"*", b"A") + b"==",
                                           altchars=b"-_" if encode is base64.urlsafe_b64encode else None)
                assert value.encode()[2:-2] not in decoded
