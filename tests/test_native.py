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


# -- the events rows into SQLite ----------------------------------------------------------
def written(tmp_path, evs: list, native: bool) -> list[tuple]:
    """The events table after one batch of ``evs`` through the SQLite store's write path."""
    from store import schema
    from store.sqlite import SQLiteStore

    db = SQLiteStore(str(tmp_path / f"{'n' if native else 'p'}.db"))
    try:
        assert db._native, "this CPython's sqlite3 should take the native writer"
        db._native = native
        db.conn.execute("BEGIN IMMEDIATE")
        db._write_events(evs)
        db.conn.execute("COMMIT")
        return db.q(schema.EVENTS.select() + " ORDER BY seq")
    finally:
        db.close()


def decodable(payloads) -> list:
    out = []
    for i, p in enumerate(payloads):
        try:
            out.append(events.decode(p, i + 1))
        except events.EventDecodeError:
            pass
    return out


def test_native_rows_equal_event_row_on_synthetic_streams(tmp_path):
    """Bound from the payload in C, or schema.event_row by executemany: the same rows."""
    evs = decodable(synth.payloads(6000, 5))
    got = written(tmp_path, evs, native=True)
    assert got == written(tmp_path, evs, native=False)
    assert len(got) == len(evs) and {type(c) for c in got[0]} >= {int, str, bytes}


def test_native_rows_equal_event_row_on_every_field_kind(tmp_path):
    """Escaped guest text in comm, cwd and paths, no cwd, no paths, an empty path, a failed
    and an absent ret, syscall numbers past the name table (left to Python), 2^63 - 1."""
    rnd = random.Random(9)
    evs = []
    for _ in range(800):
        ev = full_event(rnd)
        if ev.addr is None:
            ev.addr_family = 0
        ev.paths = rnd.choice([[], [""], ev.paths, ["", ""]])
        ev.nr = rnd.choice([ev.nr, 2, 59, 435, 1023, 1024])
        evs.append(events.encode(ev))
    evs = decodable(evs)
    assert len(evs) > 100
    assert written(tmp_path, evs, native=True) == written(tmp_path, evs, native=False)


def test_native_writer_leaves_what_it_cannot_name_to_python(tmp_path):
    from store import schema
    from store.sqlite import SQLiteStore

    ev = events.decode(events.encode(events.Event(nr=4000, tgid=1, pid=1, comm="x")), 3)
    other = events.decode(events.encode(events.Event(nr=2, tgid=1, pid=1, comm="y")), 4)
    db = SQLiteStore(str(tmp_path / "x.db"))
    try:
        db.conn.execute("BEGIN IMMEDIATE")
        left = mod.insert_events(db.conn, schema.EVENTS.insert("sqlite"), [ev, other],
                                 schema.event_names())
        assert left == [0]
        assert db.q("SELECT seq, name FROM events") == [(4, "open")]
        db.conn.execute("ROLLBACK")
    finally:
        db.close()


def test_native_writer_fails_like_executemany(tmp_path):
    """A step that fails (here a second row of one seq) raises sqlite3's error inside the
    caller's transaction; the store rolls the batch back and reports it in one line."""
    import sqlite3

    from store import schema
    from store.sqlite import SQLiteStore

    ev = events.decode(synth.payloads(1, 1)[0], 1)
    db = SQLiteStore(str(tmp_path / "x.db"))
    try:
        db.conn.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="UNIQUE constraint failed"):
            mod.insert_events(db.conn, schema.EVENTS.insert("sqlite"), [ev, ev],
                              schema.event_names())
        db.conn.execute("ROLLBACK")
        assert db.q("SELECT count(*) FROM events") == [(0,)]
        with pytest.raises(sqlite3.OperationalError, match="not the events INSERT"):
            mod.insert_events(db.conn, "INSERT INTO notes VALUES (?, ?)", [ev],
                              schema.event_names())
    finally:
        db.close()
    with pytest.raises(sqlite3.OperationalError, match="closed database"):
        mod.insert_events(db.conn, schema.EVENTS.insert("sqlite"), [ev], schema.event_names())


def test_native_writer_checks_the_handle_it_reads(tmp_path):
    """setup_sqlite takes a connection only when the handle found in it names its file."""
    import _sqlite3
    import sqlite3

    from store.sqlite import native_rows

    c = sqlite3.connect(tmp_path / "a.db")
    try:
        assert native_rows(c, str(tmp_path / "a.db"))
        assert not native_rows(c, str(tmp_path / "b.db"))
        assert not mod.setup_sqlite(sqlite3.Connection, c, str(tmp_path / "a.db"),
                                    "/nonexistent/_sqlite3.so", sqlite3.OperationalError)
        assert not mod.setup_sqlite(sqlite3.Connection, object(), "x", _sqlite3.__file__,
                                    sqlite3.OperationalError)
    finally:
        c.close()


def test_insert_rows_binds_as_sqlite3_does_and_stops_where_it_cannot(tmp_path):
    import sqlite3

    from store.sqlite import native_rows

    c = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    try:
        assert native_rows(c, str(tmp_path / "a.db"))
        c.execute("CREATE TABLE t (a, b, c)")
        rows = [(1, "é\x00x", b"\x00\xff"), (None, -2**63, 1.5), (True, "", b""),
                (2**63, "big", None), (3, "after", None)]
        assert mod.insert_rows(c, "INSERT INTO t VALUES (?, ?, ?)", rows) == 3  # 2^63: stop
        c.execute("CREATE TABLE u (a, b, c)")
        c.executemany("INSERT INTO u VALUES (?, ?, ?)", rows[:3])
        assert c.execute("SELECT *, typeof(a), typeof(c) FROM t ORDER BY rowid").fetchall() \
            == c.execute("SELECT *, typeof(a), typeof(c) FROM u ORDER BY rowid").fetchall()
        for bad in ([(1, 2)], [[1, 2, 3]], [(bytearray(b"x"), 1, 2)], [(object(), 1, 2)],
                    [(1, "\ud800", 2)]):
            assert mod.insert_rows(c, "INSERT INTO t VALUES (?, ?, ?)", bad) == 0
        assert mod.insert_rows(c, "INSERT INTO t VALUES (?, ?, ?)", []) == 0
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            mod.insert_rows(c, "INSERT INTO nope VALUES (?)", [(1,)])
        c.execute("CREATE TABLE k (a PRIMARY KEY)")
        with pytest.raises(sqlite3.OperationalError, match="UNIQUE"):
            mod.insert_rows(c, "INSERT INTO k VALUES (?)", [(1,), (1,)])
    finally:
        c.close()


@pytest.mark.parametrize("seed", [4, 17])
def test_a_store_written_natively_equals_one_written_by_executemany(tmp_path, seed):
    """The whole write path, batch by batch: every table, rows in rowid order (the attrs'
    write order is their meaning), and the hash chain, byte for byte."""
    from daemon.apply import Applier
    from pmem.layout import Record
    from store import schema

    pls = synth.payloads(5000, seed)
    recs = [Record(i + 1, RecType.EVENT, 0, p) for i, p in enumerate(pls)]
    tables = {}
    for native in (True, False):
        ap = Applier(str(tmp_path / f"{native}.db"), "r")
        assert ap.db._native
        ap.db._native = native
        for i in range(0, len(recs), 700):
            ap.apply(recs[i:i + 700])
        tables[native] = {t: ap.db.q(f"SELECT rowid, * FROM {t} ORDER BY rowid")
                          for t in schema.TABLES}
        ap.close()
    assert tables[True]["events"] and tables[True]["attrs"]
    assert tables[True] == tables[False]


# -- the chain's canonical row encoding (canon.c against store/chain.py) ---------------------
_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(1 << 63), (1 << 63) - 1),
    st.integers(min_value=1 << 63, max_value=1 << 200), st.text(), st.binary(),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)),
    st.floats(allow_nan=False), st.binary().map(bytearray), st.binary().map(memoryview))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.tuples(), st.lists(_values, max_size=8).map(tuple),
                          st.lists(_values, max_size=8)), max_size=12))
def test_rows_bin_equals_python(rows):
    """Every row the store holds (and any other of these types) encodes alike in C and in
    Python: lone surrogates, ints beyond i64, bools as ints, bytes-likes as bytes."""
    from store import chain

    assert mod is not None and chain.rows_bin is mod.rows_bin
    assert mod.rows_bin(rows) == chain.rows_bin_py(rows)
    assert mod.rows_bin(iter(rows)) == chain.rows_bin_py(iter(rows))


def test_rows_bin_tells_values_apart_and_refuses_other_types():
    """Distinct rows never encode alike (type tags, explicit lengths), and a value of a type
    the store never holds is refused by both, never encoded somehow."""
    from store import chain

    same = [[(1,)], [("1",)], [(b"1",)], [(None,)], [(1.0,)], [(1, 2)], [(12,)], [("a", "b")],
            [("ab", "")], [("", "ab")], [(), ()], [((1 << 63),)], [], [(True,)]]
    encoded = [chain.rows_bin_py(r) for r in same]
    assert len(set(encoded)) == len(encoded) - 1  # True is the int 1, as SQLite stores it
    assert chain.rows_bin_py([(True,)]) == chain.rows_bin_py([(1,)])
    for bad in ([(object(),)], [({},)], [(1, [2])]):
        for f in (mod.rows_bin, chain.rows_bin_py):
            with pytest.raises(TypeError, match="rows_bin: cannot encode"):
                f(bad)
    for f in (mod.rows_bin, chain.rows_bin_py):
        with pytest.raises(OverflowError):
            f([tuple(range(70000))])


def test_seq_payloads_equals_python():
    """The events' part of a link, from Events or from stored rows, alike in C and Python."""
    from store import chain

    evs = [events.decode(p, i + 1) for i, p in enumerate(synth.payloads(300, 4))]
    rows = [(e.seq, "x", e.payload) for e in evs]
    want = chain.seq_payloads_py(evs)
    assert want == chain.seq_payloads_py(rows) == mod.seq_payloads(evs) == mod.seq_payloads(rows)
    assert want[:12] == struct.pack("<QI", evs[0].seq, len(evs[0].payload))
    for bad in ([(1, "text")], [("1", b"")], [()]):
        with pytest.raises(TypeError):
            mod.seq_payloads(bad)
