"""Applier.apply never advances past a record without keeping it: a record of a type this
provisor does not know, or an event that does not decode, is stored as a NOTE that holds its
exact bytes (guest text)."""

from __future__ import annotations

from crashutil import rows as store_rows

from daemon.apply import Applier
from pmem.layout import Record, RecType
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
