"""The tamper-evidence hash chain: each applied batch extends SHA-256 over the rows it added.

``digest(prev, events, relations)`` is the only definition of a batch's link; the store calls it
when it applies a batch and ``provisor verify`` calls it again over the stored rows. Rows are
encoded canonically (``row_bytes``, in the store's column order), so any change to a value, a
row's presence, or the order of rows changes the digest.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence

GENESIS = bytes(32)
_LEN = struct.Struct("<I")

# the columns that are chained, in order (a prefix of each table's schema)
EVENT_COLS = ("seq", "ts_ns", "vcpu", "phase", "entry_seq", "nr", "name", "tgid", "pid", "ppid",
              "uid", "start_time", "comm", "cwd", "paths", "ret", "flags", "payload")
RELATION_COLS = ("id", "kind", "src", "dst", "entry_seq", "exit_seq", "ts_ns")

def row_bytes(tag: bytes, row: Sequence[object]) -> bytes:
    """The canonical bytes of a row: its tag, Python's ``repr`` of the tuple (type-tagged:
    None, int and str are told apart, separators escaped), and, when the last column is a
    blob (an event's payload), that blob length-prefixed and raw rather than escaped."""
    last = row[-1] if row else None
    if isinstance(last, bytes):
        return b"".join((tag, repr(tuple(row[:-1])).encode("utf-8", "surrogateescape"),
                         _LEN.pack(len(last)), last))
    return tag + repr(tuple(row)).encode("utf-8", "surrogateescape") + b"\n"


def digest(prev: bytes, events: Iterable[Sequence[object]],
           relations: Iterable[Sequence[object]]) -> bytes:
    h = hashlib.sha256(prev)
    h.update(b"".join([row_bytes(b"E", r) for r in events]))
    h.update(b"".join([row_bytes(b"R", r) for r in relations]))
    return h.digest()
