"""The ``provisor`` command: a thin click layer over the packages.

Each package contributes its commands (``COMMANDS`` in its ``cli`` module). Every user-facing
failure is a ProvisorError and becomes one line on stderr and exit status 2. An OSError or
sqlite3 error that no layer closer to the file reported (a full disk, a read-only store, an I/O
error, stdout on /dev/full) is the environment, not a bug: also one line and exit status 2.
Anything else is a bug, reported on one line with exit status 70 (set PROVISOR_DEBUG=1 for the
traceback).
"""

from __future__ import annotations

import os
import sqlite3
import sys

import click

from provisor import __version__
from provisor.errors import ProvisorError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="provisor")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              envvar="PROVISOR_CONFIG", help="TOML file overriding config/provisor.toml.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """provisor: provenance collected from the hypervisor, kept through crashes.

    \b
    Example:
      provisor ring create /dev/shm/p.ring --size 64M
      provisor synth --ring /dev/shm/p.ring --events 10000
      provisor daemon --ring /dev/shm/p.ring --db /dev/shm/p.db --once
    """
    from provisor import files
    from provisor.config import load

    ctx.obj = load(config_path)
    if config_path:  # what provisor runs (collect's daemon, a fleet's guests) reads it too
        os.environ["PROVISOR_CONFIG"] = os.path.abspath(config_path)
    # every file created from here on, ours or a library's (SQLite's -wal/-shm/-journal, logs),
    # is 0600, or 0640 with [files] group (docs/SECURITY.md)
    files.set_group(ctx.obj.get("files", {}).get("group", ""))
    os.umask(files.umask())


def _register() -> None:
    import daemon.cli
    import examiner.cli
    import hv.cli
    import pmem.cli
    import recovery.cli
    import store.cli

    for mod in (pmem.cli, hv.cli, daemon.cli, recovery.cli, examiner.cli, store.cli):
        for cmd in mod.COMMANDS:
            cli.add_command(cmd)


_register()


def _stdout_broken() -> bool:
    """True when stdout cannot take its buffered output (a full disk, /dev/full); then stdout
    is pointed at /dev/null, so that the interpreter's own flush at exit prints nothing more."""
    try:
        sys.stdout.flush()
        return False
    except OSError:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return True


def main() -> None:
    try:
        rv = cli.main(standalone_mode=False)
        sys.stdout.flush()  # here, where a failure is still ours to report
    except click.exceptions.Abort:
        click.echo("provisor: aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx else "provisor"
        click.echo(f"provisor: error: {e.format_message()} (see: {where} --help)", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"provisor: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except ProvisorError as e:
        _stdout_broken()  # output that cannot be written must not add a second message
        click.echo(f"provisor: error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except OSError as e:  # the environment: no space, read-only, I/O error
        where = e.filename if e.filename is not None else (
            "stdout" if _stdout_broken() else None)
        click.echo(f"provisor: error: {f'{where}: ' if where else ''}{e.strerror or e}",
                   err=True)
        sys.exit(2)
    except sqlite3.Error as e:
        click.echo(f"provisor: error: database error: {e}", err=True)
        sys.exit(2)
    except Exception as e:  # a bug: still one line unless asked for more
        if os.environ.get("PROVISOR_DEBUG"):
            raise
        click.echo(f"provisor: internal error: {type(e).__name__}: {e}", err=True)
        sys.exit(70)
    else:
        sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
