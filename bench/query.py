"""Lineage query latency on a store of at least 1,000,000 relations (goal: < 100 ms median).

The store is built once from the synthetic guest (hv/synth.py) through ``Applier.apply``, the
daemon's own path, and kept (default /dev/shm/provisor-bench-query.db) for reruns. Targets:

* ancestors of a *deep* file: of the last few hundred file versions written, the one with
  the most ancestors (a long chain of processes and files behind it);
* descendants of an *early* file: the first file version a workload process wrote that a later
  process read;
* for scale, the worst case: descendants of the file every process reads at start
  (/etc/ld.so.cache), which is most of the graph; shown, not part of the goal.

Each query is the full ``examiner.query.lineage`` call (walk, edges, node labels, outcome-unknown
events), as ``provisor query`` runs it, minus printing: for the table output (edges from the
covering index alone) and for JSON/DOT (each edge's ids, ring seqs and syscall too). The
machine's load is printed with the table: the figures are wall-clock medians. Prints Markdown.

Both backends, side by side: the same rows (every table of the SQLite store, copied with
COPY into a PostgreSQL namespace made by the daemon's own DDL, then ANALYZE) answer the same
queries through the examiner's one SQL (store/reader.py translates). PostgreSQL is a private
cluster started for the run (Debian's server, unix socket) unless ``--pg URL`` names one.

    python bench/query.py [--relations 1000000] [--runs 15] [--db PATH] [--rebuild]
                          [--backend both|sqlite|postgresql] [--pg URL]
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import time

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from daemon.apply import Applier  # noqa: E402
from examiner import query as Q  # noqa: E402
from pmem.layout import Record, RecType  # noqa: E402
from provisor.events import encode  # noqa: E402

BATCH = 16384


def build(path: str, relations: int, seed: int) -> dict[str, int]:
    """Apply synthetic events until the store holds ``relations`` relations."""
    from hv.synth import Guest

    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    store = Applier(path, "bench-query")
    guest = Guest(seed)
    seq = 1
    recs: list[Record] = []
    t0 = time.monotonic()
    with click.progressbar(length=relations, label="building store", file=sys.stderr) as bar:
        done = 0
        for chunk in guest.stream(relations * 6):
            for ev, entry in chunk:
                ev.seq = seq
                seq += 1
                if entry is not None:
                    ev.entry_seq = entry.seq
                recs.append(Record(ev.seq, RecType.EVENT, 0, encode(ev)))
                if len(recs) >= BATCH:
                    store.apply(recs)
                    recs = []
                    now = store.an.next_rel - 1
                    bar.update(min(now, relations) - done)
                    done = min(now, relations)
            if store.an.next_rel - 1 >= relations:
                break
        if recs:
            store.apply(recs)
    counts = store.counts()
    store.close()
    click.echo(f"built {path} in {time.monotonic() - t0:.0f}s: {counts}", err=True)
    return counts


PG_MACHINE = "bench"


def copy_to_pg(path: str, url: str) -> None:
    """The SQLite store's rows, table by table, into ``PG_MACHINE``'s namespace at ``url``."""
    from store import postgres, schema

    Applier(url, "bench-query", machine=PG_MACHINE).close()  # the namespace, by its own DDL
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    dst = postgres.connect(url)
    ns = postgres.namespace(PG_MACHINE)
    dst.execute(f'SET search_path TO "{ns}"')
    total = sum(src.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in schema.TABLES if t != "meta")
    t0 = time.monotonic()
    with click.progressbar(length=total, label="copying to PostgreSQL", file=sys.stderr) as bar:
        for t in schema.TABLES.values():
            if t.name == "meta":
                continue
            dst.execute(f"TRUNCATE {t.name}")
            with dst.cursor().copy(f"COPY {t.name} ({', '.join(t.cols)}) FROM STDIN") as cp:
                for i, row in enumerate(src.execute(t.select()), 1):
                    cp.write_row(row)
                    if i % 65536 == 0:
                        bar.update(65536)
        for key, value in src.execute("SELECT key, value FROM meta WHERE key != 'machine_name'"):
            dst.execute("UPDATE meta SET value = %s WHERE key = %s", (value, key))
        dst.commit()
    dst.autocommit = True
    dst.execute("VACUUM ANALYZE")  # as autovacuum leaves a store: index-only scans possible
    dst.close()
    src.close()
    click.echo(f"copied {total:,} rows to PostgreSQL in {time.monotonic() - t0:.0f}s", err=True)


def pick_targets(conn) -> dict[str, str]:
    q = conn.execute
    cands = [r[0] for r in q(
        "SELECT DISTINCT r.src FROM relations r WHERE r.kind='wasGeneratedBy' AND r.src IN "
        "(SELECT id FROM versions WHERE kind='file' ORDER BY id DESC LIMIT 400)")]
    deep = max(cands, key=lambda v: (len(Q.walk(conn, [v], True)), v))
    early = q("SELECT v.id FROM versions v WHERE v.kind='file' "
              "AND EXISTS (SELECT 1 FROM relations g WHERE g.src=v.id AND g.kind='wasGeneratedBy') "
              "AND EXISTS (SELECT 1 FROM relations u WHERE u.dst=v.id AND u.kind='used') "
              "ORDER BY v.id LIMIT 1").fetchone()
    targets = {"ancestors": f"v:{deep}", "descendants": f"v:{early[0]}"}
    cache = q("SELECT node FROM artifacts WHERE path='/etc/ld.so.cache'").fetchone()
    if cache:
        targets["descendants (worst case)"] = f"v:{cache[0]}"
    return targets


MODES = {
    "recursive CTE only": lambda c, t, up: Q.closure_edges(c, [int(t[2:])], up, Q.Window()),
    "table (nearest 1000 shown)": lambda c, t, up: Q.lineage(c, t, up, detail=False, limit=1000),
    "all nodes labelled": lambda c, t, up: Q.lineage(c, t, up, detail=False),
    "json/dot (all, edge details)": lambda c, t, up: Q.lineage(c, t, up, detail=True),
}


def timeit(fn, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return times


def run_backend(conn, backend: str, targets: dict[str, str], runs: int) -> None:
    for name, target in targets.items():
        up = name.startswith("ancestors")
        worst = "worst" in name
        full = Q.lineage(conn, target, up, detail=False)
        what = f"{target} ({full.nodes[int(target[2:])]['label']})"
        for mode, fn in MODES.items():
            if worst and mode.startswith(("all", "json")):
                continue
            times = timeit(lambda fn=fn, t=target, u=up: fn(conn, t, u),
                           min(runs, 3) if worst else runs)
            med = statistics.median(times)
            goal = "-" if worst else ("met" if med < 100 else "missed")
            click.echo(f"| {backend} | {name} | {what} | {len(full.nodes) - 1:,} | "
                       f"{len(full.edges):,} | {mode} | {med:.1f} | {min(times):.1f} | "
                       f"{max(times):.1f} | {goal} |")


@click.command()
@click.option("--db", "path", default="/dev/shm/provisor-bench-query.db", show_default=True)
@click.option("--relations", default=1_000_000, show_default=True)
@click.option("--runs", default=15, show_default=True)
@click.option("--seed", default=7, show_default=True)
@click.option("--rebuild", is_flag=True, help="Rebuild the store even if one is there.")
@click.option("--backend", type=click.Choice(["both", "sqlite", "postgresql"]), default="both",
              show_default=True)
@click.option("--pg", "pg_url", default=None,
              help="A PostgreSQL database to copy the store into (default: a private cluster "
              "for the run).")
def main(path: str, relations: int, runs: int, seed: int, rebuild: bool, backend: str,
         pg_url: str | None) -> None:
    """Median latency of ancestors / descendants queries on a large synthetic store.

    Example: python bench/query.py --relations 1000000 --runs 15
    """
    have = 0
    if os.path.exists(path) and not rebuild:
        conn = Q.connect(path)
        have = conn.execute("SELECT count(*) FROM relations").fetchone()[0]
        conn.close()
    if have < relations:
        build(path, relations, seed)
    conn = Q.connect(path)
    total = conn.execute("SELECT count(*) FROM relations").fetchone()[0]
    events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    targets = pick_targets(conn)
    cluster = None
    if backend != "sqlite" and pg_url is None:
        from store import pgcluster

        cluster = pgcluster.temporary()
        cluster.start()
        pg_url = cluster.createdb("bench")
    try:
        if backend != "sqlite":
            copy_to_pg(path, pg_url)
        click.echo(f"\nstore: {total:,} relations, {events:,} events; {runs} runs each; "
                   f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs\n")
        click.echo("| backend | query | target | nodes | relations | what is timed | median ms "
                   "| min ms | max ms | goal < 100 ms |")
        click.echo("|---|---|---|---:|---:|---|---:|---:|---:|---|")
        if backend != "postgresql":
            run_backend(conn, "SQLite", targets, runs)
        if backend != "sqlite":
            pg = Q.connect(pg_url, PG_MACHINE)
            try:
                run_backend(pg, "PostgreSQL", targets, runs)
            finally:
                pg.close()
        click.echo(f"\nload average after: {os.getloadavg()[0]:.2f}")
    finally:
        conn.close()
        if cluster is not None:
            from store import pgcluster

            pgcluster.remove(cluster)


if __name__ == "__main__":
    main()
