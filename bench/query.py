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

    python bench/query.py [--relations 1000000] [--runs 15] [--db PATH] [--rebuild]
"""

from __future__ import annotations

import os
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


@click.command()
@click.option("--db", "path", default="/dev/shm/provisor-bench-query.db", show_default=True)
@click.option("--relations", default=1_000_000, show_default=True)
@click.option("--runs", default=15, show_default=True)
@click.option("--seed", default=7, show_default=True)
@click.option("--rebuild", is_flag=True, help="Rebuild the store even if one is there.")
def main(path: str, relations: int, runs: int, seed: int, rebuild: bool) -> None:
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
    click.echo(f"\nstore: {total:,} relations, {events:,} events; {runs} runs each; "
               f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs\n")
    click.echo("| query | target | nodes | relations | what is timed | median ms | min ms "
               "| max ms | goal < 100 ms |")
    click.echo("|---|---|---:|---:|---|---:|---:|---:|---|")
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
            click.echo(f"| {name} | {what} | {len(full.nodes) - 1:,} | {len(full.edges):,} | "
                       f"{mode} | {med:.1f} | {min(times):.1f} | {max(times):.1f} | {goal} |")
    conn.close()


if __name__ == "__main__":
    main()
