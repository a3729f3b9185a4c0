"""The SQLite backend: the embedded default store, one file per ring.

Exactly once: a batch is written in one ``BEGIN IMMEDIATE`` transaction that also records its
last sequence number as ``applied_seq`` (``synchronous=FULL``: the commit is durable when it
returns). One writer per store (an OFD lock held for the writer's life); readers open the file
read-only. Every opener, writer or reader, goes through :func:`open_conn`: the same file checks
and the same validated meta before anything is read or written.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import sys
from collections.abc import Iterator, Sequence

from provisor import faults, files, locks
from provisor.errors import ProvisorError
from provisor.native import mod as _native
from store import base, chain, meta, schema
from store.base import Changes, StoreError

SIDE_FILES = ("-wal", "-shm", "-journal")  # SQLite opens these by name, beside the DB
DIALECT = "sqlite"


def check_files(path: str, *, readonly: bool, error: type[ProvisorError] = StoreError) -> bool:
    """Make the DB's files safe for SQLite to open by name; True when the DB holds data.

    A missing DB is created empty here, exclusively (0600, or 0640 with [files] group), and
    the writer's -wal and -shm likewise (SQLite would create them following a symlink planted
    in a shared directory such as /dev/shm, or reuse another user's: a planted WAL or journal
    is replayed into the DB). An existing DB or side file must be our own regular file, not a
    symlink; a reader also accepts root's (a root daemon's store read through the group)."""
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise error(f"{path}: {e.strerror}") from None
    try:
        if st is None:
            if readonly:
                raise error(f"{path}: no such database")
            parent = os.path.dirname(os.path.abspath(path))
            if not os.access(parent, os.W_OK):
                raise error(f"{path}: cannot create the database (directory not writable)")
            os.close(files.create_new(path))
        elif stat.S_ISDIR(st.st_mode):
            raise error(f"{path}: is a directory")
        else:
            files.check_ours(path, st, root_ok=readonly)
        for side in (path + s for s in SIDE_FILES):
            if os.path.lexists(side):
                files.check_ours(side, root_ok=readonly)
            elif not readonly and not side.endswith("-journal"):
                os.close(files.ensure_ours(side, os.O_RDWR))
    except files.FileError as e:
        raise error(str(e)) from None
    return st is not None and st.st_size > 0


def migrate(conn: sqlite3.Connection) -> None:
    """Additive migration of a store made by an earlier provisor (store/schema ``ADDED``)."""
    for sql in schema.migration(DIALECT):
        conn.execute(sql)


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                        (name,)).fetchone() is not None


def open_conn(path: str, *, readonly: bool, error: type[ProvisorError] = StoreError
              ) -> tuple[sqlite3.Connection, bool]:
    """Open a provisor DB after the file checks; returns the connection and whether the DB
    held data. An existing DB's meta is read and checked before the caller reads or writes
    anything (a damaged store is one line). A reader of a WAL store on read-only media, whose
    -shm cannot be made, reads it as immutable: nothing can write it there."""
    exists = check_files(path, readonly=readonly, error=error)
    if readonly and not exists:
        raise error(f"{path}: no such database")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro" if readonly else path, uri=readonly,
                               isolation_level=None, check_same_thread=False)
    except sqlite3.Error as e:
        raise error(f"{path}: {e}") from None
    try:
        conn.execute("PRAGMA busy_timeout=10000")
        if exists:
            try:
                meta.read(conn, path)
            except sqlite3.OperationalError as e:
                if not readonly or "unable to open" not in str(e) or os.access(
                        os.path.dirname(os.path.abspath(path)), os.W_OK):
                    raise
                conn.close()
                conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True,
                                       isolation_level=None, check_same_thread=False)
                meta.read(conn, path)
    except sqlite3.Error as e:
        conn.close()
        raise error(f"{path}: {e}") from None
    except BaseException:
        conn.close()
        raise
    return conn, exists


def native_rows(conn: sqlite3.Connection, path: str) -> bool:
    """Whether the native writer may bind events rows on ``conn`` (a connection to the file
    ``path``): CPython's sqlite3, whose handle it finds there naming that file, and the same
    SQLite library as this interpreter's _sqlite3 (sqlite_rows.c checks both)."""
    if _native is None or sys.implementation.name != "cpython" \
            or not (3, 8) <= sys.version_info[:2] <= (3, 14):
        return False
    import _sqlite3

    return bool(_native.setup_sqlite(sqlite3.Connection, conn, os.path.realpath(path),
                                     _sqlite3.__file__, sqlite3.OperationalError))


class SQLiteStore:
    """A provisor database in one SQLite file, bound to one ring (by UUID)."""

    dialect = DIALECT

    def __init__(self, path: str, machine: str | None = None, *, readonly: bool = False
                 ) -> None:
        self.path = path
        self.readonly = readonly
        self._want_machine = None if machine is None else meta.check_machine(machine)
        self._lock: locks.Lock | None = None
        self.conn, exists = open_conn(path, readonly=readonly)
        try:
            self._open(exists)
        except BaseException:
            self.close()
            raise

    def _open(self, exists: bool) -> None:
        path, c = self.path, self.conn
        try:
            if not self.readonly:
                # one writer per store, for this object's life (the file exists now: connect
                # made it); a second daemon or recovery on this DB is refused before it writes
                self._lock = locks.acquire(path, locks.STORE_WRITER, "store writer")
                if not exists and os.path.getsize(path) > 0:  # another creator finished first
                    exists = True
                    meta.read(c, path)
                if exists:
                    self._probe_write()
                c.execute("PRAGMA journal_mode=WAL")
                c.execute("PRAGMA synchronous=FULL")
                if exists:
                    migrate(c)
                else:
                    self._create()
        except (sqlite3.Error, OSError) as e:
            hint = "" if self.readonly or os.access(os.path.dirname(os.path.abspath(path)),
                                                    os.W_OK) else " (its directory is read-only)"
            raise StoreError(f"{path}: {getattr(e, 'strerror', None) or e}{hint}") from None
        self._meta = meta.read(c, path)
        self.ring_uuid = self._meta.ring_uuid
        self.applied_seq = self._meta.applied_seq
        self.chain_head, self.batches = self._meta.chain_head, self._meta.batches
        self.encoding = self._meta.chain_encoding
        self.machine = self._meta.machine
        if self._want_machine is not None and self._want_machine != self.machine:
            raise StoreError(f"{path}: the store of machine {self.machine!r}, not "
                             f"{self._want_machine!r} (one store per machine)")
        self.has_attrs = has_table(c, "attrs")  # an old store opened read-only may lack it
        self._native = not self.readonly and native_rows(c, path)

    def _probe_write(self) -> None:
        """Fail now, before any ring record is read, when the store cannot be written (a
        read-only file system, an immutable file, a read-only open): a write that is rolled
        back leaves the database as it was."""
        c = self.conn
        try:
            c.execute("BEGIN IMMEDIATE")
            c.execute("UPDATE meta SET value=value WHERE key='schema_version'")
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot write the store: {e}") from None
        finally:
            if c.in_transaction:
                c.execute("ROLLBACK")

    def _create(self) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            for sql in schema.ddl(DIALECT):
                c.execute(sql)
            c.executemany(schema.TABLES["meta"].insert(DIALECT), [
                ("schema_version", str(meta.SCHEMA_VERSION)), ("ring_uuid", ""),
                ("applied_seq", "0"), ("chain_head", chain.GENESIS.hex()), ("batches", "0"),
                ("chain_encoding", chain.ENCODING),
                ("machine_name", self._want_machine or meta.DEFAULT_MACHINE)])
            c.execute(f"PRAGMA application_id={meta.APP_ID}")
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    # -- reading -----------------------------------------------------------------------------
    def q(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        return self.conn.execute(sql, args).fetchall()

    def rows(self, table: str, order: str = "") -> Iterator[tuple]:
        """A table's rows, columns in declared order."""
        sql = schema.TABLES[table].select() + (f" ORDER BY {order}" if order else "")
        return iter(self.conn.execute(sql))

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def stored(self, table: str, col: str, keys: Sequence[object]) -> list[tuple]:
        """The stored rows of ``table`` whose ``col`` is one of ``keys``."""
        return self.conn.execute(
            f"{schema.TABLES[table].select()} WHERE {col} IN (SELECT value FROM json_each(?))",
            (json.dumps(list(keys)),)).fetchall()

    def state(self) -> chain.State:
        return chain.State.of(self.conn, self.encoding)

    def last_state(self) -> bytes | None:
        """The state digest the last batch chained, or None before any batch."""
        row = self.conn.execute("SELECT state FROM chain ORDER BY batch DESC LIMIT 1"
                                ).fetchone()
        return None if row is None else (row[0] or b"")

    def counts(self) -> dict[str, int]:
        return base.counts(self.q)

    # -- writing -----------------------------------------------------------------------------
    def _set_meta(self, key: str, value: str) -> None:
        try:
            self.conn.execute("UPDATE meta SET value=? WHERE key=?", (value, key))
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot write the store: {e}") from None

    def set_ring(self, ring_uuid: str) -> None:
        """Bind the store to a ring (the caller decided it may)."""
        self._set_meta("ring_uuid", ring_uuid)
        self.ring_uuid = ring_uuid

    def record_machine(self, text: str) -> None:
        """meta ``machine``, once: a store keeps the first value."""
        try:
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('machine', ?)", (text,))
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot write the store: {e}") from None

    def write(self, ch: Changes, st_before: chain.State | None) -> chain.State | None:
        """Write one batch and its chain link in one durable transaction that also advances
        ``applied_seq``; returns the chained state after it (None on encoding 1). On any
        failure the transaction is rolled back and nothing of the batch is stored."""
        c = self.conn
        T = schema.TABLES
        c.execute("BEGIN IMMEDIATE")
        try:
            st = None if st_before is None else base.state_after(
                st_before, self.stored, ch, lambda pid, pos: c.execute(
                    f"{T['proc_used'].select()} WHERE proc_id=? AND pos=?", (pid, pos)
                ).fetchone())
            head = base.link(self.chain_head, self.encoding, ch, st)
            self._write_events(ch.events)
            for table, rows in ch.appended(events=False):
                if rows:
                    self._many(T[table].insert(DIALECT), rows)
            if ch.unbinds:
                self._many("UPDATE names SET unbind_seq=? WHERE id=?", ch.unbinds)
            if ch.procs:
                self._many(T["processes"].insert(DIALECT, replace=True), ch.procs)
                self._many("DELETE FROM fds WHERE proc_id=?", [(r[0],) for r in ch.procs])
                self._many(T["fds"].insert(DIALECT), ch.fds)
            if ch.used_clear:
                self._many("DELETE FROM proc_used WHERE proc_id=?",
                           [(i,) for i in ch.used_clear])
            if ch.used_del:
                self._many("DELETE FROM proc_used WHERE proc_id=? AND pos=?", list(ch.used_del))
            if ch.used_add:
                self._many(T["proc_used"].insert(DIALECT), ch.used_add)
            if ch.arts:
                self._many(T["artifacts"].insert(DIALECT, replace=True), ch.arts)
            if ch.pending_done:
                self._many("DELETE FROM pending WHERE seq=?", [(s,) for s in ch.pending_done])
            if ch.pending_new:
                self._many(T["pending"].insert(DIALECT, ignore=True),
                           [(s,) for s in ch.pending_new])
            row = base.chain_row(self.batches + 1, ch, head, st)
            cols = T["chain"].cols[:len(row) if st is not None else 6]
            c.execute(f"INSERT INTO chain ({', '.join(cols)}) VALUES "
                      f"({', '.join('?' * len(cols))})", row[:len(cols)])
            c.executemany("UPDATE meta SET value=? WHERE key=?", [
                (str(ch.last_seq), "applied_seq"), (head.hex(), "chain_head"),
                (str(self.batches + 1), "batches")])
            faults.point("before_commit")
            c.execute("COMMIT")
            faults.point("after_commit")
        except BaseException as e:
            if c.in_transaction:
                c.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error | OSError):  # read-only, disk full, I/O error
                raise StoreError(f"{self.path}: cannot write the store: "
                                 f"{getattr(e, 'strerror', None) or e}") from None
            raise
        self.chain_head = head
        self.batches += 1
        self.applied_seq = ch.last_seq
        return st

    def _write_events(self, events: list) -> None:
        """The events rows: bound from their payloads in C where this Python allows it
        (provisor/native/sqlite_rows.c), by executemany of schema.event_row otherwise and
        for any event the C code leaves."""
        if not events:
            return
        sql = schema.EVENTS.insert(DIALECT)
        if self._native:
            left = _native.insert_events(self.conn, sql, events, schema.event_names())
            if not left:
                return
            events = [events[i] for i in left]
        self.conn.executemany(sql, [schema.event_row(e) for e in events])

    def _many(self, sql: str, rows: list[tuple]) -> None:
        """executemany, by the native writer where it may (rows in order: it stops at the
        first row holding a value it does not bind, and executemany writes from there)."""
        if self._native:
            done = _native.insert_rows(self.conn, sql, rows)
            if done == len(rows):
                return
            rows = rows[done:]
        self.conn.executemany(sql, rows)

    def close(self) -> None:
        self.conn.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None
