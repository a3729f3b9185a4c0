"""bench/vmi.py: what tracing costs the guest, every producer side by side in one run.

The same guest kernel boots under the same QEMU 10 (TCG) with the same workloads in each
configuration:

  untraced  QEMU alone: no plugin, no gdbstub (the plugin runs' command line without -plugin)
  hook      the native plugin, mode=hook: every syscall instruction trapped and its number
            read, nothing decoded or recorded (the cost of the trap alone)
  trace     the native plugin, mode=trace, through `collect` without a daemon: decode +
            persist into a 64 MiB ring on /dev/shm, which holds the whole run (checked: the
            producer never blocked, nothing dropped)
  trace+d   the same with `provisor daemon` consuming the ring into SQLite beside the guest,
            as `provisor collect` runs by default
  gdbstub   the gdbstub interceptor (hv/interceptor.py, watchpoint trap) through `collect`,
            no daemon (its QEMU also has the gdbstub socket and guest RAM in a file)

Workloads (shell scripts run by the guest's /init). Each boot runs its loop --reps times; every
repetition reads the guest's monotonic clock before and after (the "now at N nsecs" line of
/proc/timer_list, read by the shell's builtin `read`, no fork) and prints its own elapsed time on
the serial console, so boot and poweroff are never counted:

  files       N rounds of: echo > file, cat it through a child into a second file, mv that
  shell       N rounds of fork+exec of busybox applets by path (a pipeline in a command
              substitution, basename, expr, a nested sh running true)
  files-smp2  -smp 2 (multi-threaded TCG): the files loop twice in parallel, N rounds each, as
              untraced / hook / trace; every trace run's ring is checked for all the loops'
              syscalls that name a unique path (entry and exit) and for both vCPUs

Every configuration boots --runs times, interleaved with the others boot by boot; its figure
is the median of all runs x reps samples (the minimum is printed too: on a shared machine it is
the sample least disturbed; samples of one boot agree closely, boots differ more, so --runs
buys more than --reps). Syscall counts are those of one timed repetition: the plugin's
counters of a run minus those of the same workload with 0 rounds (one traced null run per
workload), divided by --reps. Costs per syscall are (config - untraced) / syscalls.

    python bench/vmi.py [--quick] [--runs 3] [--reps 3] [--files 60] [--shell 20] [--kaslr]
                        [--only files,shell,smp2] [--no-gdbstub] [--no-daemon-run]
                        [--json [FILE]]

--json alone prints the JSON document instead of the table; --json FILE writes it beside the
table. On a shared 2-core machine every figure moves with the load average (printed at start
and end).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.daemon import cpu_model  # noqa: E402
from hv import guest, native  # noqa: E402
from hv.collect import collect  # noqa: E402
from hv.profile import Profile  # noqa: E402
from pmem import ring  # noqa: E402
from provisor.config import load  # noqa: E402

RING_SIZE = 64 << 20
TIMEOUT = 300.0
O_CREAT = 0o100

SCRIPT = """#!/bin/sh
# bench/vmi.py workload {name}: {reps} timed repetitions of {n} rounds
files() {{  # prefix rounds: write, copy through a child, rename
  i=0
  while [ $i -lt $2 ]; do
    echo $i > $1-f$i
    cat $1-f$i > $1-g$i
    mv $1-g$i $1-h$i
    i=$((i+1))
  done
}}
shell() {{  # rounds: fork+exec busybox applets by path (no in-shell applet shortcut)
  i=0
  while [ $i -lt $1 ]; do
    x=$(/bin/echo $i | /bin/tr 0-9 a-j)
    /bin/basename /a/b/$x > /dev/null
    /bin/expr $i + 1 > /dev/null
    /bin/sh -c /bin/true
    i=$((i+1))
  done
}}
now() {{  # CLOCK_MONOTONIC in ns from the third line ("now at N nsecs"), without a fork
  {{ read x; read x; read x x t x; }} < /proc/timer_list
}}
r=0
while [ $r -lt {reps} ]; do
  now; t0=$t
{body}
  now; t1=$t
  echo "bench-guest {name} $r $t0 $t1"
  r=$((r+1))
done
"""

WORKLOADS = {  # name -> (vCPUs, loop body; $r is the repetition, so every path is unique)
    "files": (1, "  files a$r {n}"),
    "shell": (1, "  shell {n}"),
    "files-smp2": (2, "  files a$r {n} &\n  files b$r {n} &\n  wait"),
}
CONFIGS_1 = ("untraced", "hook", "trace", "trace+d", "gdbstub")
CONFIGS_2 = ("untraced", "hook", "trace")
STAT_KEYS = ("vcpus", "hooks", "entries", "exits", "records", "dropped", "unmatched", "stale",
             "evicted", "mem_reads", "mem_failed", "decode_ns", "persist_ns", "persists",
             "blocked_ns", "is_pmem", "ring_size", "ring_free")


class BenchError(Exception):
    pass


# ----------------------------------------------------------------------------------- machine


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------------------------------ runs

def guest_seconds(serial_log: str, name: str, reps: int) -> list[float]:
    """The workload's own elapsed times, one per repetition, from the serial console."""
    try:
        text = Path(serial_log).read_text(errors="replace")
    except OSError:
        text = ""
    got = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] == "bench-guest" and parts[1] == name:
            got.append((int(parts[4]) - int(parts[3])) / 1e9)
    if len(got) != reps:
        tail = " | ".join(x for x in text.splitlines()[-4:] if x.strip())
        raise BenchError(f"{name}: {len(got)} of {reps} bench-guest lines on the serial "
                         f"console ({tail or 'empty'})")
    return got


def _stats(raw: dict) -> dict:
    out = {k: raw.get(k, 0) for k in STAT_KEYS}
    out["by_name"] = dict(raw.get("by_name", {}))
    return out


class Bench:
    """One boot per call; every file of a run (ring, store, serial log) in a private
    directory on /dev/shm, removed after the run."""

    def __init__(self, cfg, kit, profile, work: str, kaslr: bool) -> None:
        self.cfg, self.kit, self.profile, self.work = cfg, kit, profile, work
        self.append = "console=ttyS0 quiet panic=-1" + ("" if kaslr else " nokaslr")
        self.kaslr = kaslr
        self.n = 0

    def _paths(self) -> tuple[str, str, str]:
        self.n += 1
        base = os.path.join(self.work, f"run{self.n}")
        return base + ".ring", base + ".db", base + ".serial.log"

    @staticmethod
    def _clean(*paths: str) -> None:
        for p in paths:
            for q in (p, p + "-wal", p + "-shm", p + "-journal", p + ".daemon.log"):
                if os.path.lexists(q):
                    os.unlink(q)

    def _plugin_vm(self, initrd: str, ring_path: str, serial: str, smp: int, mode: str):
        return native.PluginGuest(str(self.kit.kernel), initrd, self.append, ring_path,
                                  self.profile, smp=smp, mode=mode, serial_log=serial)

    def untraced(self, wl: str, reps: int, initrd: str, smp: int) -> dict:
        ring_path, _, serial = self._paths()
        vm = self._plugin_vm(initrd, ring_path, serial, smp, "hook")
        i = vm.argv.index("-plugin")
        del vm.argv[i:i + 2]  # the very same command line, without the plugin
        try:
            t0 = time.monotonic()
            vm.start()
            try:
                rc = vm.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                raise BenchError(f"untraced {wl}: no poweroff within {TIMEOUT:.0f}s") from None
            if rc != 0:
                raise BenchError(f"untraced {wl}: QEMU failed: {vm.error()}")
            host = time.monotonic() - t0
            g = guest_seconds(serial, wl, reps)
        finally:
            vm.close()
            self._clean(serial)
        return {"guest_s": g, "host_s": host}

    def hook(self, wl: str, reps: int, initrd: str, smp: int) -> dict:
        ring_path, _, serial = self._paths()
        vm = self._plugin_vm(initrd, ring_path, serial, smp, "hook")
        try:
            t0 = time.monotonic()
            st = vm.run(TIMEOUT)
            host = time.monotonic() - t0
            g = guest_seconds(serial, wl, reps)
        except native.NativeError as e:
            raise BenchError(f"hook {wl}: {e}") from None
        finally:
            vm.close()
            self._clean(serial)
        return {"guest_s": g, "host_s": host, "stats": _stats(st.raw)}

    def trace(self, wl: str, reps: int, workload: str, smp: int, daemon: bool,
              check=None) -> dict:
        """Through `collect`, the product's own path; ``check(ring_path)`` reads the ring
        afterwards (without a daemon every record is still there)."""
        ring_path, db, serial = self._paths()
        ring.create(ring_path, RING_SIZE)
        try:
            s = collect(self.cfg, workload, None, ring_path, db, kaslr=self.kaslr,
                        trap="plugin", run_daemon=daemon, serial_log=serial, timeout=TIMEOUT,
                        smp=smp, log=lambda m: None)
            out = {"guest_s": guest_seconds(serial, wl, reps), "host_s": s.vm_s,
                   "stats": _stats(s.plugin)}
            if daemon:
                out["db"] = s.db
            if check is not None:
                out["check"] = check(ring_path)
        finally:
            self._clean(ring_path, db, serial)
        return out

    def gdbstub(self, wl: str, reps: int, workload: str) -> dict:
        ring_path, db, serial = self._paths()
        ring.create(ring_path, RING_SIZE)
        try:
            s = collect(self.cfg, workload, None, ring_path, db, kaslr=self.kaslr, trap="watch",
                        run_daemon=False, serial_log=serial, timeout=TIMEOUT, log=lambda m: None)
            out = {"guest_s": guest_seconds(serial, wl, reps), "host_s": s.vm_s,
                   "events": s.events, "syscalls": s.syscalls, "stops": s.stops,
                   "collector_us_per_syscall": round(s.us_per_syscall, 1)}
        finally:
            self._clean(ring_path, db, serial)
        return out


# ---------------------------------------------------------------------------- the ring check

def loop_check(loops: tuple[str, ...], n: int, reps: int):
    """Every syscall of the files loops that names a unique path, entry and exit, in the ring.
    Round i of loop p in repetition r (prefix pr) makes openat(pr-fi, O_CREAT) (the shell's
    redirect), openat(pr-fi) (cat), openat(pr-gi, O_CREAT) (the redirect of cat) and
    rename(pr-gi, pr-hi) (mv)."""

    def check(ring_path: str) -> dict:
        from pmem.layout import RecType
        from provisor import events as E

        want: dict[tuple, int] = {}
        for p in loops:
            for r in range(reps):
                for i in range(n):
                    f, g = f"{p}{r}-f{i}", f"{p}{r}-g{i}"
                    for key in (("openat", f, True), ("openat", f, False), ("openat", g, True),
                                ("rename", g, False)):
                        want[key] = 0
        entries: set[int] = set()
        exits: set[int] = set()
        vcpus_all: set[int] = set()
        vcpus_loop: dict[str, set[int]] = {p: set() for p in loops}
        losses = records = 0
        for rec in ring.iter_records(ring_path):
            records += 1
            if rec.type == RecType.LOSS:
                losses += 1
            if rec.type != RecType.EVENT:
                continue
            ev = E.decode(rec.payload, rec.seq)
            vcpus_all.add(ev.vcpu)
            if ev.phase == E.EXIT:
                exits.add(ev.entry_seq)
                continue
            if ev.name not in ("openat", "rename") or not ev.paths:
                continue
            key = (ev.name, ev.paths[0], ev.name == "openat" and bool(ev.arg(2) & O_CREAT))
            if key in want:
                want[key] += 1
                entries.add(ev.seq)
                vcpus_loop[ev.paths[0][0]].add(ev.vcpu)
        found = sum(1 for c in want.values() if c == 1)
        dup = sum(1 for c in want.values() if c > 1)
        with_exit = len(entries & exits)
        ok = found == len(want) and dup == 0 and with_exit == found and losses == 0
        return {"expected": len(want), "entries_found": found, "duplicates": dup,
                "exits_found": with_exit, "loss_records": losses, "records": records,
                "none_lost": ok, "vcpus_seen": sorted(vcpus_all),
                "vcpus_per_loop": {p: sorted(v) for p, v in vcpus_loop.items()}}

    return check


# ------------------------------------------------------------------------------- the figures

def _per_us(dt: float, n: float) -> float | None:
    return round(dt / n * 1e6, 2) if n > 0 else None


def summarize(runs: dict[str, list[dict]], null: dict, reps: int) -> dict:
    """Per configuration: median (and minimum) guest time of one repetition, the slowdown and
    the µs per syscall against untraced; for the plugin, its parts apart."""
    samples = {c: [x for r in rs for x in r["guest_s"]] for c, rs in runs.items()}
    base, base_min = statistics.median(samples["untraced"]), min(samples["untraced"])
    ns = null["stats"]

    def per_rep(c: str, key: str) -> float:
        return statistics.median(r["stats"][key] - ns[key] for r in runs[c]) / reps

    entries = per_rep("trace", "entries")  # traced syscalls of one repetition
    hooks = per_rep("hook", "hooks")  # syscall instructions trapped in one repetition
    out: dict = {"traced_syscalls": round(entries), "trapped_syscalls": round(hooks),
                 "null_run": {k: ns[k] for k in ("entries", "hooks", "records")},
                 "configs": {}}
    for c, rs in runs.items():
        xs = sorted(samples[c])
        t, tmin = statistics.median(xs), xs[0]
        row = {"guest_s": round(t, 3), "min_s": round(tmin, 3), "max_s": round(xs[-1], 3),
               "samples": len(xs), "samples_s": [round(x, 2) for x in samples[c]],
               "host_s": round(statistics.median(r["host_s"] for r in rs), 2),
               "slowdown": round(t / base, 3) if base else None,
               "slowdown_min": round(tmin / base_min, 3) if base_min else None}
        if c != "untraced":
            row["us_per_traced_syscall"] = _per_us(t - base, entries)
            row["us_per_traced_syscall_min"] = _per_us(tmin - base_min, entries)
        if c == "hook":
            row["us_per_trapped_syscall"] = _per_us(t - base, hooks)
            row["us_per_trapped_syscall_min"] = _per_us(tmin - base_min, hooks)
            row["hooks_per_run"] = sorted({r["stats"]["hooks"] for r in rs})
        if c.startswith("trace"):
            st = {k: statistics.median(r["stats"][k] for r in rs) for k in STAT_KEYS}
            rec = max(1, st["records"])
            row.update({
                "records": round(st["records"]), "entries": round(st["entries"]),
                "exits": round(st["exits"]),
                "decode_us_per_record": round(st["decode_ns"] / rec / 1e3, 2),
                "persist_us_per_record": round(st["persist_ns"] / rec / 1e3, 2),
                "plugin_us_per_syscall": round((st["decode_ns"] + st["persist_ns"])
                                               / max(1, st["entries"]) / 1e3, 2),
                "persists_per_record": round(st["persists"] / rec, 2),
                "mem_reads": round(st["mem_reads"]),
                "mem_reads_per_record": round(st["mem_reads"] / rec, 1),
                "mem_failed": max(r["stats"]["mem_failed"] for r in rs),
                "dropped": max(r["stats"]["dropped"] for r in rs),
                "blocked_ms": round(max(r["stats"]["blocked_ns"] for r in rs) / 1e6, 1),
                "ring_fill_max": round(max(1 - r["stats"]["ring_free"] / r["stats"]["ring_size"]
                                           for r in rs if r["stats"]["ring_size"]), 4),
                "unmatched": max(r["stats"]["unmatched"] for r in rs),
                "stale": max(r["stats"]["stale"] for r in rs), "vcpus": round(st["vcpus"]),
                "is_pmem": bool(st["is_pmem"]),
                "by_name": rs[len(rs) // 2]["stats"]["by_name"]})
            if "db" in rs[0]:
                row["db"] = rs[-1]["db"]
            checks = [r["check"] for r in rs if "check" in r]
            if checks:
                row["ring_checks"] = checks
                row["none_lost"] = all(x["none_lost"] for x in checks)
                row["both_vcpus_seen"] = all(set(x["vcpus_seen"]) >= {0, 1} for x in checks)
        if c == "gdbstub":
            mid = rs[len(rs) // 2]
            row.update({k: mid[k] for k in ("events", "syscalls", "stops",
                                            "collector_us_per_syscall")})
        out["configs"][c] = row
    return out


def _f(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def table(doc: dict) -> str:
    m = doc["machine"]
    lines = [f"machine   {m['cpu']}, {m['cores']} cores, Python {m['python']}; QEMU "
             f"{m['qemu']} (TCG); guest {m['guest_kernel']}{'' if doc['kaslr'] else ', nokaslr'}",
             f"load avg  start {m['loadavg_start']}  end {m['loadavg_end']}  (1, 5, 15 min)",
             f"samples   {doc['runs']} boots x {doc['reps']} timed repetitions per configuration, "
             f"boots interleaved; rounds per repetition: "
             + ", ".join(f"{k} {v}" for k, v in doc["rounds"].items()),
             f"elapsed   {doc['elapsed_s']:.0f} s", "",
             "guest time of one repetition (median, and minimum) and what tracing adds per "
             "traced syscall (entry + exit):"]
    hdr = (f"{'workload':11} {'config':9} {'median s':>8} {'min s':>6} {'max s':>6} "
           f"{'slowdown':>8} {'us/sysc':>8} {'(min)':>7}  notes")
    lines += [hdr, "-" * (len(hdr) + 40)]
    for wl, w in doc["workloads"].items():
        for c, r in w["configs"].items():
            note = ""
            if c == "hook":
                note = (f"trap: {_f(r['us_per_trapped_syscall'], '.2f')} us per trapped "
                        f"syscall (min: {_f(r['us_per_trapped_syscall_min'], '.2f')})")
            elif c.startswith("trace"):
                note = f"in the plugin {r['plugin_us_per_syscall']:.2f} us/syscall"
                if "none_lost" in r:
                    note += (f"; none lost: {'yes' if r['none_lost'] else 'NO'}; both vCPUs "
                             f"seen: {'yes' if r['both_vcpus_seen'] else 'NO'}")
                if c == "trace+d" and r.get("db"):
                    note += f"; daemon stored {r['db'].get('events', 0)} events"
            elif c == "gdbstub":
                note = (f"{r['syscalls']} syscalls traced, {r['stops']} stops; in the "
                        f"collector {r['collector_us_per_syscall']:.0f} us/syscall")
            lines.append(
                f"{wl:11} {c:9} {r['guest_s']:8.3f} {r['min_s']:6.3f} {r['max_s']:6.3f} "
                f"{r['slowdown']:7.2f}x {_f(r.get('us_per_traced_syscall'), '8.1f'):>8} "
                f"{_f(r.get('us_per_traced_syscall_min'), '7.1f'):>7}  {note}")
        u = w["configs"]["untraced"]
        lines.append(f"{'':11} one repetition: {w['traced_syscalls']} traced syscalls, "
                     f"{w['trapped_syscalls']} syscall instructions trapped; untraced samples "
                     f"spread {(u['max_s'] / u['min_s'] - 1) * 100:.0f}% (max/min)")
    lines += ["", "the plugin, parts apart (its own counters over the whole boot; a record is "
              "one entry or one exit):"]
    hdr = (f"{'workload':11} {'config':8} {'hook us':>8} {'decode us':>9} {'persist us':>10} "
           f"{'records':>8} {'mem reads':>9} {'/record':>7} {'failed':>6} {'dropped':>7} "
           f"{'blocked':>8} {'ring fill':>9}")
    lines += [hdr, "-" * len(hdr)]
    for wl, w in doc["workloads"].items():
        hk = w["configs"]["hook"]["us_per_trapped_syscall"]
        for c, r in w["configs"].items():
            if not c.startswith("trace"):
                continue
            lines.append(
                f"{wl:11} {c:8} {_f(hk, '8.2f'):>8} {r['decode_us_per_record']:9.2f} "
                f"{r['persist_us_per_record']:10.2f} {r['records']:8} {r['mem_reads']:9} "
                f"{r['mem_reads_per_record']:7.1f} {r['mem_failed']:6} {r['dropped']:7} "
                f"{r['blocked_ms']:6.0f}ms {r['ring_fill_max'] * 100:8.1f}%")
    lines += ["hook us: (hook - untraced) / trapped syscall instructions (the median figure); "
              "decode, persist: decode_ns, persist_ns / records;",
              "blocked: the producer's wait for ring space (0: the ring never filled)"]
    for wl, w in doc["workloads"].items():
        r = w["configs"].get("trace", {})
        checks = r.get("ring_checks", [])
        uniq = [x for i, x in enumerate(checks) if x not in checks[:i]]
        for x in uniq:
            lines.append(
                f"{wl} ring check ({checks.count(x)} of {len(checks)} boots): "
                f"{x['entries_found']}/{x['expected']} loop syscalls with a "
                f"unique path (openat, rename) found once, {x['exits_found']} with their exit, "
                f"{x['duplicates']} twice, {x['loss_records']} LOSS records; vCPUs seen "
                f"{x['vcpus_seen']} (loop a on {x['vcpus_per_loop'].get('a')}, b on "
                f"{x['vcpus_per_loop'].get('b')})")
        if "none_lost" in r:
            lines.append(f"{wl}: none lost: {'yes' if r['none_lost'] else 'NO'}; both vCPUs "
                         f"seen: {'yes' if r['both_vcpus_seen'] else 'NO'}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, help="boots per configuration (default 3; quick 1)")
    ap.add_argument("--reps", type=int, help="timed repetitions per boot (default 3; quick 3)")
    ap.add_argument("--files", type=int, help="rounds of the files loop (default 60; quick 30)")
    ap.add_argument("--shell", type=int, help="rounds of the shell loop (default 20; quick 10)")
    ap.add_argument("--quick", action="store_true",
                    help="1 boot x 3 short repetitions per configuration (~1.5 min)")
    ap.add_argument("--only", default="files,shell,smp2",
                    help="workloads, of files,shell,smp2 (default all)")
    ap.add_argument("--no-daemon-run", action="store_true", help="skip trace+d")
    ap.add_argument("--no-gdbstub", action="store_true", help="skip the gdbstub runs")
    ap.add_argument("--kaslr", action="store_true", help="boot with KASLR (default nokaslr)")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE",
                    help="the JSON document: on stdout instead of the table, or into FILE")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    a = ap.parse_args()
    runs = a.runs or (1 if a.quick else 3)
    reps = a.reps or 3
    n_files = a.files or (30 if a.quick else 60)
    n_shell = a.shell or (10 if a.quick else 20)
    only = {x.strip() for x in a.only.split(",") if x.strip()}
    if not only <= {"files", "shell", "smp2"} or not only:
        ap.error("--only takes files, shell and smp2")
    if min(runs, reps, n_files, n_shell) < 1:
        ap.error("--runs, --reps, --files and --shell want at least 1")

    def log(m: str) -> None:
        if not a.quiet:
            print(f"bench: {m}", file=sys.stderr, flush=True)

    t_start = time.monotonic()
    load_start = loadavg()
    cfg = load()
    qemu = native.qemu_version()
    native.plugin_path()
    kit = guest.kit(cfg, log)
    profile = Profile.load(kit.profile)
    plan = []  # (workload, rounds, configs)
    if "files" in only:
        plan.append(("files", n_files, CONFIGS_1))
    if "shell" in only:
        plan.append(("shell", n_shell, CONFIGS_1))
    if "smp2" in only:
        plan.append(("files-smp2", n_files, CONFIGS_2))
    skip = ({"trace+d"} if a.no_daemon_run else set()) | ({"gdbstub"} if a.no_gdbstub else set())
    work = tempfile.mkdtemp(prefix="provisor-bench-",
                            dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.chmod(work, 0o700)
    b = Bench(cfg, kit, profile, work, a.kaslr)
    try:
        prepared = {}
        for wl, n, configs in plan:
            smp, body = WORKLOADS[wl]
            paths = {}
            for k, rounds in (("full", n), ("null", 0)):
                p = Path(work) / f"{wl}-{k}.sh"
                p.write_text(SCRIPT.format(name=wl, n=rounds, reps=reps,
                                           body=body.format(n=rounds)))
                paths[k] = (str(p), str(guest.build_initramfs(cfg, p, log=lambda m: None)))
            prepared[wl] = (smp, n, [c for c in configs if c not in skip], paths)
        nulls = {}  # first (they also warm the host's caches): the counts outside the loops
        for wl, (smp, _n, _c, paths) in prepared.items():
            nulls[wl] = b.trace(wl, reps, paths["null"][0], smp, False)
            log(f"{wl} null run: {nulls[wl]['stats']['entries']} traced syscalls, "
                f"{nulls[wl]['stats']['hooks']} trapped, outside the loop")
        results: dict[str, dict[str, list]] = {wl: {c: [] for c in p[2]}
                                                for wl, p in prepared.items()}
        for r in range(runs):
            for wl, (smp, n, configs, paths) in prepared.items():
                wlp, initrd = paths["full"]
                check = loop_check(("a", "b"), n, reps) if smp > 1 else None
                for c in configs:
                    if c == "untraced":
                        res = b.untraced(wl, reps, initrd, smp)
                    elif c == "hook":
                        res = b.hook(wl, reps, initrd, smp)
                    elif c == "trace":
                        res = b.trace(wl, reps, wlp, smp, False, check)
                    elif c == "trace+d":
                        res = b.trace(wl, reps, wlp, smp, True)
                    else:
                        res = b.gdbstub(wl, reps, wlp)
                    results[wl][c].append(res)
                    log(f"boot {r + 1}/{runs} {wl:10} {c:8} guest "
                        f"{' '.join(f'{x:.2f}' for x in res['guest_s'])} s (host "
                        f"{res['host_s']:.1f} s, load {os.getloadavg()[0]:.2f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    doc = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "qemu": ".".join(map(str, qemu)),
                    "guest_kernel": kit.release, "python": platform.python_version(),
                    "loadavg_start": load_start, "loadavg_end": loadavg()},
        "date": time.strftime("%Y-%m-%d"), "runs": runs, "reps": reps, "kaslr": a.kaslr,
        "rounds": {wl: p[1] for wl, p in prepared.items()}, "ring_size": RING_SIZE,
        "workloads": {wl: summarize(results[wl], nulls[wl], reps) for wl in prepared},
        "elapsed_s": round(time.monotonic() - t_start, 1),
    }
    if a.json == "-":
        print(json.dumps(doc, indent=1))
    else:
        print(table(doc))
        if a.json:
            Path(a.json).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
