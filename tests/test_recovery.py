"""The recovery crash matrix: crash, recover, compare with an uninterrupted run.

Each case ends with ``fingerprint`` (which also runs ``PRAGMA integrity_check``) equal to the
store of an uninterrupted run over the same synthetic stream (or over the prefix of it that was
acknowledged), so nothing acknowledged is missing and nothing is duplicated.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from crashutil import diff, filled_ring, fingerprint, payloads, reference, rows, run

from daemon.apply import Applier
from pmem import layout as L
from pmem import ring as R
from pmem.layout import Record, RecType
from pmem.simregion import SimRegion, forget, image_at
from recovery.recover import recover


def sha(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def first_record_written(ring: str) -> bool:
    with open(ring, "rb") as f:
        f.seek(L.DATA_OFFSET)
        return f.read(8) != bytes(8)


class PrefixReference:
    """Reference stores for growing prefixes of one stream, built in one pass."""

    def __init__(self, path: str, pls: list[bytes]) -> None:
        self.store = Applier(path, None)
        self.pls = pls
        self.path = path

    def at(self, k: int) -> dict:
        assert k >= self.store.applied_seq, "ask for prefixes in increasing order"
        recs = [Record(i + 1, RecType.EVENT, 0, p)
                for i, p in enumerate(self.pls[self.store.applied_seq:k],
                                      start=self.store.applied_seq)]
        for i in range(0, len(recs), 2000):
            self.store.apply(recs[i:i + 2000])
        return fingerprint(self.path)


def test_recover_forensic_then_live_is_idempotent(shm_dir, store_db):
    pls = payloads(4000, seed=5)
    ring, db = f"{shm_dir}/r.ring", store_db
    filled_ring(ring, pls)
    before = sha(ring)
    rep = recover(ring, db, read_only=True)
    assert rep.sha256_before == rep.sha256_after == before == sha(ring)
    assert rep.records_replayed == 4000 and rep.db_applied_after == 4000
    assert rep.chain_end["reason"] == L.End.CLEAN
    ref = reference(f"{shm_dir}/ref.db", pls)
    assert diff(fingerprint(db), ref) == ""
    # a second recovery adds nothing; a live one releases the ring, and the daemon adds nothing
    assert recover(ring, db, read_only=True).records_replayed == 0
    rep = recover(ring, db, read_only=False)
    assert rep.records_replayed == 0
    with R.Consumer.open(ring, readonly=True) as c:
        assert c.checkpoint == 4000
    assert run(["daemon", "--ring", ring, "--db", db, "--once", "--quiet"]).returncode == 0
    assert diff(fingerprint(db), ref) == ""


# ``provisor synth`` through the real CLI, with one addition: every sequence number the ring
# acknowledges (append / append_many returned it) is written to stdout right away, one
# write(2) per call, so what a SIGKILL leaves in the file is what was acknowledged (or less).
ACKING_SYNTH = """
import os, sys
import pmem.ring as R

class AckingProducer(R.Producer):
    def append(self, rtype, payload):
        seq = super().append(rtype, payload)
        if seq is not None:
            os.write(1, b"%d\\n" % seq)
        return seq

    def append_many(self, items):
        seqs = super().append_many(items)
        os.write(1, b"".join(b"%d\\n" % s for s in seqs if s is not None))
        return seqs

R.Producer = AckingProducer
from provisor.cli import main
sys.argv[0] = "provisor"
main()
"""


def read_acks(path: str) -> list[int]:
    """The acknowledged sequence numbers: complete lines only (a kill may cut the last)."""
    data = open(path, "rb").read()
    return [int(x) for x in data[:data.rfind(b"\n") + 1].split()]


@pytest.mark.slow
def test_producer_killed_mid_append_50_times(shm_dir):
    """``provisor synth`` SIGKILLed at random moments; every sequence number it acknowledged
    is in the recovered store exactly once, with its payload, and the store is exactly the
    prefix that reached the ring."""
    n, seed = 20000, 21
    pls = payloads(n, seed)
    rng = random.Random(99)
    results = []
    for i in range(50):
        ring, acks = f"{shm_dir}/p{i}.ring", f"{shm_dir}/p{i}.acks"
        assert run(["ring", "create", ring, "--size", "8M"]).returncode == 0
        with open(acks, "wb") as out:
            p = subprocess.Popen([sys.executable, "-c", ACKING_SYNTH, "synth", "--ring", ring,
                                  "--events", str(n), "--seed", str(seed), "--rate", "25000",
                                  "--batch", str(rng.choice([1, 8, 64]))],
                                 stdout=out, stderr=subprocess.DEVNULL)
        # wait until it is producing (its start-up time varies with load), then kill it at a
        # random moment of its ~0.8 s of appends
        deadline = time.monotonic() + 30
        while not first_record_written(ring) and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.7))
        p.send_signal(signal.SIGKILL)
        p.wait()
        acked = read_acks(acks)
        assert acked == list(range(1, len(acked) + 1)), i  # in order, none skipped
        db = f"{shm_dir}/p{i}.db"
        rep = recover(ring, db, read_only=True)
        assert rep.sha256_before == rep.sha256_after
        conn = sqlite3.connect(db)
        try:
            stored = conn.execute("SELECT seq, payload FROM events ORDER BY seq").fetchall()
            others = {s for (s,) in conn.execute("SELECT seq FROM notes UNION ALL "
                                                 "SELECT seq FROM losses")}
        finally:
            conn.close()
        got = dict(stored)
        assert len(got) == len(stored)
        for s in acked:  # each acknowledged record, with its payload, once, as an event
            assert s in got, (i, s, "acknowledged, not recovered")
            assert got[s] == pls[s - 1], (i, s, "recovered with another payload")
            assert s not in others, (i, s)
        # and nothing else but the records that followed in the stream (appended, not yet
        # acknowledged when the kill came)
        assert [s for s, _ in stored] == list(range(1, len(stored) + 1))
        assert all(pl == pls[s - 1] for s, pl in stored)
        assert rep.db_applied_after == len(stored) >= len(acked)
        results.append((rep.db_applied_after, len(acked), db))
        os.remove(ring)
    assert sum(1 for _, a, _ in results if 0 < a < n) >= 40, [a for _, a, _ in results]
    refs = PrefixReference(f"{shm_dir}/ref.db", pls)
    for k, _, db in sorted(results):
        assert diff(fingerprint(db), refs.at(k)) == "", k


# what each crash point leaves, for the 3rd batch of 500: (applied_seq, batches) in the DB, the
# ring's checkpoint, and how many records recovery then replays (it must skip the applied ones)
CRASH_POINTS = {
    "before_commit:3": (1000, 2, 1000, 5000),  # the batch rolled back, still in the ring
    "after_commit:3": (1500, 3, 1000, 4500),  # committed, not released: replayed once only
    "mid_release:3": (1500, 3, 1000, 4500),  # the release's header copy torn: the same
}


@pytest.mark.parametrize("fault", sorted(CRASH_POINTS))
def test_daemon_crash_points_then_recover(shm_dir, fault, store_db):
    pls = payloads(6000, seed=8)
    ring, db = f"{shm_dir}/d.ring", store_db
    filled_ring(ring, pls)
    cfg = f"{shm_dir}/c.toml"
    open(cfg, "w").write("[daemon]\nbatch_min = 500\nbatch_max = 500\n")
    r = run(["daemon", "--ring", ring, "--db", db, "--quiet"],
            {"PROVISOR_FAULT": fault, "PROVISOR_CONFIG": cfg})
    assert r.returncode == -signal.SIGKILL
    applied, batches, checkpoint, replayed = CRASH_POINTS[fault]
    meta = dict(rows(db, "SELECT key, value FROM meta"))
    seqs = [s for (s,) in rows(db, "SELECT seq FROM events ORDER BY seq")]
    assert (int(meta["applied_seq"]), int(meta["batches"])) == (applied, batches)
    assert seqs == list(range(1, applied + 1))
    with R.Consumer.open(ring, readonly=True) as c:
        assert c.checkpoint == checkpoint
    # everything after the checkpoint is still in the ring, the applied part included
    assert [x.seq for x in R.iter_records(ring)] == list(range(checkpoint + 1, 6001))
    r = run(["recover", "--ring", ring, "--db", db, "--live", "--report", f"{shm_dir}/r.json"])
    assert r.returncode == 0, r.stderr
    rep = json.load(open(f"{shm_dir}/r.json"))
    assert (rep["ring_checkpoint"], rep["db_applied_before"]) == (checkpoint, applied)
    # the salvage scan counts every valid record the image holds (the ring never wrapped, so
    # the released ones too); only those above the DB's applied_seq are replayed
    assert (rep["records_scanned"], rep["records_replayed"]) == (6000, replayed)
    assert rep["db_applied_after"] == 6000
    assert diff(fingerprint(db), reference(f"{shm_dir}/ref.db", pls)) == ""


def test_crash_during_recovery_then_recover_again(shm_dir, store_db):
    pls = payloads(20000, seed=9)
    ring, db = f"{shm_dir}/c.ring", store_db
    filled_ring(ring, pls)
    for fault in ("after_commit:1", "mid_release:1", "before_commit:1"):
        r = run(["recover", "--ring", ring, "--db", db, "--live"], {"PROVISOR_FAULT": fault})
        assert r.returncode == -signal.SIGKILL, (fault, r.stderr)
    r = run(["recover", "--ring", ring, "--db", db, "--live"])
    assert r.returncode == 0, r.stderr
    assert diff(fingerprint(db), reference(f"{shm_dir}/ref.db", pls)) == ""


def test_power_loss_at_every_fence(shm_dir):
    """Crash images from the power-failure simulator at every fence of a short workload
    (appends, a consumer releasing, a wrap), with any subset of the unflushed 8-byte chunks
    landed (not only none or all): recovery replays every acknowledged record not yet
    released, once, with its payload, and nothing but complete records of the stream."""
    pls = payloads(900, seed=13)
    path = f"sim://{shm_dir}/fence"
    R.create(path, L.DATA_OFFSET + L.MIN_DATA, region_cls=SimRegion)
    img = image_at(path)
    img.rebase()
    img.logging = True
    prod = R.Producer(SimRegion(path), "fail")
    cons = R.Consumer(SimRegion(path))
    acked = 0
    # each mark: (highest acknowledged seq, applied_seq of the daemon's DB); the DB is
    # another device: what it committed stays committed whatever the ring loses
    live_db = Applier(f"{shm_dir}/live.db", prod.header.uuid_str)
    i = 0
    rng = random.Random(3)
    while i < len(pls):
        k = rng.choice([1, 1, 4, 16])
        try:
            seqs = prod.append_many([(RecType.EVENT, x) for x in pls[i:i + k]])
        except R.RingFull as full:
            if full.acked:
                acked = full.acked[-1]
                i += len(full.acked)
            recs = cons.read(10_000)  # the daemon: apply, then release
            live_db.apply(recs)
            img.mark((acked, live_db.applied_seq))
            last = recs[-1]
            cons.release(last.seq, (last.offset + L.padded(len(last.payload))) % cons.size)
            continue
        acked = seqs[-1]
        i += k
        img.mark((acked, live_db.applied_seq))
    live_db.close()
    prod.close()
    cons.close()
    states = list(img.fence_points())
    assert len(states) > 100
    refs_builder = PrefixReference(f"{shm_dir}/ref.db", pls)
    from_start: dict[int, list[str]] = {}  # records recovered -> DBs of checkpoint-0 images
    mixed = released = 0
    for st in states[:: max(1, len(states) // 120)]:
        acked_then, db_applied_then = st.mark or (0, 0)
        none, every = st.image(rng, 0.0), st.image(rng, 1.0, history=False)
        images = [none, every]
        for _ in range(2):  # partial images: some chunks landed, some old values among them
            part = st.image(rng, rng.choice((0.1, 0.3, 0.5, 0.7, 0.9)))
            mixed += part != none and part != every
            images.append(part)
        for j, image in enumerate(images):
            f = f"{shm_dir}/crash.img"
            with open(f, "wb") as fh:
                fh.write(image)
            db = f"{shm_dir}/crash{st.index}_{j}.db"
            rep = recover(f, db, read_only=True, salvage=False)  # the chain, as the daemon
            c = rep.ring_checkpoint
            where = (st.index, j, c, acked_then)
            # released only what the daemon's DB holds (records 1..c are there)
            assert c <= db_applied_then, where
            conn = sqlite3.connect(db)
            try:
                rows = conn.execute("SELECT seq, payload FROM events ORDER BY seq").fetchall()
                others = conn.execute("SELECT (SELECT count(*) FROM notes) + "
                                      "(SELECT count(*) FROM losses)").fetchone()[0]
            finally:
                conn.close()
            # a fresh forensic DB starts at the checkpoint: exactly records c+1..c+len, each
            # once, each the stream's record (nothing torn, stale or made up, no NOTE from an
            # undecodable payload), and every acknowledged one among them
            assert [s for s, _ in rows] == list(range(c + 1, c + 1 + len(rows))), where
            assert all(pl == pls[s - 1] for s, pl in rows), where
            assert others == 0, where
            assert c + len(rows) >= acked_then, (where, "acknowledged record lost")
            assert rep.db_applied_after == (c + len(rows) if rows else 0), where
            released += c > 0
            if c == 0:
                from_start.setdefault(len(rows), []).append(db)
            salvaged_from_crash_image(f, f"{shm_dir}/salv{st.index}_{j}.db", pls,
                                      rep.db_applied_after)
    forget(path)
    assert mixed >= 100, mixed  # partial images really were partial
    assert released >= 100, released  # and many came after a release (the ring wrapped)
    for got in sorted(from_start):  # from the start, the whole store is an uninterrupted one
        fp = refs_builder.at(got)
        for db in from_start[got]:
            assert diff(fingerprint(db), fp) == "", (got, db)


def salvaged_from_crash_image(image: str, db: str, pls: list[bytes], chain_got: int) -> None:
    """Salvage (the CLI's recovery) on a crash image: at least the chain's records, only
    records of the stream, and every hole between them reported as a gap."""
    import sqlite3

    rep = recover(image, db, read_only=True)
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT seq, payload FROM events ORDER BY seq").fetchall()
    conn.close()
    assert all(bytes(pl) == pls[s - 1] for s, pl in rows)
    have = {s for s, _ in rows}
    assert set(range(rep.ring_checkpoint + 1, chain_got + 1)) <= have
    missing = {s for g in rep.gaps for s in range(g["seq_first"], g["seq_last"] + 1)}
    if have:
        assert have | missing == set(range(min(have), max(have) + 1)), rep.gaps
    assert bool(missing) == (rep.exit_status != 0)


BAD = "provisor: error: "


@pytest.mark.parametrize("make", ["truncated", "zeros", "random", "newer", "directory",
                                  "missing"])
def test_bad_images_one_line_error_db_untouched(shm_dir, make):
    ring, db = f"{shm_dir}/b.ring", f"{shm_dir}/b.db"
    filled_ring(ring, payloads(200, seed=1), size=1 << 20)
    data = open(ring, "rb").read()
    if make == "truncated":
        open(ring, "wb").write(data[: len(data) // 2])
    elif make == "zeros":
        open(ring, "wb").write(bytes(len(data)))
    elif make == "random":
        open(ring, "wb").write(random.Random(4).randbytes(len(data)))
    elif make == "newer":
        hdr = L.unpack_header(data[0:L.HEADER_LEN])
        for base in (0, L.HEADER_SLOT):
            buf = bytearray(data)
            raw = bytearray(hdr.pack())
            raw[8:12] = (2).to_bytes(4, "little")
            from crc32c import crc32c
            raw[124:128] = crc32c(bytes(raw[:124])).to_bytes(4, "little")
            buf[base:base + L.HEADER_LEN] = raw
            data = bytes(buf)
        open(ring, "wb").write(data)
    elif make == "directory":
        os.remove(ring)
        os.mkdir(ring)
    elif make == "missing":
        os.remove(ring)
    r = run(["recover", "--ring", ring, "--db", db])
    assert r.returncode == 2
    assert r.stderr.startswith(BAD) and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert not os.path.exists(db)


def test_bad_databases(shm_dir):
    ring = f"{shm_dir}/g.ring"
    filled_ring(ring, payloads(300, seed=2), size=1 << 20)
    # a DB of another ring
    other = f"{shm_dir}/other.ring"
    filled_ring(other, payloads(10, seed=2), size=1 << 20)
    db = f"{shm_dir}/o.db"
    assert run(["recover", "--ring", other, "--db", db]).returncode == 0
    h = sha(db)
    r = run(["recover", "--ring", ring, "--db", db])
    assert r.returncode == 2 and "belongs to ring" in r.stderr and sha(db) == h
    # not provisor's: another SQLite DB, and a text file
    import sqlite3
    foreign = f"{shm_dir}/f.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    h = sha(foreign)
    r = run(["recover", "--ring", ring, "--db", foreign])
    assert r.returncode == 2 and "not a provisor database" in r.stderr and sha(foreign) == h
    text = f"{shm_dir}/t.db"
    open(text, "w").write("hello, not a database\n" * 100)
    r = run(["recover", "--ring", ring, "--db", text])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    # unwritable places
    for bad in ("/proc/provisor-test.db", f"{shm_dir}/no/such/dir/x.db", shm_dir):
        r = run(["recover", "--ring", ring, "--db", str(bad)])
        assert r.returncode == 2 and r.stderr.startswith(BAD), (bad, r.stderr)
        assert r.stderr.count("\n") == 1
