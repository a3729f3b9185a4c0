"""The crash-durable record ring (docs/FORMAT.md): one producer, one consumer.

``Producer.append`` returns a sequence number only once the record is persistent (the
write-ahead rule). ``Consumer.read`` returns the valid chain after the checkpoint;
``Consumer.release`` moves the checkpoint, which is what frees space for the producer.
"""

from __future__ import annotations

import os
import time
import uuid as uuidlib
from collections.abc import Iterator, Sequence
from enum import StrEnum

from pmem import layout as L
from pmem.layout import FormatError, Header, ProducerState, Record, RecType
from pmem.region import Region, RegionError, check_existing
from provisor import faults, locks
from provisor.errors import ProvisorError


class Policy(StrEnum):
    BLOCK = "block"
    DROP = "drop"
    FAIL = "fail"


class RingError(ProvisorError):
    """One-line, user-facing ring error."""


class RingFull(RingError):
    """Raised by the ``fail`` policy: the ring is full and the producer must halt. ``acked``
    lists the sequence numbers of the batch that were appended (and persisted) before."""

    acked: list[int] = []


def create(path: str, size: int, *, ring_id: int = 0, region_cls=Region,
           overwrite: bool = False) -> Header:
    """Create a ring image of ``size`` bytes in all (rounded down to whole pages).

    Every argument is checked before any file is touched. An existing ``path`` is refused
    unless ``overwrite``, and always while a producer or a consumer has the ring open: both
    roles are held on the old file for the whole re-create, so none can start in between. The
    old image is replaced only once the new one is complete (``Region.create(replace=True)``:
    built under a private name and renamed over it), so whoever still maps the old file keeps
    its bytes (no SIGBUS) and a failed re-create leaves it intact."""
    if isinstance(ring_id, bool) or not isinstance(ring_id, int) or not 0 <= ring_id < 1 << 32:
        raise RingError(f"ring id must be an integer from 0 to {(1 << 32) - 1}, not {ring_id!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise RingError(f"ring size must be a positive number of bytes, not {size!r}")
    data_size = (size - L.DATA_OFFSET) // 4096 * 4096
    if data_size < L.MIN_DATA:
        raise RingError(f"ring size too small: need at least {L.DATA_OFFSET + L.MIN_DATA} bytes")
    hdr = Header(uuid=uuidlib.uuid4().bytes, data_size=data_size, ring_id=ring_id,
                 created_ns=time.time_ns())
    packed = hdr.pack()  # a value the header cannot hold fails here, before the file

    def init(region) -> None:
        buf = region.buf
        # the first record slot must read as a clean end, whatever the file held before
        buf[L.DATA_OFFSET:L.DATA_OFFSET + L.REC_HDR] = L.ZERO_HDR
        region.persist(L.DATA_OFFSET, L.REC_HDR)
        buf[L.PRODUCER_OFF:L.PRODUCER_OFF + 2 * L.PRODUCER_SLOT] = bytes(2 * L.PRODUCER_SLOT)
        region.persist(L.PRODUCER_OFF, 2 * L.PRODUCER_SLOT)
        buf[L.HEADER_SLOT:L.HEADER_SLOT + L.HEADER_LEN] = bytes(L.HEADER_LEN)
        region.persist(L.HEADER_SLOT, L.HEADER_LEN)
        buf[0:L.HEADER_LEN] = packed
        region.persist(0, L.HEADER_LEN)

    held: list[locks.Lock] = []
    if issubclass(region_cls, Region) and os.path.lexists(path):
        try:  # a symlink, a FIFO, another user's file: refused whatever the flags say
            check_existing(path, os.lstat(path))
        except RegionError as e:
            raise RingError(str(e)) from None
        if not overwrite:
            raise RingError(f"{path}: already exists (re-creating a ring discards its records: "
                            "use --overwrite to do so)")
        held = _hold_both_roles(path)
    try:
        region = region_cls.create(path, L.DATA_OFFSET + data_size, replace=True, init=init)
    except RegionError as e:
        raise RingError(str(e)) from None
    finally:
        for lk in held:
            lk.release()
    region.close()
    return hdr


def _hold_both_roles(path: str) -> list[locks.Lock]:
    held: list[locks.Lock] = []
    try:
        for offset, role in ((locks.RING_PRODUCER, "ring producer"),
                             (locks.RING_CONSUMER, "ring consumer")):
            try:
                held.append(locks.acquire(path, offset, role))
            except locks.LockError as e:
                who = f"pid {e.holder}" if e.holder else "another process"
                raise RingError(f"{path}: in use by a {role} ({who}): refusing to re-create a "
                                "ring that is in use; stop it first") from None
    except BaseException:
        for lk in held:
            lk.release()
        raise
    return held


def open_region(path: str, *, readonly: bool = False, region_cls=Region) -> Region:
    """Map an existing image: never through a symlink; writable only when it is our own
    regular file (or a devdax device); read-only (forensics) also when another user owns it."""
    if not os.path.lexists(path):
        raise RingError(f"{path}: no such ring image")
    try:
        return region_cls(path, readonly=readonly)
    except RegionError as e:
        raise RingError(str(e)) from None


def _take_role(region: Region, offset: int, role: str) -> locks.Lock | None:
    """Hold ``role`` on the ring file for as long as the ring is open (docs/FORMAT.md, "One
    producer, one consumer"). Only a writable mapping of a real file takes a role: a read-only
    reader (``ring info``, forensic recovery, verify) changes nothing and may always look, and
    the power-failure simulator's images are no files."""
    if region.readonly or not isinstance(region, Region):
        return None
    try:
        return locks.acquire(region.path, offset, role)
    except BaseException:
        region.close()
        raise


class _RingBase:
    ROLE: tuple[int, str] | None = None

    def __init__(self, region: Region) -> None:
        # the role first: nothing is read (let alone written) under another holder's feet
        self._lock = _take_role(region, *self.ROLE) if self.ROLE else None
        self.region = region
        self.buf = region.buf
        try:
            self.header, self._slot = L.read_header(self.buf)
        except FormatError as e:
            self.close()
            raise RingError(f"{region.path}: {e}") from None
        self.uuid = self.header.uuid
        self.size = self.header.data_size

    def reload_header(self) -> Header:
        self.header, self._slot = L.read_header(self.buf)
        return self.header

    def close(self) -> None:
        self.region.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Producer(_RingBase):
    """The only writer of records. On open it finds the tail: the end of the valid chain.
    It holds the ring's producer role (``locks.RING_PRODUCER``) until ``close``: a second
    producer is refused with the holder's pid."""

    ROLE = (locks.RING_PRODUCER, "ring producer")

    def __init__(self, region: Region, policy: Policy | str = Policy.BLOCK,
                 block_timeout: float | None = None) -> None:
        self.policy = Policy(policy)
        self.block_timeout = block_timeout
        super().__init__(region)
        try:
            self._find_tail()
        except BaseException:
            self.close()  # gives the role back
            raise

    def _find_tail(self) -> None:
        reported = 0  # lost total of the last LOSS record in the chain
        it = L.scan(self.buf, self.header)
        while True:
            try:
                last = next(it)
            except StopIteration as stop:
                end: L.ChainEnd = stop.value
                break
            if last.type == RecType.LOSS:
                reported = int.from_bytes(last.payload[8:16], "little")
        self.tail = end.offset
        self.next_seq = end.seq
        st = L.read_producer_state(self.buf)
        if st.lost_reported < reported <= st.lost_total:
            # power failed between the LOSS record and the state update: it is reported
            st = ProducerState(st.generation, st.lost_total, reported)
        self.state: ProducerState = st
        self._head_seq = self.header.checkpoint_seq
        self._head_off = self.header.checkpoint_off
        if end.reason != L.End.CLEAN and self._free() >= L.REC_HDR:
            # bytes a crashed producer left beyond the tail must never become reachable
            self._zero_trailer()

    @classmethod
    def open(cls, path: str, policy: Policy | str = Policy.BLOCK, **kw) -> Producer:
        return cls(open_region(path, region_cls=kw.pop("region_cls", Region)), policy, **kw)

    # -- space accounting -------------------------------------------------------------
    def _free(self) -> int:
        if self.next_seq - 1 == self._head_seq:
            return self.size
        used = (self.tail - self._head_off) % self.size
        return self.size - used if used else 0

    def _refresh_head(self) -> None:
        old = self.header.generation
        hdr = self.reload_header()
        if hdr.generation != old:
            # The consumer may not have flushed this copy yet: make it durable before reusing
            # the space it frees, or a power failure brings back the old checkpoint pointing
            # at overwritten records (a flush from any core writes the line back).
            self.region.persist(self._slot * L.HEADER_SLOT, L.HEADER_LEN)
        self._head_seq, self._head_off = hdr.checkpoint_seq, hdr.checkpoint_off

    def _need(self, nbytes: int) -> int:
        """Bytes of free space needed to place a record of ``nbytes`` padded bytes at tail
        (including a PAD when it must wrap)."""
        room = self.size - self.tail
        return nbytes if nbytes <= room else room + nbytes

    def _fits(self, nbytes: int) -> bool:
        if nbytes > self.size // 2:
            raise RingError(f"record of {nbytes} bytes exceeds half the ring ({self.size})")
        if self._need(nbytes) <= self._free():
            return True
        self._refresh_head()
        return self._need(nbytes) <= self._free()

    def _wait_for(self, nbytes: int) -> bool:
        """Apply the ring-full policy; True when there is room now."""
        if self._fits(nbytes):
            return True
        if self.policy is Policy.FAIL:
            raise RingFull(f"ring full at sequence {self.next_seq} (policy: fail)")
        if self.policy is Policy.DROP:
            return False
        deadline = None if self.block_timeout is None else time.monotonic() + self.block_timeout
        delay = 50e-6
        while not self._fits(nbytes):
            if deadline is not None and time.monotonic() > deadline:
                raise RingFull(f"ring full for {self.block_timeout}s (policy: block)")
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
        return True

    # -- writing ---------------------------------------------------------------------------
    def _place(self, rtype: int, payload: bytes) -> tuple[int, int]:
        """Write one record at tail (PAD first when needed); return (seq, start offset of the
        written span). Caller has checked space and persists afterwards."""
        seq = self.next_seq
        nbytes = L.padded(len(payload))
        start = self.tail
        if self.tail + nbytes > self.size:
            self._void_orphan(self.tail, seq)
            self._write(self.tail, seq, RecType.PAD,
                        bytes(self.size - self.tail - L.REC_HDR))
            self.tail = 0
        self._void_orphan(self.tail, seq)
        self._void_orphan((self.tail + nbytes) % self.size, seq + 1)
        self._write(self.tail, seq, rtype, payload)
        self.tail = (self.tail + nbytes) % self.size
        self.next_seq = seq + 1
        return seq, start

    def _void_orphan(self, off: int, seq: int) -> None:
        """Rule 3 across a power failure: where the chain will expect ``seq``, nothing may
        already carry it before the new bytes are durable.

        After a power failure, later records of an unacknowledged batch can survive beyond the
        tail (its first record did not land). A new record as long as a lost one puts the
        chain right onto them: if the new record landed but its zero trailer (or the next new
        record) did not, the old, never acknowledged record would follow the new one. So a
        sequence field already holding ``seq`` at the record's offset, or ``seq + 1`` just
        after it, is zeroed and persisted first. Free space or the head only (whose sequence
        number is lower): nothing readable is lost. Normally never true; one read per check."""
        base = L.DATA_OFFSET + off
        if L._U64.unpack_from(self.buf, base)[0] == seq:
            self.buf[base:base + 8] = bytes(8)
            self.region.persist(base, 8)

    def _write(self, off: int, seq: int, rtype: int, payload: bytes) -> None:
        body, seqb = L.encode_record(self.uuid, seq, rtype, payload)
        base = L.DATA_OFFSET + off
        self.buf[base + 8:base + 8 + len(body)] = body
        self.buf[base:base + 8] = seqb  # rule 2: the sequence field last

    def _zero_trailer(self) -> tuple[int, int] | None:
        """Rule 3: zero the next record slot when it is free space; returns its span."""
        if self.next_seq - 1 != self._head_seq and self.tail == self._head_off:
            return None  # exactly full: the next slot is the unreleased head
        if self._free() < L.REC_HDR:
            return None
        base = L.DATA_OFFSET + self.tail
        self.buf[base:base + L.REC_HDR] = L.ZERO_HDR
        return self.tail, L.REC_HDR

    def _commit(self, start: int, total: int) -> None:
        """Persist ``total`` bytes written from ``start`` (circularly) plus the zero trailer."""
        span = total + (L.REC_HDR if self._zero_trailer() else 0)
        first = min(span, self.size - start)
        self.region.persist(L.DATA_OFFSET + start, first)
        if span > first:
            self.region.persist(L.DATA_OFFSET, span - first)

    def _report_loss(self) -> None:
        pending = self.state.lost_total - self.state.lost_reported
        if pending <= 0:
            return
        payload = L._U64.pack(pending) + L._U64.pack(self.state.lost_total)
        nbytes = L.padded(len(payload))
        if not self._wait_for(nbytes):  # drop: report later. A ring reopened under block or
            return  # fail after drops waits or raises here, never drops the next record
        need = self._need(nbytes)
        _seq, start = self._place(RecType.LOSS, payload)
        self._commit(start, need)
        self._save_state(ProducerState(self.state.generation + 1, self.state.lost_total,
                                       self.state.lost_total))

    def _save_state(self, st: ProducerState) -> None:
        off = L.PRODUCER_OFF + (st.generation % 2) * L.PRODUCER_SLOT
        self.buf[off:off + L.PRODUCER_SLOT] = st.pack()
        self.region.persist(off, L.PRODUCER_SLOT)
        self.state = st

    def _drop(self, n: int) -> None:
        st = self.state
        self._save_state(ProducerState(st.generation + 1, st.lost_total + n, st.lost_reported))

    def append(self, rtype: int, payload: bytes) -> int | None:
        """Append one record; returns its sequence number once it is persistent, or None when
        the ``drop`` policy dropped it (counted persistently, reported by a LOSS record)."""
        self._check_seq(1)
        if self.state.lost_total != self.state.lost_reported:
            self._report_loss()
        nbytes = L.padded(len(payload))
        if not self._wait_for(nbytes) or (
                self.state.lost_total != self.state.lost_reported):
            self._drop(1)
            return None
        need = self._need(nbytes)
        seq, start = self._place(rtype, payload)
        self._commit(start, need)
        return seq

    def append_many(self, items: Sequence[tuple[int, bytes]]) -> list[int | None]:
        """Append a batch with one persist; the returned sequence numbers are acknowledged
        together. Under ``drop``, records from the first that does not fit come back None."""
        self._check_seq(len(items))
        if self.state.lost_total != self.state.lost_reported:
            self._report_loss()
            if self.state.lost_total != self.state.lost_reported and items:
                # no room for the LOSS record yet: nothing may go ahead of it (as in append)
                self._drop(len(items))
                return [None] * len(items)
        out: list[int | None] = []
        start, total, dropped = self.tail, 0, 0
        for rtype, payload in items:
            nbytes = L.padded(len(payload))
            if not dropped and not self._fits(nbytes):
                if total:  # persist what is written before waiting on the consumer
                    self._commit(start, total)
                    start, total = self.tail, 0
                try:
                    room = self._wait_for(nbytes)
                except RingFull as e:
                    e.acked = [s for s in out if s is not None]  # persisted above
                    raise
                if not room:
                    dropped = 1
                    out.append(None)
                    continue
            if dropped:
                dropped += 1
                out.append(None)
                continue
            need = self._need(nbytes)
            seq, _ = self._place(rtype, payload)
            total += need
            out.append(seq)
        if total:
            self._commit(start, total)
        if dropped:
            self._drop(dropped)
        return out

    def _check_seq(self, n: int) -> None:
        """Refuse, before writing anything, records whose sequence numbers (with a LOSS report
        ahead of them) would reach 2^63 (docs/FORMAT.md)."""
        loss = 1 if self.state.lost_total != self.state.lost_reported else 0
        if self.next_seq + n + loss > L.SEQ_LIMIT:
            raise RingError(f"sequence numbers exhausted: the ring is at {self.next_seq}, "
                            "and sequence numbers must stay below 2^63")

    def note(self, text: str) -> int | None:
        return self.append(RecType.NOTE, text.encode())


class Consumer(_RingBase):
    """Reads the valid chain after the checkpoint and releases what is durable elsewhere.
    A writable consumer holds the ring's consumer role (``locks.RING_CONSUMER``) until
    ``close``; a read-only one takes none (it can never release)."""

    ROLE = (locks.RING_CONSUMER, "ring consumer")

    def __init__(self, region: Region) -> None:
        super().__init__(region)
        self.next_seq = self.header.checkpoint_seq + 1
        self.next_off = self.header.checkpoint_off
        self.last_end: L.ChainEnd | None = None

    @classmethod
    def open(cls, path: str, *, readonly: bool = False, region_cls=Region) -> Consumer:
        return cls(open_region(path, readonly=readonly, region_cls=region_cls))

    @property
    def checkpoint(self) -> int:
        return self.header.checkpoint_seq

    def read(self, limit: int = 4096) -> list[Record]:
        """Up to ``limit`` records after the ones already read (PADs skipped)."""
        recs, self.last_end = L.collect(self.buf, self.header, self.next_seq, self.next_off,
                                        limit)
        out = [r for r in recs if r.type != RecType.PAD]
        if out:
            last = out[-1]
            self.next_seq = last.seq + 1
            self.next_off = (last.offset + L.padded(len(last.payload))) % self.size
        return out

    def release(self, seq: int, off: int) -> None:
        """Move the checkpoint to ``seq``; ``off`` is where record ``seq+1`` starts."""
        if seq <= self.header.checkpoint_seq:
            return
        if self.region.readonly:
            raise RingError("ring opened read-only: cannot release")
        hdr = self.header.advanced(seq, off)
        slot = L.header_slot_for(hdr.generation)
        base = slot * L.HEADER_SLOT
        packed = hdr.pack()
        self.buf[base:base + 64] = packed[:64]
        faults.point("mid_release")  # a torn header copy: the other copy must still serve
        self.buf[base + 64:base + L.HEADER_LEN] = packed[64:]
        self.region.persist(base, L.HEADER_LEN)
        self.header, self._slot = hdr, slot

    def fill(self) -> float:
        """Fraction of the data area holding unreleased records (as of the last read)."""
        self.reload_header()
        used = (self.next_off - self.header.checkpoint_off) % self.size
        return used / self.size


def iter_records(path: str) -> Iterator[Record]:
    """Every valid record of a ring image after its checkpoint (PADs skipped), read-only."""
    with Consumer.open(path, readonly=True) as c:
        while batch := c.read(4096):
            yield from batch
