"""Recovery speed: scan+validate and replay a full ring into a fresh DB, beside the daemon's
live ingest rate over the same ring, in one run.

    python bench/recovery.py [--size 64M] [--seed S]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.daemon import cpu_model  # noqa: E402
from daemon.service import Daemon  # noqa: E402
from hv import synth  # noqa: E402
from pmem import layout as L  # noqa: E402
from pmem import ring as R  # noqa: E402
from pmem.layout import RecType  # noqa: E402
from provisor.config import parse_size  # noqa: E402
from recovery.recover import recover  # noqa: E402


def fill(path: str, seed: int, size: int) -> int:
    """Fill the ring to the brim with one synthetic stream; returns the record count."""
    pls = synth.payloads(size // 150, seed)  # more than fits (records average ~200 bytes)
    n = 0
    with R.Producer.open(path, "fail") as p:
        try:
            for i in range(0, len(pls), 64):
                n += len(p.append_many([(RecType.EVENT, x) for x in pls[i:i + 64]]))
        except R.RingFull as full:
            n += len(full.acked)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="64M")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="provisor-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                         else None)
    try:
        ring = f"{d}/r.ring"
        R.create(ring, parse_size(args.size))
        t = time.perf_counter()
        n = fill(ring, args.seed, parse_size(args.size))
        fill_s = time.perf_counter() - t
        copy = f"{d}/copy.ring"
        shutil.copy(ring, copy)

        with R.Consumer.open(ring, readonly=True) as c:
            t = time.perf_counter()  # what the daemon and recovery read with (native scan)
            scanned = sum(1 for r in L.collect(c.buf, c.header)[0] if r.type != RecType.PAD)
            scan_rate = scanned / (time.perf_counter() - t)
            t = time.perf_counter()  # its specification, in Python
            py_scanned = sum(1 for r in L.scan(c.buf, c.header) if r.type != RecType.PAD)
            py_scan_rate = py_scanned / (time.perf_counter() - t)
        assert scanned == py_scanned == n, (scanned, py_scanned, n)

        with R.Consumer.open(ring, readonly=True) as c:
            t = time.perf_counter()
            found = len(L.salvage(c.buf, c.header).records)
            salvage_rate = found / (time.perf_counter() - t)
        assert found == n, (found, n)

        t = time.perf_counter()
        rep = recover(ring, f"{d}/rec.db", read_only=True)
        replay_rate = rep.records_replayed / (time.perf_counter() - t)
        assert rep.records_replayed == n and not rep.gaps

        t = time.perf_counter()
        rep = recover(ring, f"{d}/chain.db", read_only=True, salvage=False)
        chain_rate = rep.records_replayed / (time.perf_counter() - t)
        assert rep.records_replayed == n

        dm = Daemon(copy, f"{d}/live.db", batch_min=4096, batch_max=16384,
                    status_interval=1e9)
        t = time.perf_counter()
        dm.run(once=True)
        live_rate = n / (time.perf_counter() - t)
        dm.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; ring {args.size} full: {n:,} "
          f"records (filled in {fill_s:.1f}s)")
    print()
    print("| step | records/s | note |")
    print("|---|---:|---|")
    print(f"| scan + validate (CRC32C, sequence chain) | {scan_rate:,.0f} | goal >= 200,000 |")
    print(f"| the same with the Python scan (layout.scan) | {py_scan_rate:,.0f} | |")
    print(f"| salvage walk (every record by its own CRC, whole data area) | {salvage_rate:,.0f} "
          "| |")
    print(f"| recover: replay into a fresh DB (read-only image) | {replay_rate:,.0f} | "
          f"takes {live_rate / replay_rate:.2f}x the time of live ingest (goal <= 2x) |")
    print(f"| recover, chain only (salvage=False) | {chain_rate:,.0f} | the salvage walk costs "
          f"{chain_rate / replay_rate - 1:+.0%} |")
    print(f"| daemon: live ingest of the same ring | {live_rate:,.0f} | |")


if __name__ == "__main__":
    main()
