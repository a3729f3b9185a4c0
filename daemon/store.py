"""The SQLite store, and ``apply``: the one path by which ring records become rows.

Exactly once: a batch of records is analyzed and written in one transaction that also records
the batch's last sequence number as ``applied_seq`` (``synchronous=FULL``, so the commit is
durable when it returns). Records at or below ``applied_seq`` are skipped, so replaying the same
ring twice, or recovery after the daemon, changes nothing. The analyzer's live state (processes,
fd tables, current versions, name bindings, entries awaiting exits) is written back in the same
transaction, so a restarted daemon resumes exactly where the last commit left it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING

from daemon import chain, meta
from daemon.analyzer import WRITE_FAMILIES, Analyzer, Art, Batch, Proc
from daemon.meta import APP_ID, SCHEMA_VERSION  # noqa: F401  (re-exported)
from pmem.layout import Record, RecType
from provisor import faults, files, locks
from provisor.errors import ProvisorError
from provisor.events import EventDecodeError, decode
from provisor.guesttext import escape
from provisor.syscalls import BY_NR

if TYPE_CHECKING:
    import sqlite_utils


class StoreError(ProvisorError):
    pass


SIDE_FILES = ("-wal", "-shm", "-journal")  # SQLite opens these by name, beside the DB


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


# Covering indexes for the lineage queries of daemon/query.py: a recursive step up (src -> dst)
# or down (dst -> src), optionally within a time window, and the kind of each edge, read only
# the index. (relations_walk_up/down were their first, narrower form.)
QUERY_INDEXES = (
    "CREATE INDEX IF NOT EXISTS relations_up ON relations(src, ts_ns, dst, kind)",
    "CREATE INDEX IF NOT EXISTS relations_down ON relations(dst, ts_ns, src, kind)",
)


# Tables and indexes later provisors added: created on stores made before them (additive only:
# no existing row changes, so the hash chain's state digests stay valid)
ADDED = (
    "CREATE TABLE IF NOT EXISTS attrs (node INTEGER, key TEXT, value TEXT, seq INTEGER)",
    "CREATE INDEX IF NOT EXISTS attrs_node ON attrs(node, key)",
)


def ensure_indexes(conn: sqlite3.Connection) -> None:
    """Additive migration: create the query indexes and the tables added since (ADDED) on
    databases made before they existed."""
    for sql in (*QUERY_INDEXES, *ADDED):
        conn.execute(sql)
    conn.execute("DROP INDEX IF EXISTS relations_walk_up")
    conn.execute("DROP INDEX IF EXISTS relations_walk_down")


def _schema(db: sqlite_utils.Database) -> None:
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["events"].create({
        "seq": int, "ts_ns": int, "vcpu": int, "phase": str, "entry_seq": int, "nr": int,
        "name": str, "tgid": int, "pid": int, "ppid": int, "uid": int, "start_time": int,
        "comm": str, "cwd": str, "paths": str, "ret": int, "flags": int, "payload": bytes,
    }, pk="seq")
    db["processes"].create({
        "id": int, "tgid": int, "start_time": int, "parent_id": int, "exe": str, "comm": str,
        "cwd": str, "cwd_mnt": int, "uid": int, "version": int, "node": int, "first_seq": int,
        "last_seq": int, "exit_seq": int,
    }, pk="id")
    db["artifacts"].create({
        "id": int, "kind": str, "dev": int, "ino": int, "path": str, "version": int,
        "node": int, "created_seq": int,
    }, pk="id")
    db["versions"].create({
        "id": int, "kind": str, "object_id": int, "version": int, "seq": int, "ts_ns": int,
        "reason": str,
    }, pk="id")
    db["relations"].create({
        "id": int, "kind": str, "src": int, "dst": int, "entry_seq": int, "exit_seq": int,
        "ts_ns": int,
    }, pk="id")
    db["names"].create({"id": int, "artifact_id": int, "path": str, "bind_seq": int,
                        "unbind_seq": int}, pk="id")
    db["fds"].create({"proc_id": int, "fd": int, "artifact_id": int, "cloexec": int},
                     pk=("proc_id", "fd"))
    db["proc_used"].create({"proc_id": int, "pos": int, "node": int}, pk=("proc_id", "pos"))
    db["pending"].create({"seq": int}, pk="seq")
    db["losses"].create({"seq": int, "lost": int, "lost_total": int}, pk="seq")
    db["notes"].create({"seq": int, "text": str}, pk="seq")
    # attributes of a version node (credentials, argv, mode, owner, endpoint addresses, ...):
    # append-only, several rows per key, in the order of the events that set them
    db["attrs"].create({"node": int, "key": str, "value": str, "seq": int})
    db["chain"].create({"batch": int, "first_seq": int, "last_seq": int, "first_rel": int,
                        "last_rel": int, "digest": bytes, "state": bytes}, pk="batch")
    db["relations"].create_index(["src", "kind"])
    db["relations"].create_index(["dst", "kind"])
    db["versions"].create_index(["object_id", "kind", "version"])
    db["names"].create_index(["path"])
    db["names"].create_index(["artifact_id"])
    db["events"].create_index(["tgid", "seq"])
    db["artifacts"].create_index(["dev", "ino"])
    db["processes"].create_index(["tgid"])
    ensure_indexes(db.conn)
    db.execute("""CREATE VIEW outcome_unknown AS
        SELECT e.* FROM events e JOIN pending p ON p.seq = e.seq""")


class Store:
    """A provisor database bound to one ring (by UUID)."""

    def __init__(self, path: str, ring_uuid: str | None = None, *, force: bool = False,
                 readonly: bool = False) -> None:
        self.path = path
        exists = check_files(path, readonly=readonly)
        if readonly and not exists:
            raise StoreError(f"{path}: no such database")
        self._lock: locks.Lock | None = None
        try:
            uri = f"file:{path}?mode=ro" if readonly else path
            self.conn = sqlite3.connect(uri, uri=readonly, isolation_level=None,
                                        check_same_thread=False)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{path}: {e}") from None
        try:
            self._open(path, ring_uuid, exists, force, readonly)
        except BaseException:
            self.close()
            raise

    def _open(self, path: str, ring_uuid: str | None, exists: bool, force: bool,
              readonly: bool) -> None:
        try:
            if not readonly:
                # one writer per store, for this object's life (the file exists now: connect
                # made it); a second daemon or recovery on this DB is refused before it writes
                self._lock = locks.acquire(path, locks.STORE_WRITER, "store writer")
                exists = os.path.getsize(path) > 0  # another creator may have finished first
            self.conn.execute("PRAGMA busy_timeout=10000")
            if exists:
                self._check_existing()
                if not readonly:
                    self._probe_write()
            if not readonly:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
                if exists:
                    ensure_indexes(self.conn)
            if not exists:
                self._create(ring_uuid)
        except (sqlite3.Error, OSError) as e:
            hint = "" if readonly or os.access(os.path.dirname(os.path.abspath(path)),
                                               os.W_OK) else " (its directory is read-only)"
            raise StoreError(f"{path}: {getattr(e, 'strerror', None) or e}{hint}") from None
        self.readonly = readonly
        self.ring_uuid = self.meta("ring_uuid")
        self.applied_seq = meta.read(self.conn, path).applied_seq
        if ring_uuid and self.ring_uuid and ring_uuid != self.ring_uuid:
            self._rebind(ring_uuid, force)
        self.an = Analyzer()
        self._load()

    # -- opening ---------------------------------------------------------------------------
    def _check_existing(self) -> None:
        meta.read(self.conn, self.path)  # a damaged meta: one line, before anything is written

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

    def _create(self, ring_uuid: str | None) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            import sqlite_utils  # only to create a DB: it pulls in numpy (~0.2 s per CLI call)

            _schema(sqlite_utils.Database(c))
            c.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("schema_version", str(SCHEMA_VERSION)), ("ring_uuid", ring_uuid or ""),
                ("applied_seq", "0"), ("chain_head", chain.GENESIS.hex()), ("batches", "0"),
                ("chain_encoding", chain.ENCODING)])
            c.execute(f"PRAGMA application_id={APP_ID}")
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def _rebind(self, ring_uuid: str, force: bool) -> None:
        """A store holds the records of one ring: sequence numbers are per ring, so another
        ring's records at or below ``applied_seq`` would be taken for applied ones (and then
        released by the daemon without being stored). ``force`` rebinds only a store that holds
        nothing yet; no flag lets one store take a second ring's records."""
        mine = f"{self.path} belongs to ring {self.ring_uuid}, not {ring_uuid}"
        if not force:
            raise StoreError(f"{mine}: a store holds one ring's records (use another --db for "
                             "this ring; --force rebinds only a store that holds nothing yet)")
        held = self.applied_seq or any(self.conn.execute(
            f"SELECT 1 FROM {t} LIMIT 1").fetchone() for t in ("chain", "events", "notes",
                                                              "losses"))
        if held:
            raise StoreError(f"{mine} and holds its records up to seq {self.applied_seq}: "
                             "--force rebinds only a store that holds nothing yet; use another "
                             "--db for this ring")
        if self.readonly:
            raise StoreError(f"{mine} (opened read-only: cannot rebind it)")
        self.conn.execute("UPDATE meta SET value=? WHERE key='ring_uuid'", (ring_uuid,))
        self.ring_uuid = ring_uuid

    def bind_ring(self, ring_uuid: str) -> None:
        """Record the ring UUID in a DB made without one."""
        if not self.ring_uuid:
            try:
                self.conn.execute("UPDATE meta SET value=? WHERE key='ring_uuid'", (ring_uuid,))
            except sqlite3.Error as e:
                raise StoreError(f"{self.path}: cannot write the store: {e}") from None
            self.ring_uuid = ring_uuid

    def record_machine(self, info: dict[str, object]) -> None:
        """Record, once, what names the machine the ring's records come from: meta
        ``machine``, JSON (``host``: the daemon's host name, ``guest_kernel``: the guest
        kernel's release when ``collect`` gave it, ``ring_created_ns``: the ring header's
        creation time). A store keeps the first value (the export names it)."""
        text = json.dumps({k: v for k, v in info.items() if v not in (None, "")},
                          sort_keys=True)
        try:
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('machine', ?)", (text,))
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot write the store: {e}") from None

    def _load(self) -> None:
        """Rebuild the analyzer's live state from the last commit."""
        an, c = self.an, self.conn
        q = c.execute
        for row in q("SELECT * FROM processes"):
            p = Proc(row[0], row[1], row[2], row[3], row[10], row[9], row[4], row[5], row[6],
                     row[7], row[8], row[11], row[12], row[13])
            an.proc_by_id[p.id] = p
            cur = an.procs.get(p.tgid)
            if cur is None or cur.id < p.id:
                an.procs[p.tgid] = p
        fds = q("SELECT * FROM fds ORDER BY proc_id, fd").fetchall()
        for pid, fd, aid, cloexec in fds:
            self._owner(pid, "fds", f"proc_id={pid} fd={fd}").fds[fd] = (aid, cloexec)
        for pid, pos, node in q("SELECT * FROM proc_used ORDER BY proc_id, pos"):
            p = self._owner(pid, "proc_used", f"proc_id={pid} pos={pos}")
            p.used[node] = pos
            p.used_pos = pos + 1
        for row in q("SELECT * FROM artifacts"):
            a = Art(row[0], row[1], row[2], row[3], row[4], row[6], row[5], row[7])
            an.arts[a.id] = a
            if a.ino:
                an.by_devino[(a.dev, a.ino)] = a.id
        for pid, fd, aid, _ in fds:
            if aid not in an.arts:
                raise meta.DamagedStore(f"{self.path}: damaged store: fds row proc_id={pid} "
                                        f"fd={fd} names artifact {aid}, which does not exist")
        current = {a.node: a for a in an.arts.values()}
        pcur = {p.node: p for p in an.proc_by_id.values()}
        # a store made before the attrs table, opened read-only (a writer creates it)
        self.has_attrs = q("SELECT 1 FROM sqlite_master WHERE type='table' AND name='attrs'"
                           ).fetchone() is not None
        made = {(node, int(v)) for node, v in q(
            "SELECT node, value FROM attrs WHERE key = 'created_by' AND node IN "
            "(SELECT node FROM artifacts)")} if self.has_attrs else set()
        gen_count: dict[tuple[int, int], int] = {}
        for kind, src, dst in q("SELECT kind, src, dst FROM relations WHERE src IN "
                                "(SELECT node FROM artifacts) OR dst IN (SELECT node FROM "
                                "artifacts UNION SELECT node FROM processes)"):
            if kind == "wasGeneratedBy" and (src, dst) in made:
                # a creation is no write: only a second generation by that node is one
                gen_count[(src, dst)] = gen_count.get((src, dst), 0) + 1
                if gen_count[(src, dst)] == 1:
                    if dst in pcur:
                        pcur[dst].frozen = True
                    continue
            if dst in current:
                current[dst].frozen = True
            if dst in pcur:
                pcur[dst].frozen = True
            a = current.get(src)
            if a is not None:
                if kind == "wasGeneratedBy":
                    a.gens.add(dst)
                elif kind == "wasDerivedFrom":
                    a.derived.add(dst)
        for nid, aid, path in q("SELECT id, artifact_id, path FROM names "
                                "WHERE unbind_seq IS NULL ORDER BY id"):
            if aid not in an.arts:
                raise meta.DamagedStore(f"{self.path}: damaged store: names row id={nid} "
                                        f"names artifact {aid}, which does not exist")
            an.by_path[path] = (aid, nid)
            an.names_of.setdefault(aid, set()).add(path)
        if self.has_attrs:
            self._load_endpoints()
        for seq, payload in q("SELECT e.seq, e.payload FROM pending p JOIN events e "
                              "ON e.seq = p.seq ORDER BY e.seq"):
            an.pending[seq] = decode(payload, seq)
        an.pending_writes = {s for s, e in an.pending.items()
                             if (sc := BY_NR.get(e.nr)) is not None and sc.family in WRITE_FAMILIES}
        if an.pending_writes:  # a generation made from a pending entry: a reader saw it
            an.early_done = {s for (s,) in q(
                "SELECT DISTINCT entry_seq FROM relations WHERE kind='wasGeneratedBy' AND "
                "entry_seq IN (SELECT value FROM json_each(?))",
                (json.dumps(sorted(an.pending_writes)),))}

        def nxt(sql: str) -> int:
            return (q(sql).fetchone()[0] or 0) + 1

        an.next_proc = nxt("SELECT max(id) FROM processes")
        an.next_art = nxt("SELECT max(id) FROM artifacts")
        an.next_node = nxt("SELECT max(id) FROM versions")
        an.next_rel = nxt("SELECT max(id) FROM relations")
        an.next_name = nxt("SELECT max(id) FROM names")
        m = meta.read(c, self.path)
        self.chain_head, self.batches = m.chain_head, m.batches
        self.encoding = m.chain_encoding
        if self.encoding not in chain.ENCODINGS:
            raise StoreError(f"{self.path}: the hash chain uses encoding {self.encoding}; this "
                             f"provisor writes encodings {', '.join(chain.ENCODINGS)}")
        self.state: chain.State | None = None
        if self.encoding != "1":
            self.state = chain.State.of(c)
            row = q("SELECT state FROM chain ORDER BY batch DESC LIMIT 1").fetchone()
            if row is not None and row[0] != self.state.digest():
                # continuing would chain the edited rows as if the daemon had written them
                want = chain.split_state(row[0] or b"")
                bad = [t for t, d in self.state.table_digests().items() if want.get(t) != d]
                raise meta.DamagedStore(
                    f"{self.path}: damaged store: the {', '.join(bad)} rows differ from the "
                    "hash chain's state (edited?); run provisor verify")

    def _load_endpoints(self) -> None:
        """Socket pairings, the last endpoint addresses of each socket and the addresses it
        sent datagrams to unconnected, from attrs."""
        an = self.an
        ep: dict[int, dict[str, str]] = {}
        for aid, key, value in self.conn.execute(
                "SELECT v.object_id, a.key, a.value FROM attrs a JOIN versions v ON v.id = a.node "
                "WHERE v.kind = 'socket' AND (a.key IN ('peer', 'sent_to') OR "
                "a.key LIKE 'endpoint_%') ORDER BY a.rowid"):
            if key == "peer":
                other = value.rpartition(":")[2]
                if other.isdigit():
                    an.peer.setdefault(aid, set()).add(int(other))
            elif key == "sent_to":  # FAMILY:TYPE:ADDR, a datagram's destination
                fam, typ, addr = value.split(":", 2) + [""] * (2 - value.count(":"))
                if not (fam.isdigit() and typ.isdigit()):
                    raise meta.DamagedStore(f"{self.path}: damaged store: the sent_to attr of "
                                            f"artifact {aid} is malformed")
                an._register_client(aid, int(fam), int(typ), addr)
            else:
                ep.setdefault(aid, {})[key] = value
        for aid, d in ep.items():
            try:
                key = (int(d["endpoint_family"]), int(d["endpoint_type"]), d["endpoint_local"],
                       d["endpoint_remote"])
                sk = int(d["endpoint_sk"], 16)
            except (KeyError, ValueError):
                raise meta.DamagedStore(f"{self.path}: damaged store: the endpoint attrs of "
                                        f"artifact {aid} are incomplete") from None
            an.endpoint_of[aid] = (key, sk)
            an._register_endpoint(aid, key, sk)

    def _owner(self, pid: int, table: str, key: str) -> Proc:
        p = self.an.proc_by_id.get(pid)
        if p is None:
            raise meta.DamagedStore(f"{self.path}: damaged store: {table} row {key} belongs to "
                                    f"process {pid}, which does not exist")
        return p

    # -- applying --------------------------------------------------------------------------
    def apply(self, records: Sequence[Record], *, ring: str | None = None,
              gaps_ok: bool = False) -> int:
        """Apply records (in sequence order) in one durable transaction; returns the applied
        sequence number afterwards. Already-applied records are skipped: that is only sound
        for records of this store's ring, so ``ring`` (the records' ring UUID, when the caller
        knows it) must be the bound one. The records must continue ``applied_seq`` without a
        hole (a new store starts anywhere), unless ``gaps_ok``: recovery salvaging past
        damage, which reports every hole it leaves."""
        if self.readonly:
            raise StoreError("database opened read-only")
        if ring is not None and self.ring_uuid and ring != self.ring_uuid:
            raise StoreError(f"{self.path} belongs to ring {self.ring_uuid}: refusing records "
                             f"of ring {ring}")
        if not gaps_ok:
            prev = self.applied_seq
            for r in records:
                if r.seq <= prev:
                    continue
                if prev and r.seq != prev + 1:
                    raise StoreError(
                        f"{self.path}: records {prev + 1}..{r.seq - 1} are missing before "
                        f"record {r.seq} (the store is at applied seq {self.applied_seq}); "
                        "nothing applied")
                prev = r.seq
        an = self.an
        last = self.applied_seq
        for r in records:
            if r.seq <= last:
                continue
            if r.type == RecType.EVENT:
                try:
                    ev = decode(r.payload, r.seq)
                except EventDecodeError as e:  # kept whole: evidence, never dropped
                    an.b.notes.append((r.seq, f"undecodable event ({e}): {escape(r.payload)}"))
                else:
                    an.event(ev)
            elif r.type == RecType.LOSS:
                lost = int.from_bytes(r.payload[:8], "little")
                total = int.from_bytes(r.payload[8:16], "little")
                an.b.losses.append((r.seq, lost, total))
            elif r.type == RecType.NOTE:
                an.b.notes.append((r.seq, escape(r.payload)))  # guest text: lossless
            else:  # a type this provisor does not know (a newer producer): kept, not skipped
                an.b.notes.append((r.seq, f"record of unknown type {r.type}: "
                                          f"{escape(r.payload)}"))
            last = r.seq
        if last == self.applied_seq:
            return last
        batch = an.take()
        try:
            self._write(batch, last)
        except BaseException as e:
            # the transaction rolled back: rebuild the live state from the last commit
            self.an = Analyzer()
            self._load()
            if isinstance(e, sqlite3.Error | OSError):  # read-only, disk full, I/O error
                raise StoreError(f"{self.path}: cannot write the store: "
                                 f"{getattr(e, 'strerror', None) or e}") from None
            raise
        self.applied_seq = last
        return last

    def _state_after(self, b: Batch, new_pending: list[tuple[int]]) -> chain.State:
        """The chained state once ``b`` is written: each row it rewrites or deletes taken out as
        stored, each row it writes put in (read inside the transaction, before writing)."""
        assert self.state is not None
        st = self.state.copy()
        q = self.conn.execute

        def stored(sql: str, keys: Sequence[object]) -> list[tuple]:
            return q(sql + " IN (SELECT value FROM json_each(?))", (json.dumps(keys),)).fetchall()

        if b.procs:
            ids = list(b.procs)
            st.remove("processes", stored("SELECT * FROM processes WHERE id", ids))
            st.add("processes", [p.row() for p in b.procs.values()])
            st.remove("fds", stored("SELECT * FROM fds WHERE proc_id", ids))
            st.add("fds", [(p.id, fd, ref[0], ref[1]) for p in b.procs.values()
                           for fd, ref in p.fds.items()])
        gone = {(r[0], r[1]): r for r in stored("SELECT * FROM proc_used WHERE proc_id",
                                                sorted(b.used_clear))} if b.used_clear else {}
        for pid, pos in b.used_del:
            row = q("SELECT * FROM proc_used WHERE proc_id=? AND pos=?", (pid, pos)).fetchone()
            if row is not None:
                gone[(pid, pos)] = row
        st.remove("proc_used", gone.values())
        st.add("proc_used", [(pid, pos, node) for pid, adds in b.used_add.items()
                             for pos, node in adds if (pid, pos) not in b.used_del])
        if b.arts:
            st.remove("artifacts", stored("SELECT * FROM artifacts WHERE id", list(b.arts)))
            st.add("artifacts", [a.row() for a in b.arts.values()])
        if b.pending_done:
            st.remove("pending", stored("SELECT seq FROM pending WHERE seq", b.pending_done))
        if new_pending:
            have = {r[0] for r in stored("SELECT seq FROM pending WHERE seq",
                                         [s for (s,) in new_pending])}
            st.add("pending", [(s,) for (s,) in new_pending if s not in have])
        return st

    def _write(self, b: Batch, last: int) -> None:
        c = self.conn
        new_pending = [(s,) for s in self.an.pending if s > self.applied_seq]
        c.execute("BEGIN IMMEDIATE")
        try:
            if self.state is None:  # encoding 1: events and relations only
                st, extra = None, None
            else:
                st = self._state_after(b, new_pending)
                extra = chain.Extra(b.versions, [r[:4] for r in b.names_new],
                                    sorted(b.names_unbound), b.losses, b.notes, st.digest(),
                                    b.attrs if self.encoding >= "3" else None)
            head = chain.digest(self.chain_head, b.events, b.relations, extra)
            for sql, rows in (
                    ("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", b.events),
                    ("INSERT INTO versions VALUES (?,?,?,?,?,?,?)", b.versions),
                    ("INSERT INTO relations VALUES (?,?,?,?,?,?,?)", b.relations),
                    ("INSERT INTO names VALUES (?,?,?,?,?)", b.names_new),
                    ("UPDATE names SET unbind_seq=? WHERE id=?", b.names_unbound),
                    ("INSERT INTO losses VALUES (?,?,?)", b.losses),
                    ("INSERT INTO notes VALUES (?,?)", b.notes),
                    ("INSERT INTO attrs VALUES (?,?,?,?)", b.attrs)):
                if rows:
                    c.executemany(sql, rows)
            if b.procs:
                ids = [(i,) for i in b.procs]
                c.executemany("INSERT OR REPLACE INTO processes VALUES "
                              "(?,?,?,?,?,?,?,?,?,?,?,?,?,?)", [p.row() for p in b.procs.values()])
                c.executemany("DELETE FROM fds WHERE proc_id=?", ids)
                c.executemany("INSERT INTO fds VALUES (?,?,?,?)", [
                    (p.id, fd, ref[0], ref[1]) for p in b.procs.values()
                    for fd, ref in p.fds.items()])
            if b.used_clear:
                c.executemany("DELETE FROM proc_used WHERE proc_id=?",
                              [(i,) for i in b.used_clear])
            if b.used_del:
                c.executemany("DELETE FROM proc_used WHERE proc_id=? AND pos=?", b.used_del)
            if b.used_add:
                c.executemany("INSERT INTO proc_used VALUES (?,?,?)", [
                    (pid, pos, node) for pid, adds in b.used_add.items() for pos, node in adds
                    if (pid, pos) not in b.used_del])
            if b.arts:
                c.executemany("INSERT OR REPLACE INTO artifacts VALUES (?,?,?,?,?,?,?,?)",
                              [a.row() for a in b.arts.values()])
            if b.pending_done:
                c.executemany("DELETE FROM pending WHERE seq=?", [(s,) for s in b.pending_done])
            if new_pending:
                c.executemany("INSERT OR IGNORE INTO pending VALUES (?)", new_pending)
            first_rel = b.relations[0][0] if b.relations else None
            last_rel = b.relations[-1][0] if b.relations else None
            first_seq = b.events[0][0] if b.events else None
            row = (self.batches + 1, first_seq, last, first_rel, last_rel, head)
            if st is None:
                c.execute("INSERT INTO chain VALUES (?,?,?,?,?,?)", row)
            else:
                c.execute("INSERT INTO chain VALUES (?,?,?,?,?,?,?)", (*row, st.digest()))
            c.executemany("UPDATE meta SET value=? WHERE key=?", [
                (str(last), "applied_seq"), (head.hex(), "chain_head"),
                (str(self.batches + 1), "batches")])
            faults.point("before_commit")
            c.execute("COMMIT")
            faults.point("after_commit")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        self.chain_head = head
        self.batches += 1
        if st is not None:
            self.state = st

    def counts(self) -> dict[str, int]:
        q = self.conn.execute
        out = {t: q(f"SELECT count(*) FROM {t}").fetchone()[0]
               for t in ("events", "processes", "artifacts", "versions", "relations")}
        for kind, n in q("SELECT kind, count(*) FROM relations GROUP BY kind"):
            out[kind] = n
        out["outcome_unknown"] = q("SELECT count(*) FROM pending").fetchone()[0]
        return out

    def close(self) -> None:
        self.conn.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None
