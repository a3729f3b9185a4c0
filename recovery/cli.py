"""``provisor recover``: replay a ring image after a crash, or read one forensically."""

from __future__ import annotations

import json
import os

import click

from provisor.errors import ProvisorError
from recovery.recover import Recovery


@click.command("recover")
@click.option("--ring", "image", required=True, type=click.Path(),
              help="Ring image (the live ring, or a copy for forensics).")
@click.option("--db", "db", default=None, help="SQLite store (default: config).")
@click.option("--read-only", "read_only", is_flag=True, default=None,
              help="Never write the image (default unless IMAGE is the configured live ring).")
@click.option("--live", "live", is_flag=True, help="Release the ring after replay even if "
              "IMAGE is not the configured ring path.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="Write a JSON report here.")
@click.option("--force", is_flag=True, help="Accept a DB made for another ring UUID.")
@click.pass_obj
def recover_cmd(cfg: dict, image: str, db: str | None, read_only: bool | None, live: bool,
                report_path: str | None, force: bool) -> None:
    """Replay every valid record of IMAGE that is not yet in the DB, exactly once.

    \b
    Examples:
      provisor recover --ring /dev/shm/provisor.ring --db /dev/shm/provisor.db
      provisor recover --ring evidence.img --db case.db --read-only --report case.json
    """
    if read_only and live:
        raise ProvisorError("--read-only and --live contradict each other")
    is_live = os.path.realpath(image) == os.path.realpath(os.path.expanduser(cfg["ring"]["path"]))
    ro = bool(read_only) if read_only is not None else not (is_live or live)
    if report_path and os.path.isdir(report_path):
        raise ProvisorError(f"{report_path}: is a directory")
    rec = Recovery(image, db or cfg["daemon"]["db"], read_only=ro, force=force)
    with click.progressbar(length=rec.data_size, label="replaying",
                           file=click.get_text_stream("stderr"), show_pos=False) as bar:
        rep = rec.run(progress=bar.update)
    click.echo(rep.summary())
    if report_path:
        tmp = report_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rep.as_dict(), f, indent=2)
        os.replace(tmp, report_path)


COMMANDS: list[click.Command] = [recover_cmd]
