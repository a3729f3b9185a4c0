"""The on-image layout of docs/FORMAT.md: constants, header and record codecs, the chain scan,
and the salvage walk that finds every intact record whatever the header says.

Pure functions over a buffer, so that the live ring, ``ring info`` and recovery read images one
way, and the power-failure simulator can check any crash image with the same code.
"""

from __future__ import annotations

import re
import struct
import uuid as uuidlib
from dataclasses import dataclass, replace
from enum import IntEnum
from functools import lru_cache
from typing import NamedTuple

from crc32c import crc32c

from provisor.errors import ProvisorError
from provisor.native import mod as _native

MAGIC = b"PROVRING"
VERSION = 1
HEADER_LEN = 128
HEADER_SLOT = 4096
PRODUCER_OFF = 8192
PRODUCER_SLOT = 64
DATA_OFFSET = 12288
ALIGN = 32
REC_HDR = 32
MIN_DATA = 64 * 1024
MAX_PAYLOAD = 16 * 1024 * 1024
SEQ_LIMIT = 1 << 63  # sequence numbers are below 2^63: they fit SQLite's signed INTEGER

_HDR = struct.Struct("<8sII16sIIQQQQQQQ28x")  # 124 bytes, then u32 crc
_PROD = struct.Struct("<4sIQQQ28x")  # 60 bytes, then u32 crc
_REC = struct.Struct("<QIHH12xI")  # seq, len, type, flags, crc
_REC_BODY = struct.Struct("<IHH12x")  # bytes 8..27 of a record header
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
ZERO_HDR = bytes(REC_HDR)


class RecType(IntEnum):
    PAD = 1
    NOTE = 2
    LOSS = 3
    EVENT = 16


class FormatError(ProvisorError):
    """The image is not a readable ring (one-line message)."""


@dataclass(frozen=True)
class Header:
    uuid: bytes
    data_size: int
    generation: int = 0
    checkpoint_seq: int = 0
    checkpoint_off: int = 0
    ring_id: int = 0
    created_ns: int = 0
    unsafe_shutdowns: int = 0
    version: int = VERSION

    @property
    def uuid_str(self) -> str:
        return str(uuidlib.UUID(bytes=self.uuid))

    def pack(self) -> bytes:
        body = _HDR.pack(
            MAGIC, self.version, HEADER_LEN, self.uuid, self.ring_id, ALIGN, DATA_OFFSET,
            self.data_size, self.generation, self.checkpoint_seq, self.checkpoint_off,
            self.created_ns, self.unsafe_shutdowns,
        )
        return body + _U32.pack(crc32c(body))

    def advanced(self, seq: int, off: int) -> Header:
        return replace(self, generation=self.generation + 1, checkpoint_seq=seq, checkpoint_off=off)


def unpack_header(raw: bytes) -> Header | str:
    """A Header, or the reason this copy is not valid."""
    if raw[:8] != MAGIC:
        return "bad magic"
    fields = _HDR.unpack_from(raw)
    (_, version, hlen, uid, ring_id, align, data_off, data_size, gen, cseq, coff, created,
     usc) = fields
    if hlen != HEADER_LEN or _U32.unpack_from(raw, 124)[0] != crc32c(raw[:124]):
        return "bad checksum"
    if version > VERSION:
        return f"newer format version {version} (this provisor reads version {VERSION})"
    if align != ALIGN or data_off != DATA_OFFSET or data_size % 4096 or data_size < MIN_DATA:
        return "bad geometry"
    if coff >= data_size or coff % ALIGN:
        return "bad checkpoint offset"
    if cseq >= SEQ_LIMIT:
        return f"checkpoint sequence number {cseq} out of range (must be below 2^63)"
    return Header(uid, data_size, gen, cseq, coff, ring_id, created, usc, version)


def read_header(buf) -> tuple[Header, int]:
    """The current header copy and its slot (0 = A, 1 = B); FormatError if neither is valid."""
    if len(buf) < DATA_OFFSET + MIN_DATA:
        if bytes(buf[:8]) != MAGIC:
            raise FormatError("not a provisor ring (bad magic)")
        raise FormatError(f"truncated ring image ({len(buf)} bytes)")
    results = [unpack_header(bytes(buf[i * HEADER_SLOT:i * HEADER_SLOT + HEADER_LEN]))
               for i in (0, 1)]
    valid = [(h, i) for i, h in enumerate(results) if isinstance(h, Header)]
    if not valid:
        newer = [r for r in results if isinstance(r, str) and (
            r.startswith("newer") or "out of range" in r)]
        if newer:
            raise FormatError(newer[0])
        if all(r == "bad magic" for r in results):
            raise FormatError("not a provisor ring (bad magic in both header copies)")
        raise FormatError(f"both header copies are corrupt (A: {results[0]}, B: {results[1]})")
    hdr, slot = max(valid, key=lambda v: v[0].generation)
    if DATA_OFFSET + hdr.data_size > len(buf):
        raise FormatError(
            f"truncated ring image: header says {DATA_OFFSET + hdr.data_size} bytes, "
            f"image has {len(buf)}")
    return hdr, slot


def header_slot_for(generation: int) -> int:
    return generation % 2


@dataclass(frozen=True)
class ProducerState:
    generation: int = 0
    lost_total: int = 0
    lost_reported: int = 0

    def pack(self) -> bytes:
        body = _PROD.pack(b"PROD", 0, self.generation, self.lost_total, self.lost_reported)
        return body + _U32.pack(crc32c(body))


def read_producer_state(buf) -> ProducerState:
    best = ProducerState()
    for i in (0, 1):
        off = PRODUCER_OFF + i * PRODUCER_SLOT
        raw = bytes(buf[off:off + PRODUCER_SLOT])
        if raw[:4] != b"PROD" or _U32.unpack_from(raw, 60)[0] != crc32c(raw[:60]):
            continue
        _, _, gen, total, reported = _PROD.unpack_from(raw)
        if gen >= best.generation:
            best = ProducerState(gen, total, reported)
    return best


def padded(n: int) -> int:
    return (REC_HDR + n + ALIGN - 1) & ~(ALIGN - 1)


@lru_cache(maxsize=16)
def _uuid_crc(uuid: bytes) -> int:
    return crc32c(uuid)


def record_crc(uuid: bytes, seq: int, body: bytes, payload) -> int:
    """CRC32C over the ring UUID, the sequence field, bytes 8..27 and the payload."""
    return crc32c(payload, crc32c(body, crc32c(_U64.pack(seq), _uuid_crc(uuid))))


def _stored_crc(buf, uuid: bytes, base: int, payload) -> int:
    """``record_crc`` of the record at ``base`` as it lies in ``buf`` (bytes 0..27 are
    contiguous there: one CRC call instead of a pack and two)."""
    return crc32c(payload, crc32c(buf[base:base + 28], _uuid_crc(uuid)))


def encode_record(uuid: bytes, seq: int, rtype: int, payload: bytes) -> tuple[bytes, bytes]:
    """(bytes 8.. of the record incl. payload and padding, the 8-byte sequence field)."""
    body = _REC_BODY.pack(len(payload), rtype, 0)
    crc = record_crc(uuid, seq, body, payload)
    pad = padded(len(payload)) - REC_HDR - len(payload)
    return b"".join((body, _U32.pack(crc), payload, bytes(pad))), _U64.pack(seq)


class End:
    """Why a chain ended."""

    CLEAN = "clean end"
    TORN = "torn record"
    GAP = "sequence gap"
    STALE = "stale lap"
    CHECKSUM = "checksum mismatch"
    FULL = "ring full"  # the chain came all the way round to its own start
    EXHAUSTED = "sequence numbers exhausted"  # the next one would be 2^63


class Record(NamedTuple):
    """A record read from the ring (a tuple: the native scan builds one in a few stores)."""

    seq: int
    type: int
    offset: int
    payload: bytes


def read_record(buf, uuid: bytes, data_size: int, off: int, expect: int) -> Record | str:
    """The record at data-area offset ``off`` if it is the valid record ``expect``, else the
    End reason. A valid PAD is returned as a Record of type PAD."""
    base = DATA_OFFSET + off
    seq, length, rtype, _flags, crc = _REC.unpack_from(buf, base)
    if seq != expect:
        if seq == 0 and bytes(buf[base:base + REC_HDR]) == ZERO_HDR:
            return End.CLEAN
        if length <= data_size - off - REC_HDR:
            payload = buf[base + REC_HDR:base + REC_HDR + length]
            if _stored_crc(buf, uuid, base, payload) == crc:
                return End.STALE if seq < expect else End.GAP
        return End.CHECKSUM
    if length > data_size - off - REC_HDR or length > MAX_PAYLOAD:
        return End.TORN
    payload = bytes(buf[base + REC_HDR:base + REC_HDR + length])
    if _stored_crc(buf, uuid, base, payload) != crc:
        return End.TORN
    if rtype == RecType.PAD and off + padded(length) != data_size:
        return End.TORN
    return Record(seq, rtype, off, payload)


@dataclass
class ChainEnd:
    reason: str
    offset: int  # data-area offset where the next record would start
    seq: int  # the sequence number that was expected there


def scan(buf, hdr: Header, start_seq: int | None = None, start_off: int | None = None,
         limit: int | None = None):
    """Yield the valid chain from the checkpoint (or a given position) as Records (PAD
    included); then return a ChainEnd (``StopIteration.value``). ``limit`` stops early after
    that many records; PADs do not count, or ``limit=1`` at a PAD would never get past it."""
    expect = hdr.checkpoint_seq + 1 if start_seq is None else start_seq
    off = hdr.checkpoint_off if start_off is None else start_off
    size = hdr.data_size
    consumed = 0
    n = 0
    while True:
        if limit is not None and n >= limit:
            return ChainEnd("limit", off, expect)
        if expect >= SEQ_LIMIT:
            return ChainEnd(End.EXHAUSTED, off, expect)
        rec = read_record(buf, hdr.uuid, size, off, expect)
        if isinstance(rec, str):
            return ChainEnd(rec, off, expect)
        step = size - off if rec.type == RecType.PAD else padded(len(rec.payload))
        consumed += step
        if consumed > size:
            return ChainEnd(End.FULL, off, expect)
        off = (off + step) % size
        if rec.type != RecType.PAD:
            expect += 1
            n += 1
        yield rec


# the reasons of the native scan's ends, by its index (provisor/native/native.c)
_ENDS = ("limit", End.CLEAN, End.TORN, End.GAP, End.STALE, End.CHECKSUM, End.FULL,
         End.EXHAUSTED)
if _native is not None:
    _native.setup_record(Record)


def collect(buf, hdr: Header, start_seq: int | None = None, start_off: int | None = None,
            limit: int | None = None) -> tuple[list[Record], ChainEnd]:
    """``scan`` gathered: the chain's records (PAD included) and why it ended. The native
    scan does the same (tests/test_native.py holds them equal); ``scan`` is its spec."""
    if _native is not None:
        got = _native.collect(buf, hdr.uuid, hdr.data_size,
                              hdr.checkpoint_seq + 1 if start_seq is None else start_seq,
                              hdr.checkpoint_off if start_off is None else start_off,
                              -1 if limit is None else limit)
        if got is not None:
            recs, end, off, expect = got
            return recs, ChainEnd(_ENDS[end], off, expect)
    return collect_py(buf, hdr, start_seq, start_off, limit)


def collect_py(buf, hdr: Header, start_seq: int | None = None, start_off: int | None = None,
               limit: int | None = None) -> tuple[list[Record], ChainEnd]:
    """``collect`` in Python: ``scan`` gathered."""
    recs: list[Record] = []
    it = scan(buf, hdr, start_seq, start_off, limit)
    while True:
        try:
            recs.append(next(it))
        except StopIteration as stop:
            return recs, stop.value


# -- salvage: every intact record, whatever the header says ---------------------------------
class Found(NamedTuple):
    """A valid record found by ``salvage``: where it lies (data-area offset) and its length."""

    seq: int
    type: int
    offset: int
    length: int

    @property
    def end(self) -> int:
        """Data-area offset just after it (where the next record of its lap starts)."""
        return self.offset + padded(self.length)


@dataclass
class Salvage:
    records: list[Found]  # one per sequence number, in sequence order (PADs left out)
    chain: list[Found]  # the valid chain from the checkpoint (``scan``'s), PADs left out
    end: ChainEnd  # why and where that chain ended
    unreadable: int  # bytes of non-zero 32-byte slots outside every valid record (a wrapped
    # ring normally has some: the remains of the record its tail cut into)
    duplicates: list[int]  # sequence numbers found more than once (one copy kept)

    @property
    def chain_last(self) -> int:
        """The chain's last sequence number (the checkpoint when the chain is empty)."""
        return self.end.seq - 1


_NONZERO = re.compile(rb"[^\x00]")


def salvage(buf, hdr: Header) -> Salvage:
    """Every record of the data area that its own CRC (over the ring UUID, its header and
    payload) validates, independent of the header's checkpoint and of the chain: the area is
    walked at ALIGN steps; where a plausible record header (non-zero seq, a length that fits)
    has a matching CRC, that is a record and the walk jumps over it, else the walk steps 32
    bytes (runs of zeros are skipped at once). Work: one CRC per valid record plus one per
    32-byte step through non-zero junk whose length field happens to fit.

    The chain from the checkpoint is then followed over what was found (exactly ``scan``'s
    chain and end). A sequence number found twice (a torn rewrite after a crash can leave an
    orphan of an unacknowledged batch beside the rewritten record) keeps the copy in the
    chain, else the one that starts where the record before it ends, else the one that ends
    where the record after it starts, else the first in the area."""
    uuid, size = hdr.uuid, hdr.data_size
    unpack = _REC.unpack_from
    ucrc = _uuid_crc(uuid)
    make = tuple.__new__  # Found(...) without NamedTuple's Python-level __new__
    found: list[Found] = []
    append = found.append
    unreadable = 0
    whole = memoryview(buf)
    area = whole[DATA_OFFSET:DATA_OFFSET + size]
    try:
        off = 0
        while off + REC_HDR <= size:
            base = DATA_OFFSET + off
            seq, length, rtype, _flags, crc = unpack(buf, base)
            if seq:
                if length <= size - off - REC_HDR and length <= MAX_PAYLOAD:
                    step = (REC_HDR + length + ALIGN - 1) & ~(ALIGN - 1)
                    p = base + REC_HDR
                    if (crc32c(buf[p:p + length], crc32c(buf[base:base + 28], ucrc)) == crc
                            and (rtype != RecType.PAD or off + step == size)):
                        append(make(Found, (seq, rtype, off, length)))
                        off += step
                        continue
            elif bytes(buf[base:base + REC_HDR]) == ZERO_HDR:
                m = _NONZERO.search(area, off)
                if m is None:
                    break
                nxt = m.start() - m.start() % ALIGN
                off = nxt if nxt > off else off + ALIGN
                continue
            unreadable += ALIGN
            off += ALIGN
    finally:
        area.release()
        whole.release()
    by_off = {f[2]: f for f in found}
    # the chain, as ``scan`` reads it (an index miss is checked with read_record: a record the
    # walk stepped over, which only a CRC collision inside another record could cause)
    chain: list[Found] = []
    expect, off, consumed = hdr.checkpoint_seq + 1, hdr.checkpoint_off, 0
    while True:
        f = by_off.get(off)
        if f is None or f[0] != expect:
            rec = read_record(buf, uuid, size, off, expect)
            if isinstance(rec, str):
                end = ChainEnd(rec, off, expect)
                break
            f = make(Found, (rec.seq, rec.type, off, len(rec.payload)))
            found.append(f)
            by_off[off] = f
        pad = f[1] == RecType.PAD
        step = size - off if pad else (REC_HDR + f[3] + ALIGN - 1) & ~(ALIGN - 1)
        consumed += step
        if consumed > size:
            end = ChainEnd(End.FULL, off, expect)
            break
        if not pad:
            chain.append(f)
            expect += 1
        off = (off + step) % size
    # one record per sequence number (PADs left out)
    found = sorted(f for f in found if f[1] != RecType.PAD)
    dups = sorted({a[0] for a, b in zip(found, found[1:], strict=False) if a[0] == b[0]})
    if not dups:
        return Salvage(found, chain, end, unreadable, [])
    in_chain = {f.offset for f in chain}
    by_seq: dict[int, list[Found]] = {}
    for f in found:
        by_seq.setdefault(f.seq, []).append(f)
    for s in dups:
        fs = by_seq[s]
        before, after = by_seq.get(s - 1), by_seq.get(s + 1)
        pick = (next((f for f in fs if f.offset in in_chain), None)
                or next((f for f in fs if before and f.offset == before[0].end % size), None)
                or next((f for f in fs if after and f.end % size == after[0].offset), None)
                or fs[0])
        by_seq[s] = [pick]
    records = [by_seq[s][0] for s in sorted(by_seq)]
    return Salvage(records, chain, end, unreadable, dups)
