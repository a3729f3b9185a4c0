"""Fleet throughput: synthetic guests producing at full rate, one ``provisor daemon`` process
each, all into one PostgreSQL database (a namespace per guest), beside one guest alone into the
same server in the same run (the baseline).

Each guest's records are made before the clock starts (the producer only appends); the clock
runs from the producers' start until every daemon has stored and released its last record.
The lag is sampled every 0.1 s per guest: records appended to its ring and not yet released
by its daemon (released = committed, so this is the store's lag behind the guest).

    python bench/fleet.py [--guests 3] [--events 100000] [--db postgresql://...]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.daemon import cpu_model  # noqa: E402
from hv import synth  # noqa: E402
from pmem import ring as R  # noqa: E402
from pmem.layout import RecType  # noqa: E402

PROVISOR = [sys.executable, "-m", "provisor.cli"]


def produce(ring: str, pls: list[bytes], go, done) -> None:
    """A guest at full rate: append every record (blocking when the ring is full)."""
    with R.Producer.open(ring, "block") as p:
        go.wait()
        for i in range(0, len(pls), 64):
            p.append_many([(RecType.EVENT, x) for x in pls[i:i + 64]])
            done.value = i + len(pls[i:i + 64])


def released(ring: str) -> int:
    with R.Consumer.open(ring, readonly=True) as c:
        return c.checkpoint


def run(d: str, url: str, names: list[str], n: int, seed: int) -> dict:
    """Guests ``names`` at once; total events/s and each daemon's lag (records)."""
    ctx = mp.get_context("fork")
    go = ctx.Event()
    rings, procs, done = {}, [], {}
    for i, m in enumerate(names):
        pls = synth.payloads(n, seed + i)
        rings[m] = f"{d}/{m}.ring"
        R.create(rings[m], 16 << 20)  # smaller than the stream: the ring wraps
        done[m] = ctx.Value("q", 0)
        procs.append(ctx.Process(target=produce, args=(rings[m], pls, go, done[m])))
    for p in procs:
        p.start()
    daemons = [subprocess.Popen(PROVISOR + ["daemon", "--ring", rings[m], "--db", url,
                                            "--machine", m, "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for m in names]
    time.sleep(1.0)  # the daemons have opened their stores
    lags: dict[str, list[int]] = {m: [] for m in names}
    t0 = time.perf_counter()
    go.set()
    while True:
        rel = {m: released(rings[m]) for m in names}
        for m in names:
            lags[m].append(done[m].value - rel[m])
        if all(rel[m] >= n for m in names):
            break
        if any(p.poll() is not None for p in daemons):
            raise SystemExit("a daemon died: " + "".join(
                p.stderr.read().decode() for p in daemons if p.poll() is not None))
        time.sleep(0.1)
    secs = time.perf_counter() - t0
    for p in procs:
        p.join()
    for p in daemons:
        p.terminate()
        p.wait()
    return {"guests": len(names), "events": n * len(names), "seconds": secs,
            "total": n * len(names) / secs,
            "lag_max": max(max(v) for v in lags.values()),
            "lag_mean": statistics.mean(x for v in lags.values() for x in v)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--guests", type=int, default=3)
    ap.add_argument("--events", type=int, default=100_000, help="per guest")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--db", default=None, help="a PostgreSQL URL (default: a private cluster)")
    args = ap.parse_args()
    from store import pgcluster

    d = tempfile.mkdtemp(prefix="provisor-fleet-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                         else None)
    cluster = None
    try:
        if args.db:
            url = args.db
        else:
            cluster = pgcluster.temporary()
            cluster.start()
            url = cluster.createdb("fleet")
        one = run(d, url, ["solo"], args.events, args.seed)
        many = run(d, url, [f"g{i}" for i in range(args.guests)], args.events, args.seed)
    finally:
        if cluster is not None:
            pgcluster.remove(cluster)
        shutil.rmtree(d, ignore_errors=True)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; load {os.getloadavg()[0]:.2f}; PostgreSQL "
          f"(private cluster, synchronous_commit on); {args.events} events per guest")
    print()
    print("| run | events | seconds | events/s (all guests) | ratio to one guest | "
          "lag max (records) | lag mean |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in (one, many):
        print(f"| {r['guests']} guest{'s' if r['guests'] > 1 else ''} | {r['events']:,} | "
              f"{r['seconds']:.1f} | {r['total']:,.0f} | {r['total'] / one['total']:.2f} | "
              f"{r['lag_max']:,} | {r['lag_mean']:,.0f} |")


if __name__ == "__main__":
    main()
