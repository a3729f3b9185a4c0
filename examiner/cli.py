"""``provisor query|export|verify|status``: what examiners and auditors run against a store.

The examiner's side of the CLI: it reads a store and never writes one (provisor/cli.py
registers these beside the daemon's own command).
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable

import click

from examiner import query as Q
from store import reader
from provisor.params import MAX_STEPS
from provisor.progress import progress

OUTPUTS = ("table", "json", "dot")


def _sqlite_errors(f: Callable) -> Callable:
    """A database that breaks mid-query (a corrupt page, a lock, a server gone, a permission
    refused) is bad input: one line, exit 2."""
    @functools.wraps(f)
    def run(*a, **kw):
        try:
            return f(*a, **kw)
        except sqlite3.DatabaseError as e:
            raise Q.QueryError(f"database error: {e}") from None
        except Exception as e:
            if not type(e).__module__.startswith("psycopg"):
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise Q.QueryError(f"database error: {first}") from None
    return run


def _db(cfg: dict, db: str | None) -> str:
    return db or cfg["daemon"]["db"]


def _query_options(f: Callable) -> Callable:
    for deco in reversed([
        click.option("--db", "db_path", default=None, help="Store: a SQLite file or a postgresql:// URL (default: config)."),
        click.option("--depth", type=click.IntRange(0, MAX_STEPS), default=None,
                     help="At most N steps from the target."),
        click.option("--since", default=None, help="Only relations at or after this time "
                     "(ISO-8601, e.g. 2026-11-23T08:00:00Z, or nanoseconds)."),
        click.option("--until", default=None, help="Only relations at or before this time."),
        click.option("--json", "fmt", flag_value="json", help="JSON output."),
        click.option("--dot", "fmt", flag_value="dot", help="Graphviz DOT output."),
        click.option("--table", "fmt", flag_value="table", default=True,
                     help="Aligned table (the default)."),
    ]):
        f = deco(f)
    return f


TABLE_LIMIT = 1000


@_sqlite_errors
def _run(cfg: dict, name: str, target: str, db_path: str | None, depth: int | None,
         since: str | None, until: str | None, fmt: str, all_versions: bool = False,
         limit: int | None = None) -> None:
    win = Q.Window(Q.parse_time(since), Q.parse_time(until))
    if limit is None:
        limit = TABLE_LIMIT if fmt == "table" else 0
    conn = Q.connect(_db(cfg, db_path))
    try:
        with reader.snapshot(conn):
            res = Q.run_query(conn, name, target, depth, win, all_versions, fmt != "table",
                              limit or None)
    finally:
        conn.close()
    render = {"table": Q.render_table, "json": Q.render_json, "dot": Q.render_dot}[fmt]
    click.echo(render(res))


@click.group("query")
def query_cmd() -> None:
    """Lineage queries: ancestors, descendants, history, process, writers.

    TARGET is an absolute path (a current or past name: the file it names now, else the one
    it named last) or an id as printed by queries: v:VERSION (one version node),
    artifact:ID or a:ID, process:ID or p:ID, tgid:N (the last process with that TGID).

    Guest strings are printed as guest text: a byte that is not printable UTF-8 as \\xHH, a
    backslash as \\\\. A path is matched the same way, so type it as printed, e.g.
    '/root/n\\xff\\x01m' (docs/FORMAT.md, "Guest strings").

    \b
    Example:
      provisor query ancestors /w/report.pdf --depth 5
      provisor query descendants v:12 --dot | dot -Tsvg > d.svg
      provisor query history /etc/passwd --json
      provisor query process 1234 --since 2026-11-23T08:00:00Z
      provisor query writers /w/out.txt
    """


def _closure_options(f):
    """--all-versions and --limit, shared by ancestors and descendants."""
    f = click.option("--limit", type=click.IntRange(0, MAX_STEPS), default=None,
                     help=f"Show the nearest N nodes (default {TABLE_LIMIT} for the table, all "
                     "for --json/--dot; 0: all). The whole closure is still walked and "
                     "counted.")(f)
    return click.option("--all-versions", is_flag=True,
                        help="Start from every version of the object.")(f)


@query_cmd.command("ancestors", epilog=Q.PATH_HELP)
@click.argument("target")
@_closure_options
@_query_options
@click.pass_obj
def q_ancestors(cfg: dict, target: str, all_versions: bool, limit: int | None, **kw) -> None:
    """Everything TARGET depends on: what made it, what that read, and so on.

    \b
    Example:
      provisor query ancestors /w/out.txt --depth 3 --db /dev/shm/p.db
      provisor query ancestors artifact:5 --all-versions --json
    """
    _run(cfg, "ancestors", target, all_versions=all_versions, limit=limit, **kw)


@query_cmd.command("descendants", epilog=Q.PATH_HELP)
@click.argument("target")
@_closure_options
@_query_options
@click.pass_obj
def q_descendants(cfg: dict, target: str, all_versions: bool, limit: int | None, **kw
                  ) -> None:
    """Everything that depends on TARGET: who read it, what they wrote, and so on.

    \b
    Example:
      provisor query descendants /w/secret.key --since 2026-11-23T08:00:00Z
      provisor query descendants v:42 --dot > d.dot
    """
    _run(cfg, "descendants", target, all_versions=all_versions, limit=limit, **kw)


@query_cmd.command("history", epilog=Q.PATH_HELP)
@click.argument("path")
@_query_options
@click.pass_obj
def q_history(cfg: dict, path: str, **kw) -> None:
    """Every file ever named PATH: its names over time (renamed, replaced, deleted,
    re-created), every version and what made it. --depth N shows N derivation steps in
    --json/--dot.

    \b
    Example:
      provisor query history /w/out.txt
      provisor query history artifact:5 --json
    """
    _run(cfg, "history", path, **kw)


@query_cmd.command("process")
@click.argument("tgid")
@_query_options
@click.pass_obj
def q_process(cfg: dict, tgid: str, **kw) -> None:
    """What process TGID read, wrote, executed and spawned, with times (every process that had
    the TGID; or process:ID for one). --depth N includes its children N-1 levels down.

    \b
    Example:
      provisor query process 1234
      provisor query process process:7 --depth 2 --json
    """
    _run(cfg, "process", tgid, **kw)


@query_cmd.command("writers", epilog=Q.PATH_HELP)
@click.argument("path")
@_query_options
@click.pass_obj
def q_writers(cfg: dict, path: str, **kw) -> None:
    """Who wrote PATH (every file ever so named); --depth N also lists the writers of what it
    was derived from, N-1 steps back.

    \b
    Example:
      provisor query writers /etc/passwd
      provisor query writers /w/out.txt --depth 3 --json
    """
    _run(cfg, "writers", path, **kw)


@click.command("export")
@click.option("--db", "db_path", default=None, help="Store: a SQLite file or a postgresql:// URL (default: config).")
@click.option("--format", "fmt", type=click.Choice(list(Q.EXPORT_FORMATS)), default="prov-json",
              show_default=True, help="Output format (rdf is Turtle).")
@click.option("--since", default=None, help="Only relations at or after this time "
              "(ISO-8601 or nanoseconds).")
@click.option("--until", default=None, help="Only relations at or before this time.")
@click.option("--object", "target", default=None,
              help="Only this object's lineage (ancestors and descendants of all its versions):"
              " a path (guest text, as queries print it) or v:ID, artifact:ID, process:ID,"
              " tgid:N.")
@click.option("--chunk", type=click.IntRange(1, 1 << 20), default=2000, show_default=True,
              help="Records per ProvDocument slice (bounds memory).")
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False,
              allow_dash=True), help="Output file ('-' for stdout).")
@click.pass_obj
@_sqlite_errors
def export_cmd(cfg: dict, db_path: str | None, fmt: str, since: str | None, until: str | None,
               target: str | None, chunk: int, output: str) -> None:
    """Export the provenance graph as W3C PROV (PROV-JSON, PROV-N, PROV-XML, RDF) or DOT.

    Processes are activities, file and pipe versions entities, users (uid) agents; ring
    sequence numbers are provisor: attributes. Written in slices, so large stores fit.

    \b
    Example:
      provisor export --db /dev/shm/p.db --format prov-n -o graph.provn
      provisor export --format prov-json --object /w/out.txt -o out.json
      provisor export --format dot --since 2026-11-23T08:00:00Z -o g.dot && dot -Tsvg g.dot
    """
    from examiner.export import export
    from provisor import files

    win = Q.Window(Q.parse_time(since), Q.parse_time(until))
    files.check_output(output)  # a bad OUT fails before the store is read
    conn = Q.connect(_db(cfg, db_path))
    try:
        total = conn.execute("SELECT (SELECT count(*) FROM relations) + "
                             "(SELECT count(*) FROM versions)").fetchone()[0]
        # all or nothing through a private temporary file; a device or FIFO written directly
        with files.output(output) as out, progress(f"export {fmt}", total) as bar:
            counts = export(conn, out, fmt, win, target, chunk, bar.update)
    except OSError as e:  # writing OUT failed (ENOSPC on /dev/full, EIO)
        if output == "-" and isinstance(e, BrokenPipeError):
            raise
        raise Q.QueryError(f"{'stdout' if output == '-' else output}: "
                           f"{e.strerror or e}") from None
    finally:
        conn.close()
    click.echo(f"exported {', '.join(f'{k} {v}' for k, v in counts.items())}"
               + (f" to {output}" if output != "-" else ""), err=True)


@click.command("verify")
@click.option("--db", "db_path", default=None, help="Store: a SQLite file or a postgresql:// URL (default: config).")
@click.option("--ring", "ring_path", default=None,
              help="Also compare the stored events with the records still in this ring image.")
@click.option("--head", "head", default=None,
              help="A chain head anchored earlier (hex): it must still be a link of the chain.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.pass_obj
@_sqlite_errors
def verify_cmd(cfg: dict, db_path: str | None, ring_path: str | None, head: str | None,
               as_json: bool) -> None:
    """Recompute the tamper-evidence hash chain; report the first altered, deleted, inserted
    or reordered row. Exit 0 when intact, 1 when tampered, 2 on bad input.

    Anchor the printed head elsewhere (a remote log, a signature, WORM storage) and pass it
    back with --head: see docs/TAMPER.md.

    \b
    Example:
      provisor verify --db /dev/shm/p.db
      provisor verify --db /dev/shm/p.db --ring /dev/shm/p.ring --head 3fa1...
    """
    import json

    from examiner import verify as V

    db = _db(cfg, db_path)
    conn = Q.connect(db)
    total = conn.execute("SELECT (SELECT count(*) FROM events) + "
                         "(SELECT count(*) FROM relations)").fetchone()[0]
    conn.close()
    with progress("verify", total) as bar:
        rep = V.run(db, ring_path, bar.update, head)
    if as_json:
        click.echo(json.dumps(rep.to_json(), indent=2))
    else:
        summary = (f"{rep.batches} batches, {rep.events} events, {rep.relations} relations; "
                   f"chain head {rep.head}")
        if rep.ring:
            r = rep.ring
            summary += (f"\nring {r['uuid']}: {r['records']} records readable, {r['matched']} "
                        f"match the store, {r['mismatched']} do not, "
                        f"{r['not_yet_applied']} not applied yet")
        if rep.ok:
            click.echo(f"OK: {summary}")
        else:
            click.echo(f"TAMPERED: {rep.findings[0]}")
            for f in rep.findings[1:]:
                click.echo(f"  also: {f}")
            click.echo(summary)
    if not rep.ok:
        raise SystemExit(1)


@click.command("status")
@click.option("--ring", "ring_path", default=None, help="Ring image (default: config).")
@click.option("--db", "db_path", default=None, help="Store: a SQLite file or a postgresql:// URL (default: config).")
@click.option("--verify", "run_verify", is_flag=True, help="Verify the chain now.")
@click.option("--fleet", "fleet_file", default=None, type=click.Path(dir_okay=False),
              help="Every guest of this fleet file: running, daemon, ring fill, lag, lost.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
@_sqlite_errors
def status_cmd(cfg: dict, ring_path: str | None, db_path: str | None, run_verify: bool,
               fleet_file: str | None, as_json: bool) -> None:
    """Ring mode (DAX/pmem or emulated), fill, checkpoint, last sequence; the store's applied
    sequence and lag; whether a daemon drains into the store; lost records; the last
    verification.

    \b
    Example:
      provisor status
      provisor status --ring /dev/shm/p.ring --db /dev/shm/p.db --verify --json
      provisor status --fleet config/fleet.toml
    """
    import json

    if fleet_file:
        from examiner import fleetstatus
        from provisor import fleet

        if ring_path or run_verify:
            raise click.UsageError("--fleet shows every guest: no --ring or --verify with it")
        rows = fleetstatus.fleet_status(fleet.load(fleet_file, db_path))
        click.echo(json.dumps(rows, indent=2) if as_json else fleetstatus.render(rows))
        return
    from examiner.status import render, status

    s = status(_db(cfg, db_path), ring_path or cfg["ring"]["path"], cfg["daemon"]["db"],
               ring_required=ring_path is not None, run_verify=run_verify)
    click.echo(json.dumps(s, indent=2) if as_json else render(s))


COMMANDS: list[click.Command] = [query_cmd, export_cmd, verify_cmd, status_cmd]
