"""Secret values never reach the log: exact, split across words or by spaces, and encoded."""

from __future__ import annotations

import base64
import binascii
import json
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxctl.log.scrub import MASK, Scrubber, encodings
from sandboxctl.log.writer import ActionLog

SECRET = "ghp_Zx9+/Qm4Lk2vT8rW"


def _leaks(text: str, secret: str = SECRET) -> list[str]:
    data = secret.encode()
    forms = [secret, binascii.hexlify(data).decode(), binascii.hexlify(data).decode().upper(),
             quote(secret, safe=""), quote_plus(secret)]
    for prefix in (b"", b"u", b"us", b"user:"):  # the secret at every alignment inside a longer value
        for encoded in (base64.b64encode(prefix + data), base64.urlsafe_b64encode(prefix + data),
                        base64.b32encode(prefix + data)):
            middle = encoded.decode().rstrip("=")[4:-4]  # what only the secret decides, give or take a group
            forms += [middle, middle.lower()]
    return [form for form in forms if len(form) >= 8 and form in text]


@pytest.mark.parametrize("argv", [
    ["curl", "-H", f"Authorization: Bearer {SECRET}"],
    ["tool", SECRET[:7], SECRET[7:]],                                # split across two words
    ["tool", "--key=" + SECRET[:3], SECRET[3:12], SECRET[12:] + "x"],  # over three
    ["tool", base64.b64encode(SECRET.encode()).decode()],
    ["tool", base64.b64encode(b"user:" + SECRET.encode()).decode()],  # inside a longer encoded value
    ["tool", base64.urlsafe_b64encode(b"ab" + SECRET.encode()).decode().rstrip("=")],
    ["tool", base64.b32encode(b"x" + SECRET.encode()).decode().lower()],
    ["tool", SECRET.encode().hex()], ["tool", SECRET.encode().hex().upper()],
    ["tool", "https://h/?t=" + quote(SECRET, safe="")], ["tool", quote_plus(SECRET)],
    ["tool", "".join(f"%{b:02x}" for b in SECRET.encode())],
])
def test_every_form_is_scrubbed(argv):
    scrubbed = Scrubber([SECRET]).value({"argv": argv, "command": " ".join(argv)})
    text = json.dumps(scrubbed)
    assert not _leaks(text), (_leaks(text), text)
    assert MASK in text


def test_split_by_spaces_inside_one_string():
    scrub = Scrubber([SECRET])
    assert scrub.text(f"run {SECRET[:5]} {SECRET[5:]} now") == f"run {MASK} now"
    assert scrub.text(f"{SECRET[:10]}\t{SECRET[10:]}") == MASK


def test_nothing_else_is_redacted():
    scrub = Scrubber([SECRET])
    for argv in (["git", "status"], ["ls", "-la", "/home/user"], ["echo", SECRET[:7], "and", SECRET[7:]],
                 ["python3", "-c", "print('hello world')"]):
        assert scrub.value(argv) == argv
    assert scrub.text("ghp_Zx9+ unrelated") == "ghp_Zx9+ unrelated"  # a prefix alone is not the secret


def test_short_secrets_only_exact():
    scrub = Scrubber(["abc"])
    assert scrub.text("xabcx") == f"x{MASK}x"
    assert scrub.value(["ab", "c"]) == ["ab", "c"]
    assert encodings("abc") <= {quote("abc")} or all(len(form) >= 6 for form in encodings("abc"))


def test_no_secrets_costs_nothing():
    scrub = Scrubber([])
    record = {"argv": ["a", "b"]}
    assert not scrub and scrub.record(record) is record


def test_the_writer_scrubs_every_field(tmp_path):
    log = ActionLog(str(tmp_path / "log.jsonl"), "run-1", redact=(SECRET,))
    log.write("exec", pid=1, path=f"/tmp/{SECRET}", argv=["tool", SECRET[:9], SECRET[9:]])
    log.write("net", host=base64.b32encode(SECRET.encode()).decode().lower() + ".example", port=443)
    log.write("file", pid=1, path="/w/" + SECRET.encode().hex(), op="create", rule="x")
    log.close()
    text = (tmp_path / "log.jsonl").read_text()
    assert not _leaks(text), _leaks(text)
    assert text.count(MASK) >= 4


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=8, max_size=40),
       st.integers(min_value=0, max_value=8), st.text(max_size=6))
def test_property_encoded_anywhere_is_scrubbed(secret, offset, prefix):
    scrub = Scrubber([secret])
    data = prefix.encode()[:offset] + secret.encode()
    for encoded in (base64.b64encode(data).decode(), base64.b32encode(data).decode(), data.hex()):
        out = scrub.text("x=" + encoded)
        # at most the characters of one encoder group on each side of the secret survive
        assert secret.encode().hex() not in out
        assert out != "x=" + encoded or len(encoded) < 8


def test_what_an_approval_shows_holds_no_secret():
    from sandboxctl.approval.broker import Broker

    broker = Broker("deny", 1.0, lambda *a, **k: None, scrub=Scrubber([SECRET]).text)
    request = broker.decide("file", f"/w/{SECRET}", "rule", 1, f"tool {SECRET[:4]} {SECRET[4:]}")
    shown = request.to_dict()
    assert SECRET not in json.dumps(shown) and shown["target"] == f"/w/{MASK}" and shown["command"] == f"tool {MASK}"
    assert request.target == f"/w/{SECRET}"  # what is approved and opened stays the real path
