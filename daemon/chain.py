"""The tamper-evidence hash chain: each applied batch extends SHA-256 over the rows it added.

``digest(prev, events, relations)`` is the only definition of a batch's link; the store calls it
when it applies a batch and ``provisor verify`` calls it again over the stored rows. Rows are
encoded canonically, in the store's column order, so any change to a value, a row's presence, or
the order of rows changes the digest.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence

GENESIS = bytes(32)
ENCODING = "1"  # meta chain_encoding: bump whenever digest() changes
_LEN = struct.Struct("<I")

# the columns that are chained, in order (a prefix of each table's schema)
EVENT_COLS = ("seq", "ts_ns", "vcpu", "phase", "entry_seq", "nr", "name", "tgid", "pid", "ppid",
              "uid", "start_time", "comm", "cwd", "paths", "ret", "flags", "payload")
RELATION_COLS = ("id", "kind", "src", "dst", "entry_seq", "exit_seq", "ts_ns")


def digest(prev: bytes, events: Iterable[Sequence[object]],
           relations: Iterable[Sequence[object]]) -> bytes:
    """The link after ``prev`` for a batch of event rows (``EVENT_COLS``, payload last) and
    relation rows (``RELATION_COLS``), in order.

    Canonical encoding: Python's ``repr`` of the list of event rows without their payloads
    (type-tagged: None, int and str are told apart; separators are escaped), then each payload
    length-prefixed and raw, then the ``repr`` of the list of relation rows. Built in a few C
    calls per batch, not per row: the chain must not cost more than the analysis.
    """
    evs = [tuple(r) for r in events]
    h = hashlib.sha256(prev)
    h.update(b"E" + repr([r[:-1] for r in evs]).encode("utf-8", "surrogateescape"))
    h.update(b"".join([_LEN.pack(len(r[-1])) + r[-1] for r in evs]))
    h.update(b"R" + repr([tuple(r) for r in relations]).encode("utf-8", "surrogateescape"))
    return h.digest()
