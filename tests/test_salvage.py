"""Forensic damage: recovery salvages every intact record past a damaged stretch or hidden by a
forged checkpoint, reports each gap (sequence and byte range) and exits 3; --read-only leaves
the image untouched; live, it releases past the break only while no producer has the ring.
And every output path of ``recover`` is checked before anything is written."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3

import pytest
from crashutil import filled_ring, payloads, run

from pmem import layout as L
from pmem import ring as R
from pmem.layout import RecType

N = 5000


def sha(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def rows(db: str, table: str = "events") -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(f"SELECT seq, {'payload' if table == 'events' else 'text'} FROM "
                            f"{table} ORDER BY seq").fetchall()
    finally:
        conn.close()


def meta(db: str, key: str) -> str:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0]
    finally:
        conn.close()


def chain_of(path: str) -> list[L.Record]:
    with R.Consumer.open(path, readonly=True) as c:
        recs, _ = L.collect(c.buf, c.header)
        return [L.Record(r.seq, r.type, r.offset, bytes(r.payload)) for r in recs
                if r.type != RecType.PAD]


def checkpoint(path: str) -> int:
    with R.Consumer.open(path, readonly=True) as c:
        return c.checkpoint


def flip_mid_ring(path: str, where: str) -> L.Record:
    """Flip one bit of the record holding the middle of the written span; returns it."""
    recs = chain_of(path)
    mid = (recs[-1].offset + L.padded(len(recs[-1].payload))) // 2
    hit = next(r for r in recs if r.offset <= mid < r.offset + L.padded(len(r.payload)))
    at = L.DATA_OFFSET + hit.offset + {"payload": L.REC_HDR + len(hit.payload) // 2,
                                       "seq": 2, "length": 9}[where]
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)[0]
        f.seek(at)
        f.write(bytes([b ^ 0x10]))
    return hit


@pytest.fixture
def damaged(shm_dir):
    def make(where: str = "payload"):
        pls = payloads(N, seed=41)
        ring = f"{shm_dir}/d.ring"
        filled_ring(ring, pls)
        recs = chain_of(ring)
        hit = flip_mid_ring(ring, where)
        nxt = recs[hit.seq]  # the record after the damaged one (seq hit.seq + 1)
        return ring, pls, hit, nxt
    return make


@pytest.mark.parametrize("where", ["payload", "seq", "length"])
def test_forensic_recover_salvages_past_a_bit_flip(shm_dir, damaged, where):
    ring, pls, hit, nxt = damaged(where)
    before = sha(ring)
    db, report = f"{shm_dir}/case.db", f"{shm_dir}/case.json"
    r = run(["recover", "--ring", ring, "--db", db, "--read-only", "--report", report])
    assert r.returncode == 3, r.stdout + r.stderr  # before: 0, "replayed 2763 of 2763"
    assert sha(ring) == before
    s = hit.seq
    got = rows(db)
    # every intact record, counted from the known stream, is in the DB
    assert [q for q, _ in got] == [q for q in range(1, N + 1) if q != s]
    assert all(bytes(p) == pls[q - 1] for q, p in got)
    rep = json.load(open(report))
    gap = {"seq_first": s, "seq_last": s, "byte_first": L.DATA_OFFSET + hit.offset,
           "byte_last": L.DATA_OFFSET + nxt.offset - 1, "bytes": nxt.offset - hit.offset}
    assert [{k: g[k] for k in gap} for g in rep["gaps"]] == [gap]
    assert rep["damaged_bytes"] == nxt.offset - hit.offset
    assert rep["sha256_before"] == rep["sha256_after"] == before
    assert rep["records_salvaged"] == N - s and rep["records_replayed"] == N - 1
    assert rep["chain_end"]["expected_seq"] == s
    lines = [x for x in r.stderr.splitlines() if x.startswith("provisor: gap:")]
    assert lines == [f"provisor: gap: records {s}..{s} not in the DB (image bytes "
                     f"{gap['byte_first']}..{gap['byte_last']}): {rep['gaps'][0]['reason']}"]
    # the DB itself says what it lacks
    notes = rows(db, "notes")
    assert len(notes) == 1 and notes[0][0] == s and f"records {s}..{s}" in notes[0][1]
    assert int(meta(db, "applied_seq")) == N
    assert run(["verify", "--db", db]).returncode == 0
    # idempotent: a second forensic recovery adds nothing and finds no new gap
    r = run(["recover", "--ring", ring, "--db", db, "--read-only"])
    assert r.returncode == 0, r.stderr
    assert sha(ring) == before


def test_live_recover_salvages_and_releases_only_without_a_producer(shm_dir, damaged):
    ring, pls, hit, _nxt = damaged()
    s = hit.seq
    db = f"{shm_dir}/live.db"
    # a producer has the ring open: the chain is stored and released, nothing past the break
    with R.Producer.open(ring, "fail"):
        r = run(["recover", "--ring", ring, "--db", db, "--live"])
        assert r.returncode == 3, r.stderr
        assert f"ring producer (pid {os.getpid()})" in r.stderr
        assert "salvage refused" in r.stderr
    assert checkpoint(ring) == s - 1
    assert [q for q, _ in rows(db)] == list(range(1, s))
    # no producer: the records past the break are salvaged, and released only up to them
    r = run(["recover", "--ring", ring, "--db", db, "--live", "--report", f"{shm_dir}/l.json"])
    assert r.returncode == 3, r.stderr
    rep = json.load(open(f"{shm_dir}/l.json"))
    assert [(g["seq_first"], g["seq_last"]) for g in rep["gaps"]] == [(s, s)]
    got = rows(db)
    assert [q for q, _ in got] == [q for q in range(1, N + 1) if q != s]
    assert all(bytes(p) == pls[q - 1] for q, p in got)
    assert checkpoint(ring) == N
    # and the ring goes on: a producer appends after the salvaged records, the daemon stores it
    with R.Producer.open(ring, "fail") as prod:
        assert prod.note("after the damage") == N + 1
    assert run(["daemon", "--ring", ring, "--db", db, "--once", "--quiet"]).returncode == 0
    assert rows(db, "notes")[-1] == (N + 1, "after the damage")


def test_forged_checkpoint_at_the_end_hides_nothing(shm_dir):
    """A header copy forged with a valid CRC whose checkpoint says everything was released.
    Before: "replayed 0", exit 0. Now every record is recovered into a fresh DB, and the report
    says they lay at or below the checkpoint (exit 0: nothing is missing)."""
    pls = payloads(N, seed=42)
    ring = f"{shm_dir}/f.ring"
    filled_ring(ring, pls)
    last = chain_of(ring)[-1]
    img = bytearray(open(ring, "rb").read())
    hdr, _slot = L.read_header(img)
    forged = hdr.advanced(N, (last.offset + L.padded(len(last.payload))) % hdr.data_size)
    base = L.header_slot_for(forged.generation) * L.HEADER_SLOT
    img[base:base + L.HEADER_LEN] = forged.pack()
    open(ring, "wb").write(img)
    before = sha(ring)
    assert chain_of(ring) == []  # the chain from the forged checkpoint is empty
    for mode in ("--read-only", "--live"):
        db, report = f"{shm_dir}/f{mode}.db", f"{shm_dir}/f{mode}.json"
        r = run(["recover", "--ring", ring, "--db", db, mode, "--report", report])
        assert r.returncode == 0, r.stderr
        got = rows(db)
        assert [q for q, _ in got] == list(range(1, N + 1))
        assert all(bytes(p) == pls[q - 1] for q, p in got)
        rep = json.load(open(report))
        assert rep["released_in_image"] == [1, N] and rep["gaps"] == []
        assert f"records 1..{N} lie at or below the checkpoint" in r.stdout
        assert sha(ring) == before  # live: nothing to release past the checkpoint


def test_live_recover_records_a_hole_of_released_records_and_the_daemon_goes_on(shm_dir):
    """A DB behind the ring's checkpoint (another consumer released records it never got,
    since overwritten): the daemon refuses it; recover --live stores what the image still
    holds, records the rest as a gap (exit 3), and the daemon goes on."""
    ring, full, behind = f"{shm_dir}/w.ring", f"{shm_dir}/full.db", f"{shm_dir}/behind.db"
    pls = payloads(9000, seed=43)
    R.create(ring, 1 << 20)
    for i in range(0, 9000, 1500):  # wraps a few times: the early records are overwritten
        with R.Producer.open(ring, "fail") as prod:
            for k in range(i, i + 1500, 100):
                prod.append_many([(RecType.EVENT, p) for p in pls[k:k + 100]])
        r = run(["daemon", "--ring", ring, "--db", full, "--once", "--quiet"])
        assert r.returncode == 0, r.stderr
        if i == 0:
            import shutil
            shutil.copy(full, behind)  # the DB at seq 1500
    assert checkpoint(ring) == 9000
    r = run(["daemon", "--ring", ring, "--db", behind, "--once"])
    assert r.returncode == 2 and "records 1501..9000 were released" in r.stderr
    r = run(["recover", "--ring", ring, "--db", behind, "--live", "--report",
             f"{shm_dir}/w.json"])
    assert r.returncode == 3, r.stderr
    rep = json.load(open(f"{shm_dir}/w.json"))
    assert rep["released_not_in_db"] == [1501, 9000]
    (g,) = rep["gaps"]
    first_kept = g["seq_last"] + 1
    assert g["seq_first"] == 1501 and 1501 < first_kept <= 9000
    assert "released from the ring before this DB had them" in g["reason"]
    got = rows(behind)
    assert [q for q, _ in got] == list(range(1, 1501)) + list(range(first_kept, 9001))
    assert all(bytes(p) == pls[q - 1] for q, p in got)
    assert rows(behind, "notes")[0][0] == g["seq_last"]
    assert int(meta(behind, "applied_seq")) == 9000
    with R.Producer.open(ring, "fail") as prod:
        prod.append(RecType.EVENT, pls[0])
    r = run(["daemon", "--ring", ring, "--db", behind, "--once", "--quiet"])
    assert r.returncode == 0, r.stderr
    assert int(meta(behind, "applied_seq")) == 9001


def test_report_path_is_checked_before_anything_is_written(shm_dir):
    """Before: the replay was committed and the ring released, then exit 70, no report."""
    pls = payloads(2000, seed=44)
    ring, db = f"{shm_dir}/p.ring", f"{shm_dir}/p.db"
    filled_ring(ring, pls)
    before = sha(ring)
    r = run(["recover", "--ring", ring, "--db", db, "--live", "--report",
             f"{shm_dir}/missing/dir/rep.json"])
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("provisor: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "does not exist" in r.stderr
    assert not os.path.exists(db) and checkpoint(ring) == 0 and sha(ring) == before
    # an existing DB keeps its applied seq
    assert run(["recover", "--ring", ring, "--db", db, "--read-only"]).returncode == 0
    h = sha(db)
    for bad in (f"{shm_dir}/missing/dir/rep.json", str(shm_dir)):
        r = run(["recover", "--ring", ring, "--db", db, "--live", "--report", bad])
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert sha(db) == h and checkpoint(ring) == 0
    # a good path: written whole, private
    rep = f"{shm_dir}/rep.json"
    assert run(["recover", "--ring", ring, "--db", db, "--live", "--report", rep]
               ).returncode == 0
    assert json.load(open(rep))["db_applied_after"] == 2000
    assert os.stat(rep).st_mode & 0o777 == 0o600
    assert checkpoint(ring) == 2000


def test_salvage_walk_keeps_the_chain_copy_of_a_duplicated_seq(shm_dir):
    """An orphan (a record of an unacknowledged batch left beside its rewrite) with the same
    seq as a chain record: the chain's copy wins, and the duplicate is reported."""
    ring = f"{shm_dir}/o.ring"
    pls = payloads(50, seed=45)
    filled_ring(ring, pls, size=1 << 20)
    recs = chain_of(ring)
    with R.Consumer.open(ring, readonly=True) as c:
        uuid, hdr = c.header.uuid, c.header
    body, seqb = L.encode_record(uuid, 7, RecType.EVENT, b"orphan payload")
    img = bytearray(open(ring, "rb").read())
    at = L.DATA_OFFSET + recs[-1].offset + 4096  # free space, well past the tail
    img[at:at + 8] = seqb
    img[at + 8:at + 8 + len(body)] = body
    sv = L.salvage(img, hdr)
    assert [f.seq for f in sv.records] == list(range(1, 51))
    assert sv.duplicates == [7] and sv.records[6].offset == recs[6].offset
    assert [f.seq for f in sv.chain] == list(range(1, 51)) and sv.end.reason == L.End.CLEAN
