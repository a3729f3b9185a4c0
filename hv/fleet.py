"""``provisor fleet``: the guests of a fleet file, at once, each with its own ring, daemon and
machine name, into one store.

Each guest is one ``provisor collect`` process (its QEMU, its plugin, its daemon): a guest that
fails does not stop the others, and each keeps its own exactly-once contract with its ring. The
fleet waits for all, shows their progress on stderr, and measures each guest's store itself at
the end (the counts printed are read from the store, not taken from the children).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from provisor import files
from provisor.errors import ProvisorError
from provisor.fleet import Fleet, Guest


class FleetRunError(ProvisorError):
    pass


@dataclass
class GuestRun:
    guest: Guest
    store: str
    log: str
    proc: subprocess.Popen | None = None
    rc: int | None = None
    seconds: float = 0.0
    summary: list[str] = field(default_factory=list)  # collect's own summary lines
    counts: dict[str, int] = field(default_factory=dict)  # measured in the store at the end

    def last_line(self) -> str:
        try:
            lines = [x for x in Path(self.log).read_text(errors="replace").splitlines()
                     if x.strip()]
        except OSError:
            return ""
        return lines[-1].removeprefix("collect: ") if lines else ""


def _prepare_store(fleet: Fleet) -> None:
    """A SQLite fleet store is a directory of one file per guest: made 0700 when missing."""
    from store import postgres

    if postgres.is_url(fleet.db):
        return
    try:
        os.makedirs(fleet.db, mode=0o700, exist_ok=True)
    except OSError as e:
        raise FleetRunError(f"{fleet.db}: cannot make the store directory: {e.strerror}") \
            from None
    if not os.path.isdir(fleet.db):
        raise FleetRunError(f"{fleet.db}: not a directory")


def start(fleet: Fleet, config_path: str | None, run: GuestRun, *, nokaslr: bool = False,
          trap: str = "plugin") -> None:
    g = run.guest
    cmd = [sys.executable, "-c", "from provisor.cli import main; main()"]
    if config_path:
        cmd += ["--config", config_path]
    cmd += ["collect", "--workload", g.workload, "--ring", g.ring, "--db", run.store,
            "--machine", g.name, "--smp", str(g.smp), "--trap", trap]
    if g.include:
        cmd += ["--include", g.include]
    if nokaslr:
        cmd += ["--nokaslr"]
    if g.size and not os.path.exists(g.ring):
        from pmem import ring
        from provisor.config import parse_size
        ring.create(g.ring, parse_size(g.size))
    fd = files.ensure_ours(run.log)
    try:
        os.ftruncate(fd, 0)
        run.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=fd, text=True)
    finally:
        os.close(fd)


def run_fleet(fleet: Fleet, config_path: str | None = None, *, nokaslr: bool = False,
              trap: str = "plugin", only: list[str] | None = None, log=None,
              interval: float = 5.0) -> list[GuestRun]:
    """Boot every guest (or those in ``only``) at once and wait for all of them."""
    from hv.collect import db_counts

    _prepare_store(fleet)
    guests = [fleet.guest(n) for n in only] if only else list(fleet.guests)
    runs = [GuestRun(g, fleet.store_of(g), f"{g.ring}.collect.log") for g in guests]
    t0 = time.monotonic()
    try:
        for r in runs:
            start(fleet, config_path, r, nokaslr=nokaslr, trap=trap)
            if log:
                log(f"{r.guest.name}: started (ring {r.guest.ring}, log {r.log})")
        nxt = time.monotonic() + interval
        while any(r.proc is not None and r.proc.poll() is None for r in runs):
            time.sleep(0.2)
            for r in runs:
                if r.rc is None and r.proc is not None and r.proc.poll() is not None:
                    r.rc, r.seconds = r.proc.returncode, time.monotonic() - t0
                    if log:
                        log(f"{r.guest.name}: {'done' if r.rc == 0 else f'failed ({r.rc})'} "
                            f"after {r.seconds:.0f}s{'' if r.rc == 0 else ': ' + r.last_line()}")
            if log and time.monotonic() >= nxt:
                nxt = time.monotonic() + interval
                log("  ".join(f"{r.guest.name}: {r.last_line() or 'starting'}"
                              for r in runs if r.rc is None))
    finally:  # an interrupted fleet stops its guests (each collect stops its daemon)
        for r in runs:
            if r.proc is not None and r.proc.poll() is None:
                r.proc.terminate()
                try:
                    r.proc.wait(60)
                except subprocess.TimeoutExpired:
                    r.proc.kill()
                    r.proc.wait()
    for r in runs:
        assert r.proc is not None
        if r.rc is None:
            r.rc, r.seconds = r.proc.returncode, time.monotonic() - t0
        out = r.proc.stdout.read() if r.proc.stdout else ""
        r.summary = [x for x in out.splitlines() if x.strip()]
        try:
            r.counts = db_counts(r.store, r.guest.name)
        except ProvisorError:
            r.counts = {}
    return runs


def summary_lines(runs: list[GuestRun]) -> list[str]:
    """One line per guest: its outcome and what its store holds (read from the store)."""
    w = max(len(r.guest.name) for r in runs)
    out = []
    for r in runs:
        c = r.counts
        state = "ok" if r.rc == 0 else f"FAILED (exit {r.rc}: {r.last_line()})"
        held = (f"events {c.get('events', 0)}, processes {c.get('processes', 0)}, files "
                f"{c.get('artifacts', 0)} ({c.get('versions', 0)} versions), relations "
                f"{c.get('relations', 0)}") if c else "no store"
        out.append(f"{r.guest.name:<{w}}  {state:<4} {r.seconds:5.0f}s  {held}")
    return out


# -- the command -----------------------------------------------------------------------------

@click.command("fleet")
@click.argument("fleet_file", type=click.Path(dir_okay=False))
@click.option("--db", default=None,
              help="The fleet's store: a directory (one SQLite file per guest) or a "
              "postgresql:// URL (one namespace per guest); default: the file's fleet.db.")
@click.option("--guest", "only", multiple=True, metavar="NAME",
              help="Run only this guest (repeatable).")
@click.option("--nokaslr", is_flag=True, help="Boot the guests with nokaslr.")
@click.option("--trap", type=click.Choice(["plugin", "gdb"]), default="plugin",
              show_default=True, help="The producer of every guest (see collect --trap).")
@click.pass_obj
def fleet_cmd(cfg: dict, fleet_file: str, db: str | None, only: tuple[str, ...],
              nokaslr: bool, trap: str) -> None:
    """Run the guests of FLEET_FILE at once, each traced into its own ring and stored by its
    own daemon under its machine name, into one store; print one line per guest.

    Exit status 0 when every guest ran and was stored; 3 when one failed (the others are
    kept); 2 for a bad fleet file.

    \b
    Example:
      provisor fleet config/fleet.toml
      provisor fleet config/fleet.toml --db 'postgresql://prov@db.example/prov'
      provisor status --fleet config/fleet.toml
    """
    from provisor import fleet as F

    fl = F.load(fleet_file, db)
    runs = run_fleet(fl, os.environ.get("PROVISOR_CONFIG"), nokaslr=nokaslr,
                     trap="watch" if trap == "gdb" else trap, only=list(only) or None,
                     log=lambda m: click.echo(f"fleet: {m}", err=True))
    for line in summary_lines(runs):
        click.echo(line)
    if any(r.rc != 0 for r in runs):
        raise SystemExit(3)
