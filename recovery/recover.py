"""Recovery after a host crash, panic or power loss; forensic reading of ring images.

Recovery stores records through the daemon's own path (``Daemon.commit``: ``Applier.apply`` in
one transaction, then release up to what is stored), with a report around it. There is no
second apply path: what recovery stores is exactly what the live daemon would have stored.

Which records: every record of the image that its own CRC validates (``layout.salvage``), not
only the chain after the checkpoint, in sequence order, from the DB's applied seq on. So a
damaged stretch hides nothing after it, and a header (forged or not) cannot hide records from a
forensic recovery. Every sequence range the DB is left without is a *gap*: reported with its
byte range, recorded in the DB as a NOTE at the gap's last sequence number (so that the DB
itself says what it lacks), and the command exits 3. Live, the ring is released only up to
what is stored, and past the chain's end (the break) only while recovery holds the ring's
producer role: a running producer's own idea of its tail could otherwise collide with it
(docs/FORMAT.md, "Recovery").
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from daemon.service import Daemon
from pmem import layout as L
from pmem.layout import Record, RecType
from provisor import locks
from store.postgres import redact

EXIT_GAPS = 3  # records were skipped: the DB lacks a range of the ring's sequence numbers


@dataclass
class Report:
    image: str
    db: str
    read_only: bool
    ring_uuid: str = ""
    format_version: int = 0
    region_mode: str = ""
    header_copies: dict[str, str] = field(default_factory=dict)
    ring_checkpoint: int = 0
    db_applied_before: int = 0
    db_applied_after: int = 0
    records_scanned: int = 0
    records_replayed: int = 0
    released_not_in_db: list[int] | None = None
    outcome_unknown: int = 0
    loss_records: list[dict[str, int]] = field(default_factory=list)
    chain_end: dict[str, object] = field(default_factory=dict)
    # salvage: records the chain did not reach, and what the DB is still without
    records_salvaged: int = 0
    released_in_image: list[int] | None = None  # stored records at or below the checkpoint
    gaps: list[dict[str, object]] = field(default_factory=list)
    damaged_bytes: int = 0  # bytes of the gaps' stretches (where the missing records lay)
    unreadable_bytes: int = 0  # non-zero 32-byte slots outside valid records (layout.salvage)
    duplicate_seqs: list[int] = field(default_factory=list)
    salvage_refused: str = ""
    sha256_before: str = ""
    sha256_after: str = ""
    seconds: float = 0.0

    def summary(self) -> str:
        ce = self.chain_end
        mode = "read-only (forensic)" if self.read_only else "live (ring released)"
        lost = sum(x["lost"] for x in self.loss_records)
        lines = [
            f"ring {self.ring_uuid} (format {self.format_version}), {mode}",
            f"checkpoint {self.ring_checkpoint}; DB applied {self.db_applied_before} -> "
            f"{self.db_applied_after}",
            f"replayed {self.records_replayed} of {self.records_scanned} valid records in "
            f"{self.seconds:.2f}s; outcome unknown: {self.outcome_unknown}; "
            f"LOSS records: {len(self.loss_records)} ({lost} lost)",
            f"chain ended: {ce.get('reason')} at offset {ce.get('offset')} "
            f"(expected seq {ce.get('expected_seq')})",
        ]
        if self.released_not_in_db:
            a, b = self.released_not_in_db
            lines.append(f"warning: records {a}..{b} were released before and were not in "
                         "this DB")
        if self.records_salvaged:
            lines.append(f"salvaged {self.records_salvaged} records the chain does not reach")
        if self.released_in_image:
            a, b = self.released_in_image
            lines.append(f"note: records {a}..{b} lie at or below the checkpoint (the header "
                         "says they were released) and were still in the image: recovered")
        if self.duplicate_seqs:
            lines.append(f"note: {len(self.duplicate_seqs)} sequence numbers found twice "
                         f"(first {self.duplicate_seqs[0]}): the copy in the chain (or "
                         "contiguous with its neighbours) kept")
        if self.gaps:
            lines.append(f"GAPS: {len(self.gaps)} ranges, "
                         f"{sum(g['seq_last'] - g['seq_first'] + 1 for g in self.gaps)} records "
                         f"not in this DB ({self.damaged_bytes} damaged bytes), one line "
                         "each on stderr")
        if self.salvage_refused:
            lines.append(f"REFUSED: {self.salvage_refused}")
        if self.read_only:
            same = "unchanged" if self.sha256_before == self.sha256_after else "CHANGED"
            lines.append(f"image sha256 {self.sha256_before[:16]}... {same}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def exit_status(self) -> int:
        return EXIT_GAPS if self.gaps or self.salvage_refused else 0

    def gap_lines(self) -> list[str]:
        """One line per gap, for stderr."""
        out = []
        for g in self.gaps:
            where = (f"image bytes {g['byte_first']}..{g['byte_last']}"
                     if g["byte_first"] is not None and g["byte_last"] is not None
                     else "bytes unknown")
            out.append(f"provisor: gap: records {g['seq_first']}..{g['seq_last']} not in the DB "
                       f"({where}): {g['reason']}")
        return out


def sha256_file(path: str, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def header_copies(path: str) -> dict[str, str]:
    """The state of header copies A and B, for the report."""
    with open(path, "rb") as f:
        raw = f.read(L.HEADER_SLOT + L.HEADER_LEN)
    out = {}
    for name, off in (("A", 0), ("B", L.HEADER_SLOT)):
        chunk = raw[off:off + L.HEADER_LEN].ljust(L.HEADER_LEN, b"\0")
        h = L.unpack_header(chunk)
        if isinstance(h, L.Header):
            out[name] = f"valid, generation {h.generation}"
        else:
            out[name] = "empty (never written)" if not any(chunk) else h
    return out


class Recovery:
    """Validated inputs, ready to replay: opening checks the image and the DB (and fails with
    a one-line error) before anything is written."""

    def __init__(self, image: str, db: str, *, read_only: bool, force: bool = False,
                 batch: int = 8192, salvage: bool = True, machine: str | None = None) -> None:
        self.t0 = time.monotonic()
        self.batch = batch
        self.salvage = salvage  # False: the chain only, exactly what the daemon would read
        # opening validates the image (then the DB) before anything is written or hashed
        self.daemon = Daemon(image, db, force=force, batch_min=batch, batch_max=batch,
                             readonly=read_only, machine_name=machine)
        self.rep = Report(image=image, db=redact(db), read_only=read_only)
        self.rep.sha256_before = sha256_file(image)
        self.rep.header_copies = header_copies(image)
        self.data_size = self.daemon.consumer.size

    def run(self, progress: Callable[[int], None] | None = None) -> Report:
        """Replay; ``progress`` gets the number of data-area bytes consumed since its last
        call."""
        d, rep = self.daemon, self.rep
        try:
            c, store = d.consumer, d.store
            rep.ring_uuid = c.header.uuid_str
            rep.format_version = c.header.version
            rep.region_mode = "read-only mapping" if rep.read_only else c.region.mode.value
            rep.ring_checkpoint = c.checkpoint
            rep.db_applied_before = store.applied_seq
            if 0 < store.applied_seq < c.checkpoint:
                rep.released_not_in_db = [store.applied_seq + 1, c.checkpoint]
            if self.salvage:
                self._salvage(progress)
            else:
                self._chain(progress)
            rep.db_applied_after = store.applied_seq
            q = store.db.q
            lo = rep.db_applied_before
            rep.loss_records = [{"seq": s, "lost": n, "lost_total": t} for s, n, t in q(
                "SELECT seq, lost, lost_total FROM losses WHERE seq > ? ORDER BY seq", (lo,))]
            rep.outcome_unknown = store.counts()["outcome_unknown"]
        finally:
            d.close()
        rep.sha256_after = sha256_file(rep.image)
        rep.seconds = time.monotonic() - self.t0
        return rep

    def _chain(self, progress: Callable[[int], None] | None) -> None:
        """The daemon's own loop over the chain after the checkpoint."""
        d, rep = self.daemon, self.rep
        c = d.consumer
        start_off = c.next_off
        while (n := d.step()) > 0:
            rep.records_scanned += n
            if progress:
                progress((c.next_off - start_off) % c.size)
                start_off = c.next_off
        end = c.last_end
        rep.chain_end = ({"reason": end.reason, "offset": end.offset, "expected_seq": end.seq}
                         if end else {})
        q = d.store.db.q
        rep.records_replayed = sum(
            q(f"SELECT count(*) FROM {t} WHERE seq > ?", (rep.db_applied_before,))[0][0]
            for t in ("events", "notes", "losses"))

    def _salvage(self, progress: Callable[[int], None] | None) -> None:
        d, rep = self.daemon, self.rep
        c, store = d.consumer, d.store
        hdr, size = c.header, c.size
        sv = L.salvage(c.buf, hdr)
        rep.chain_end = {"reason": sv.end.reason, "offset": sv.end.offset,
                         "expected_seq": sv.end.seq}
        rep.records_scanned = len(sv.records)
        rep.unreadable_bytes = sv.unreadable
        rep.duplicate_seqs = sv.duplicates[:100]
        applied0, ckpt, chain_last = store.applied_seq, hdr.checkpoint_seq, sv.chain_last
        todo = [f for f in sv.records if f.seq > applied0]
        refused: tuple[int, int] | None = None
        producer: locks.Lock | None = None
        beyond = [f for f in todo if f.seq > chain_last]
        if beyond and not rep.read_only:
            try:  # no producer may start (or be running) while we release past the break
                producer = locks.acquire(c.region.path, locks.RING_PRODUCER, "ring producer")
            except locks.LockError as e:
                who = f"pid {e.holder}" if e.holder else "another process"
                refused = (chain_last + 1, beyond[-1].seq)
                rep.salvage_refused = (
                    f"{len(beyond)} valid records beyond the break (seq {refused[0]}.."
                    f"{refused[1]}) not salvaged: a ring producer ({who}) has the ring open, "
                    "and releasing past the break under it could lose what it writes next; "
                    "stop it and run recover again (or recover a copy with --read-only)")
                todo = [f for f in todo if f.seq <= chain_last]
        index = {f.seq: f for f in sv.records}

        def gap(a: int, b: int, reason: str) -> dict[str, object]:
            before, after = index.get(a - 1), index.get(b + 1)
            first = (before.end % size if before else
                     hdr.checkpoint_off if a == ckpt + 1 else None)
            stop = (after.offset if after else hdr.checkpoint_off if b == ckpt else None)
            g: dict[str, object] = {"seq_first": a, "seq_last": b, "byte_first": None,
                                    "byte_last": None, "bytes": None, "reason": reason}
            if first is not None:
                g["byte_first"] = L.DATA_OFFSET + first
            if stop is not None:
                g["byte_last"] = L.DATA_OFFSET + (stop or size) - 1
            if first is not None and stop is not None:
                g["bytes"] = (stop - first) % size
                rep.damaged_bytes += g["bytes"]
            rep.gaps.append(g)
            return g

        def holes(a: int, b: int) -> list[Record]:
            """Gaps for a..b (split at the checkpoint: released before, or never released)
            and the NOTE records that say so in the DB."""
            notes = []
            parts = [(a, min(b, ckpt), "released from the ring before this DB had them; not "
                      "readable in the image"),
                     (max(a, ckpt + 1), b, "never released; not readable in the image (damaged, "
                      "torn or overwritten)")]
            for lo, hi, why in parts:
                if lo <= hi:
                    g = gap(lo, hi, why)
                    where = (f" (image bytes {g['byte_first']}..{g['byte_last']})"
                             if g["bytes"] is not None else "")
                    notes.append(Record(hi, RecType.NOTE, -1, (
                        f"provisor recover: records {lo}..{hi} are not in this store: {why}"
                        f"{where}").encode()))
            return notes

        # the first record expected: the DB's next, or (a new DB) where the unreleased part
        # starts, unless intact records older than that are still in the image
        prev = applied0 if applied0 else min(ckpt, todo[0].seq - 1) if todo else ckpt
        pending: list[Record] = []
        done = 0

        def flush() -> None:
            nonlocal pending, done
            if pending:
                d.commit(pending, gaps_ok=True)
                if progress:
                    n = sum(L.padded(len(r.payload)) for r in pending if r.offset >= 0)
                    progress(n)
                    done += n
                pending = []

        try:
            for f in todo:
                rec = L.read_record(c.buf, hdr.uuid, size, f.offset, f.seq)
                if isinstance(rec, str):
                    continue  # overwritten since the walk (a live producer): part of a gap
                if rec.seq > prev + 1:
                    pending.extend(holes(prev + 1, rec.seq - 1))
                pending.append(rec)
                prev = rec.seq
                rep.records_replayed += 1
                if rec.seq > chain_last or rec.seq <= ckpt:
                    rep.records_salvaged += 1
                if rec.seq <= ckpt:
                    lo = rep.released_in_image[0] if rep.released_in_image else rec.seq
                    rep.released_in_image = [lo, rec.seq]
                if len(pending) >= self.batch:
                    flush()
            if applied0 and ckpt > prev:  # released, and nowhere in the image
                pending.extend(holes(prev + 1, ckpt))
                prev = ckpt
            flush()
            if not rep.read_only:
                # records the DB already held (a crash between commit and release) are
                # released too: up to the last stored record, past the break only as producer
                limit = store.applied_seq if producer else min(store.applied_seq, chain_last)
                last = index.get(limit)
                if last is not None and last.seq > c.checkpoint:
                    c.release(last.seq, last.end % size)
        finally:
            if producer is not None:
                producer.release()
        if refused:
            gap(max(refused[0], prev + 1), refused[1], "past the break, left in the ring: a "
                "producer has it open (salvage_refused)")
        if progress:
            progress(max(0, size - done))


def recover(image: str, db: str, *, read_only: bool, force: bool = False,
            batch: int = 8192, progress: Callable[[int], None] | None = None,
            salvage: bool = True) -> Report:
    """Replay every valid record of ``image`` not yet in ``db``."""
    return Recovery(image, db, read_only=read_only, force=force, batch=batch,
                    salvage=salvage).run(progress)
