"""The tamper-evidence hash chain: each applied batch extends SHA-256 over the rows it added.

``digest(prev, events, relations)`` is the only definition of a batch's link; the store calls it
when it applies a batch and ``provisor verify`` calls it again over the stored rows. Rows are
encoded canonically (typed, length-prefixed values in the store's column order), so any change to
a value, a row's presence, or the order of rows changes the digest.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence

GENESIS = bytes(32)

# the columns that are chained, in order (a prefix of each table's schema)
EVENT_COLS = ("seq", "ts_ns", "vcpu", "phase", "entry_seq", "nr", "name", "tgid", "pid", "ppid",
              "uid", "start_time", "comm", "cwd", "paths", "ret", "flags", "payload")
RELATION_COLS = ("id", "kind", "src", "dst", "entry_seq", "exit_seq", "ts_ns")

_Q = struct.Struct("<q")
_L = struct.Struct("<I")


def _value(v: object) -> bytes:
    if v is None:
        return b"N"
    if isinstance(v, bool | int):
        return b"I" + _Q.pack(int(v))
    if isinstance(v, str):
        b = v.encode("utf-8", "surrogateescape")
        return b"S" + _L.pack(len(b)) + b
    if isinstance(v, bytes | bytearray | memoryview):
        b = bytes(v)
        return b"B" + _L.pack(len(b)) + b
    if isinstance(v, float):
        return b"F" + struct.pack("<d", v)
    raise TypeError(f"cannot chain a {type(v).__name__}")


def row_bytes(tag: bytes, row: Sequence[object]) -> bytes:
    return tag + b"".join(_value(v) for v in row)


def digest(prev: bytes, events: Iterable[Sequence[object]],
           relations: Iterable[Sequence[object]]) -> bytes:
    h = hashlib.sha256(prev)
    for r in events:
        h.update(row_bytes(b"E", r))
    for r in relations:
        h.update(row_bytes(b"R", r))
    return h.digest()
