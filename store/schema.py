"""The store's schema, declared once: every table, its columns in order, its keys and indexes.

Everything that names a column or relies on a column's position takes it from here: both
backends' DDL and statements, the analyzer's row tuples (``events.row``, ``processes.row``), the
hash chain's encodings (a chained table's rows are its columns in this order) and verify's
column names. A new column goes at the end of its table (stores made before it are migrated by
``ADDED``, additively: no row changes, so the chain's state digests stay valid).

Types are the portable three: ``INT`` (a signed 64-bit integer: SQLite INTEGER, PostgreSQL
BIGINT), ``TEXT`` (guest text is escaped to printable text before it is stored) and ``BLOB``
(SQLite BLOB, PostgreSQL BYTEA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from provisor.syscalls import name_of

if TYPE_CHECKING:
    from provisor.events import Event

INT, TEXT, BLOB = "int", "text", "blob"
_SQL_TYPES = {"sqlite": {INT: "INTEGER", TEXT: "TEXT", BLOB: "BLOB"},
              "postgresql": {INT: "BIGINT", TEXT: "TEXT", BLOB: "BYTEA"}}


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]
    pk: tuple[str, ...] = ()
    indexes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (name, columns)
    state: bool = False  # rewritten by later batches: chained as a multiset hash (store/chain)
    # no key, and the order rows were written matters (the chain, the last value of a key):
    # that order is ``rowid``, SQLite's own; on PostgreSQL an identity column of that name
    # (the heap's order is not the order written: a row that does not fit a page goes to the
    # next one, and a later, smaller one may fill the gap)
    rowid: bool = False

    @property
    def cols(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.columns)

    def pos(self, col: str) -> int:
        """A column's position in this table's rows."""
        return self.cols.index(col)

    def select(self) -> str:
        """Every row, its columns in declared order (never ``SELECT *``: a store migrated by
        ``ADDED`` may hold a table's columns in another physical order)."""
        return f"SELECT {', '.join(self.cols)} FROM {self.name}"

    def insert(self, dialect: str, *, replace: bool = False, ignore: bool = False) -> str:
        """The INSERT of one row in declared order; ``replace`` overwrites the row with the
        same key, ``ignore`` keeps it."""
        mark = "?" if dialect == "sqlite" else "%s"
        values = ", ".join([mark] * len(self.columns))
        cols = ", ".join(self.cols)
        if dialect == "sqlite":
            verb = " OR REPLACE" if replace else " OR IGNORE" if ignore else ""
            return f"INSERT{verb} INTO {self.name} ({cols}) VALUES ({values})"
        sql = f"INSERT INTO {self.name} ({cols}) VALUES ({values})"
        if replace:
            rest = ", ".join(f"{c} = EXCLUDED.{c}" for c in self.cols if c not in self.pk)
            sql += f" ON CONFLICT ({', '.join(self.pk)}) DO UPDATE SET {rest}"
        elif ignore:
            sql += " ON CONFLICT DO NOTHING"
        return sql

    def ddl(self, dialect: str) -> list[str]:
        """CREATE TABLE and its indexes (IF NOT EXISTS: also the additive migration)."""
        types = _SQL_TYPES[dialect]
        cols = []
        for c, t in self.columns:
            if dialect == "sqlite" and self.pk == (c,) and t == INT:
                cols.append(f"{c} INTEGER PRIMARY KEY")  # the rowid: as sqlite-utils made it
            else:
                cols.append(f"{c} {types[t]}")
        if self.pk and not (dialect == "sqlite" and len(self.pk) == 1
                            and dict(self.columns)[self.pk[0]] == INT):
            cols.append(f"PRIMARY KEY ({', '.join(self.pk)})")
        if self.rowid and dialect == "postgresql":
            cols.append(PG_ROWID)
        out = [f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(cols)})"]
        out += [f"CREATE INDEX IF NOT EXISTS {name} ON {self.name}({', '.join(ic)})"
                for name, ic in self.indexes]
        return out


PG_ROWID = "rowid BIGINT GENERATED ALWAYS AS IDENTITY"  # Table.rowid on PostgreSQL


def _t(name: str, cols: str, pk: tuple[str, ...] = (), indexes: tuple = (),
       state: bool = False, rowid: bool = False) -> Table:
    """``cols`` is ``"name type, ..."``: the declaration reads like the DDL it makes."""
    columns = tuple((c.split()[0], c.split()[1]) for c in cols.split(","))
    return Table(name, columns, pk, indexes, state, rowid)


def _ix(table: str, *cols: str) -> tuple[str, tuple[str, ...]]:
    """An index named as sqlite-utils named the first stores' (``idx_<table>_<cols>``)."""
    return (f"idx_{table}_{'_'.join(cols)}", cols)


TABLES: dict[str, Table] = {t.name: t for t in (
    _t("meta", "key text, value text", ("key",)),
    # one row per ring record of type EVENT, as decoded (payload: the record, kept whole)
    _t("events", "seq int, ts_ns int, vcpu int, phase text, entry_seq int, nr int, name text, "
       "tgid int, pid int, ppid int, uid int, start_time int, comm text, cwd text, paths text, "
       "ret int, flags int, payload blob", ("seq",), (_ix("events", "tgid", "seq"),)),
    # a process: its current version (node), live until exit_seq
    _t("processes", "id int, tgid int, start_time int, parent_id int, exe text, comm text, "
       "cwd text, cwd_mnt int, uid int, version int, node int, first_seq int, last_seq int, "
       "exit_seq int", ("id",), (_ix("processes", "tgid"),), state=True),
    # a file, pipe, socket, symlink or FIFO: its current version (node)
    _t("artifacts", "id int, kind text, dev int, ino int, path text, version int, node int, "
       "created_seq int", ("id",), (_ix("artifacts", "dev", "ino"),), state=True),
    # every version of a process or artifact: the PROV activities and entities
    _t("versions", "id int, kind text, object_id int, version int, seq int, ts_ns int, "
       "reason text", ("id",), (_ix("versions", "object_id", "kind", "version"),)),
    # used / wasGeneratedBy / wasInformedBy / wasDerivedFrom / wasInvalidatedBy, src -> dst
    _t("relations", "id int, kind text, src int, dst int, entry_seq int, exit_seq int, "
       "ts_ns int", ("id",), (
           # covering indexes of examiner/query's lineage walks: a step up (src -> dst) or
           # down (dst -> src), optionally within a time window, and each edge's kind; also
           # every lookup by src or dst (with or without a kind): the (src, kind) and (dst,
           # kind) indexes of the first stores cost a third of a relation's insert for nothing
           ("relations_up", ("src", "ts_ns", "dst", "kind")),
           ("relations_down", ("dst", "ts_ns", "src", "kind")))),
    # the paths bound to an artifact, from bind_seq until unbind_seq
    _t("names", "id int, artifact_id int, path text, bind_seq int, unbind_seq int", ("id",),
       (_ix("names", "path"), _ix("names", "artifact_id"))),
    _t("fds", "proc_id int, fd int, artifact_id int, cloexec int", ("proc_id", "fd"),
       state=True),
    # what a process's current version used (cycle avoidance), in order
    _t("proc_used", "proc_id int, pos int, node int", ("proc_id", "pos"), state=True),
    # entries whose exit has not come (outcome unknown after a crash)
    _t("pending", "seq int", ("seq",), state=True),
    _t("losses", "seq int, lost int, lost_total int", ("seq",)),
    _t("notes", "seq int, text text", ("seq",)),
    # attributes of a version node (credentials, argv, mode, owner, endpoint addresses, ...):
    # append-only, several rows per key, in the order of the events that set them
    _t("attrs", "node int, key text, value text, seq int", (),
       (("attrs_node", ("node", "key")),), rowid=True),
    # the tamper-evidence hash chain, a link per applied batch (docs/TAMPER.md)
    _t("chain", "batch int, first_seq int, last_seq int, first_rel int, last_rel int, "
       "digest blob, state blob", ("batch",)),
)}

VIEWS = {"outcome_unknown": "SELECT e.* FROM events e JOIN pending p ON p.seq = e.seq"}

# tables and indexes later provisors added, created on stores made before them (additive)
ADDED = ("attrs", "relations_up", "relations_down")
# relations_up/down's first form; then the (src, kind) and (dst, kind) indexes they cover
DROPPED_INDEXES = ("relations_walk_up", "relations_walk_down", "idx_relations_src_kind",
                   "idx_relations_dst_kind")

# what a store's summary counts (the daemon's, collect's, status's and recovery's alike)
COUNTED = ("events", "processes", "artifacts", "versions", "relations")

# the state tables, in the order their digests are chained (store/chain.State: fixed by the
# stores already written)
STATE_TABLES = ("processes", "fds", "proc_used", "artifacts", "pending")
assert set(STATE_TABLES) == {t.name for t in TABLES.values() if t.state}

EVENTS, PROCESSES, ARTIFACTS = TABLES["events"], TABLES["processes"], TABLES["artifacts"]


def event_row(ev: Event) -> tuple:
    """The events row of an event (EVENTS column order): a function of its payload and seq
    alone, which is what lets chain encoding 4 chain the payload and verify check the columns
    against it. provisor/native/sqlite_rows.c binds the same row from the payload."""
    return (ev.seq, ev.ts_ns, ev.vcpu, "exit" if ev.phase else "entry", ev.entry_seq or None,
            ev.nr, name_of(ev.nr), ev.tgid, ev.pid, ev.ppid, ev.uid, ev.start_time, ev.comm,
            ev.cwd, "\n".join(ev.paths) if ev.paths else None, ev.ret, ev.flags, ev.payload)


def event_names(limit: int = 1024) -> tuple[str, ...]:
    """The syscall name by number below ``limit``, as event_row names it, for the native
    writer (a number past it goes the Python way). Made per batch: the table is the one
    source (a row added at run time is named at once)."""
    return tuple(name_of(nr) for nr in range(limit))
VERSIONS, RELATIONS, NAMES, ATTRS = (TABLES["versions"], TABLES["relations"], TABLES["names"],
                                     TABLES["attrs"])


def ddl(dialect: str) -> list[str]:
    """Every statement that makes an empty store's tables, indexes and views."""
    out = [s for t in TABLES.values() for s in t.ddl(dialect)]
    out += [f"CREATE VIEW {name} AS {sql}" for name, sql in VIEWS.items()]
    return out


def migration(dialect: str) -> list[str]:
    """The additive migration of a store made by an earlier provisor (idempotent)."""
    out: list[str] = []
    for t in TABLES.values():
        stmts = t.ddl(dialect)
        if t.name in ADDED:
            out += stmts
        else:
            out += [s for (name, _), s in zip(t.indexes, stmts[1:], strict=True)
                    if name in ADDED]
    out += [f"DROP INDEX IF EXISTS {name}" for name in DROPPED_INDEXES]
    return out
