"""One producer and one consumer per ring, one writer per store (held for the process's life,
refused on one line with the holder's pid); ``ring create`` never discards a ring in use; no
flag makes the daemon release records it did not store."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import time

import pytest
from crashutil import PROVISOR, diff, filled_ring, fingerprint, payloads, reference, run

from daemon.apply import Applier, StoreError
from pmem import ring as R
from pmem.layout import Record, RecType
from provisor import locks

BAD = "provisor: error: "


def sha(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def one_line(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.startswith(BAD) and r.stderr.count("\n") == 1, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr
    return r.stderr


def applied(db: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT value FROM meta WHERE key='applied_seq'").fetchone()[0])
    finally:
        conn.close()


def seqs(db: str) -> list[int]:
    conn = sqlite3.connect(db)
    try:
        return [s for (s,) in conn.execute("SELECT seq FROM events ORDER BY seq")]
    finally:
        conn.close()


def checkpoint(ring: str) -> int:
    with R.Consumer.open(ring, readonly=True) as c:
        return c.checkpoint


def start_daemon(ring: str, db: str, cfg: str) -> subprocess.Popen:
    p = subprocess.Popen(PROVISOR + ["daemon", "--ring", ring, "--db", db, "--quiet"],
                         env=dict(os.environ, PROVISOR_CONFIG=cfg),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (locks.is_held(ring, locks.RING_CONSUMER) and os.path.exists(db)
               and locks.is_held(db, locks.STORE_WRITER)):
        assert p.poll() is None, p.stderr.read()
        assert time.monotonic() < deadline, "the daemon never took its roles"
        time.sleep(0.01)
    return p


def stop(p: subprocess.Popen) -> str:
    p.send_signal(signal.SIGTERM)
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    return err


def wait_applied(db: str, n: int) -> None:
    deadline = time.monotonic() + 60
    while applied(db) < n:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def slow_cfg(tmp) -> str:
    cfg = f"{tmp}/slow.toml"
    open(cfg, "w").write("[daemon]\nbatch_min = 16\nbatch_max = 16\nstatus_interval = 0.2\n")
    return cfg


def test_second_daemon_on_a_ring_is_refused_and_the_first_stores_every_record(shm_dir):
    n = 20000
    pls = payloads(n, seed=31)
    ring, db1, db2 = f"{shm_dir}/r.ring", f"{shm_dir}/one.db", f"{shm_dir}/two.db"
    filled_ring(ring, pls)
    first = start_daemon(ring, db1, slow_cfg(shm_dir))  # 16 records a batch: still draining
    try:
        r = run(["daemon", "--ring", ring, "--db", db2, "--once"])
        one_line(r, ring, "ring consumer already running", f"pid {first.pid}")
        assert not os.path.exists(db2)  # refused before the store was touched
        # recovery of the live ring takes the consumer role too; a read-only look does not
        r = run(["recover", "--ring", ring, "--db", db2, "--live"])
        one_line(r, "ring consumer already running", f"pid {first.pid}")
        assert run(["ring", "info", ring]).returncode == 0
        wait_applied(db1, n)
    finally:
        stop(first)
    assert seqs(db1) == list(range(1, n + 1))
    assert checkpoint(ring) == n
    assert diff(fingerprint(db1), reference(f"{shm_dir}/ref.db", pls)) == ""


def test_second_daemon_on_a_store_is_refused_at_start(shm_dir):
    pls = payloads(3000, seed=32)
    ring, copy, db = f"{shm_dir}/r.ring", f"{shm_dir}/copy.ring", f"{shm_dir}/s.db"
    filled_ring(ring, pls)
    shutil.copy(ring, copy)  # the same ring UUID at another path: the ring locks differ
    first = start_daemon(ring, db, slow_cfg(shm_dir))
    try:
        r = run(["daemon", "--ring", copy, "--db", db, "--once"])
        one_line(r, db, "store writer already running", f"pid {first.pid}")
        assert checkpoint(copy) == 0  # the refused daemon released nothing
        r = run(["recover", "--ring", copy, "--db", db])  # forensic: it writes the store
        one_line(r, "store writer already running", f"pid {first.pid}")
        wait_applied(db, 3000)
    finally:
        stop(first)
    assert diff(fingerprint(db), reference(f"{shm_dir}/ref.db", pls)) == ""


def test_second_producer_is_refused_but_a_consumer_may_run_beside_it(shm_dir):
    ring = f"{shm_dir}/p.ring"
    R.create(ring, 1 << 20)
    with R.Producer.open(ring, "fail") as prod:
        prod.note("one")
        r = run(["ring", "append", ring], input="two\n")
        one_line(r, "ring producer already running", f"pid {os.getpid()}")
        with R.Consumer.open(ring) as cons:  # the other role: allowed
            assert [x.payload for x in cons.read()] == [b"one"]
    with R.Producer.open(ring, "fail") as prod:  # close gave the role back
        assert prod.note("two") == 2


def test_ring_create_refuses_an_existing_ring_and_one_in_use(shm_dir):
    ring, db = f"{shm_dir}/c.ring", f"{shm_dir}/c.db"
    filled_ring(ring, payloads(2000, seed=33))
    before = sha(ring)
    r = run(["ring", "create", ring, "--size", "1M"])
    one_line(r, ring, "already exists", "--overwrite")
    assert sha(ring) == before
    daemon = start_daemon(ring, db, slow_cfg(shm_dir))
    try:
        r = run(["ring", "create", ring, "--size", "1M", "--overwrite"])
        one_line(r, "in use by a ring consumer", f"pid {daemon.pid}")
        assert daemon.poll() is None  # not killed (SIGBUS before: the file was truncated)
        wait_applied(db, 2000)
    finally:
        stop(daemon)
    assert seqs(db) == list(range(1, 2001))
    with R.Producer.open(ring, "fail"):
        r = run(["ring", "create", ring, "--size", "1M", "--overwrite"])
        one_line(r, "in use by a ring producer", f"pid {os.getpid()}")
    with R.Consumer.open(ring, readonly=True) as c:
        old_uuid = c.header.uuid_str
    r = run(["ring", "create", ring, "--size", "1M", "--overwrite"])
    assert r.returncode == 0, r.stderr
    with R.Consumer.open(ring, readonly=True) as c:
        assert c.header.uuid_str != old_uuid and c.checkpoint == 0 and c.read() == []
        assert os.path.getsize(ring) == 1 << 20
    assert not [x for x in os.listdir(shm_dir) if x.endswith(".new")]  # no temporary left


def test_force_never_releases_records_the_store_did_not_take(shm_dir):
    """The issue's case: a store of ring A at seq 20,000, ring B holding 5,000. Before, the
    daemon with --force skipped all 5,000 as "already applied", printed "applied 5000
    records" and released them; verify said OK."""
    ring_b, db = f"{shm_dir}/b.ring", f"{shm_dir}/other.db"
    reference(db, payloads(20000, seed=34), uuid="0f0f0f0f-0000-4000-8000-00000000000a")
    filled_ring(ring_b, payloads(5000, seed=35))
    db_before, ring_before = fingerprint(db), sha(ring_b)
    for args in (["daemon", "--ring", ring_b, "--db", db, "--once", "--force"],
                 ["recover", "--ring", ring_b, "--db", db, "--live", "--force"]):
        r = run(args)
        one_line(r, "belongs to ring", "holds its records up to seq 20000")
        assert "applied" not in r.stderr.split(":", 2)[1]
        assert checkpoint(ring_b) == 0 and sha(ring_b) == ring_before
        assert diff(fingerprint(db), db_before) == ""
    r = run(["verify", "--db", db])
    assert r.returncode == 0, r.stdout + r.stderr  # nothing of B was lost: B still holds it
    # ring B's records all go to a store of their own
    fresh = f"{shm_dir}/b.db"
    assert run(["daemon", "--ring", ring_b, "--db", fresh, "--once", "--quiet"]).returncode == 0
    assert seqs(fresh) == list(range(1, 5001)) and checkpoint(ring_b) == 5000


def test_force_rebinds_only_an_empty_store(shm_dir):
    ring, db = f"{shm_dir}/e.ring", f"{shm_dir}/e.db"
    Applier(db, "0f0f0f0f-0000-4000-8000-00000000000b").close()  # bound, holds nothing
    filled_ring(ring, payloads(300, seed=36), size=1 << 20)
    one_line(run(["daemon", "--ring", ring, "--db", db, "--once"]), "belongs to ring",
             "--force rebinds only a store that holds nothing yet")
    assert checkpoint(ring) == 0
    r = run(["daemon", "--ring", ring, "--db", db, "--once", "--force", "--quiet"])
    assert r.returncode == 0, r.stderr
    assert seqs(db) == list(range(1, 301)) and checkpoint(ring) == 300
    with R.Consumer.open(ring, readonly=True) as c:
        assert Applier(db, readonly=True).ring_uuid == c.header.uuid_str


def test_daemon_refuses_a_store_missing_released_records(shm_dir):
    """The issue's restart case: the ring's checkpoint is beyond the store's applied seq
    (another consumer released records this store never got). Before, the daemon carried on
    from the checkpoint and nothing ever said records were missing."""
    pls = payloads(3000, seed=37)
    ring, full, behind = f"{shm_dir}/g.ring", f"{shm_dir}/full.db", f"{shm_dir}/behind.db"
    filled_ring(ring, pls)
    with R.Consumer.open(ring, readonly=True) as c:
        uuid = c.header.uuid_str
    s = Applier(behind, uuid)
    s.apply([Record(i + 1, RecType.EVENT, 0, p) for i, p in enumerate(pls[:1000])])
    s.close()
    assert run(["daemon", "--ring", ring, "--db", full, "--once", "--quiet"]).returncode == 0
    assert checkpoint(ring) == 3000
    before = fingerprint(behind)
    r = run(["daemon", "--ring", ring, "--db", behind, "--once"])
    one_line(r, "records 1001..3000 were released", "provisor recover")
    assert diff(fingerprint(behind), before) == ""
    # and the store refuses a record that does not continue it, whoever calls apply
    s = Applier(behind, uuid)
    try:
        with pytest.raises(StoreError, match="records 1001..1001 are missing"):
            s.apply([Record(1002, RecType.EVENT, 0, pls[1001])])
        assert s.applied_seq == 1000
    finally:
        s.close()
