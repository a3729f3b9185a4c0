"""bench/vmi.py: what the interceptor costs the guest.

The same workload runs in the same QEMU configuration (TCG, RAM backing file, gdbstub attached)
once with the guest simply let go and once traced by the interceptor (producing into a ring on
/dev/shm, no daemon). Reported: the wall time of each run from QEMU's start to the guest's
poweroff (median of --runs), the slowdown ratio, and the cost per intercepted syscall (entry +
exit): (traced - untraced) / traced syscalls. The machine's load average is printed too: on a
shared 2-core box every number moves with it.

    python bench/vmi.py [--iterations 100] [--runs 3] [--kaslr] [--exit-only] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hv import guest  # noqa: E402
from hv.collect import collect  # noqa: E402
from hv.gdbstub import GuestExited  # noqa: E402
from hv.interceptor import QemuGuest  # noqa: E402
from provisor.config import load  # noqa: E402

WORKLOAD = """#!/bin/sh
# bench/vmi.py: {n} rounds of write, copy through a child, rename
i=0
while [ $i -lt {n} ]; do
  echo $i > f$i
  cat f$i > g$i
  mv g$i h$i
  i=$((i+1))
done
echo bench done
"""


def untraced_run(kit, initrd: str, kaslr: bool) -> float:
    """QEMU start to poweroff, gdbstub attached but the guest never stopped."""
    append = "console=ttyS0 quiet panic=-1" + ("" if kaslr else " nokaslr")
    t0 = time.monotonic()
    with QemuGuest(str(kit.kernel), initrd, append) as vm:
        gdb = vm.start()
        try:
            gdb.cont(None)
        except GuestExited:
            pass
        vm.wait(30)
    return time.monotonic() - t0


def traced_run(cfg, workload: str, ring: str, kaslr: bool, mode: str) -> tuple[float, object]:
    if os.path.exists(ring):
        os.unlink(ring)
    s = collect(cfg, workload, None, ring, ring + ".db", kaslr=kaslr, mode=mode,
                run_daemon=False, log=lambda m: None)
    for p in (ring, ring + ".serial.log"):
        if os.path.exists(p):
            os.unlink(p)
    return s.vm_s, s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kaslr", action="store_true")
    ap.add_argument("--exit-only", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    cfg = load()
    log = (lambda m: None) if a.json else (lambda m: print(f"bench: {m}", file=sys.stderr))
    kit = guest.kit(cfg, log)
    with tempfile.TemporaryDirectory(prefix="provisor-bench-") as d:
        wl = Path(d) / "bench.sh"
        wl.write_text(WORKLOAD.format(n=a.iterations))
        initrd = str(guest.build_initramfs(cfg, wl, log=log))
        ring = f"/dev/shm/provisor-bench-{os.getpid()}.ring"
        mode = "exit-only" if a.exit_only else "entry-exit"
        plain, traced, last = [], [], None
        for i in range(a.runs):
            plain.append(untraced_run(kit, initrd, a.kaslr))
            t, last = traced_run(cfg, str(wl), ring, a.kaslr, mode)
            traced.append(t)
            log(f"run {i + 1}/{a.runs}: untraced {plain[-1]:.2f}s, traced {t:.2f}s")
    tp, tt = statistics.median(plain), statistics.median(traced)
    n = last.syscalls
    out = {
        "workload_iterations": a.iterations, "runs": a.runs, "mode": mode, "kaslr": a.kaslr,
        "untraced_s": round(tp, 3), "traced_s": round(tt, 3),
        "slowdown": round(tt / tp, 2) if tp else None,
        "traced_syscalls": n, "events": last.events, "stops": last.stops,
        "us_per_syscall": round((tt - tp) / n * 1e6) if n else None,
        "collector_us_per_syscall": round(last.us_per_syscall),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:26} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
