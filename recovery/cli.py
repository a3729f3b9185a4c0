"""``provisor recover``: replay a ring image after a crash, or read one forensically."""

from __future__ import annotations

import json
import os

import click

from provisor import files
from provisor.errors import ProvisorError
from recovery.recover import EXIT_GAPS, Recovery


@click.command("recover")
@click.option("--ring", "image", required=True, type=click.Path(),
              help="Ring image (the live ring, or a copy for forensics).")
@click.option("--db", "db", default=None,
              help="SQLite file or postgresql:// URL (default: config).")
@click.option("--machine", default=None, metavar="NAME",
              help="Whose store (as for `provisor daemon --machine`).")
@click.option("--read-only", "read_only", is_flag=True, default=None,
              help="Never write the image (default unless IMAGE is the configured live ring).")
@click.option("--live", "live", is_flag=True, help="Release the ring after replay even if "
              "IMAGE is not the configured ring path.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="Write a JSON report here.")
@click.option("--force", is_flag=True,
              help="Rebind a DB that holds nothing yet (no record applied) from another ring "
              "UUID to this ring. It never lets a DB holding another ring's records take this "
              "ring's, and never releases a record that is not stored.")
@click.pass_obj
def recover_cmd(cfg: dict, image: str, db: str | None, machine: str | None,
                read_only: bool | None, live: bool, report_path: str | None, force: bool
                ) -> None:
    """Replay every valid record of IMAGE that is not yet in the DB, exactly once.

    Every record whose own CRC is intact is found, in the chain after the checkpoint or not
    (past a damaged stretch, or below the checkpoint while still in the image), and stored in
    sequence order from the DB's applied seq on. Each range of sequence numbers the DB is left
    without (a gap) is reported, with its byte range in the image, on stderr and in the
    report, and recorded in the DB as a NOTE. --read-only never writes the image (its sha256
    is checked). Live (the configured ring, or --live), the ring is released only up to what
    is stored, and past the chain's end only while no producer has the ring open (else those
    records are left in the ring and the refusal is reported). Live recovery is a ring
    consumer: refused while a daemon runs.

    Exit status: 0 nothing missing; 3 a gap (records skipped) or a refused salvage; 2 a
    refused or bad input (one line: nothing written).

    \b
    Examples:
      provisor recover --ring /dev/shm/provisor.ring --db /dev/shm/provisor.db
      provisor recover --ring evidence.img --db case.db --read-only --report case.json
    """
    if read_only and live:
        raise ProvisorError("--read-only and --live contradict each other")
    is_live = os.path.realpath(image) == os.path.realpath(os.path.expanduser(cfg["ring"]["path"]))
    ro = bool(read_only) if read_only is not None else not (is_live or live)
    if report_path:  # before the image is read or the DB touched
        files.check_output(report_path)
    rec = Recovery(image, db or cfg["daemon"]["db"], read_only=ro, force=force,
                   machine=machine)
    from provisor.progress import progress  # a bar on a terminal only: logs get no stray line

    with progress("replaying", rec.data_size) as bar:
        rep = rec.run(progress=bar.update)
    click.echo(rep.summary())
    if report_path:
        with files.output(report_path) as f:
            json.dump(rep.as_dict(), f, indent=2)
    for line in rep.gap_lines():
        click.echo(line, err=True)
    if rep.salvage_refused:
        click.echo(f"provisor: salvage refused: {rep.salvage_refused}", err=True)
    if rep.exit_status:
        raise SystemExit(EXIT_GAPS)


COMMANDS: list[click.Command] = [recover_cmd]
