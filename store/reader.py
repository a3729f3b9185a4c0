"""Reading a store on either backend with the examiner's SQL (written once, SQLite's dialect).

The examiner's queries (the recursive CTEs of ``query``, ``export``'s and ``verify``'s reads)
are written once. On SQLite they run as written; on PostgreSQL a :class:`PgConn` stands in for
the ``sqlite3.Connection`` and translates the few places the dialects differ, all listed here:

* ``?`` placeholders become ``%s`` (a literal ``%`` is doubled);
* ``SELECT value[, expr] FROM json_each(?)``, the id-list idiom (a JSON array of integers
  bound as one parameter), becomes ``json_array_elements_text`` cast to ``bigint``;
* ``rowid`` needs nothing: the one table that orders by it (``attrs``) has a column of that
  name on PostgreSQL (store/schema.py, ``Table.rowid``);
* ``INDEXED BY name`` (SQLite's planner hint for the recursive walks) is dropped, and its
  statement runs with hash and merge joins off: PostgreSQL cannot estimate a walk's size (it
  guesses hundreds of thousands of nodes for a few thousand) and would scan the whole index
  once instead of looking up each node, ten times slower at a million relations;
* ``sqlite_master`` is not translated: ask :func:`has_table`.

The PostgreSQL reader runs in one ``REPEATABLE READ READ ONLY`` transaction: every statement of
one examiner command sees the same snapshot while daemons keep committing, and nothing it runs
can write.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from store import meta, postgres
from store.base import StoreError

_JSON_IDS = re.compile(r"SELECT value((?:\s*,\s*[^()]+?)?)\s+FROM json_each\(%s\)")
_INDEXED = re.compile(r"\s+INDEXED BY \w+")


def translate(sql: str) -> str:
    """The examiner's SQLite-dialect statement, for PostgreSQL."""
    sql = sql.replace("%", "%%").replace("?", "%s")
    sql = _JSON_IDS.sub(r"SELECT value::bigint\1 FROM json_array_elements_text(%s::json) "
                        r"AS j(value)", sql)
    if "json_each(" in sql:
        raise StoreError(f"json_each outside the id-list idiom: {sql[:80]}")
    return _INDEXED.sub("", sql)


class PgConn:
    """A read-only PostgreSQL connection to one machine's namespace, with the small part of
    ``sqlite3.Connection``'s interface the examiner uses (``execute``, ``close``)."""

    dialect = postgres.DIALECT

    def __init__(self, url: str, machine: str | None = None) -> None:
        base_url, m = postgres.split_url(url)
        self.machine = meta.check_machine(machine or m or meta.DEFAULT_MACHINE)
        self.ns = postgres.namespace(self.machine)
        self.path = postgres.shown(base_url, self.machine)
        self.conn = postgres.connect(base_url)
        try:
            c = self.conn
            if c.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                         (self.ns,)).fetchone() is None:
                raise StoreError(f"{self.path}: no such store (no schema {self.ns})")
            postgres.check_usage(c, self.ns, self.path)
            c.autocommit = False
            c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            c.execute(f'SET LOCAL search_path TO "{self.ns}"')
            c.execute("SET LOCAL jit = off")  # compiling costs more than a walk takes
            self.meta = meta.check(c.execute("SELECT key, value FROM meta").fetchall(),
                                   self.path)
        except BaseException:
            self.conn.close()
            raise

    def execute(self, sql: str, args: Sequence[object] = ()):  # noqa: ANN201 (a cursor)
        # rows in binary: a walk's tens of thousands of integers convert faster (5-10 %)
        if "INDEXED BY" not in sql:
            return self.conn.execute(translate(sql), tuple(args) if args else None, binary=True)
        self.conn.execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
        try:  # the rows are fetched by execute (a client-side cursor): the hint may go now
            return self.conn.execute(translate(sql), tuple(args) if args else None,
                                     binary=True)
        finally:
            self.conn.execute("SET LOCAL enable_hashjoin = on; SET LOCAL enable_mergejoin = on")

    def rows(self, sql: str, args: Sequence[object] = ()) -> Iterator[tuple]:
        return iter(self.execute(sql, args))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> PgConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def machines(url: str) -> list[str]:
    """The machines that have a store in the PostgreSQL database at ``url``, by name."""
    base_url, _ = postgres.split_url(url)
    conn = postgres.connect(base_url)
    try:
        rows = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'provisor\\_%' "
                            "ORDER BY nspname").fetchall()
    finally:
        conn.close()
    out = [r[0][len("provisor_"):] for r in rows]
    return [m for m in out if meta.MACHINE_RE.fullmatch(m)]


def has_table(conn, name: str) -> bool:  # noqa: ANN001 (sqlite3.Connection or PgConn)
    """Whether the store on ``conn`` has table ``name`` (an older SQLite store may lack one)."""
    if getattr(conn, "dialect", "sqlite") == postgres.DIALECT:
        return conn.conn.execute("SELECT 1 FROM pg_tables WHERE schemaname = %s AND "
                                 "tablename = %s", (conn.ns, name)).fetchone() is not None
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                        (name,)).fetchone() is not None


@contextmanager
def snapshot(conn) -> Iterator[None]:  # noqa: ANN001 (sqlite3.Connection or PgConn)
    """One read snapshot for the several statements of one examiner command, while daemons
    commit: a read transaction on SQLite (WAL); on PostgreSQL the reader's transaction already
    is one, for the whole connection."""
    if getattr(conn, "dialect", "sqlite") == postgres.DIALECT or conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")
