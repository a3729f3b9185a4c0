"""The daemon's apply path: the one way ring records become stored rows.

Exactly once: a batch of records is analyzed and handed to the store as one batch of rows,
which the store writes in one transaction that also records the batch's last sequence number as
``applied_seq`` (store/sqlite.py). Records at or below ``applied_seq`` are skipped, so replaying
the same ring twice, or recovery after the daemon, changes nothing. The analyzer's live state
(processes, fd tables, current versions, name bindings, entries awaiting exits) is written back
in the same transaction, so a restarted daemon resumes exactly where the last commit left it:
:meth:`Applier._load` rebuilds it from the stored rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from daemon.analyzer import WRITE_FAMILIES, Analyzer, Art, Batch, Proc
from pmem.layout import Record, RecType
from provisor import gcpause
from provisor.events import EventDecodeError, decode
from provisor.guesttext import escape
from provisor.syscalls import BY_NR
from store import chain, meta, postgres, schema
from store.base import Changes, StoreError
from store.postgres import PostgresStore
from store.sqlite import SQLiteStore

__all__ = ["Applier", "StoreError"]


class Applier:
    """A store as the daemon writes it: a backend plus the analyzer's live state."""

    def __init__(self, path: str, ring_uuid: str | None = None, *, force: bool = False,
                 readonly: bool = False, machine: str | None = None) -> None:
        self.path = path
        self.readonly = readonly
        # machine: whose store (a PostgreSQL namespace; a SQLite file's meta machine_name);
        # None: the URL's ?machine=, an existing file's own, else "default"
        self.db: SQLiteStore | PostgresStore = (
            PostgresStore(path, machine, readonly=readonly) if postgres.is_url(path)
            else SQLiteStore(path, machine, readonly=readonly))
        self.path = self.db.path  # what errors name (a URL without its password)
        try:
            self.ring_uuid = self.db.ring_uuid
            if ring_uuid and self.ring_uuid and ring_uuid != self.ring_uuid:
                self._rebind(ring_uuid, force)
            elif ring_uuid and not self.ring_uuid and not readonly:
                self.bind_ring(ring_uuid)
            self.an = Analyzer()
            self._load()
        except BaseException:
            self.db.close()
            raise

    @property
    def applied_seq(self) -> int:
        return self.db.applied_seq

    @property
    def conn(self):  # noqa: ANN201  (the SQLite connection: tests and SQLite-only tools)
        return self.db.conn

    def meta(self, key: str) -> str | None:
        return self.db.meta(key)

    def _rebind(self, ring_uuid: str, force: bool) -> None:
        """A store holds the records of one ring: sequence numbers are per ring, so another
        ring's records at or below ``applied_seq`` would be taken for applied ones (and then
        released by the daemon without being stored). ``force`` rebinds only a store that holds
        nothing yet; no flag lets one store take a second ring's records."""
        mine = f"{self.path} belongs to ring {self.ring_uuid}, not {ring_uuid}"
        if not force:
            raise StoreError(f"{mine}: a store holds one ring's records (use another --db for "
                             "this ring; --force rebinds only a store that holds nothing yet)")
        held = self.applied_seq or any(self.db.q(f"SELECT 1 FROM {t} LIMIT 1")
                                       for t in ("chain", "events", "notes", "losses"))
        if held:
            raise StoreError(f"{mine} and holds its records up to seq {self.applied_seq}: "
                             "--force rebinds only a store that holds nothing yet; use another "
                             "--db for this ring")
        if self.readonly:
            raise StoreError(f"{mine} (opened read-only: cannot rebind it)")
        self.db.set_ring(ring_uuid)
        self.ring_uuid = ring_uuid

    def bind_ring(self, ring_uuid: str) -> None:
        """Record the ring UUID in a DB made without one."""
        if not self.ring_uuid:
            self.db.set_ring(ring_uuid)
            self.ring_uuid = ring_uuid

    def record_machine(self, info: dict[str, object]) -> None:
        """Record, once, what names the machine the ring's records come from: meta
        ``machine``, JSON (``host``: the daemon's host name, ``guest_kernel``: the guest
        kernel's release when ``collect`` gave it, ``ring_created_ns``: the ring header's
        creation time). A store keeps the first value (the export names it)."""
        text = json.dumps({k: v for k, v in info.items() if v not in (None, "")},
                          sort_keys=True)
        self.db.record_machine(text)

    def _load(self) -> None:
        """Rebuild the analyzer's live state from the last commit."""
        an, db = self.an, self.db
        q = db.q
        pcols, acols = schema.PROCESSES.cols, schema.ARTIFACTS.cols
        for row in db.rows("processes"):
            p = Proc(**dict(zip(pcols, row, strict=True)))
            an.proc_by_id[p.id] = p
            cur = an.procs.get(p.tgid)
            if cur is None or cur.id < p.id:
                an.procs[p.tgid] = p
        fds = list(db.rows("fds", "proc_id, fd"))
        for pid, fd, aid, cloexec in fds:
            self._owner(pid, "fds", f"proc_id={pid} fd={fd}").fds[fd] = (aid, cloexec)
        for pid, pos, node in db.rows("proc_used", "proc_id, pos"):
            p = self._owner(pid, "proc_used", f"proc_id={pid} pos={pos}")
            p.used[node] = pos
            p.used_pos = pos + 1
        for row in db.rows("artifacts"):
            a = Art(**dict(zip(acols, row, strict=True)))
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
        self.has_attrs = db.has_attrs
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
            low = min(an.pending_writes)
            done = {s for (s,) in q(
                "SELECT DISTINCT entry_seq FROM relations WHERE kind='wasGeneratedBy' AND "
                "entry_seq >= ?", (low,))}
            if self.has_attrs:  # taken with no new relation: its attrs row says so
                done |= {int(v) for (v,) in q(
                    "SELECT value FROM attrs WHERE key = 'early_write' AND seq >= ?", (low,))}
            an.early_done = done & an.pending_writes

        def nxt(sql: str) -> int:
            return (q(sql)[0][0] or 0) + 1

        an.next_proc = nxt("SELECT max(id) FROM processes")
        an.next_art = nxt("SELECT max(id) FROM artifacts")
        an.next_node = nxt("SELECT max(id) FROM versions")
        an.next_rel = nxt("SELECT max(id) FROM relations")
        an.next_name = nxt("SELECT max(id) FROM names")
        self.encoding = db.encoding
        if self.encoding not in chain.ENCODINGS:
            raise StoreError(f"{self.path}: the hash chain uses encoding {self.encoding}; this "
                             f"provisor writes encodings {', '.join(chain.ENCODINGS)}")
        self.state: chain.State | None = None
        if self.encoding != "1":
            self.state = db.state()  # as the store's encoding hashes rows
            last = db.last_state()
            if last is not None and last != self.state.digest():
                # continuing would chain the edited rows as if the daemon had written them
                want = chain.split_state(last)
                bad = [t for t, d in self.state.table_digests().items() if want.get(t) != d]
                raise meta.DamagedStore(
                    f"{self.path}: damaged store: the {', '.join(bad)} rows differ from the "
                    "hash chain's state (edited?); run provisor verify")

    def _load_endpoints(self) -> None:
        """Socket pairings, the last endpoint addresses of each socket and the addresses it
        sent datagrams to unconnected, from attrs."""
        an = self.an
        ep: dict[int, dict[str, str]] = {}
        for aid, key, value in self.db.q(
                "SELECT v.object_id, a.key, a.value FROM attrs a JOIN versions v ON v.id = a.node "
                "WHERE v.kind = 'socket' AND (a.key IN ('peer', 'sent_to') OR "
                "a.key LIKE 'endpoint_%') ORDER BY a.rowid"):  # as written (schema.Table.rowid)
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
            self._check_continues(records)
        with gcpause.paused(collect=1):  # a batch's objects die with it (provisor/gcpause)
            return self._apply(records)

    def _check_continues(self, records: Sequence[Record]) -> None:
        """Refuse records that leave a hole after ``applied_seq`` (already-applied ones are
        skipped). A batch read from the ring is one run of consecutive numbers: that is
        checked at C speed, anything else record by record."""
        prev = self.applied_seq
        seqs = [r[0] for r in records]  # Record.seq
        if seqs and (not prev or seqs[0] <= prev + 1) \
                and seqs == list(range(seqs[0], seqs[0] + len(seqs))):
            return
        for seq in seqs:
            if seq <= prev:
                continue
            if prev and seq != prev + 1:
                raise StoreError(
                    f"{self.path}: records {prev + 1}..{seq - 1} are missing before "
                    f"record {seq} (the store is at applied seq {self.applied_seq}); "
                    "nothing applied")
            prev = seq

    def _apply(self, records: Sequence[Record]) -> int:
        an = self.an
        b, event = an.b, an.event
        EVENT = RecType.EVENT  # noqa: N806 (the enum's value, looked up once per batch)
        last = self.applied_seq
        for seq, typ, _, payload in records:
            if seq <= last:
                continue
            if typ == EVENT:
                try:
                    ev = decode(payload, seq)
                except EventDecodeError as e:  # kept whole: evidence, never dropped
                    b.notes.append((seq, f"undecodable event ({e}): {escape(payload)}"))
                else:
                    event(ev)
            elif typ == RecType.LOSS:
                lost = int.from_bytes(payload[:8], "little")
                total = int.from_bytes(payload[8:16], "little")
                b.losses.append((seq, lost, total))
            elif typ == RecType.NOTE:
                b.notes.append((seq, escape(payload)))  # guest text: lossless
            else:  # a type this provisor does not know (a newer producer): kept, not skipped
                b.notes.append((seq, f"record of unknown type {typ}: {escape(payload)}"))
            last = seq
        if last == self.applied_seq:
            return last
        changes = self._changes(an.take(), last)
        try:
            st = self.db.write(changes, self.state)
        except BaseException:
            # the transaction rolled back: rebuild the live state from the last commit
            self.an = Analyzer()
            self._load()
            raise
        if st is not None:
            self.state = st
        return last

    def _changes(self, b: Batch, last: int) -> Changes:
        """The analyzer's batch as rows for the store (store/schema column order)."""
        procs = list(b.procs.values())
        return Changes(
            last, b.events, b.versions, b.relations, b.names_new, b.names_unbound, b.losses,
            b.notes, b.attrs, [p.row() for p in procs],
            [(p.id, fd, ref[0], ref[1]) for p in procs for fd, ref in p.fds.items()],
            b.used_clear, b.used_del,
            [(pid, pos, node) for pid, adds in b.used_add.items() for pos, node in adds
             if (pid, pos) not in b.used_del],
            [a.row() for a in b.arts.values()],
            # the pending table holds entries of earlier batches only: an entry of this batch
            # whose exit came in it was never written there
            [s for s in b.pending_done if s <= self.applied_seq],
            [s for s in self.an.pending if s > self.applied_seq])

    def counts(self) -> dict[str, int]:
        return self.db.counts()

    def close(self) -> None:
        self.db.close()
