"""Ring throughput against the bare mapping it lives in.

What the format costs: records/s for ``append`` (one persist per record), ``append_many`` (one
persist per batch of 64) and consumer read+release, next to ceilings that write the very same
record bytes into the same mapping with no format at all (no CRC, no header, no space
accounting) and the same persist calls: once per record, or once per 64. Prints a Markdown
table, the region mode and the machine. Usage: ``python bench/ring.py [--seconds 2] [--path P]``
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.daemon import cpu_model  # noqa: E402
from pmem import layout as L  # noqa: E402
from pmem import ring  # noqa: E402
from pmem.layout import RecType  # noqa: E402
from pmem.region import Region  # noqa: E402

BATCH = 64



def timed(seconds: float, step: Callable[[], int]) -> float:
    """Call ``step`` (which returns how many records it did) for ~``seconds``; records/s."""
    n, t0 = 0, time.perf_counter()
    while True:
        n += step()
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", default=f"/dev/shm/provisor-bench-{os.getpid()}.ring")
    ap.add_argument("--size", default=256 << 20, type=int, help="ring image bytes")
    ap.add_argument("--seconds", default=2.0, type=float, help="per measurement")
    args = ap.parse_args()
    rng = random.Random(42)
    payloads = [rng.randbytes(rng.randint(128, 256)) for _ in range(4096)]
    mean = sum(L.padded(len(p)) for p in payloads) / len(payloads)
    secs = args.seconds
    # no measurement may fill the ring: fresh ring per producer measurement, and a cap
    cap = int((args.size - L.DATA_OFFSET) * 0.9 / mean)
    rows: list[tuple[str, str, float]] = []
    path = args.path
    try:
        # -- ring: append, one persist per record ---------------------------------------
        ring.create(path, args.size)
        with ring.Producer.open(path, "fail") as prod:
            mode = prod.region.mode
            i = 0

            def one() -> int:
                nonlocal i
                prod.append(RecType.EVENT, payloads[i & 4095])
                i += 1
                if i >= cap:
                    raise SystemExit("ring too small for --seconds; raise --size")
                return 1

            rows.append(("ring `append`", "1 per record", timed(secs, lambda: sum(
                one() for _ in range(256)))))

        # -- ring: append_many, one persist per 64 ----------------------------------------
        ring.create(path, args.size, overwrite=True)
        with ring.Producer.open(path, "fail") as prod:
            batches = [[(RecType.EVENT, payloads[(j * BATCH + k) & 4095]) for k in range(BATCH)]
                       for j in range(4096 // BATCH)]
            j = 0

            def many() -> int:
                nonlocal j
                prod.append_many(batches[j % len(batches)])
                j += 1
                if j * BATCH >= cap:
                    raise SystemExit("ring too small for --seconds; raise --size")
                return BATCH

            rows.append((f"ring `append_many` ({BATCH})", f"1 per {BATCH}", timed(secs, many)))
            filled = j * BATCH

        # -- ring: consumer read + release (what append_many just wrote) ------------------
        with ring.Consumer.open(path) as cons:
            done = 0

            def consume() -> int:
                nonlocal done
                recs = cons.read(256)
                if not recs:
                    return 0
                cons.release(recs[-1].seq, cons.next_off)
                done += len(recs)
                return len(recs)

            t0 = time.perf_counter()
            while done < filled and time.perf_counter() - t0 < secs:
                consume()
            rows.append(("ring consumer `read(256)` + `release`", "1 per 256 (header)",
                         done / (time.perf_counter() - t0)))

        # -- ceilings: the same record bytes, same mapping, no format ------------------------
        uid = bytes(16)
        encoded = []
        for s, p in enumerate(payloads, 1):
            body, seqb = L.encode_record(uid, s, RecType.EVENT, p)
            encoded.append(seqb + body)
        region = Region(path)
        buf, data, size = region.buf, L.DATA_OFFSET, args.size - L.DATA_OFFSET
        try:
            off = 0

            def bare_one() -> int:
                nonlocal off
                for k in range(256):
                    rec = encoded[k]
                    if off + len(rec) > size:
                        off = 0
                    buf[data + off:data + off + len(rec)] = rec
                    region.persist(data + off, len(rec))
                    off += len(rec)
                return 256

            rows.append(("ceiling: bare copy", "1 per record", timed(secs, bare_one)))
            off = 0

            def bare_many() -> int:
                nonlocal off
                for b in range(4):
                    start = off
                    for k in range(BATCH):
                        rec = encoded[b * BATCH + k]
                        if off + len(rec) > size:
                            region.persist(data + start, off - start)
                            off = start = 0
                        buf[data + off:data + off + len(rec)] = rec
                        off += len(rec)
                    region.persist(data + start, off - start)
                return 4 * BATCH

            rows.append(("ceiling: bare copy", f"1 per {BATCH}", timed(secs, bare_many)))
            off = 0

            def bare_read() -> int:
                nonlocal off
                for k in range(256):
                    n = len(encoded[k])
                    if off + n > size:
                        off = 0
                    bytes(buf[data + off:data + off + n])
                    off += n
                return 256

            rows.append(("ceiling: bare read", "none", timed(secs, bare_read)))
        finally:
            region.close()
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass

    ceil = {"1 per record": rows[3][2], f"1 per {BATCH}": rows[4][2]}
    vs = [rows[0][2] / ceil["1 per record"], rows[1][2] / ceil[f"1 per {BATCH}"],
          rows[2][2] / rows[5][2], 1.0, 1.0, 1.0]
    ref = ["bare copy, 1 per record", f"bare copy, 1 per {BATCH}", "bare read", "", "", ""]
    print(f"Ring benchmark: records of 128-256 payload bytes ({mean:.0f} bytes on the ring "
          f"on average), {secs:g} s per row\n")
    print(f"- region: `{path}`, mode **{mode.value}**: {mode.describe()}")
    print(f"- machine: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}"
          f", {platform.system()} {platform.release()}; load average "
          f"{os.getloadavg()[0]:.1f} (figures are noisy when other work runs)\n")
    print("| workload | persist calls | records/s | MB/s | vs ceiling |")
    print("|---|---|---:|---:|---|")
    for (name, persist, rate), r, what in zip(rows, vs, ref, strict=True):
        ratio = f"{r:.0%} of {what}" if what else "(ceiling)"
        print(f"| {name} | {persist} | {rate:,.0f} | {rate * mean / 1e6:,.1f} | {ratio} |")
    print("\nCeilings write the same encoded record bytes to the same mapping and persist "
          "them with the same calls, without CRC, record header encoding, space accounting "
          "or the zero trailer; the read ceiling copies the bytes out without checking them.")


if __name__ == "__main__":
    main()
