"""Guest text: the one reversible, display-safe spelling of guest bytes (provisor/guesttext.py)."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisor.guesttext import canonical, escape, unescape

# what guest text never holds: C0 controls, DEL, C1 controls, line/paragraph separators, bidi
# controls, BOM, the noncharacters XML 1.0 forbids, surrogates
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff"
                    "\ufffe\uffff\ud800-\udfff]")
XML_CHAR = re.compile("[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*")

# arbitrary bytes, and bytes built from the pieces that break things
NASTY = [b"\n", b"\r", b"\x00", b"\x1b[31m", b"\x1b]0;t\x07", b"\x9b", b"\xc2\x9b", b"\\",
         b"\\x41", b'"', b"<&>", b"/", b"..", b".", b" ", b"\xff", b"\xe2\x82", b"\xe2\x82\xac",
         "\u202e".encode(), "\u2028".encode(), b"\xef\xbb\xbf", b"\xef\xbf\xbe", b"\xed\xa0\x80",
         b"\xf0\x9f\x98\x80", b"\xc0\xaf", b"\x7f", "é".encode(), b"abc"]
guest_bytes = st.binary(max_size=64) | st.lists(st.sampled_from(NASTY), max_size=8).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(guest_bytes)
def test_round_trip_and_safe(b: bytes) -> None:
    s = escape(b)
    assert unescape(s) == b
    assert not UNSAFE.search(s), s
    assert XML_CHAR.fullmatch(s)
    s.encode("utf-8")  # no surrogates: SQLite and every encoder take it
    assert canonical(s) == s and escape(unescape(s)) == s


@settings(max_examples=300, deadline=None)
@given(guest_bytes, guest_bytes)
def test_joining_with_a_slash_commutes(a: bytes, b: bytes) -> None:
    """The analyzer joins cwd and relative paths, and splits on '/', on guest text."""
    assert escape(a + b"/" + b) == escape(a) + "/" + escape(b)
    assert escape(a + b"\n" + b).split("\n") == [escape(a + b"\n" + b)]  # no raw newline
    assert [escape(x) for x in (a + b"/" + b).split(b"/")] == escape(a + b"/" + b).split("/")


@given(st.text(alphabet="".join(c for c in string.printable if c not in "\\\t\n\r\x0b\x0c")))
def test_printable_ascii_without_backslash_is_identity(t: str) -> None:
    assert escape(t.encode()) == t
    assert unescape(t) == t.encode()


@given(st.text())
def test_printable_unicode_passes_through(t: str) -> None:
    s = escape(t.encode())
    assert unescape(s) == t.encode()
    if not UNSAFE.search(t) and "\\" not in t:
        assert s == t


@pytest.mark.parametrize("raw, text", [
    (b"n\xff\x01m", r"n\xff\x01m"),
    (b"a\\b", r"a\\b"),
    (b"\\x41", r"\\x41"),  # a literal backslash-x-4-1 is not the byte A
    (b"line\nbreak", r"line\x0abreak"),
    (b"\x00", r"\x00"),
    (b"\x1b]0;owned\x07", r"\x1b]0;owned\x07"),
    (b"\x7f", r"\x7f"),
    ("\u0085".encode(), r"\xc2\x85"),  # C1 NEL
    ("\u202e".encode(), r"\xe2\x80\xae"),  # RIGHT-TO-LEFT OVERRIDE
    ("\ufeff".encode(), r"\xef\xbb\xbf"),
    ("\uffff".encode(), r"\xef\xbf\xbf"),
    (b"\xed\xa0\x80", r"\xed\xa0\x80"),  # an encoded surrogate is not valid UTF-8
    (b"\xc0\xaf", r"\xc0\xaf"),  # overlong '/'
    (b"\xe2\x82", r"\xe2\x82"),  # a truncated sequence
    ("caf\u00e9 \U0001f600".encode(), "caf\u00e9 \U0001f600"),
    (b"/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
])
def test_rules(raw: bytes, text: str) -> None:
    assert escape(raw) == text
    assert unescape(text) == raw


def test_unescape_is_lenient_for_typed_text() -> None:
    assert unescape(r"n\xFF") == b"n\xff"  # capitals
    assert unescape("a\\b") == b"a\\b"  # a backslash starting no escape is itself
    assert unescape("a\\") == b"a\\"
    assert unescape("n\udcff") == b"n\xff"  # sys.argv's spelling of an undecodable byte
    assert canonical("/w/n\udcff\x01m") == r"/w/n\xff\x01m"
    assert canonical(r"/w/n\xFF\x01m") == r"/w/n\xff\x01m"
    with pytest.raises(ValueError):
        unescape("\ud800")
