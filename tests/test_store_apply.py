"""Applier.apply never advances past a record without keeping it: a record of a type this
provisor does not know, or an event that does not decode, is stored as a NOTE that holds its
exact bytes (guest text)."""

from __future__ import annotations

import pytest
from crashutil import rows as store_rows

from daemon.apply import Applier
from pmem.layout import Record, RecType
from provisor.events import Event, FileId, encode
from provisor.guesttext import unescape


def test_unknown_type_and_undecodable_event_are_kept_whole(store_db):
    db = store_db
    odd, junk = b"\x00\xffnew producer\x1b[2J", b"\x07not an event"
    s = Applier(db)
    try:
        assert s.apply([Record(1, 99, 0, odd), Record(2, RecType.EVENT, 0, junk)]) == 2
    finally:
        s.close()
    rows = dict(store_rows(db, "SELECT seq, text FROM notes"))
    assert rows[1].startswith("record of unknown type 99: ")
    assert unescape(rows[1].split(": ", 1)[1]) == odd
    assert rows[2].startswith("undecodable event (")
    assert unescape(rows[2].rsplit("): ", 1)[1]) == junk


@pytest.mark.parametrize("field", ["ts_ns", "start_time", "cwd_mnt", "entry_seq", "ino", "dev"])
def test_a_value_the_store_cannot_hold_is_a_note_not_a_stopped_daemon(store_db, field):
    """The store's integers are signed 64-bit. A guest's start_time (or inode, device, mount
    id) of 2^63 or more would stop the daemon at every restart on the same record: it is an
    undecodable event instead, kept whole as a note, and the records after it are applied."""
    big = 2**64 - 1
    kw = {"ts_ns": 5, "tgid": 7, "pid": 7, "start_time": 9, "comm": "x", "cwd": "/"}
    files = []
    if field in ("ino", "dev"):
        files = [FileId(big if field == "dev" else 1, big if field == "ino" else 1, "/f")]
    else:
        kw[field] = big
    bad = encode(Event(nr=0, phase=0, args=(3, 0, 0, 0, 0, 0), files=files, **kw))
    good = encode(Event(nr=39, phase=0, ts_ns=6, tgid=7, pid=7, start_time=9, comm="x"))
    s = Applier(store_db)
    try:
        assert s.apply([Record(1, RecType.EVENT, 0, bad), Record(2, RecType.EVENT, 0, good)]) == 2
    finally:
        s.close()
    notes = dict(store_rows(store_db, "SELECT seq, text FROM notes"))
    assert "2^63 or more" in notes[1] and unescape(notes[1].rsplit("): ", 1)[1]) == bad
    assert [r[0] for r in store_rows(store_db, "SELECT seq FROM events")] == [2]
