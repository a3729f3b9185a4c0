"""The main job on embedded defaults (``make demo``): real commands, shown as they run.

1. A crash and its recovery: a synthetic guest produces into the ring at /dev/shm while the
   daemon stores its provenance; the daemon is SIGKILLed mid-run; ``provisor recover``
   replays what it had not stored; the counts equal those of an uninterrupted run.
2. The hypervisor side, when QEMU and the guest kit are available (``--no-guest`` skips it):
   ``provisor collect`` boots the Debian guest under QEMU, intercepts its syscalls from the
   outside and stores their provenance; then the ancestry of a file, its PROV export and a
   verify run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import click

from provisor.config import load

PROVISOR = [sys.executable, "-m", "provisor.cli"]


def sh(args: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    click.secho("$ provisor " + " ".join(args), fg="cyan", err=True)
    r = subprocess.run(PROVISOR + args, text=True, **kw)
    if check and r.returncode != 0:
        raise SystemExit(f"demo: `provisor {' '.join(args)}` failed ({r.returncode})")
    return r


def counts(db: str) -> dict[str, int]:
    from daemon.apply import Applier

    s = Applier(db, readonly=True)
    try:
        return s.counts()
    finally:
        s.close()


def crash_and_recover(cfg: dict, events: int) -> None:
    ring, db = os.path.expanduser(cfg["ring"]["path"]), os.path.expanduser(cfg["daemon"]["db"])
    for f in (db, db + "-wal", db + "-shm"):
        if os.path.exists(f):
            os.remove(f)
    click.secho("\n== 1. a crash and its recovery (synthetic guest) ==", bold=True, err=True)
    sh(["ring", "create", ring, "--size", cfg["ring"]["size"], "--overwrite"])
    ref_ring = ring + ".reference"
    prod = subprocess.Popen(PROVISOR + ["synth", "--ring", ring, "--events", str(events),
                                        "--seed", "42", "--rate", "20000"])
    click.secho(f"$ provisor synth --ring {ring} --events {events} --seed 42 --rate 20000 &",
                fg="cyan", err=True)
    click.secho(f"$ provisor daemon --ring {ring} --db {db} &", fg="cyan", err=True)
    daemon = subprocess.Popen(PROVISOR + ["daemon", "--ring", ring, "--db", db, "-q"])
    time.sleep(2.5)
    daemon.send_signal(signal.SIGKILL)
    daemon.wait()
    click.secho(f"*** daemon SIGKILLed mid-run (pid {daemon.pid}) ***", fg="red", bold=True,
                err=True)
    if prod.wait() != 0:
        raise SystemExit("demo: the synthetic producer failed")
    sh(["ring", "info", ring])
    sh(["recover", "--ring", ring, "--db", db, "--report", db + ".recovery.json"])
    got = counts(db)
    # the uninterrupted run: the same stream (same seed) into a fresh ring, drained once
    ref_db = db + ".reference"
    for f in (ref_db, ref_db + "-wal", ref_db + "-shm"):
        if os.path.exists(f):
            os.remove(f)
    sh(["ring", "create", ref_ring, "--size", cfg["ring"]["size"], "--overwrite"])
    sh(["synth", "--ring", ref_ring, "--events", str(events), "--seed", "42"])
    sh(["daemon", "--ring", ref_ring, "--db", ref_db, "--once", "-q"])
    os.remove(ref_ring)
    ref = counts(ref_db)
    click.echo("\n| table | recovered after the crash | uninterrupted run |", err=True)
    click.echo("|---|---:|---:|", err=True)
    for k in ref:
        click.echo(f"| {k} | {got.get(k)} | {ref[k]} |", err=True)
    if got != ref:
        raise SystemExit("demo: the recovered store differs from the uninterrupted run")
    click.secho("recovered store == uninterrupted store: nothing lost, nothing duplicated",
                fg="green", bold=True, err=True)


def guest(cfg: dict) -> None:
    click.secho("\n== 2. provenance from an unmodified Linux guest ==", bold=True, err=True)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    workloads = os.path.join(here, "config", "guest", "workloads")
    ring = os.path.expanduser(cfg["ring"]["path"]) + ".guest"
    db = os.path.expanduser(cfg["daemon"]["db"]) + ".guest"
    for f in (db, db + "-wal", db + "-shm"):
        if os.path.exists(f):
            os.remove(f)
    include = tempfile.mkdtemp(prefix="provisor-include-")
    try:
        # a static binary built on the host, run inside the guest from --include
        os.makedirs(os.path.join(include, "bin"))
        for prog in ("upcase", "netcopy"):
            click.secho(f"$ gcc -static -O2 -o INCLUDE/bin/{prog} "
                        f"config/guest/workloads/{prog}.c", fg="cyan", err=True)
            subprocess.run(["gcc", "-static", "-O2", "-o", os.path.join(include, "bin", prog),
                            os.path.join(workloads, f"{prog}.c")], check=True)
        sh(["collect", "--workload", os.path.join(workloads, "demo.sh"), "--include", include,
            "--ring", ring, "--db", db])
    finally:
        shutil.rmtree(include, ignore_errors=True)
    sh(["query", "ancestors", "/root/c.txt", "--db", db])
    sh(["query", "ancestors", "/root/f.txt", "--db", db])  # a rename and a socket flow
    sh(["export", "--db", db, "--format", "prov-n", "-o", db + ".provn"])
    with open(db + ".provn") as f:
        head = f.read().splitlines()[:12]
    click.echo("\n".join(head + ["..."]), err=True)
    sh(["verify", "--db", db])


@click.command()
@click.option("--events", default=60_000, show_default=True)
@click.option("--no-guest", is_flag=True, help="Skip the QEMU guest part.")
def main(events: int, no_guest: bool) -> None:
    """Run the demo on embedded defaults."""
    cfg = load()
    crash_and_recover(cfg, events)
    if not no_guest:
        guest(cfg)


if __name__ == "__main__":
    main()
