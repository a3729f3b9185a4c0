"""The PostgreSQL backend: the shared store of a fleet (psycopg 3).

The same schema (store/schema.py) as SQLite, and the same exactly-once contract: a batch is one
transaction that also advances the ring's ``applied_seq``; the daemon releases the ring only
after ``commit`` returned (``synchronous_commit`` is on: the commit is durable on the server).

One database holds many rings: each ring's tables live in a PostgreSQL schema (a namespace) of
its own, ``provisor_<machine>``, so that several daemons (one per ring) write into one database
concurrently without sharing a row, a sequence or an id, and a lineage walk can never step from
one machine's graph into another's. One writer per namespace: the writer holds a session
advisory lock keyed by the namespace; a second daemon or recovery on the same ring is refused.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from provisor import faults
from provisor.machine import is_postgres_url
from store import base, chain, meta, schema
from store.base import Changes, StoreError

DIALECT = "postgresql"
_LOCK_CLASS = 0x50524F56  # "PROV": the advisory lock's first key


is_url = is_postgres_url


def namespace(machine: str) -> str:
    """The PostgreSQL schema holding one machine's store."""
    return f"provisor_{meta.check_machine(machine)}"


def split_url(url: str) -> tuple[str, str | None]:
    """The connection URL without provisor's own ``machine`` parameter, and that parameter."""
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    machine = next((v for k, v in params if k == "machine"), None)
    rest = urlencode([(k, v) for k, v in params if k != "machine"])
    return urlunsplit(parts._replace(query=rest)), machine


def shown(url: str, machine: str) -> str:
    """How a machine's store in the database at ``url`` is named in messages and reports:
    the URL without its password or ``machine`` parameter, then ``[machine]``."""
    return f"{redact(split_url(url)[0])} [{machine}]"


def redact(url: str) -> str:
    """The URL as printed: never its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    user = f"{parts.username}:***@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}{host}{port}"))


def connect(url: str, *, error: type[Exception] = StoreError):
    try:
        import psycopg
    except ImportError:
        raise error("PostgreSQL store: psycopg 3 is not installed (pip install "
                    "'psycopg[binary]')") from None
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.Error as e:
        first = (str(e).strip().splitlines() or ["cannot connect"])[0]
        raise error(f"{redact(url)}: {first}") from None


# the binary COPY's type of each portable column type (store/schema.py)
_COPY_TYPES = {schema.INT: "int8", schema.TEXT: "text", schema.BLOB: "bytea"}


class PostgresStore:
    """One ring's tables in their own namespace of a PostgreSQL database."""

    dialect = DIALECT
    has_attrs = True  # every PostgreSQL store was made with the attrs table

    def __init__(self, url: str, machine: str | None = None, *, readonly: bool = False
                 ) -> None:
        import psycopg

        self._psycopg = psycopg
        self.url, m = split_url(url)
        if m and machine and m != machine:
            raise StoreError(f"{redact(url)}: the URL names machine {m!r}, the caller "
                             f"{machine!r}")
        self.machine = m or machine or meta.DEFAULT_MACHINE
        self.ns = namespace(self.machine)
        self.path = shown(self.url, self.machine)  # what errors name
        self.readonly = readonly
        self.conn = connect(self.url)
        try:
            self._open()
        except psycopg.Error as e:
            self.conn.close()
            raise StoreError(f"{self.path}: {_first_line(e)}") from None
        except BaseException:
            self.conn.close()
            raise

    def _open(self) -> None:
        c, psycopg = self.conn, self._psycopg
        exists = c.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                           (self.ns,)).fetchone() is not None
        if self.readonly and not exists:
            raise StoreError(f"{self.path}: no such store (no schema {self.ns})")
        if exists:
            check_usage(c, self.ns, self.path)
        if not self.readonly:
            key = zlib.crc32(self.ns.encode())
            got = c.execute("SELECT pg_try_advisory_lock(%s, %s)",
                            (_LOCK_CLASS, key - (1 << 31))).fetchone()[0]
            if not got:
                raise StoreError(f"{self.path}: another writer (daemon or recovery) holds this "
                                 "ring's store")
        c.execute(f'SET search_path TO "{self.ns}"')
        if not self.readonly:
            # a daemon role that is not the namespace's owner may not run DDL (store/pgroles):
            # only what is missing is made, and a refusal names the admin's step
            insufficient = psycopg.errors.InsufficientPrivilege
            try:
                if not exists:
                    create(c, self.ns, self.machine)
                else:
                    migrate(c, self.ns)
            except insufficient:
                what = "no such store" if not exists else "the store needs migrating"
                raise StoreError(
                    f"{self.path}: {what} and role {_role(c)} may not run DDL: run `provisor "
                    f"pg init --db URL --machine {self.machine}` as the database's admin"
                ) from None
        self._meta = meta.check(c.execute("SELECT key, value FROM meta").fetchall(), self.path)
        self.ring_uuid = self._meta.ring_uuid
        self.applied_seq = self._meta.applied_seq
        self.chain_head, self.batches = self._meta.chain_head, self._meta.batches
        self.encoding = self._meta.chain_encoding

    # -- reading -----------------------------------------------------------------------------
    def q(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        """A query written for both backends (``?`` placeholders)."""
        if args:
            sql = sql.replace("%", "%%").replace("?", "%s")
            return self.conn.execute(sql, tuple(args)).fetchall()
        return self.conn.execute(sql).fetchall()

    def rows(self, table: str, order: str = "") -> Iterator[tuple]:
        sql = schema.TABLES[table].select() + (f" ORDER BY {order}" if order else "")
        return iter(self.conn.execute(sql).fetchall())

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
        return row[0] if row else None

    def stored(self, table: str, col: str, keys: Sequence[object]) -> list[tuple]:
        return self.conn.execute(f"{schema.TABLES[table].select()} WHERE {col} = ANY(%s)",
                                 (list(keys),)).fetchall()

    def state(self) -> chain.State:
        return chain.State.of(self.conn, self.encoding)

    def last_state(self) -> bytes | None:
        row = self.conn.execute("SELECT state FROM chain ORDER BY batch DESC LIMIT 1"
                                ).fetchone()
        return None if row is None else bytes(row[0] or b"")

    def counts(self) -> dict[str, int]:
        return base.counts(self.q)

    # -- writing -----------------------------------------------------------------------------
    def set_ring(self, ring_uuid: str) -> None:
        cur = self.conn.execute("UPDATE meta SET value = %s WHERE key = 'ring_uuid'",
                                (ring_uuid,))
        if cur.rowcount != 1:  # meta's row-level security (store/pgroles) hid the row
            raise StoreError(f"{self.path}: role {_role(self.conn)} may not set the store's "
                             "ring (a daemon role binds a ring only before the first batch)")
        self.ring_uuid = ring_uuid

    def record_machine(self, text: str) -> None:
        self.conn.execute("INSERT INTO meta VALUES ('machine', %s) ON CONFLICT DO NOTHING",
                          (text,))

    def write(self, ch: Changes, st_before: chain.State | None) -> chain.State | None:
        """One batch in one transaction, with its chain link and ``applied_seq``."""
        c, T, psycopg = self.conn, schema.TABLES, self._psycopg
        try:
            with c.transaction():
                cur = c.cursor()
                st = None if st_before is None else base.state_after(
                    st_before, self.stored, ch, lambda pid, pos: c.execute(
                        f"{T['proc_used'].select()} WHERE proc_id = %s AND pos = %s",
                        (pid, pos)).fetchone())
                head = base.link(self.chain_head, self.encoding, ch, st)
                for table, rows in ch.appended():  # append-only: COPY, in the same transaction
                    if rows:
                        t = T[table]
                        with cur.copy(f"COPY {table} ({', '.join(t.cols)}) FROM STDIN "
                                      "(FORMAT BINARY)") as cp:
                            cp.set_types([_COPY_TYPES[ty] for _, ty in t.columns])
                            for r in rows:
                                cp.write_row(r)
                if ch.unbinds:
                    cur.executemany("UPDATE names SET unbind_seq = %s WHERE id = %s", ch.unbinds)
                if ch.procs:
                    cur.executemany(T["processes"].insert(DIALECT, replace=True), ch.procs)
                    cur.execute("DELETE FROM fds WHERE proc_id = ANY(%s)",
                                ([r[0] for r in ch.procs],))
                    if ch.fds:
                        cur.executemany(T["fds"].insert(DIALECT), ch.fds)
                if ch.used_clear:
                    cur.execute("DELETE FROM proc_used WHERE proc_id = ANY(%s)",
                                (sorted(ch.used_clear),))
                if ch.used_del:
                    cur.executemany("DELETE FROM proc_used WHERE proc_id = %s AND pos = %s",
                                    sorted(ch.used_del))
                if ch.used_add:
                    cur.executemany(T["proc_used"].insert(DIALECT), ch.used_add)
                if ch.arts:
                    cur.executemany(T["artifacts"].insert(DIALECT, replace=True), ch.arts)
                if ch.pending_done:
                    cur.execute("DELETE FROM pending WHERE seq = ANY(%s)", (ch.pending_done,))
                if ch.pending_new:
                    cur.executemany(T["pending"].insert(DIALECT, ignore=True),
                                    [(s,) for s in ch.pending_new])
                cur.execute(T["chain"].insert(DIALECT),
                            base.chain_row(self.batches + 1, ch, head, st))
                cur.executemany("UPDATE meta SET value = %s WHERE key = %s", [
                    (str(ch.last_seq), "applied_seq"), (head.hex(), "chain_head"),
                    (str(self.batches + 1), "batches")])
                faults.point("before_commit")
            faults.point("after_commit")
        except psycopg.Error as e:
            raise StoreError(f"{self.path}: cannot write the store: {_first_line(e)}") from None
        self.chain_head = head
        self.batches += 1
        self.applied_seq = ch.last_seq
        return st

    def close(self) -> None:
        self.conn.close()  # the advisory lock goes with the session


def create(c, ns: str, machine: str) -> None:  # noqa: ANN001 (a psycopg connection)
    """Make machine ``machine``'s namespace ``ns`` and its tables (the daemon as owner on first
    open, or ``provisor pg init`` as the admin: no advisory lock needed, a second creator that
    finishes first is no error)."""
    with c.transaction():
        c.execute(f'CREATE SCHEMA IF NOT EXISTS "{ns}"')
        if c.execute("SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = 'meta'",
                     (ns,)).fetchone():
            return  # made by a creator that finished first
        c.execute(f'SET LOCAL search_path TO "{ns}"')
        for sql in schema.ddl(DIALECT):
            c.execute(sql)
        c.cursor().executemany(schema.TABLES["meta"].insert(DIALECT), [
            ("schema_version", str(meta.SCHEMA_VERSION)), ("ring_uuid", ""),
            ("applied_seq", "0"), ("chain_head", chain.GENESIS.hex()), ("batches", "0"),
            ("chain_encoding", chain.ENCODING), ("machine_name", machine)])


_DDL_NAME = re.compile(r"(CREATE TABLE IF NOT EXISTS|CREATE INDEX IF NOT EXISTS|"
                       r"DROP INDEX IF EXISTS) (\w+)")


def migration_needed(c, ns: str) -> list[str]:  # noqa: ANN001 (a psycopg connection)
    """The statements of the additive migration (schema.migration) that namespace ``ns`` still
    needs: none on a current store, so that a role without DDL rights opens it."""
    tables = {r[0] for r in c.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s",
                                      (ns,))}
    indexes = {r[0] for r in c.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s",
                                       (ns,))}
    out = []
    for t in schema.TABLES.values():  # attrs made before its rowid column (in heap order)
        if t.rowid and t.name in tables and not c.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND "
                "table_name = %s AND column_name = 'rowid'", (ns, t.name)).fetchone():
            out.append(f"ALTER TABLE {t.name} ADD COLUMN {schema.PG_ROWID}")
    for sql in schema.migration(DIALECT):
        m = _DDL_NAME.match(sql)
        if m is None:
            raise StoreError(f"unrecognised migration statement: {sql[:60]}")
        verb, name = m.groups()
        if (verb.startswith("CREATE TABLE") and name not in tables
                or verb.startswith("CREATE INDEX") and name not in indexes
                or verb.startswith("DROP") and name in indexes):
            out.append(sql)
    return out


def migrate(c, ns: str) -> None:  # noqa: ANN001 (a psycopg connection)
    """Run what the additive migration still needs in ``ns`` (nothing: no statement at all)."""
    todo = migration_needed(c, ns)
    if todo:
        with c.transaction():
            c.execute(f'SET LOCAL search_path TO "{ns}"')
            for sql in todo:
                c.execute(sql)


def check_usage(c, ns: str, path: str) -> None:  # noqa: ANN001 (a psycopg connection)
    """A role without USAGE on ``ns`` is refused here, by name, not later as if the tables
    were missing (a search_path entry the role may not use is skipped silently)."""
    if not c.execute("SELECT has_schema_privilege(%s, 'USAGE')", (ns,)).fetchone()[0]:
        raise StoreError(f"{path}: permission denied for schema {ns}: role {_role(c)} may not "
                         "use this machine's store (the admin grants it: provisor pg grant)")


def _role(c) -> str:  # noqa: ANN001 (a psycopg connection)
    return c.execute("SELECT current_user").fetchone()[0]


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
