"""Daemon throughput: a synthetic stream through ring -> daemon -> SQLite, end to end, beside
the ceiling of a bare ``executemany`` of the same event rows into the same table, in one run.

    python bench/daemon.py [--events N] [--seed S]
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from daemon.apply import Applier  # noqa: E402
from daemon.service import Daemon  # noqa: E402
from hv import synth  # noqa: E402
from pmem import ring as R  # noqa: E402
from pmem.layout import RecType  # noqa: E402
from provisor.events import decode  # noqa: E402


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    n = args.events
    d = tempfile.mkdtemp(prefix="provisor-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                         else None)
    pls = synth.payloads(n, args.seed)
    ring = f"{d}/b.ring"
    R.create(ring, max(64 << 20, sum(len(p) + 64 for p in pls) + (1 << 20)))
    with R.Producer.open(ring, "fail") as p:
        t = time.perf_counter()
        for i in range(0, n, 64):
            p.append_many([(RecType.EVENT, x) for x in pls[i:i + 64]])
        produce = n / (time.perf_counter() - t)

    dm = Daemon(ring, f"{d}/b.db", batch_min=4096, batch_max=16384, status_interval=1e9)
    t = time.perf_counter()
    dm.run(once=True)
    end_to_end = n / (time.perf_counter() - t)
    counts = dm.store.counts()
    mode = dm.consumer.region.mode.value
    dm.close()

    # the ceiling: the same event rows, bare executemany, one transaction, same schema
    Applier(f"{d}/c.db", "x").close()
    evs = [decode(x, i + 1) for i, x in enumerate(pls)]
    rows = [(e.seq, e.ts_ns, e.vcpu, "exit" if e.phase else "entry", e.entry_seq or None, e.nr,
             e.name, e.tgid, e.pid, e.ppid, e.uid, e.start_time, e.comm, e.cwd,
             "\n".join(e.paths) or None, e.ret, e.flags, e.payload) for e in evs]
    conn = sqlite3.connect(f"{d}/c.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    t = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.execute("COMMIT")
    ceiling = n / (time.perf_counter() - t)
    conn.close()
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    os.rmdir(d)

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()},"
          f" SQLite {sqlite3.sqlite_version}; ring mode {mode}; {n} events")
    print(f"store: {counts['events']} events, {counts['relations']} relations, "
          f"{counts['processes']} processes, {counts['artifacts']} artifacts")
    print()
    print("| path | events/s | ratio to ceiling |")
    print("|---|---:|---:|")
    print(f"| producer: append_many(64) into the ring | {produce:,.0f} | |")
    print(f"| ring -> daemon -> SQLite (end to end) | {end_to_end:,.0f} | "
          f"{end_to_end / ceiling:.2f} |")
    print(f"| ceiling: bare executemany of the event rows | {ceiling:,.0f} | 1.00 |")


if __name__ == "__main__":
    main()
