"""The analyzer, replayed over stored events: the one entry point the examiner may use.

``provisor verify`` judges the rows a daemon wrote against what the daemon's own code makes
of the stored events (never a copy of it). It reaches the analyzer only through this module,
so that the examiner depends on three calls, not on the analyzer's internals.
"""

from __future__ import annotations

from daemon.analyzer import Analyzer, Batch
from provisor.events import EventDecodeError, decode
from store.schema import event_row as _row

__all__ = ["Batch", "Replay"]


class Replay:
    """Events fed in sequence order; ``take`` returns the rows made since the last take."""

    def __init__(self) -> None:
        self._an = Analyzer()

    def feed(self, seq: int, payload: bytes) -> None:
        """One stored event (an undecodable payload is skipped: it was stored as a note)."""
        try:
            self._an.event(decode(payload, seq))
        except EventDecodeError:
            pass

    def take(self) -> Batch:
        return self._an.take()

    def state_rows(self) -> dict[str, dict[tuple, tuple]]:
        """What the rewritten tables hold after the replay, by key (as the daemon writes)."""
        an = self._an
        procs = an.proc_by_id.values()
        return {
            "processes": {(p.id,): p.row() for p in procs},
            "fds": {(p.id, fd): (p.id, fd, a, x) for p in procs
                    for fd, (a, x) in p.fds.items()},
            "proc_used": {(p.id, pos): (p.id, pos, node) for p in procs
                          for node, pos in p.used.items()},
            "artifacts": {(a.id,): a.row() for a in an.arts.values()},
            "pending": {(s,): (s,) for s in an.pending},
        }


def event_row(payload: bytes, seq: int) -> tuple | str:
    """The events row the analyzer makes from one payload, or why it makes none."""
    try:
        ev = decode(payload, seq)
    except EventDecodeError as e:
        return f"payload no longer decodes ({e})"
    return _row(ev)
