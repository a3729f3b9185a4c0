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
from examiner import stores
from provisor.params import MAX_STEPS
from provisor.progress import progress
from store import reader

OUTPUTS = ("table", "json", "dot")
DB_HELP = ("Store: a SQLite file, a directory of them (a fleet's) or a postgresql:// URL "
           "(default: config).")
MACHINE_HELP = "Only this machine's store (default: every machine of --db)."


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
        click.option("--db", "db_path", default=None, help=DB_HELP),
        click.option("--machine", default=None, help=MACHINE_HELP),
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
def _run(cfg: dict, name: str, target: str, db_path: str | None, machine: str | None,
         depth: int | None, since: str | None, until: str | None, fmt: str,
         all_versions: bool = False, limit: int | None = None) -> None:
    win = Q.Window(Q.parse_time(since), Q.parse_time(until))
    if limit is None:
        limit = TABLE_LIMIT if fmt == "table" else 0
    members = stores.members(_db(cfg, db_path), machine)
    results, missed = [], []
    for m in members:
        conn = m.connect()
        try:
            with reader.snapshot(conn):
                res = Q.run_query(conn, name, target, depth, win, all_versions,
                                  fmt != "table", limit or None)
        except Q.QueryError as e:
            if len(members) == 1:
                raise
            missed.append((m.machine, e))  # this guest never had it; the others may
            continue
        finally:
            conn.close()
        res.machine = m.machine
        results.append(res)
    if not results:
        raise Q.QueryError("; ".join(f"machine {n}: {e}" for n, e in missed))
    for r in results[:1]:
        r.notes += [f"machine {n}: {e}" for n, e in missed]
    click.echo(Q.render_many(results, fmt))


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
@click.option("--db", "db_path", default=None, help=DB_HELP)
@click.option("--machine", default=None, help=MACHINE_HELP)
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
def export_cmd(cfg: dict, db_path: str | None, machine: str | None, fmt: str,
               since: str | None, until: str | None, target: str | None, chunk: int,
               output: str) -> None:
    """Export the provenance graph as W3C PROV (PROV-JSON, PROV-N, PROV-XML, RDF) or DOT.

    Processes are activities, file and pipe versions entities, users (uid) agents; ring
    sequence numbers are provisor: attributes. Written in slices, so large stores fit.

    \b
    Example:
      provisor export --db /dev/shm/p.db --format prov-n -o graph.provn
      provisor export --format prov-json --object /w/out.txt -o out.json
      provisor export --format dot --since 2026-11-23T08:00:00Z -o g.dot && dot -Tsvg g.dot
      provisor export --db /dev/shm/provisor-fleet --format prov-n -o fleet.provn

    A --db of several machines (a fleet's directory, a PostgreSQL database) makes one
    document; each machine's ids carry its name (provisor:web.v12).
    """
    from examiner.export import export_set
    from provisor import files

    win = Q.Window(Q.parse_time(since), Q.parse_time(until))
    files.check_output(output)  # a bad OUT fails before the store is read
    members = stores.members(_db(cfg, db_path), machine)
    conns = []
    try:
        for m in members:
            conns.append((m.machine if len(members) > 1 else "", m.connect()))
        total = sum(c.execute("SELECT (SELECT count(*) FROM relations) + "
                              "(SELECT count(*) FROM versions)").fetchone()[0] for _, c in conns)
        # all or nothing through a private temporary file; a device or FIFO written directly
        with files.output(output) as out, progress(f"export {fmt}", total) as bar:
            counts = export_set(conns, out, fmt, win, target, chunk, bar.update)
    except OSError as e:  # writing OUT failed (ENOSPC on /dev/full, EIO)
        if output == "-" and isinstance(e, BrokenPipeError):
            raise
        raise Q.QueryError(f"{'stdout' if output == '-' else output}: "
                           f"{e.strerror or e}") from None
    finally:
        for _, c in conns:
            c.close()
    click.echo(f"exported {', '.join(f'{k} {v}' for k, v in counts.items())}"
               + (f" to {output}" if output != "-" else ""), err=True)


@click.command("verify")
@click.option("--db", "db_path", default=None, help=DB_HELP)
@click.option("--machine", default=None, help=MACHINE_HELP)
@click.option("--ring", "ring_path", default=None,
              help="Also compare the stored events with the records still in this ring image.")
@click.option("--head", "head", default=None,
              help="A chain head anchored earlier (hex): it must still be a link of the chain.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.pass_obj
@_sqlite_errors
def verify_cmd(cfg: dict, db_path: str | None, machine: str | None, ring_path: str | None,
               head: str | None, as_json: bool) -> None:
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

    members = stores.members(_db(cfg, db_path), machine)
    if len(members) > 1 and (ring_path or head):
        raise click.UsageError(f"--ring and --head belong to one machine's store: add "
                               f"--machine (one of {', '.join(m.machine for m in members)})")
    total = 0
    for m in members:
        conn = m.connect()
        try:
            total += conn.execute("SELECT (SELECT count(*) FROM events) + "
                                  "(SELECT count(*) FROM relations)").fetchone()[0]
        finally:
            conn.close()
    reps = []
    with progress("verify", total) as bar:
        for m in members:
            reps.append((m.machine, V.run(m.db, ring_path, bar.update, head,
                                         m.machine)))
    if as_json:
        js = [rep.to_json() | {"machine": name} for name, rep in reps]
        click.echo(json.dumps(js[0] if len(js) == 1 else js, indent=2))
    else:
        for name, rep in reps:
            if len(reps) > 1:
                click.echo(f"== machine {name} ==")
            click.echo(V.render(rep))
    if not all(rep.ok for _, rep in reps):
        raise SystemExit(1)


@click.command("status")
@click.option("--ring", "ring_path", default=None, help="Ring image (default: config).")
@click.option("--db", "db_path", default=None, help=DB_HELP)
@click.option("--machine", default=None, help=MACHINE_HELP)
@click.option("--verify", "run_verify", is_flag=True, help="Verify the chain now.")
@click.option("--fleet", "fleet_file", default=None, type=click.Path(dir_okay=False),
              help="Every guest of this fleet file: running, daemon, ring fill, lag, lost.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
@_sqlite_errors
def status_cmd(cfg: dict, ring_path: str | None, db_path: str | None, machine: str | None,
               run_verify: bool, fleet_file: str | None, as_json: bool) -> None:
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

        if ring_path or run_verify or machine:
            raise click.UsageError("--fleet shows every guest: no --ring, --machine or "
                                   "--verify with it")
        rows = fleetstatus.fleet_status(fleet.load(fleet_file, db_path))
        click.echo(json.dumps(rows, indent=2) if as_json else fleetstatus.render(rows))
        return
    from examiner.status import render, status

    s = status(_db(cfg, db_path), ring_path or cfg["ring"]["path"], cfg["daemon"]["db"],
               ring_required=ring_path is not None, run_verify=run_verify, machine=machine)
    click.echo(json.dumps(s, indent=2) if as_json else render(s))


COMMANDS: list[click.Command] = [query_cmd, export_cmd, verify_cmd, status_cmd]
