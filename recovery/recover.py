"""Recovery after a host crash, panic or power loss; forensic reading of ring images.

Recovery is the daemon's own loop (``daemon.service.Daemon.step``: read -> ``Store.apply`` ->
release) run over whatever valid chain the image holds, with a report around it. There is no
second apply path: what recovery stores is exactly what the live daemon would have stored.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from daemon.service import Daemon
from pmem import layout as L


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
            lines.append(f"warning: records {a}..{b} were released before and are not in "
                         "this DB")
        if self.read_only:
            same = "unchanged" if self.sha256_before == self.sha256_after else "CHANGED"
            lines.append(f"image sha256 {self.sha256_before[:16]}... {same}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return asdict(self)


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
                 batch: int = 8192) -> None:
        self.t0 = time.monotonic()
        # opening validates the image (then the DB) before anything is written or hashed
        self.daemon = Daemon(image, db, force=force, batch_min=batch, batch_max=batch,
                             readonly=read_only)
        self.rep = Report(image=image, db=db, read_only=read_only)
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
            start_off = c.next_off
            while (n := d.step()) > 0:
                rep.records_scanned += n
                if progress:
                    progress((c.next_off - start_off) % c.size)
                    start_off = c.next_off
            end = c.last_end
            rep.chain_end = ({"reason": end.reason, "offset": end.offset,
                              "expected_seq": end.seq} if end else {})
            rep.db_applied_after = store.applied_seq
            q = store.conn.execute
            lo = rep.db_applied_before
            rep.records_replayed = sum(
                q(f"SELECT count(*) FROM {t} WHERE seq > ?", (lo,)).fetchone()[0]
                for t in ("events", "notes", "losses"))
            rep.loss_records = [{"seq": s, "lost": n, "lost_total": t} for s, n, t in q(
                "SELECT seq, lost, lost_total FROM losses WHERE seq > ? ORDER BY seq", (lo,))]
            rep.outcome_unknown = q("SELECT count(*) FROM pending").fetchone()[0]
        finally:
            d.close()
        rep.sha256_after = sha256_file(rep.image)
        rep.seconds = time.monotonic() - self.t0
        return rep


def recover(image: str, db: str, *, read_only: bool, force: bool = False,
            batch: int = 8192, progress: Callable[[int], None] | None = None) -> Report:
    """Replay every valid record of ``image`` not yet in ``db``."""
    return Recovery(image, db, read_only=read_only, force=force, batch=batch).run(progress)
