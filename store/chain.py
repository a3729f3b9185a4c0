"""The tamper-evidence hash chain: each applied batch extends SHA-256 over the rows it added.

``digest(prev, events, relations, extra)`` is the only definition of a batch's link; the store
calls it when it applies a batch and ``provisor verify`` calls it again over the stored rows. Rows
are encoded canonically, in the store's column order, so any change to a value, a row's presence,
or the order of rows changes the digest.

Encoding 1 (``extra`` None) chains events and relations only. Encoding 2 (new stores) also
chains, per batch, the append-only rows the batch wrote (``versions``, ``names`` as inserted,
the names it unbound, ``losses``, ``notes``) and :class:`State`, a digest of the rows that later
batches rewrite (``processes``, ``fds``, ``proc_used``, ``artifacts``, ``pending``) as they stand
after the batch. Encoding 3 (new stores) also chains the batch's ``attrs`` rows (the attributes of
versions: credentials, argv, modes, owners, endpoints). Encoding 4 (new stores) chains an event
as its seq and payload only, the rest of its row being derived from them (verify checks each
row against its payload). See docs/TAMPER.md.
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from store import schema

GENESIS = bytes(32)
ENCODING = "4"  # meta chain_encoding of new stores: bump whenever digest() changes
ENCODINGS = ("1", "2", "3", "4")  # what this provisor writes and verifies
_LEN = struct.Struct("<I")
_SEQ_LEN = struct.Struct("<QI")

# the columns that are chained, in order: each table's declared columns (store/schema)
EVENT_COLS = schema.EVENTS.cols
RELATION_COLS = schema.RELATIONS.cols
VERSION_COLS = schema.VERSIONS.cols
NAME_COLS = schema.NAMES.cols[:4]  # unbind_seq is chained when it is set
ATTR_COLS = schema.ATTRS.cols


@dataclass
class Extra:
    """What encodings 2 and 3 chain besides events and relations, for one batch."""

    versions: list[tuple] = field(default_factory=list)  # VERSION_COLS, by id
    names: list[tuple] = field(default_factory=list)  # NAME_COLS of names inserted, by id
    unbinds: list[tuple] = field(default_factory=list)  # (unbind_seq, name id), sorted
    losses: list[tuple] = field(default_factory=list)  # losses rows, by seq
    notes: list[tuple] = field(default_factory=list)  # notes rows, by seq
    state: bytes = b""  # State.digest() after the batch
    attrs: list[tuple] | None = None  # encoding 3: ATTR_COLS of the attrs rows, as written
    # encoding 4: an event row is chained as its seq and payload, the columns it derives from
    payloads: bool = False


def _enc(rows: Iterable[Sequence[object]]) -> bytes:
    return repr([tuple(r) for r in rows]).encode("utf-8", "surrogateescape")


def digest(prev: bytes, events: Iterable[Sequence[object]],
           relations: Iterable[Sequence[object]], extra: Extra | None = None) -> bytes:
    """The link after ``prev`` for a batch of event rows (``EVENT_COLS``, payload last) and
    relation rows (``RELATION_COLS``), in order; with ``extra``, encoding 2 (and 3 when
    ``extra.attrs`` is a list).

    Canonical encoding: Python's ``repr`` of the list of event rows without their payloads
    (type-tagged: None, int and str are told apart; separators are escaped), then each payload
    length-prefixed and raw, then the ``repr`` of the list of relation rows; encoding 2 goes on
    with the ``repr`` of each list of ``extra`` (tagged V, N, U, L, T) and the state digest;
    encoding 3 then the ``repr`` of the attrs rows (tagged A). Encoding 4 (``extra.payloads``)
    chains each event row as its seq (u64) and payload, length-prefixed (tagged P), instead of
    the ``repr`` of its columns: every other column is derived from those two
    (``store/schema.event_row``), and verify checks each stored row against its payload.
    Built in a few C calls per batch, not per row: the chain must not cost more than the
    analysis.
    """
    h = hashlib.sha256(prev)
    if extra is not None and extra.payloads:
        pack = _SEQ_LEN.pack
        h.update(b"P" + b"".join([pack(r[0], len(r[-1])) + r[-1] for r in events]))
    else:
        evs = [tuple(r) for r in events]
        h.update(b"E" + repr([r[:-1] for r in evs]).encode("utf-8", "surrogateescape"))
        h.update(b"".join([_LEN.pack(len(r[-1])) + r[-1] for r in evs]))
    h.update(b"R" + _enc(relations))
    if extra is not None:
        for tag, rows in ((b"V", extra.versions), (b"N", extra.names), (b"U", extra.unbinds),
                          (b"L", extra.losses), (b"T", extra.notes)):
            h.update(tag + _enc(rows))
        h.update(b"S" + extra.state)
        if extra.attrs is not None:
            h.update(b"A" + _enc(extra.attrs))
    return h.digest()


# -- the state of rewritten rows -------------------------------------------------------------
# A multiset hash per table (AdHash, Bellare & Micciancio 1997): the sum, modulo 2^2048, of a
# 2048-bit SHAKE-256 hash of each row. A row rewritten by a batch is subtracted as it was and
# added as it is, so the store keeps the sums in step with the tables at a cost per row written,
# and verify recomputes them with one scan per table. Finding other rows with the same sum is a
# 2048-bit knapsack problem.
STATE_TABLES = {t: schema.TABLES[t].select() for t in schema.STATE_TABLES}
_BITS = 2048
_MOD = 1 << _BITS


def row_hash(table: str, row: Sequence[object]) -> int:
    data = table.encode() + b"\0" + repr(tuple(row)).encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.shake_256(data).digest(_BITS // 8), "little")


class State:
    """The multiset hashes of the rewritten tables."""

    def __init__(self) -> None:
        self.sums = dict.fromkeys(STATE_TABLES, 0)

    def copy(self) -> State:
        s = State()
        s.sums = dict(self.sums)
        return s

    def add(self, table: str, rows: Iterable[Sequence[object]], sign: int = 1) -> None:
        total = self.sums[table]
        for r in rows:
            total += sign * row_hash(table, r)
        self.sums[table] = total % _MOD

    def remove(self, table: str, rows: Iterable[Sequence[object]]) -> None:
        self.add(table, rows, -1)

    def table_digests(self) -> dict[str, bytes]:
        return {t: hashlib.sha256(t.encode() + s.to_bytes(_BITS // 8, "little")).digest()
                for t, s in self.sums.items()}

    def digest(self) -> bytes:
        """32 bytes per table, in STATE_TABLES order (what ``chain.state`` holds)."""
        return b"".join(self.table_digests().values())

    @classmethod
    def of(cls, conn: sqlite3.Connection) -> State:
        """The state of the tables as they are stored."""
        s = cls()
        for t, sql in STATE_TABLES.items():
            s.add(t, conn.execute(sql))
        return s


def split_state(blob: bytes) -> dict[str, bytes]:
    """``chain.state`` -> table -> its 32-byte digest."""
    return {t: bytes(blob[32 * i:32 * i + 32]) for i, t in enumerate(STATE_TABLES)}
