"""The daemon SIGKILLed at random moments and at the exactly-once boundaries, restarted each
time: the final store equals the store of an uninterrupted run over the same stream."""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
import time

import pytest
from crashutil import PROVISOR, diff, filled_ring, fingerprint, payloads, reference, run

from daemon.apply import Applier
from pmem import layout as L
from pmem import ring as R

N = 12000


@pytest.fixture
def small_batches(tmp_path):
    cfg = tmp_path / "small.toml"
    cfg.write_text("[daemon]\nbatch_min = 16\nbatch_max = 64\nstatus_interval = 0.2\n")
    return str(cfg)


def db_state(db: str) -> tuple[int, int]:
    """(applied_seq, committed batches) of a store; (0, 0) before it exists."""
    if not os.path.exists(db):
        return 0, 0
    conn = sqlite3.connect(db)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN "
                                 "('applied_seq', 'batches')"))
        return int(meta.get("applied_seq", 0)), int(meta.get("batches", 0))
    finally:
        conn.close()


def header_copies(ring: str) -> list[bytes]:
    with open(ring, "rb") as f:
        raw = f.read(L.HEADER_SLOT + L.HEADER_LEN)
    return [raw[o:o + L.HEADER_LEN] for o in (0, L.HEADER_SLOT)]


def checkpoint(ring: str) -> int:
    with R.Consumer.open(ring, readonly=True) as c:
        return c.checkpoint


def torn_now(before: list[bytes], after: list[bytes]) -> bool:
    """A header copy written during the run that has its magic but not its checksum: the trace
    of a release cut short between its two stores."""
    return any(a != b and a[:8] == L.MAGIC and isinstance(L.unpack_header(a), str)
               for a, b in zip(after, before, strict=True))


def what_happened(k: int, before: tuple[int, int], after: tuple[int, int], cp: int,
                  torn: bool) -> str:
    """The crash point that the DB and the ring show after a daemon run SIGKILLed by the
    fault point at its k-th hit. before_commit: k-1 batches committed (the k-th rolled back);
    after_commit: k committed, the last one not released; mid_release: the same, and a torn
    header copy."""
    committed = after[1] - before[1]
    if committed == k - 1 and cp <= after[0] and not torn:
        return "before_commit"
    if committed == k and cp < after[0]:
        return "mid_release" if torn else "after_commit"
    return (f"unexplained (k={k}: {committed} commits, checkpoint {cp}, applied {after[0]}, "
            f"torn {torn})")


@pytest.mark.slow
def test_daemon_killed_50_times_equals_uninterrupted(shm_dir, small_batches):
    """A synthetic guest produces at a steady rate while the daemon is killed over and over
    (at random moments, and exactly before a commit, after a commit before the release, and in
    the middle of the release's header write). Where each kill landed is read back from the
    DB and the ring, not taken from the fault that was asked for."""
    n = 36000
    ring, db = f"{shm_dir}/k.ring", f"{shm_dir}/k.db"
    assert run(["ring", "create", ring, "--size", "16M"]).returncode == 0
    producer = subprocess.Popen(
        PROVISOR + ["synth", "--ring", ring, "--events", str(n), "--seed", "11",
                    "--rate", "700", "--batch", "8"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rng = random.Random(1234)
    faults = ["before_commit", "after_commit", "mid_release"]
    killed: dict[str, int] = {}
    applied: list[int] = []
    env = {"PROVISOR_CONFIG": small_batches}
    for i in range(54):
        before, copies = db_state(db), header_copies(ring)
        if i % 3 == 0:  # a deterministic crash point, at a random batch
            kind, k = faults[(i // 3) % 3], rng.randint(1, 20)
            r = run(["daemon", "--ring", ring, "--db", db, "--quiet"],
                    {**env, "PROVISOR_FAULT": f"{kind}:{k}"}, timeout=60)
            assert r.returncode == -signal.SIGKILL, r.stderr
            seen = what_happened(k, before, db_state(db), checkpoint(ring),
                                 torn_now(copies, header_copies(ring)))
        else:  # SIGKILL at a random moment
            p = subprocess.Popen(PROVISOR + ["daemon", "--ring", ring, "--db", db, "--quiet"],
                                 env=dict(os.environ, **env), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.5, 1.4))
            alive = p.poll() is None
            p.send_signal(signal.SIGKILL)
            p.wait()
            seen = ("random" if alive and p.returncode == -signal.SIGKILL
                    else f"not running when killed (exit {p.returncode})")
        killed[seen] = killed.get(seen, 0) + 1
        applied.append(db_state(db)[0])
    assert producer.wait(timeout=120) == 0
    r = run(["daemon", "--ring", ring, "--db", db, "--once", "--quiet"])
    assert r.returncode == 0, r.stderr
    # the kills landed while there was work: the applied sequence kept moving between them
    assert sum(1 for a, b in zip(applied, applied[1:], strict=False) if b > a) >= 25, applied
    assert applied[-1] < n
    ref = reference(f"{shm_dir}/ref.db", payloads(n, seed=11))
    got = fingerprint(db)
    assert diff(got, ref) == ""
    assert int(got["applied"][0][0]) == n
    assert killed == {"random": 36, "before_commit": 6, "after_commit": 6, "mid_release": 6}


def wait_stopped(pid: int, timeout: float = 30.0) -> None:
    """Until ``pid`` is in state T (it SIGSTOPped itself at a PROVISOR_FAULT=...:stop point)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rpartition(")")[2].split()[0] == "T":
                return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} never reached its stop point")


SUMMARY = re.compile(r"^applied (\d+) records in (\d+) batches \(applied seq (\d+)\); "
                     r"store: (.*)$", re.M)


def test_sigterm_finishes_batch_and_exits_zero(shm_dir, small_batches):
    """SIGTERM while a batch is in flight (its rows written, not yet committed: the daemon is
    stopped there by a fault point, signalled, then continued): that batch is committed and
    released, no further batch is started, the exit is 0 with the stop message and a summary
    that matches the store, and the rest is still in the ring for the next run."""
    n, k = 3000, 10  # the 10th batch is in flight: about 560 records in (16, 32, then 64s)
    pls = payloads(n, seed=3)
    ring, db = f"{shm_dir}/t.ring", f"{shm_dir}/t.db"
    filled_ring(ring, pls)
    p = subprocess.Popen(PROVISOR + ["daemon", "--ring", ring, "--db", db],
                         env=dict(os.environ, PROVISOR_CONFIG=small_batches,
                                  PROVISOR_FAULT=f"before_commit:{k}:stop"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_stopped(p.pid)
        p.send_signal(signal.SIGTERM)  # pending until it runs again
        p.send_signal(signal.SIGCONT)
        _out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert "signal 15: finishing the batch" in err, err
    m = SUMMARY.search(err)
    assert m, err
    records, batches, applied = int(m[1]), int(m[2]), int(m[3])
    summary_counts = {kv.rpartition(" ")[0]: int(kv.rpartition(" ")[2])
                      for kv in m[4].split(", ")}
    # the in-flight batch (the k-th) was committed, and nothing after it was started
    conn = sqlite3.connect(db)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        chain = conn.execute("SELECT batch, last_seq FROM chain ORDER BY batch").fetchall()
        max_seq = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
    finally:
        conn.close()
    assert [b for b, _ in chain] == list(range(1, k + 1)) and int(meta["batches"]) == k
    assert int(meta["applied_seq"]) == chain[-1][1] == max_seq == applied
    assert chain[-2][1] < applied < n  # the k-th batch added records; some are left
    assert (records, batches) == (applied, k)
    st = Applier(db, readonly=True)
    try:
        assert summary_counts == st.counts()
    finally:
        st.close()
    assert diff(fingerprint(db), reference(f"{shm_dir}/ref1.db", pls[:applied])) == ""
    # released exactly that far; the rest is still in the ring, unchanged
    with R.Consumer.open(ring, readonly=True) as c:
        assert c.checkpoint == applied
    left = [(r.seq, r.payload) for r in R.iter_records(ring)]
    assert left == [(s, pls[s - 1]) for s in range(applied + 1, n + 1)]
    # and the next run applies the rest
    r = run(["daemon", "--ring", ring, "--db", db, "--once", "--quiet"])
    assert r.returncode == 0, r.stderr
    assert diff(fingerprint(db), reference(f"{shm_dir}/ref.db", pls)) == ""


@pytest.mark.parametrize("seed", [2, 11])
def test_restart_after_any_batch_equals_one_run(store_db, request, tmp_path, seed):
    """The state a restarted daemon rebuilds from the store (daemon/apply.py ``_load``) is the
    state it had: a daemon restarted after every batch, batches of random sizes, writes the
    store of one uninterrupted run. (A pipe write a reader saw before the writer's exit is
    the case the relations alone do not tell: its attrs row ``early_write`` does.)"""
    pls = payloads(3000, seed)
    if store_db.startswith("postgresql://"):
        ref_db = request.getfixturevalue("pg_cluster").createdb(f"ref{os.getpid()}_{seed}")
    else:
        ref_db = str(tmp_path / "ref.db")
    want = reference(ref_db, pls, "u")
    recs = [L.Record(i + 1, L.RecType.EVENT, 0, p) for i, p in enumerate(pls)]
    rnd, i = random.Random(seed), 0
    while i < len(recs):
        n = rnd.randint(1, 97)
        s = Applier(store_db, "u")
        try:
            s.apply(recs[i:i + n])
        finally:
            s.close()
        i += n
    got = fingerprint(store_db)
    assert not diff(want, got), diff(want, got)
