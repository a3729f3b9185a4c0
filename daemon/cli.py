"""``provisor daemon``: drain a ring into a provenance store (SQLite or PostgreSQL)."""

from __future__ import annotations

import logging
import signal
import socket

import click

from daemon.service import Daemon


@click.command("daemon")
@click.option("--ring", "ring_path", default=None, help="Ring image (default: config).")
@click.option("--db", "db_path", default=None,
              help="SQLite file or postgresql:// URL (default: config).")
@click.option("--machine", default=None, metavar="NAME",
              help="The machine (guest) this ring's records come from: its store, a PostgreSQL "
              "namespace provisor_NAME or a SQLite file's machine_name (default: the URL's "
              "?machine=, an existing store's own, else 'default').")
@click.option("--cpu", type=click.IntRange(0, 65535), default=None,
              help="Pin the daemon to this CPU core.")
@click.option("--once", is_flag=True, help="Drain what is in the ring now, then exit.")
@click.option("--force", is_flag=True,
              help="Rebind a DB that holds nothing yet (no record applied) from another ring "
              "UUID to this ring. It never lets a DB holding another ring's records take this "
              "ring's, and never releases a record that is not stored.")
@click.option("--guest-kernel", default=None, metavar="RELEASE",
              help="The guest kernel's release (collect passes it), recorded once with this "
              "host's name in the store's meta `machine`, which the export names.")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors.")
@click.pass_obj
def daemon_cmd(cfg: dict, ring_path: str | None, db_path: str | None, machine: str | None,
               cpu: int | None, once: bool, force: bool, guest_kernel: str | None, quiet: bool) -> None:
    """Consume the ring and store the provenance graph, exactly once.

    SIGTERM or SIGINT finish the current batch, commit, release and exit 0.

    One daemon per ring and per DB: a second is refused (exit 2) with the pid of the one
    running. A record is released from the ring only once it is committed in the DB; a DB
    belongs to one ring. A DB missing records the ring already released (its applied seq is
    below the ring's checkpoint) is refused: run `provisor recover --live` on it.

    \b
    Example:
      provisor daemon --ring /dev/shm/p.ring --db /dev/shm/p.db --once
      provisor daemon --cpu 1 &     # runs until stopped, logs status every few seconds
    """
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    dc = cfg["daemon"]
    # a SIGTERM while the store opens (before run() takes the signals) is a stop request too,
    # not death by the default action
    held: dict[str, Daemon | bool] = {}

    def early(_signum: int, _frame: object) -> None:
        held["stop"] = True
        if "d" in held:
            held["d"].stop = True  # type: ignore[union-attr]

    old = {s: signal.signal(s, early) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        d = Daemon(ring_path or cfg["ring"]["path"], db_path or dc["db"], force=force,
                   batch_min=dc["batch_min"], batch_max=dc["batch_max"],
                   status_interval=dc["status_interval"], fill_warn=dc["fill_warn"], cpu=cpu,
                   machine={"host": socket.gethostname(), "guest_kernel": guest_kernel},
                   machine_name=machine)
        held["d"] = d
        d.stop = bool(held.get("stop"))
        try:
            stats = d.run(once=once)
            counts = d.store.counts()
        finally:
            d.close()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if not quiet:
        click.echo(f"applied {stats.records} records in {stats.batches} batches "
                   f"(applied seq {d.store.applied_seq}); store: "
                   + ", ".join(f"{k} {v}" for k, v in counts.items()), err=True)


COMMANDS: list[click.Command] = [daemon_cmd]
