"""Daemon throughput: a synthetic stream through ring -> daemon -> store, end to end, beside the
ceiling of a bare ``executemany`` of the same event rows into the same table, in one run; beside
it, a bare executemany of every row the store holds at the end (what its volume alone costs).

Rows: the daemon with its native hot loop (provisor/native) and with the Python code
(``PROVISOR_NATIVE=0``) into SQLite, and with the native loop into PostgreSQL (a private
cluster, or ``--pg URL``), each beside its backend's ceiling. Each end-to-end run is a child
process on a fresh copy of the same ring and a new store.

    python bench/daemon.py [--events N] [--seed S] [--pg URL | --no-pg]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from daemon.apply import Applier  # noqa: E402
from hv import synth  # noqa: E402
from pmem import ring as R  # noqa: E402
from pmem.layout import RecType  # noqa: E402
from provisor.events import decode  # noqa: E402
from store import schema  # noqa: E402


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def end_to_end(ring: str, db: str) -> None:
    """(child) Drain ``ring`` into ``db`` once; print events/s and the store's counts."""
    from daemon.service import Daemon
    from provisor.native import mod

    dm = Daemon(ring, db, batch_min=4096, batch_max=16384, status_interval=1e9,
                machine_name="bench" if db.startswith("postgresql://") else None)
    n = dm.consumer.header.checkpoint_seq
    t = time.perf_counter()
    dm.run(once=True)
    secs = time.perf_counter() - t
    n = dm.consumer.header.checkpoint_seq - n
    counts = dm.store.counts()
    mode = dm.consumer.region.mode.value
    dm.close()
    print(json.dumps({"rate": n / secs, "events": n, "counts": counts, "mode": mode,
                      "native": mod is not None}))


def child(ring: str, d: str, db: str, native: bool) -> dict:
    """A fresh copy of the ring, drained by a new process into ``db``."""
    copy = f"{d}/run.ring"
    shutil.copyfile(ring, copy)
    os.chmod(copy, 0o600)
    env = {**os.environ, "PROVISOR_NATIVE": "1" if native else "0"}
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", copy, db],
                       env=env, capture_output=True, text=True)
    os.remove(copy)
    if r.returncode != 0:
        raise SystemExit(f"bench child failed: {r.stderr.strip().splitlines()[-1:]}")
    out = json.loads(r.stdout.splitlines()[-1])
    if out["native"] != native:
        raise SystemExit("the native module is not built (make native)" if native else
                         "PROVISOR_NATIVE=0 was not honoured")
    return out


def event_rows(pls: list[bytes]) -> list[tuple]:
    return [schema.event_row(decode(x, i + 1)) for i, x in enumerate(pls)]


def sqlite_ceiling(d: str, rows: list[tuple]) -> float:
    """The same event rows, bare executemany, one transaction, same schema and pragmas."""
    Applier(f"{d}/c.db", "x").close()
    conn = sqlite3.connect(f"{d}/c.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    t = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany(schema.EVENTS.insert("sqlite"), rows)
    conn.execute("COMMIT")
    rate = len(rows) / (time.perf_counter() - t)
    conn.close()
    return rate


def store_ceiling(d: str, db: str) -> tuple[float, int]:
    """Every row the daemon's store holds at the end (events, graph, attrs, chain, state),
    read back and written again by a bare executemany per table, one transaction: what the
    store's volume alone costs. Rows the daemon rewrote (state upserts) count once here.
    Returns (events/s, rows)."""
    src = sqlite3.connect(db)
    data = {t.name: src.execute(t.select()).fetchall() for t in schema.TABLES.values()
            if t.name != "meta"}
    n = src.execute("SELECT count(*) FROM events").fetchone()[0]
    src.close()
    Applier(f"{d}/s.db", "x").close()
    conn = sqlite3.connect(f"{d}/s.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    t = time.perf_counter()
    conn.execute("BEGIN")
    for name, rows in data.items():
        conn.executemany(schema.TABLES[name].insert("sqlite", replace=True), rows)
    conn.execute("COMMIT")
    rate = n / (time.perf_counter() - t)
    conn.close()
    return rate, sum(len(r) for r in data.values())


def pg_ceiling(url: str, rows: list[tuple]) -> float:
    """The same rows into a PostgreSQL namespace made by the store's own DDL."""
    import psycopg

    from store import postgres

    with psycopg.connect(url) as c:
        postgres.create(c, postgres.namespace("ceiling"), "ceiling")
        c.execute(f'SET search_path TO "{postgres.namespace("ceiling")}"')
        t = time.perf_counter()
        with c.transaction():
            c.cursor().executemany(schema.EVENTS.insert("postgresql"), rows)
        return len(rows) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--pg", default=None, help="a PostgreSQL URL (default: a private cluster)")
    ap.add_argument("--no-pg", action="store_true", help="SQLite only")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        end_to_end(*args.child)
        return
    n = args.events
    d = tempfile.mkdtemp(prefix="provisor-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                         else None)
    cluster = None
    try:
        pls = synth.payloads(n, args.seed)
        ring = f"{d}/b.ring"
        R.create(ring, max(64 << 20, sum(len(p) + 64 for p in pls) + (1 << 20)))
        with R.Producer.open(ring, "fail") as p:
            t = time.perf_counter()
            for i in range(0, n, 64):
                p.append_many([(RecType.EVENT, x) for x in pls[i:i + 64]])
            produce = n / (time.perf_counter() - t)
        rows = event_rows(pls)
        table = []
        for native in (True, False):
            db = f"{d}/{'n' if native else 'p'}.db"
            got = child(ring, d, db, native)
            table.append((f"ring -> daemon -> SQLite, {'native' if native else 'Python'} "
                          "hot loop", got))
        store_counts, mode = table[0][1]["counts"], table[0][1]["mode"]
        ceiling = sqlite_ceiling(d, rows)
        whole, whole_rows = store_ceiling(d, f"{d}/n.db")
        pg = None
        if not args.no_pg:
            url = args.pg
            if url is None:
                from store import pgcluster

                cluster = pgcluster.temporary()
                cluster.start()
                url = cluster.createdb("bench")
            pg = (child(ring, d, url, True), pg_ceiling(url, rows))
    finally:
        if cluster is not None:
            from store import pgcluster

            pgcluster.remove(cluster)
        shutil.rmtree(d, ignore_errors=True)

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()},"
          f" SQLite {sqlite3.sqlite_version}; load {os.getloadavg()[0]:.2f}; ring mode {mode}; "
          f"{n} events")
    print(f"store: {store_counts['events']} events, {store_counts['relations']} relations, "
          f"{store_counts['processes']} processes, {store_counts['artifacts']} artifacts")
    print()
    print("| path | events/s | ratio to its ceiling |")
    print("|---|---:|---:|")
    print(f"| producer: append_many(64) into the ring | {produce:,.0f} | |")
    for label, got in table:
        print(f"| {label} | {got['rate']:,.0f} | {got['rate'] / ceiling:.2f} |")
    print(f"| ceiling: bare executemany of the event rows into SQLite | {ceiling:,.0f} | 1.00 |")
    print(f"| bare executemany of every row the store holds ({whole_rows:,}) into SQLite | "
          f"{whole:,.0f} | {whole / ceiling:.2f} |")
    if pg is not None:
        got, pceil = pg
        print(f"| ring -> daemon -> PostgreSQL, native hot loop | {got['rate']:,.0f} | "
              f"{got['rate'] / pceil:.2f} |")
        print(f"| ceiling: bare executemany of the event rows into PostgreSQL | {pceil:,.0f} "
              "| 1.00 |")


if __name__ == "__main__":
    main()
