"""The daemon loop: drain the ring into the store, release only what is committed.

Order per batch: read records -> ``Applier.apply`` (one durable transaction) -> ``release`` up to
the batch's last sequence number. A crash anywhere in between loses nothing (unreleased records
are read again) and duplicates nothing (applied ones are skipped).
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass

import psutil

from daemon.apply import Applier
from pmem import layout as L
from pmem.ring import Consumer
from provisor.errors import ProvisorError

log = logging.getLogger("provisor.daemon")


class DaemonError(ProvisorError):
    """A refused drain (one line)."""

LAG_LIMIT = 100_000


@dataclass
class Stats:
    records: int = 0
    batches: int = 0
    started: float = 0.0

    def rate(self) -> float:
        dt = time.monotonic() - self.started
        return self.records / dt if dt > 0 else 0.0


def position_after(rec: L.Record, data_size: int) -> int:
    return (rec.offset + L.padded(len(rec.payload))) % data_size


class Daemon:
    def __init__(self, ring_path: str, db_path: str, *, force: bool = False,
                 batch_min: int = 256, batch_max: int = 16384, status_interval: float = 5.0,
                 fill_warn: float = 0.8, cpu: int | None = None,
                 readonly: bool = False, machine: dict[str, object] | None = None,
                 machine_name: str | None = None) -> None:
        self.readonly = readonly  # forensic: read the image, never write it (no release)
        self.consumer = Consumer.open(ring_path, readonly=readonly)
        try:
            self.store = Applier(db_path, self.consumer.header.uuid_str, force=force,
                                 machine=machine_name)
            self.store.bind_ring(self.consumer.header.uuid_str)
            if machine is not None:  # the live daemon (not recovery: its host is not the guest's)
                self.store.record_machine(
                    {**machine, "ring_created_ns": self.consumer.header.created_ns or None})
        except BaseException:
            self.consumer.close()
            raise
        self.batch_min, self.batch_max = batch_min, batch_max
        self.batch = batch_min
        self.status_interval = status_interval
        self.fill_warn = fill_warn
        self.stop = False
        self.stats = Stats()
        self.proc = psutil.Process()
        if cpu is not None:
            try:
                self.proc.cpu_affinity([cpu])
            except (ValueError, psutil.Error, AttributeError) as e:
                self.close()
                raise ProvisorError(f"cannot pin to CPU {cpu}: {e}") from None

    def _signal(self, signum: int, _frame: object) -> None:
        log.info("signal %d: finishing the batch", signum)
        self.stop = True

    def step(self) -> int:
        """Read, apply and release one batch; returns the number of records read."""
        recs = self.consumer.read(self.batch)
        if not recs:
            self.batch = self.batch_min
            return 0
        self.commit(recs)
        self.stats.records += len(recs)
        self.stats.batches += 1
        # adapt: a full batch means we are behind; grow until we catch up
        if len(recs) >= self.batch:
            self.batch = min(self.batch * 2, self.batch_max)
        elif len(recs) < self.batch // 4:
            self.batch = max(self.batch // 2, self.batch_min)
        return len(recs)

    def commit(self, recs: list[L.Record], *, release: bool = True,
               gaps_ok: bool = False) -> int:
        """Apply ``recs`` (sequence order, this ring's) in one transaction through
        ``Applier.apply``, then release the ring up to the last of them the store now holds, and
        never further: a record is released only once it is stored. A record with a negative
        offset is not in the ring (recovery's NOTE about a gap) and never a release point.
        Returns the applied seq."""
        applied = self.store.apply(recs, ring=self.consumer.header.uuid_str, gaps_ok=gaps_ok)
        if release and not self.readonly:
            held = [r for r in recs if r.seq <= applied and r.offset >= 0]
            if held:
                last = held[-1]
                self.consumer.release(last.seq, position_after(last, self.consumer.size))
        return applied

    def unstored_release(self) -> tuple[int, int] | None:
        """(first, last) of records the ring released that this store never got: the ring's
        checkpoint is beyond the store's applied seq (another consumer released them, or the
        DB is an older copy). None when the store has everything up to the checkpoint (or
        is new: a new store starts where the ring is)."""
        a, c = self.store.applied_seq, self.consumer.checkpoint
        return (a + 1, c) if 0 < a < c else None

    def check_start(self) -> None:
        """Refuse to drain into a store that misses released records: continuing would hide
        the hole (nothing would ever say records a..b are not in this DB)."""
        hole = self.unstored_release()
        if hole:
            a, b = hole
            raise DaemonError(
                f"{self.store.path}: records {a}..{b} were released from ring "
                f"{self.consumer.region.path} (checkpoint {b}) but are not in this DB (applied "
                f"seq {a - 1}): another consumer released them, or the DB is an older copy; "
                "nothing applied. `provisor recover --live` salvages what the image still holds "
                "and records the rest as a gap")

    def status(self) -> dict:
        fill = self.consumer.fill()
        # records in the ring not yet read (counted up to LAG_LIMIT: a status line must stay
        # cheap when the daemon is far behind)
        pending = sum(1 for _ in L.scan(self.consumer.buf, self.consumer.header,
                                        self.consumer.next_seq, self.consumer.next_off,
                                        limit=LAG_LIMIT))
        return {"events_per_s": round(self.stats.rate()), "applied_seq": self.store.applied_seq,
                "lag": pending, "fill": fill, "rss_mb": self.proc.memory_info().rss / 2**20,
                "batch": self.batch}

    def _log_status(self) -> None:
        s = self.status()
        msg = ("events/s %(events_per_s)d  applied %(applied_seq)d  lag %(lag)s  "
               "fill %(fill).1f%%  rss %(rss_mb).0f MiB  batch %(batch)d")
        lag = f">={LAG_LIMIT}" if s["lag"] >= LAG_LIMIT else str(s["lag"])
        log.info(msg, {**s, "fill": s["fill"] * 100, "lag": lag})
        if s["fill"] > self.fill_warn:
            log.warning("ring %.0f%% full: the producer may block or drop", s["fill"] * 100)

    def run(self, once: bool = False, idle_sleep: float = 0.002) -> Stats:
        """Drain until stopped (SIGTERM/SIGINT finish the batch) or, with ``once``, until the
        ring holds nothing more."""
        self.check_start()
        old = {s: signal.signal(s, self._signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.stats.started = time.monotonic()
        next_status = time.monotonic() + self.status_interval
        try:
            while not self.stop:
                n = self.step()
                if time.monotonic() >= next_status:
                    self._log_status()
                    next_status = time.monotonic() + self.status_interval
                if n == 0:
                    if once:
                        break
                    time.sleep(idle_sleep)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        return self.stats

    def close(self) -> None:
        self.store.close()
        self.consumer.close()
