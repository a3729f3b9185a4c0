"""The PostgreSQL store keeps the SQLite store's contract, on a real server: the same rows for
the same stream (table by table, the hash chain included), resume after a restart, one writer
per machine, machines apart in one database, and daemons of three rings SIGKILLed at random
moments ending equal to uninterrupted runs."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest
from crashutil import PROVISOR, TABLES, diff, fingerprint, payloads, reference, run

from daemon.apply import Applier, StoreError
from pmem.layout import Record, RecType
from provisor.errors import ProvisorError

# beside the crash tables: what must also be equal when the batches are the same
CHAINED = ("chain", "attrs", "meta")


def pg_fingerprint(url: str, machine: str, tables=TABLES) -> dict[str, list[tuple]]:
    """crashutil.fingerprint, read from one machine's namespace."""
    return fingerprint(url, machine, tables)


def sqlite_rows(db: str, tables) -> dict[str, list[tuple]]:
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                for t in tables}
    finally:
        conn.close()


def apply_all(path: str, pls: list[bytes], machine: str | None = None, step: int = 1000,
              start: int = 0, uuid: str | None = None) -> None:
    s = Applier(path, uuid, machine=machine)
    try:
        recs = [Record(i + 1, RecType.EVENT, 0, p) for i, p in enumerate(pls)]
        for i in range(start, len(recs), step):
            s.apply(recs[i:i + step])
    finally:
        s.close()


@pytest.mark.parametrize("seed", [3, 17])
def test_same_stream_same_rows_as_sqlite(tmp_path, pg_url, seed):
    """Every table, the chain rows and their digests included, equals SQLite's for the same
    stream in the same batches: one schema declaration, one chain, two backends."""
    pls = payloads(6000, seed)
    apply_all(str(tmp_path / "s.db"), pls, uuid="u-1")
    apply_all(pg_url, pls, machine="m1", uuid="u-1")
    want = sqlite_rows(str(tmp_path / "s.db"), TABLES + ("chain", "attrs"))
    got = pg_fingerprint(pg_url, "m1", TABLES + ("chain", "attrs"))
    got.pop("applied")
    assert diff(got, want) == ""
    assert sum(len(v) for v in got.values()) > 6000


def test_attrs_order_is_kept_by_its_rowid_column(pg_url):
    """attrs has no key; the order its rows were written is its ``rowid`` column, not the
    heap's order (a row too long for a page's free space goes to a new page and a later, shorter
    one may fill the gap; CLUSTER or VACUUM FULL rewrite the heap in another order): verify's
    chained attrs stay in the order written. A namespace made before that column gets it on the
    owner's next open, numbered in heap order."""
    import psycopg

    from examiner import verify

    apply_all(pg_url, payloads(1200, 8), machine="m", uuid="u")
    with psycopg.connect(pg_url) as c:
        c.execute('SET search_path TO "provisor_m"')
        c.execute("CLUSTER attrs USING attrs_node")  # the heap in (node, key) order
        heap = c.execute("SELECT node, key, value, seq FROM attrs ORDER BY ctid").fetchall()
        written = c.execute("SELECT node, key, value, seq FROM attrs ORDER BY rowid").fetchall()
        assert sorted(heap) == sorted(written) and heap != written
    rep = verify.run(pg_url, machine="m")
    assert rep.ok, verify.render(rep)
    with psycopg.connect(pg_url) as c:
        c.execute('ALTER TABLE "provisor_m".attrs DROP COLUMN rowid')  # an earlier provisor's
    Applier(pg_url, "u", machine="m").close()  # the owner's open migrates
    with psycopg.connect(pg_url) as c:
        c.execute('SET search_path TO "provisor_m"')
        assert c.execute("SELECT node, key, value, seq FROM attrs ORDER BY rowid"
                         ).fetchall() == heap


def test_resume_after_restart_equals_one_run(pg_url, tmp_path):
    """Closing and reopening the store between batches (the daemon restarted) rebuilds the
    analyzer's state from PostgreSQL: the result equals one uninterrupted run."""
    pls = payloads(5000, 9)
    ref = reference(str(tmp_path / "ref.db"), pls)
    recs = [Record(i + 1, RecType.EVENT, 0, p) for i, p in enumerate(pls)]
    for i in range(0, len(recs), 700):  # a new Applier per batch, and each batch twice
        for _ in range(2):
            s = Applier(pg_url, machine="r")
            try:
                s.apply(recs[i:i + 700])
            finally:
                s.close()
    got = pg_fingerprint(pg_url, "r")
    assert diff(got, ref) == ""
    assert got["applied"] == [("5000",)]


def test_one_writer_per_machine_machines_apart(pg_url):
    """A second writer of the same machine is refused while the first holds it; another
    machine of the same database is not; each machine's rows are its own."""
    a = Applier(pg_url, machine="a")
    try:
        with pytest.raises(StoreError, match="another writer"):
            Applier(pg_url, machine="a")
        b = Applier(pg_url, machine="b")
        try:
            recs = [Record(i + 1, RecType.EVENT, 0, p) for i, p in enumerate(payloads(500, 1))]
            a.apply(recs)
            b.apply(recs[:100])
        finally:
            b.close()
    finally:
        a.close()
    assert len(pg_fingerprint(pg_url, "a")["events"]) == 500
    assert len(pg_fingerprint(pg_url, "b")["events"]) == 100
    with pytest.raises(ProvisorError, match="machine name"):
        Applier(pg_url, machine="Bad-Name")
    with pytest.raises(StoreError, match="names machine"):
        Applier(pg_url + "&machine=a", machine="b")


def test_bad_url_is_one_line(tmp_path):
    r = run(["daemon", "--ring", str(tmp_path / "none.ring"), "--db",
             f"postgresql://nobody@/x?host={tmp_path}&port=1", "--once"])
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


@pytest.mark.slow
def test_three_rings_daemons_killed_equal_uninterrupted(shm_dir, pg_url, tmp_path):
    """Three guests' rings (synthetic producers at a steady rate), one daemon each into one
    PostgreSQL database, each daemon SIGKILLed at random moments and restarted: each machine's
    tables equal an uninterrupted run over its stream, and the machines never mix."""
    cfg = tmp_path / "small.toml"
    cfg.write_text("[daemon]\nbatch_min = 16\nbatch_max = 64\nstatus_interval = 0.2\n")
    env = dict(os.environ, PROVISOR_CONFIG=str(cfg))
    env.pop("PROVISOR_FAULT", None)
    n = 9000
    guests = {m: (f"{shm_dir}/{m}.ring", seed) for m, seed in (("a", 21), ("b", 22), ("c", 23))}
    producers = []
    for ring, seed in guests.values():
        assert run(["ring", "create", ring, "--size", "8M"]).returncode == 0
        producers.append(subprocess.Popen(
            PROVISOR + ["synth", "--ring", ring, "--events", str(n), "--seed", str(seed),
                        "--rate", "1500", "--batch", "8"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    rng = random.Random(99)
    kills = {m: 0 for m in guests}
    daemons: dict[str, subprocess.Popen] = {}

    def start(m: str) -> None:
        daemons[m] = subprocess.Popen(
            PROVISOR + ["daemon", "--ring", guests[m][0], "--db", pg_url, "--machine", m,
                        "--quiet"], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)

    for m in guests:
        start(m)
    deadline = time.monotonic() + 240
    while any(p.poll() is None for p in producers) and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.2, 0.7))
        m = sorted(guests)[sum(kills.values()) % 3]  # each in turn, at a random moment
        p = daemons[m]
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills[m] += 1
        else:
            err = p.stderr.read().decode(errors="replace") if p.stderr else ""
            pytest.fail(f"daemon {m} exited {p.returncode}: {err}")
        start(m)
    for p in producers:
        assert p.wait(timeout=60) == 0
    for m, p in daemons.items():  # one last kill, then a drain of what is left
        p.send_signal(signal.SIGKILL)
        p.wait()
        r = run(["daemon", "--ring", guests[m][0], "--db", pg_url, "--machine", m, "--once",
                 "--quiet"])
        assert r.returncode == 0, r.stderr
    assert all(k >= 2 for k in kills.values()), kills
    for m, (_ring, seed) in guests.items():
        ref = reference(str(tmp_path / f"ref-{m}.db"), payloads(n, seed))
        got = pg_fingerprint(pg_url, m)
        assert diff(got, ref) == "", m
        assert got["applied"] == [(str(n),)]


def test_recovery_replays_into_postgresql(shm_dir, pg_url, tmp_path):
    """`provisor recover` into PostgreSQL: what the daemon had not stored is replayed exactly
    once; a second recovery adds nothing."""
    from crashutil import filled_ring

    pls = payloads(4000, 5)
    ring = f"{shm_dir}/r.ring"
    filled_ring(ring, pls)
    # the daemon stored the first 1500 records before the host crashed
    from pmem import ring as R

    with R.Consumer.open(ring, readonly=True) as c:
        uuid = c.header.uuid_str
    apply_all(pg_url, pls[:1500], machine="g", uuid=uuid)
    for _ in range(2):
        r = run(["recover", "--ring", ring, "--db", pg_url, "--machine", "g", "--read-only"])
        assert r.returncode == 0, r.stderr
    ref = reference(str(tmp_path / "ref.db"), pls, uuid)
    assert diff(pg_fingerprint(pg_url, "g"), ref) == ""
    assert fingerprint  # the SQLite side's reader stays the reference's
