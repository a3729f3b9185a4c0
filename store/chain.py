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
row against its payload). Encoding 5 (new stores) encodes rows by :func:`rows_bin`, a tagged
binary form, instead of Python's ``repr``: ``repr`` of a string escapes the characters the
interpreter's Unicode database calls unprintable, so a path with a character new in a later
Unicode version would hash differently under another Python, and a store would fail verify
after an upgrade. See docs/TAMPER.md.
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from provisor.native import mod as _native
from store import schema

GENESIS = bytes(32)
ENCODING = "5"  # meta chain_encoding of new stores: bump whenever digest() changes
ENCODINGS = ("1", "2", "3", "4", "5")  # what this provisor writes and verifies
_LEN = struct.Struct("<I")
_SEQ_LEN = struct.Struct("<QI")
_U16 = struct.Struct("<H")
_INT = struct.Struct("<cq")
_BLOB = struct.Struct("<cI")
_FLOAT = struct.Struct("<cd")
_I64 = (-1 << 63, 1 << 63)


def binary(encoding: str) -> bool:
    """Whether a store of ``encoding`` encodes rows by :func:`rows_bin` (else by ``repr``)."""
    return encoding >= "5"


def rows_bin_py(rows: Iterable[Sequence[object]]) -> bytes:
    """The canonical binary encoding of rows (encoding 5), little-endian: u32 row count, then
    per row a u16 value count and each value tagged: ``N`` None; ``I`` an int in i64 (8
    bytes); ``J`` any other int (u32 length, its decimal text); ``S`` a str (u32 length, UTF-8
    with surrogatepass: every str has one encoding, none fails); ``B`` bytes-like (u32 length,
    raw); ``F`` a float (8 bytes IEEE 754). Any other type is a TypeError. Types are told apart
    and every length is explicit, so distinct rows never encode alike; nothing depends on the
    interpreter. provisor/native/canon.c is the same in C (this is its specification)."""
    rows = rows if isinstance(rows, list | tuple) else list(rows)
    if len(rows) > 0xFFFFFFFF:
        raise OverflowError("rows_bin: more than 2^32-1 rows")
    out = [_LEN.pack(len(rows))]
    put = out.append
    for row in rows:
        if len(row) > 0xFFFF:
            raise OverflowError("rows_bin: a row of more than 65535 values")
        put(_U16.pack(len(row)))
        for v in row:
            if v is None:
                put(b"N")
            elif isinstance(v, int):
                if _I64[0] <= v < _I64[1]:
                    put(_INT.pack(b"I", v))
                else:
                    t = str(v).encode("ascii")
                    put(_BLOB.pack(b"J", len(t)) + t)
            elif isinstance(v, str | bytes | bytearray | memoryview):
                tag, t = (b"S", v.encode("utf-8", "surrogatepass")) if isinstance(v, str) \
                    else (b"B", bytes(v))
                if len(t) > 0xFFFFFFFF:
                    raise OverflowError("rows_bin: a value longer than 2^32-1 bytes")
                put(_BLOB.pack(tag, len(t)))
                put(t)
            elif isinstance(v, float):
                put(_FLOAT.pack(b"F", v))
            else:
                raise TypeError(f"rows_bin: cannot encode a value of type {type(v).__name__}")
    return b"".join(out)


def seq_payloads_py(items: Iterable[object]) -> bytes:
    """What encodings 4 and 5 chain of a batch's events: per item its seq (u64) and payload
    length (u32), then the payload. An item is an Event or a row (seq first, payload last)."""
    pack, out = _SEQ_LEN.pack, []
    for r in items:
        seq, payload = (r[0], r[-1]) if isinstance(r, tuple | list) else (r.seq, r.payload)
        if not isinstance(seq, int) or not isinstance(payload, bytes):
            raise TypeError("seq_payloads: a seq must be an int and a payload bytes")
        out.append(pack(seq, len(payload)) + payload)
    return b"".join(out)


# the C encoders where they are built (provisor/native/canon.c), this module's otherwise
rows_bin = _native.rows_bin if _native is not None else rows_bin_py
seq_payloads = _native.seq_payloads if _native is not None else seq_payloads_py

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
    # encoding 5: rows encoded by rows_bin, not repr
    binary: bool = False


def _enc(rows: Iterable[Sequence[object]], binary: bool = False) -> bytes:
    if binary:
        return rows_bin(rows)
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
    Encoding 5 (``extra.binary``) is encoding 4 with every ``repr`` of rows replaced by
    :func:`rows_bin`.
    Built in a few C calls per batch, not per row: the chain must not cost more than the
    analysis.
    """
    h = hashlib.sha256(prev)
    if extra is not None and extra.payloads:
        h.update(b"P")
        h.update(seq_payloads(events))
    else:
        evs = [tuple(r) for r in events]
        h.update(b"E" + repr([r[:-1] for r in evs]).encode("utf-8", "surrogateescape"))
        h.update(b"".join([_LEN.pack(len(r[-1])) + r[-1] for r in evs]))
    bin_ = extra is not None and extra.binary
    h.update(b"R" + _enc(relations, bin_))
    if extra is not None:
        for tag, rows in ((b"V", extra.versions), (b"N", extra.names), (b"U", extra.unbinds),
                          (b"L", extra.losses), (b"T", extra.notes)):
            h.update(tag + _enc(rows, bin_))
        h.update(b"S" + extra.state)
        if extra.attrs is not None:
            h.update(b"A" + _enc(extra.attrs, bin_))
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


def row_hash(table: str, row: Sequence[object], binary: bool = False) -> int:
    """A row's 2048-bit hash: of its ``repr`` (encodings 2 to 4) or its :func:`rows_bin`
    (encoding 5, the row as a list of one)."""
    enc = rows_bin((row,)) if binary else repr(tuple(row)).encode("utf-8", "surrogateescape")
    data = table.encode() + b"\0" + enc
    return int.from_bytes(hashlib.shake_256(data).digest(_BITS // 8), "little")


class State:
    """The multiset hashes of the rewritten tables, rows encoded as the store's encoding
    says (:func:`binary`)."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self.binary = binary(encoding)
        self.sums = dict.fromkeys(STATE_TABLES, 0)

    def copy(self) -> State:
        s = State(self.encoding)
        s.sums = dict(self.sums)
        return s

    def add(self, table: str, rows: Iterable[Sequence[object]], sign: int = 1) -> None:
        total, b = self.sums[table], self.binary
        for r in rows:
            total += sign * row_hash(table, r, b)
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
    def of(cls, conn: sqlite3.Connection, encoding: str) -> State:
        """The state of the tables as they are stored, for a store of ``encoding``."""
        s = cls(encoding)
        for t, sql in STATE_TABLES.items():
            s.add(t, conn.execute(sql))
        return s


def split_state(blob: bytes) -> dict[str, bytes]:
    """``chain.state`` -> table -> its 32-byte digest."""
    return {t: bytes(blob[32 * i:32 * i + 32]) for i, t in enumerate(STATE_TABLES)}
