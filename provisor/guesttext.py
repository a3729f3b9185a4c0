"""Guest strings are bytes; *guest text* is their one reversible, display-safe spelling.

A file name, comm, argv or cwd read from the guest is whatever bytes the guest had: not
necessarily UTF-8, and possibly holding newlines, terminal escapes (ESC, C1 CSI) or NUL. The
ring carries those exact bytes. Everywhere else (``provisor.events.Event``, the store, query
output, every export) they are guest text: a ``str`` that is valid UTF-8, printable,
single-line and safe for a terminal, SQLite, JSON and XML 1.0, from which the exact bytes come
back with :func:`unescape`. The rules (docs/FORMAT.md, "Guest strings"):

* a backslash becomes ``\\\\`` (two backslashes);
* a byte that is not part of a valid UTF-8 sequence becomes ``\\xHH`` (two lowercase hex
  digits);
* a code point that is unsafe to display becomes the ``\\xHH`` of each of its UTF-8 bytes:
  C0 controls (U+0000-U+001F: NUL, tab, newline, ESC, ...), DEL, C1 controls (U+0080-U+009F),
  the line and paragraph separators U+2028/U+2029, the bidi controls (U+061C, U+200E, U+200F,
  U+202A-U+202E, U+2066-U+2069), U+FEFF, and U+FFFE/U+FFFF (with the C0 controls, all that XML
  1.0 forbids; a surrogate never decodes from valid UTF-8);
* everything else is itself, so printable ASCII without a backslash (nearly every real path)
  is unchanged.

The escape works byte by byte and code point by code point, and no escape contains ``/`` (or
``.``, ``:``, a newline): so ``escape(a + b"/" + b) == escape(a) + "/" + escape(b)``, and
splitting guest text on ``/`` gives the guest text of each path component. That is what lets the
analyzer join a relative path to the cwd and normalise ``.``/``..`` on guest text exactly as
the kernel does on bytes, and lets ``events.paths`` join several paths with a newline.
"""

from __future__ import annotations

import re

__all__ = ["canonical", "escape", "unescape"]

# the code points escaped besides undecodable bytes (U+DC80..U+DCFF after surrogateescape)
_UNSAFE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
                     "\ufeff\ufffe\uffff\ud800-\udfff]")
_ESCAPE = re.compile(r"\\(?:\\|x([0-9a-fA-F]{2}))")
_HEX = [f"\\x{i:02x}" for i in range(256)]


def _sub(m: re.Match[str]) -> str:
    c = m.group()
    if c == "\\":
        return "\\\\"
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:  # an undecodable byte, as surrogateescape marked it
        return _HEX[o - 0xDC00]
    return "".join([_HEX[b] for b in c.encode("utf-8")])


def escape(b: bytes) -> str:
    """Guest bytes -> guest text (``unescape(escape(b)) == b`` for all ``b``)."""
    if b.isascii():  # the fast path: printable ASCII without a backslash is itself
        s = b.decode("ascii")
        if s.isprintable() and "\\" not in s:
            return s
    else:
        s = b.decode("utf-8", "surrogateescape")
    return _UNSAFE.sub(_sub, s)


def _unsub(m: re.Match[str]) -> str:
    h = m.group(1)
    if h is None:
        return "\\"
    n = int(h, 16)
    # ASCII as its character, any other byte as its surrogateescape mark
    return chr(n) if n < 0x80 else chr(0xDC00 + n)


def unescape(s: str) -> bytes:
    """Guest text -> the guest's exact bytes.

    Lenient, for text a person typed: a backslash that starts no escape stands for itself,
    ``\\xHH`` may use capitals, and a ``str`` holding undecodable bytes as surrogateescape marks
    (``sys.argv`` on POSIX) gives those bytes. ``ValueError`` for any other lone surrogate."""
    if "\\" in s:
        s = _ESCAPE.sub(_unsub, s)
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ValueError("not guest text: a surrogate that is not an escaped byte") from None


def canonical(s: str) -> str:
    """The guest text of what ``s`` spells (``escape(unescape(s))``): how a path typed by a
    person, escaped or not, is matched against the store. Guest text is its own canonical
    form."""
    return escape(unescape(s))
