"""The native hot loop (provisor/native/native.c) against its specification, the Python code:
the ring scan gives the same records and the same end on intact, wrapped and damaged rings
from any position; the event decoder gives the same Event for every payload it takes and
refuses (None: the Python decoder then speaks) every payload the Python decoder refuses."""

from __future__ import annotations

import random
import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hv import synth
from pmem import layout as L
from pmem import ring
from pmem.layout import RecType
from provisor import events
from provisor.native import mod

pytestmark = pytest.mark.skipif(mod is None, reason="PROVISOR_NATIVE=0 (the Python code runs)")


def test_the_native_module_is_built_and_used():
    """make builds it; without it the daemon silently runs at the Python code's speed."""
    from provisor.native import _native

    assert mod is _native
    assert events._native is _native and L._native is _native


# -- decode -------------------------------------------------------------------------------
def same(data: bytes, seq: int = 5) -> None:
    try:
        want = events.decode_py(data, seq)
    except events.EventDecodeError as e:
        assert mod.decode(data, seq) is None, f"native took what Python refuses: {e}"
        with pytest.raises(events.EventDecodeError, match=re.escape(str(e))):
            events.decode(data, seq)
        return
    got = mod.decode(data, seq)
    assert got is not None, "native refused a payload Python decodes"
    assert got == want
    assert type(got) is events.Event and got.payload is data


@pytest.mark.parametrize("seed", [1, 7, 23])
def test_decode_equals_python_on_synthetic_streams(seed):
    for i, p in enumerate(synth.payloads(4000, seed)):
        same(p, i + 1)


def full_event(rnd: random.Random) -> events.Event:
    """An event with every field kind, guest bytes that are not all printable ASCII."""
    txt = [b"/tmp/a b", b"\xff\xfe\\x", "é€".encode(), b"line\nnext", b"\x1b[31m", b""]
    esc = lambda: events.escape(rnd.choice(txt))  # noqa: E731
    big = lambda: rnd.getrandbits(rnd.choice([63, 63, 63, 64]))  # noqa: E731 (2^63+: refused)
    files = [events.FileId(big(), big(), esc()) for _ in range(3)]
    return events.Event(
        nr=rnd.getrandbits(16), phase=rnd.randint(0, 1), ts_ns=big(),
        vcpu=rnd.getrandbits(16), entry_seq=rnd.getrandbits(63), tgid=rnd.getrandbits(32),
        pid=rnd.getrandbits(32), ppid=rnd.getrandbits(32), uid=rnd.getrandbits(32),
        start_time=big(), ret=rnd.choice([None, -2, 0, 2**63 - 1, -2**63]),
        cwd_mnt=big(), args=tuple(rnd.getrandbits(64) for _ in range(6)),
        flags=rnd.getrandbits(16) & ~events.F_HAS_RET, comm=esc(), cwd=rnd.choice([None, esc()]),
        paths=[esc() for _ in range(rnd.randint(0, 3))],
        argv=rnd.choice([None, [esc(), esc()]]), envp=rnd.choice([None, [esc()]]),
        files=files, out_fds=[rnd.randint(-5, 2**31 - 1)],
        cred=rnd.choice([None, tuple(rnd.getrandbits(32) for _ in range(8))]),
        endpoints=[events.Endpoint(1, 2, 1, "10.0.0.1:80", esc(), rnd.getrandbits(64), 0),
                   events.Endpoint(2, 1, 2, esc(), "", 0, rnd.getrandbits(64))],
        addr=rnd.choice([None, "[::1]:5000"]), addr_family=10)


def test_decode_equals_python_on_every_field_kind():
    rnd = random.Random(3)
    taken = 0
    for _ in range(600):
        ev = full_event(rnd)
        if ev.addr is None:
            ev.addr_family = 0
        same(events.encode(ev))
        taken += mod.decode(events.encode(ev), 5) is not None
    assert 50 < taken < 550  # both the accepted and the refused (a field of 2^63 or more)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.tuples(st.integers(0, 1 << 20),
                                                     st.integers(0, 255)), max_size=6),
       st.integers(0, 400))
def test_decode_equals_python_on_damaged_payloads(seed, flips, cut):
    """Flipped bytes and cut payloads: the same event, or refused by both."""
    rnd = random.Random(seed)
    b = bytearray(events.encode(full_event(rnd)))
    for pos, val in flips:
        b[pos % len(b)] = val
    same(bytes(b[:len(b) - cut % len(b)]))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.lists(st.tuples(st.integers(0, 12), st.binary(max_size=40)),
                                        max_size=6))
def test_decode_equals_python_on_made_up_fields(head, fields):
    fixed = struct.pack("<BBHHHQQIIIIQqQ6Q", 1, 1, 0, 2, 1, 0, 0, 1, 1, 0, 0, 0, -1, 0,
                        *range(6))
    tlv = b"".join(struct.pack("<BH", t, len(v)) + v for t, v in fields)
    same(fixed + tlv)
    same(head + tlv)


# -- ring scan ----------------------------------------------------------------------------
SIZE = L.DATA_OFFSET + L.MIN_DATA


def both(buf, hdr, start_seq=None, start_off=None, limit=None) -> None:
    want = L.collect_py(buf, hdr, start_seq, start_off, limit)
    got = L.collect(buf, hdr, start_seq, start_off, limit)
    assert got == want
    assert all(type(r) is L.Record for r in got[0])


def filled(path: str, n: int, seed: int) -> None:
    """``n`` records of random sizes, a consumer releasing as it goes: several laps."""
    rnd = random.Random(seed)
    ring.create(path, SIZE, overwrite=True)
    with ring.Producer.open(path, "fail") as p, ring.Consumer.open(path) as c:
        for i in range(n):
            p.append(rnd.choice([RecType.EVENT, RecType.NOTE]), bytes([i % 256]) *
                     rnd.randint(0, 900))
            if rnd.random() < 0.2:
                got = c.read(rnd.randint(1, 30))
                if got:
                    c.release(got[-1].seq, c.next_off)
        for i in range(40):  # the chain the tests scan: unreleased
            p.append(RecType.EVENT, bytes([i]) * rnd.randint(0, 900))


@pytest.mark.parametrize("seed", range(6))
def test_scan_equals_python_on_wrapped_and_damaged_rings(tmp_path, seed):
    path = str(tmp_path / "r.ring")
    filled(path, 70 + 90 * seed, seed)  # several laps: PADs, stale records behind the tail
    with open(path, "rb") as f:
        img = bytearray(f.read())
    hdr = L.read_header(img)[0]
    recs, end = L.collect_py(img, hdr)
    assert len(recs) > 10
    rnd = random.Random(seed)
    both(img, hdr)
    for lim in (0, 1, 2, 7):
        both(img, hdr, limit=lim)
    for r in rnd.sample(recs, 5):  # from the middle of the chain, right and wrong seq
        both(img, hdr, r.seq, r.offset)
        both(img, hdr, r.seq + 1, r.offset)
        both(img, hdr, r.seq - 1, r.offset)
    for _ in range(40):  # damage: a flipped byte in a header, a payload, the free space
        bad = bytearray(img)
        pos = L.DATA_OFFSET + rnd.randrange(hdr.data_size)
        bad[pos] ^= 1 << rnd.randrange(8)
        both(bytes(bad), hdr)
        r = rnd.choice(recs)
        both(bytes(bad), hdr, r.seq, r.offset, rnd.choice([None, 3]))
    # sequence numbers at the end of their range
    both(img, hdr, L.SEQ_LIMIT - 1, recs[0].offset)
    both(img, hdr, L.SEQ_LIMIT, recs[0].offset)


def test_scan_equals_python_on_the_live_mapping(tmp_path):
    """The daemon's case: the consumer's mmap of a ring a producer is writing."""
    path = str(tmp_path / "r.ring")
    filled(path, 150, 9)
    with ring.Consumer.open(path) as c:
        both(c.buf, c.header)
        both(c.buf, c.header, limit=5)
        assert c.read(50)
