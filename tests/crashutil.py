"""Shared pieces of the crash tests: streams, rings, reference stores, DB comparison."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

from daemon.apply import Applier
from hv import synth
from pmem import ring as R
from pmem.layout import Record, RecType
from store import schema

# what must be equal between a crashed-and-recovered store and an uninterrupted one (the
# hash chain and batch count differ with batch boundaries, by design)
TABLES = ("events", "processes", "artifacts", "versions", "relations", "names", "fds",
          "proc_used", "pending", "losses", "notes")

PROVISOR = [sys.executable, "-m", "provisor.cli"]


def rows(db: str, sql: str, machine: str = "default") -> list[tuple]:
    """A statement's rows from a store on either backend (a SQLite file, a PostgreSQL URL)."""
    if db.startswith("postgresql://"):
        import psycopg

        from store import postgres

        with psycopg.connect(db) as c:
            c.execute(f'SET search_path TO "{postgres.namespace(machine)}"')
            return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r)
                    for r in c.execute(sql).fetchall()]
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def fingerprint(db: str, machine: str = "default", tables=TABLES) -> dict[str, list[tuple]]:
    """Every row of ``tables`` (sorted) and applied_seq: what must be equal between a crashed
    and recovered store and an uninterrupted one, on either backend."""
    out = {t: sorted(rows(db, schema.TABLES[t].select(), machine), key=repr) for t in tables}
    out["applied"] = rows(db, "SELECT value FROM meta WHERE key='applied_seq'", machine)
    if not db.startswith("postgresql://"):
        assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    return out


def diff(a: dict, b: dict) -> str:
    """A short description of the first difference ('' when equal)."""
    for t in a:
        if a[t] != b.get(t):
            ra, rb = set(a[t]), set(b.get(t, []))
            return (f"{t}: {len(a[t])} vs {len(b.get(t, []))} rows; only left "
                    f"{sorted(ra - rb)[:3]}, only right {sorted(rb - ra)[:3]}")
    return ""


def payloads(n: int, seed: int) -> list[bytes]:
    return synth.payloads(n, seed)


def filled_ring(path: str, pls: list[bytes], size: int = 8 << 20) -> None:
    R.create(path, size)
    with R.Producer.open(path, "fail") as p:
        for i in range(0, len(pls), 256):
            p.append_many([(RecType.EVENT, x) for x in pls[i:i + 256]])


def reference(db: str, pls: list[bytes], uuid: str = "") -> dict:
    """The store of an uninterrupted run over ``pls`` (sequence numbers 1..n)."""
    s = Applier(db, uuid or None)
    try:
        recs = [Record(i + 1, RecType.EVENT, 0, p) for i, p in enumerate(pls)]
        for i in range(0, len(recs), 1000):
            s.apply(recs[i:i + 1000])
    finally:
        s.close()
    return fingerprint(db)


def run(args: list[str], env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.pop("PROVISOR_FAULT", None)
    e.update(env or {})
    return subprocess.run(PROVISOR + args, env=e, capture_output=True, text=True, **kw)
