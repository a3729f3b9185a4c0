"""What every backend shares: the error, one batch's writes as rows, and the hash chain's
bookkeeping (which rows a batch rewrites, the chained state after it, its link).

A backend (store/sqlite.py; PostgreSQL next) only reads the stored rows a batch rewrites and
writes the batch in one transaction that also advances ``applied_seq``; what is chained, and
how, is decided here once, so both backends chain the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from provisor.errors import ProvisorError
from store import chain, schema

if TYPE_CHECKING:
    from provisor.events import Event


class StoreError(ProvisorError):
    pass


@dataclass
class Changes:
    """One batch's writes, every row in its table's declared column order (store/schema)."""

    last_seq: int  # the batch's last record: the store's applied_seq once it commits
    events: list[Event] = field(default_factory=list)  # rows: schema.event_row (event_rows)
    versions: list[tuple] = field(default_factory=list)
    relations: list[tuple] = field(default_factory=list)
    names: list[tuple] = field(default_factory=list)  # names bound by the batch
    unbinds: list[tuple] = field(default_factory=list)  # (unbind_seq, name id)
    losses: list[tuple] = field(default_factory=list)
    notes: list[tuple] = field(default_factory=list)
    attrs: list[tuple] = field(default_factory=list)
    procs: list[tuple] = field(default_factory=list)  # processes rows rewritten, by id
    fds: list[tuple] = field(default_factory=list)  # the whole fd table of each of those procs
    used_clear: set[int] = field(default_factory=set)  # procs whose proc_used rows all go
    used_del: set[tuple[int, int]] = field(default_factory=set)  # (proc, pos)
    used_add: list[tuple] = field(default_factory=list)  # proc_used rows
    arts: list[tuple] = field(default_factory=list)  # artifacts rows rewritten, by id
    pending_done: list[int] = field(default_factory=list)  # entries whose exit came
    pending_new: list[int] = field(default_factory=list)  # entries awaiting their exit

    def event_rows(self) -> list[tuple]:
        return [schema.event_row(e) for e in self.events]

    # the append-only tables, as (table, rows), in the order they are written; without the
    # events for a backend that writes them from the Events themselves
    def appended(self, events: bool = True) -> list[tuple[str, list[tuple]]]:
        return [("events", self.event_rows() if events else []), ("versions", self.versions),
                ("relations", self.relations), ("names", self.names),
                ("losses", self.losses), ("notes", self.notes), ("attrs", self.attrs)]


# (table, key column) -> the stored rows whose key is in ``keys`` (declared column order)
Stored = Callable[[str, str, Sequence[object]], list[tuple]]


def state_after(state: chain.State, stored: Stored, ch: Changes,
                used_row: Callable[[int, int], tuple | None]) -> chain.State:
    """The chained state once ``ch`` is written: each row it rewrites or deletes taken out as
    stored, each row it writes put in (read inside the transaction, before writing)."""
    st = state.copy()
    if ch.procs:
        ids = [r[0] for r in ch.procs]
        st.remove("processes", stored("processes", "id", ids))
        st.add("processes", ch.procs)
        st.remove("fds", stored("fds", "proc_id", ids))
        st.add("fds", ch.fds)
    gone = {(r[0], r[1]): r for r in stored("proc_used", "proc_id", sorted(ch.used_clear))
            } if ch.used_clear else {}
    for pid, pos in ch.used_del:
        row = used_row(pid, pos)
        if row is not None:
            gone[(pid, pos)] = row
    st.remove("proc_used", gone.values())
    st.add("proc_used", ch.used_add)
    if ch.arts:
        st.remove("artifacts", stored("artifacts", "id", [r[0] for r in ch.arts]))
        st.add("artifacts", ch.arts)
    if ch.pending_done:
        st.remove("pending", stored("pending", "seq", ch.pending_done))
    if ch.pending_new:
        have = {r[0] for r in stored("pending", "seq", ch.pending_new)}
        st.add("pending", [(s,) for s in ch.pending_new if s not in have])
    return st


def link(prev: bytes, encoding: str, ch: Changes, st: chain.State | None) -> bytes:
    """The batch's chain link (encoding 1: events and relations only)."""
    extra = None if st is None else chain.Extra(
        ch.versions, [r[:4] for r in ch.names], sorted(ch.unbinds), ch.losses, ch.notes,
        st.digest(), ch.attrs if encoding >= "3" else None, encoding >= "4",
        chain.binary(encoding))
    # encoding 4 chains each event's seq and payload; the earlier ones the whole rows
    events = ch.events if extra is not None and extra.payloads else ch.event_rows()
    return chain.digest(prev, events, ch.relations, extra)


def chain_row(batch: int, ch: Changes, head: bytes, st: chain.State | None) -> tuple:
    """The ``chain`` row of a batch (encoding 1 has no state column value)."""
    return (batch, ch.events[0].seq if ch.events else None, ch.last_seq,
            ch.relations[0][0] if ch.relations else None,
            ch.relations[-1][0] if ch.relations else None, head,
            None if st is None else st.digest())


def counts(q: Callable[[str], list[tuple]]) -> dict[str, int]:
    """A store's summary counts: rows per counted table, relations per kind, and the calls of
    unknown outcome (the daemon's, collect's, status's and recovery's summaries alike)."""
    out = {t: q(f"SELECT count(*) FROM {t}")[0][0] for t in schema.COUNTED}
    for kind, n in q("SELECT kind, count(*) FROM relations GROUP BY kind ORDER BY kind"):
        out[kind] = n
    out["outcome_unknown"] = q("SELECT count(*) FROM pending")[0][0]
    return out
