"""``provisor query|export|verify|status``: what examiners and auditors run against a store.

Kept apart from daemon/cli.py (the daemon's own command) so that each side edits its own file;
daemon/cli.py appends these to its ``COMMANDS``.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from daemon import query as Q

OUTPUTS = ("table", "json", "dot")


def _db(cfg: dict, db: str | None) -> str:
    return db or cfg["daemon"]["db"]


def _query_options(f: Callable) -> Callable:
    for deco in reversed([
        click.option("--db", "db_path", default=None, help="SQLite store (default: config)."),
        click.option("--depth", type=click.IntRange(min=0), default=None,
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


def _run(cfg: dict, name: str, target: str, db_path: str | None, depth: int | None,
         since: str | None, until: str | None, fmt: str, all_versions: bool = False) -> None:
    win = Q.Window(Q.parse_time(since), Q.parse_time(until))
    conn = Q.connect(_db(cfg, db_path))
    try:
        res = Q.QUERIES[name](conn, target, depth, win, all_versions)
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

    \b
    Example:
      provisor query ancestors /w/report.pdf --depth 5
      provisor query descendants v:12 --dot | dot -Tsvg > d.svg
      provisor query history /etc/passwd --json
      provisor query process 1234 --since 2026-11-23T08:00:00Z
      provisor query writers /w/out.txt
    """


@query_cmd.command("ancestors")
@click.argument("target")
@click.option("--all-versions", is_flag=True, help="Start from every version of the object.")
@_query_options
@click.pass_obj
def q_ancestors(cfg: dict, target: str, all_versions: bool, **kw) -> None:
    """Everything TARGET depends on: what made it, what that read, and so on.

    \b
    Example:
      provisor query ancestors /w/out.txt --depth 3 --db /dev/shm/p.db
      provisor query ancestors artifact:5 --all-versions --json
    """
    _run(cfg, "ancestors", target, all_versions=all_versions, **kw)


@query_cmd.command("descendants")
@click.argument("target")
@click.option("--all-versions", is_flag=True, help="Start from every version of the object.")
@_query_options
@click.pass_obj
def q_descendants(cfg: dict, target: str, all_versions: bool, **kw) -> None:
    """Everything that depends on TARGET: who read it, what they wrote, and so on.

    \b
    Example:
      provisor query descendants /w/secret.key --since 2026-11-23T08:00:00Z
      provisor query descendants v:42 --dot > d.dot
    """
    _run(cfg, "descendants", target, all_versions=all_versions, **kw)


@query_cmd.command("history")
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


@query_cmd.command("writers")
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


COMMANDS: list[click.Command] = [query_cmd]
