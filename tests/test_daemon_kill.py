"""The daemon SIGKILLed at random moments and at the exactly-once boundaries, restarted each
time: the final store equals the store of an uninterrupted run over the same stream."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest
from crashutil import PROVISOR, diff, filled_ring, fingerprint, payloads, reference, run

N = 12000


@pytest.fixture
def small_batches(tmp_path):
    cfg = tmp_path / "small.toml"
    cfg.write_text("[daemon]\nbatch_min = 16\nbatch_max = 64\nstatus_interval = 0.2\n")
    return str(cfg)


@pytest.mark.slow
def test_daemon_killed_50_times_equals_uninterrupted(shm_dir, small_batches):
    """A synthetic guest produces at a steady rate while the daemon is killed over and over
    (at random moments, and exactly before a commit, after a commit before the release, and in
    the middle of the release's header write)."""
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
        if i % 3 == 0:  # a deterministic crash point, at a random batch
            kind = faults[(i // 3) % 3]
            r = run(["daemon", "--ring", ring, "--db", db, "--quiet"],
                    {**env, "PROVISOR_FAULT": f"{kind}:{rng.randint(1, 20)}"}, timeout=60)
            assert r.returncode == -signal.SIGKILL, r.stderr
        else:  # SIGKILL at a random moment
            kind = "random"
            p = subprocess.Popen(PROVISOR + ["daemon", "--ring", ring, "--db", db, "--quiet"],
                                 env=dict(os.environ, **env), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.5, 1.4))
            p.send_signal(signal.SIGKILL)
            p.wait()
        killed[kind] = killed.get(kind, 0) + 1
        if os.path.exists(db):
            applied.append(fingerprint_applied(db))
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


def fingerprint_applied(db: str) -> int:
    import sqlite3
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT value FROM meta WHERE key='applied_seq'").fetchone()[0])
    finally:
        conn.close()


def test_sigterm_finishes_batch_and_exits_zero(shm_dir, small_batches):
    pls = payloads(3000, seed=3)
    ring, db = f"{shm_dir}/t.ring", f"{shm_dir}/t.db"
    filled_ring(ring, pls)
    p = subprocess.Popen(PROVISOR + ["daemon", "--ring", ring, "--db", db],
                         env=dict(os.environ, PROVISOR_CONFIG=small_batches),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "applied" in err
    # whatever it applied is released, and the rest is applied by the next run
    r = run(["daemon", "--ring", ring, "--db", db, "--once", "--quiet"])
    assert r.returncode == 0
    assert diff(fingerprint(db), reference(f"{shm_dir}/ref.db", pls)) == ""
