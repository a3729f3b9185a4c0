"""Crash consistency of the ring under the power-failure simulator (pmem/simregion.py).

Random append / append_many / read+release workloads run on a simulated image; at fences of the
workload (every one for short workloads) crash images are built from what had persisted plus
any subset of unflushed 8-byte chunks, and scanned with the same code recovery uses. The oracle
is what the workload had been told at that moment: acknowledged sequence numbers, released
checkpoints, drops.
"""

from __future__ import annotations

import itertools
import os
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pmem import layout as L
from pmem import ring
from pmem.layout import RecType
from pmem.simregion import SimRegion, forget, image_at, register

DATA = L.MIN_DATA  # 64 KiB data area: a few hundred records per lap
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=bool(os.environ.get("CI")))

_paths = itertools.count()


def sim_path(tmp_dir: str = "/tmp") -> str:
    """A registry key that also exists on disk (``ring.open_region`` checks the path)."""
    path = os.path.join(tmp_dir, f"provisor-sim-{os.getpid()}-{next(_paths)}.ring")
    open(path, "w").close()
    return path


class TracingProducer(ring.Producer):
    """Remembers every record it places (acknowledged or not) so the oracle knows what was
    really appended at each sequence number."""

    placed: dict[int, tuple[int, bytes]]

    def _place(self, rtype: int, payload: bytes) -> tuple[int, int]:
        seq, start = super()._place(rtype, payload)
        self.placed[seq] = (rtype, bytes(payload))
        return seq, start


@dataclass(frozen=True)
class Snap:
    """What the workload knew when it logged this mark."""

    acked: int  # highest acknowledged sequence number (all below it were acknowledged too)
    checkpoints: frozenset[tuple[int, int]]  # (seq, off) the header may hold after a crash
    min_checkpoint: int  # the last release that returned
    drops: int  # drops the producer acknowledged (append returned None)


@dataclass
class Workload:
    path: str
    policy: str
    placed: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    acked: int = 0
    released: tuple[int, int] = (0, 0)
    drops: int = 0
    consumed: list[L.Record] = field(default_factory=list)
    inflight: tuple[int, int] | None = None  # a release whose flush may not have happened
    snap: Snap | None = None

    def __post_init__(self) -> None:
        ring.create(self.path, L.DATA_OFFSET + DATA, region_cls=SimRegion)
        self.image = image_at(self.path)
        self.image.rebase()  # crash points start after creation
        self.prod = TracingProducer.open(self.path, self.policy, region_cls=SimRegion,
                                         block_timeout=2.0)
        self.prod.placed = self.placed
        self.cons = ring.Consumer.open(self.path, region_cls=SimRegion)
        self.payloads = (f"rec{i}:".encode() for i in itertools.count())
        self.mark()

    def mark(self, inflight: tuple[int, int] | None = None) -> None:
        inflight = inflight or self.inflight
        cps = {self.released} | ({inflight} if inflight else set())
        self.snap = Snap(self.acked, frozenset(cps), self.released[0], self.drops)
        self.image.mark(self.snap)

    def payload(self, n: int) -> bytes:
        head = next(self.payloads)
        return (head + bytes(random.Random(head).randbytes(n)))[:n] if n else b""

    def make_room(self, need: int) -> None:
        """The consumer reads and releases until ``need`` bytes are surely free (the producer
        would otherwise block forever in this single thread)."""
        self.prod._refresh_head()
        while self.prod._free() < need:
            recs = self.consume(4096)
            if not recs:
                raise AssertionError("ring full but nothing to consume")
            self.prod._refresh_head()

    def append(self, size: int, room: bool = True) -> None:
        if room:
            self.make_room(L.padded(size) + 2048 + 64)
        p = self.payload(size)
        seq = self.prod.append(RecType.NOTE, p)
        if seq is None:
            self.drops += 1
        else:
            assert self.placed[seq] == (RecType.NOTE, p)
            self.acked = seq
        self.mark()

    def append_many(self, sizes: list[int], room: bool = True) -> None:
        if room:
            self.make_room(sum(L.padded(s) for s in sizes) + 2048 + 64)
        items = [(RecType.EVENT, self.payload(s)) for s in sizes]
        seqs = self.prod.append_many(items)
        assert len(seqs) == len(items)
        got = [s for s in seqs if s is not None]
        assert got == list(range(got[0], got[0] + len(got))) if got else True
        for s, item in zip(seqs, items, strict=True):
            if s is None:
                self.drops += 1
            else:
                assert self.placed[s] == item
                self.acked = s
        self.mark()

    def consume(self, n: int, release_all: bool = True) -> list[L.Record]:
        recs = self.cons.read(n)
        for r in recs:  # the live consumer sees exactly what was placed, in order
            expect = self.consumed[-1].seq + 1 if self.consumed else 1
            assert r.seq == expect
            assert self.placed[r.seq] == (r.type, r.payload)
            self.consumed.append(r)
        if recs:
            last = recs[-1] if release_all else recs[len(recs) // 2]
            target = (last.seq, (last.offset + L.padded(len(last.payload))) % DATA)
            self.mark(inflight=target)
            self.cons.release(*target)
            self.released = target
            self.mark()
        return recs




def check_image(img: bytearray, snap: Snap, w: Workload) -> tuple[list[L.Record], L.ChainEnd]:
    """The crash-image property of docs/FORMAT.md: a valid header; from its checkpoint every
    acknowledged record in order with its payload, then possibly complete records that were
    really appended; nothing corrupt, duplicated or from an older lap."""
    hdr, _slot = L.read_header(img)  # raises if a torn header write left no valid copy
    assert hdr.uuid == w.prod.uuid
    assert (hdr.checkpoint_seq, hdr.checkpoint_off) in snap.checkpoints
    recs, end = L.collect(img, hdr)
    real = [r for r in recs if r.type != RecType.PAD]
    seqs = [r.seq for r in real]
    assert seqs == list(range(hdr.checkpoint_seq + 1, hdr.checkpoint_seq + 1 + len(seqs)))
    for r in real:
        assert w.placed.get(r.seq) == (r.type, r.payload), f"seq {r.seq}: not what was placed"
    last = hdr.checkpoint_seq + len(seqs)
    assert last >= snap.acked, (f"acknowledged record {last + 1} lost "
                                f"(chain from {hdr.checkpoint_seq} ends: {end})")
    assert end.reason != L.End.FULL
    st_ = L.read_producer_state(img)
    assert st_.lost_total >= snap.drops and st_.lost_reported <= st_.lost_total
    return recs, end


def check_fences(w: Workload, rng: random.Random, every: float, k: int) -> int:
    """Check ``k`` crash images at a fraction ``every`` of the workload's fences (and at its
    end); returns how many images were checked."""
    n = 0
    points = list(w.image.fence_points())
    for i, state in enumerate(points):
        if state.mark is None or (i != len(points) - 1 and rng.random() > every):
            continue
        for img in state.images(k, rng):
            check_image(img, state.mark, w)
            n += 1
    return n


size_st = st.one_of(st.integers(0, 64), st.integers(0, 2000))
op_st = st.one_of(
    st.tuples(st.just("append"), size_st, st.booleans()),
    st.tuples(st.just("many"), st.lists(size_st, min_size=1, max_size=16), st.booleans()),
    st.tuples(st.just("consume"), st.integers(1, 40), st.booleans()),
)


@st.composite
def workloads(draw, max_ops: int = 120) -> list:
    """Long workloads (several laps of the ring) drawn cheaply: hypothesis picks the shape (op
    mix, record sizes, how eagerly the consumer keeps up) and a seed; the ops follow from it."""
    n = draw(st.integers(1, max_ops))
    p_many = draw(st.floats(0.0, 1.0))
    p_consume = draw(st.floats(0.05, 0.5))
    max_size = draw(st.sampled_from([0, 64, 500, 2000]))
    max_batch = draw(st.sampled_from([1, 4, 16, 64]))
    p_room = draw(st.sampled_from([0.1, 0.5, 1.0]))  # drop policy: how often to make room
    rng = random.Random(draw(st.integers(0, 2**32)))

    def size() -> int:
        return rng.randint(0, max_size if rng.random() < 0.8 else 64)

    ops: list = []
    for _ in range(n):
        r, flag = rng.random(), rng.random() < p_room
        if r < p_consume:
            ops.append(("consume", rng.randint(1, 60), rng.random() < 0.5))
        elif rng.random() < p_many:
            batch = [size() for _ in range(rng.randint(1, max_batch))]
            while sum(L.padded(b) for b in batch) > DATA // 2:  # must fit once drained
                batch.pop()
            ops.append(("many", batch, flag))
        else:
            ops.append(("append", size(), flag))
    return ops


def run(w: Workload, ops: list) -> None:
    for kind, arg, flag in ops:
        room = flag or w.policy != "drop"  # under drop, sometimes let the ring fill up
        if kind == "append":
            w.append(arg, room)
        elif kind == "many":
            w.append_many(arg, room)
        else:
            w.consume(arg, release_all=flag)
    w.image.check_shadow()


@settings(max_examples=120, **SETTINGS)
@given(ops=workloads(), policy=st.sampled_from(["block", "drop"]),
       seed=st.integers(0, 2**32))
def test_random_workloads_crash_images(ops, policy, seed: int) -> None:
    rng = random.Random(seed)
    # -> None:
    w = Workload(sim_path(), policy)
    try:
        run(w, ops)
        assert check_fences(w, rng, every=0.25, k=4) > 0
        check_final_accounting(w)
    finally:
        forget(w.path)
        os.unlink(w.path)


@settings(max_examples=60, **SETTINGS)
@given(ops=st.lists(op_st, min_size=1, max_size=6), policy=st.sampled_from(["block", "drop"]),
       seed=st.integers(0, 2**32))
def test_short_workloads_every_fence(ops, policy, seed: int) -> None:
    rng = random.Random(seed)
    # -> None:
    w = Workload(sim_path(), policy)
    try:
        # start from a ring that has already wrapped, so older laps lie beyond the tail
        for _ in range(12):
            w.append_many([1500] * 8)
        w.consume(4096)
        w.image.rebase()
        w.mark()
        run(w, ops)
        check_fences(w, rng, every=1.0, k=6)
    finally:
        forget(w.path)
        os.unlink(w.path)


def check_final_accounting(w: Workload) -> None:
    """Without a crash: every drop is reported by LOSS records once space returns, exactly."""
    if w.policy != "drop":
        return
    w.consume(4096)
    w.append(10)
    assert w.prod.state.lost_total == w.drops
    assert w.prod.state.lost_reported == w.drops
    losses = [p for t, p in w.placed.values() if t == RecType.LOSS]
    assert sum(int.from_bytes(p[:8], "little") for p in losses) == w.drops
    totals = [int.from_bytes(p[8:16], "little") for p in losses]
    assert totals == sorted(set(totals))  # each LOSS record reports new drops, never twice


@settings(max_examples=40, **SETTINGS)
@given(ops=workloads(60), new=st.lists(size_st, min_size=1,
       max_size=30), seed=st.integers(0, 2**32))
def test_reopen_on_crash_image(ops, new, seed: int) -> None:
    rng = random.Random(seed)
    # -> None:
    """A producer and a consumer reopened on any crash image keep the chain they find and
    continue it: new appends follow it, sequence numbers continue, nothing older resurfaces."""
    w = Workload(sim_path(), "block")
    paths = [w.path]
    try:
        run(w, ops)
        points = [p for p in w.image.fence_points() if p.mark is not None]
        for state in rng.sample(points, min(3, len(points))):
            img = state.image(rng)
            before, _ = check_image(img, state.mark, w)
            before = [(r.seq, r.type, r.payload) for r in before if r.type != RecType.PAD]
            path = sim_path()
            paths.append(path)
            register(path, img)
            hdr, _ = L.read_header(img)
            with ring.Producer.open(path, "fail", region_cls=SimRegion) as prod, \
                    ring.Consumer.open(path, region_cls=SimRegion) as cons:
                assert prod.next_seq == hdr.checkpoint_seq + 1 + len(before)
                seen = list(before)
                for i, size in enumerate(new):
                    p = bytes([i % 251]) * size
                    try:
                        seq = prod.append(RecType.NOTE, p)
                    except ring.RingFull:
                        recs = cons.read(4096)
                        got = [(r.seq, r.type, r.payload) for r in recs]
                        assert got == seen[:len(got)]
                        del seen[:len(got)]
                        last = recs[-1]
                        cons.release(last.seq, (last.offset + L.padded(len(last.payload)))
                                     % DATA)
                        seq = prod.append(RecType.NOTE, p)
                    assert seq == (seen[-1][0] + 1 if seen else cons.next_seq)
                    seen.append((seq, RecType.NOTE, p))
                image_at(path).check_shadow()
                final = image_at(path).state().images(4, rng)
            for img2 in final:
                hdr2, _ = L.read_header(img2)
                recs, end = L.collect(img2, hdr2)
                got = [(r.seq, r.type, r.payload) for r in recs if r.type != RecType.PAD]
                assert got == seen, "reopened ring lost or resurrected records"
                assert end.reason == L.End.CLEAN
    finally:
        for p in paths:
            forget(p)
            os.unlink(p)


def test_torn_header_writes_always_leave_a_valid_header() -> None:
    """Releases tear the 128-byte header copy in every way: a valid, released copy remains."""
    w = Workload(sim_path(), "block")
    rng = random.Random(7)
    try:
        for i in range(40):
            w.append_many([rng.randrange(0, 600) for _ in range(5)])
            w.consume(rng.randrange(1, 6), release_all=bool(i % 2))
        points = [p for p in w.image.fence_points() if p.mark is not None]
        n = 0
        for state in points:
            if not any(c < (2 * L.HEADER_SLOT) // 8 for c in state.dirty):
                continue  # not a header write
            for img in state.images(60, rng, history=True):
                check_image(img, state.mark, w)
                n += 1
        assert n >= 60 * 20
    finally:
        forget(w.path)
        os.unlink(w.path)


def test_producer_makes_the_checkpoint_it_relies_on_durable() -> None:
    """A consumer in another process stores its new header copy, then flushes it. If the
    producer reuses the freed space in between and power fails before the consumer's flush,
    the old checkpoint comes back pointing at overwritten records: every acknowledged record
    after it would be lost. The producer must flush the header copy it acts on."""
    w = Workload(sim_path(), "fail")
    try:
        while w.prod._free() > 4096:
            w.append(1000, room=False)
        w.cons.read(4096)
        persisted = w.cons.region.persist
        w.cons.region.persist = lambda off, n: None  # the consumer's flush has not happened
        hdr = w.cons.header.advanced(w.acked, w.prod.tail)
        w.inflight = (hdr.checkpoint_seq, hdr.checkpoint_off)
        w.cons.release(*w.inflight)
        w.mark()
        for _ in range(10):
            w.append(1000, room=False)  # only fits in the space released above
        state = w.image.state(w.snap)
        img = state.image(random.Random(1), p=0.0)  # nothing unflushed reached memory
        check_image(img, state.mark, w)
        w.cons.region.persist = persisted
    finally:
        forget(w.path)
        os.unlink(w.path)


def test_simulator_models_flush_granularity() -> None:
    """The model itself: stores stay volatile until a persist covers their cache line, which
    then persists the whole line; crash images mix old and new 8-byte chunks, never tear one."""
    path = sim_path()
    try:
        r = SimRegion.create(path, 4096)
        r.buf[0:128] = b"\x11" * 128
        assert bytes(r.image.persisted[:128]) == bytes(128)
        r.persist(60, 2)  # cache line 0 only
        assert bytes(r.image.persisted[:64]) == b"\x11" * 64
        assert bytes(r.image.persisted[64:128]) == bytes(64)
        r.buf[64:72] = b"\x22" * 8
        seen = set()
        for img in r.crash_images(200, random.Random(3), history=True):
            chunk = bytes(img[64:72])
            assert chunk in (bytes(8), b"\x11" * 8, b"\x22" * 8)  # 8-byte atomic
            seen.add(chunk)
        assert seen == {bytes(8), b"\x11" * 8, b"\x22" * 8}  # an evicted earlier value too
        r.buf.__class__.__setitem__(r.buf, slice(200, 201), b"\x01")
        r.image.check_shadow()
        memoryview(r.buf)[300] = 1  # a write that bypasses the log is caught
        with pytest.raises(AssertionError):
            r.image.check_shadow()
        assert len(list(r.image.fence_points())) == 2
    finally:
        forget(path)
        os.unlink(path)


def test_a_crashed_batch_never_resurfaces_after_a_new_record() -> None:
    """Rule 3's promise: bytes a crashed producer left beyond the tail never become reachable.
    Crash 1 keeps record B2 of a batch but not B1's sequence field; the reopened producer puts
    C1, as long as B1, where B1 was; crash 2 keeps C1 but not the zero trailer after it. B2
    (old, never acknowledged, sequence number C1+1) must not follow C1 in the chain."""
    w = Workload(sim_path(), "fail")
    path2 = sim_path()
    try:
        w.append(100)
        off_b1 = w.prod.tail
        w.image.rebase()
        w.prod.append_many([(RecType.NOTE, b"B1" * 50), (RecType.NOTE, b"B2" * 50)])
        state = next(iter(w.image.fence_points()))  # just before the batch's fence
        seq_chunk = (L.DATA_OFFSET + off_b1) // 8
        img = bytearray(state.persisted)
        for c, values in state.dirty.items():
            if c != seq_chunk:
                img[c * 8:c * 8 + 8] = values[-1]
        got, _ = L.collect(img, L.read_header(img)[0])
        assert [r.payload for r in got] == [w.placed[1][1]]  # B1 unreadable, B2 beyond it
        sim2 = register(path2, img)
        captured = []
        sim2.on_fence.append(lambda im: captured.append(im.state()))
        with ring.Producer.open(path2, "fail", region_cls=SimRegion) as prod:
            assert (prod.next_seq, prod.tail) == (2, off_b1)
            prod.append(RecType.NOTE, b"C1" * 50)
        crash2 = captured[-1]  # just before C1's fence
        trailer = {(L.DATA_OFFSET + off_b1 + L.padded(100)) // 8 + i for i in range(4)}
        img2 = bytearray(crash2.persisted)
        for c, values in crash2.dirty.items():
            if c not in trailer:
                img2[c * 8:c * 8 + 8] = values[-1]
        got, end = L.collect(img2, L.read_header(img2)[0])
        assert [r.payload[:2] for r in got][:2] == [w.placed[1][1][:2], b"C1"]  # C1 landed
        assert [r.payload[:2] for r in got] == [w.placed[1][1][:2], b"C1"], (
            f"old unacknowledged record resurfaced after the new one: {end}")
    finally:
        for p in (w.path, path2):
            forget(p)
            os.unlink(p)


def test_loss_is_reported_once_across_a_crash() -> None:
    """Power fails after the LOSS record is durable but before the producer state says it
    was reported: the reopened producer must not report the same loss again."""
    w = Workload(sim_path(), "drop")
    path2 = sim_path()
    try:
        while w.prod._free() >= L.padded(1000):
            w.append(1000, room=False)
        for _ in range(5):
            w.append(1000, room=False)
        assert w.drops == 5 and w.prod.state.lost_total == 5
        w.consume(4096)
        w.image.rebase()
        w.mark()
        w.append(10)  # fences: LOSS record, producer state, the record
        def loss_durable_state_not(img: bytearray) -> bool:
            recs, _ = L.collect(img, L.read_header(img)[0])
            return (any(r.type == RecType.LOSS for r in recs)
                    and L.read_producer_state(img).lost_reported < 5)

        imgs = [s.image(random.Random(0), p=0.0) for s in w.image.fence_points()]
        img = next(i for i in imgs if loss_durable_state_not(i))
        register(path2, img)
        with ring.Producer.open(path2, "drop", region_cls=SimRegion) as prod:
            prod.append(RecType.NOTE, b"after")
            recs, _ = L.collect(image_at(path2).mem, L.read_header(image_at(path2).mem)[0])
        totals = [int.from_bytes(r.payload[8:], "little") for r in recs
                  if r.type == RecType.LOSS]
        assert totals.count(5) == 1, f"the loss was reported twice: {totals}"
    finally:
        for p in (w.path, path2):
            forget(p)
            os.unlink(p)
