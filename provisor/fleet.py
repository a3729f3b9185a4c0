"""A fleet: several guests, each with its own ring and machine name, into one store.

A fleet file (TOML; config/fleet.toml is the example) names the store and the guests::

    [fleet]
    db = "/dev/shm/provisor-fleet"        # a directory (one SQLite file per guest) or a
                                          # postgresql:// URL (one namespace per guest)
    [[guest]]
    name = "web"                          # the machine name (provisor.machine.MACHINE_RE)
    workload = "guest/workloads/demo.sh"  # relative to the fleet file
    ring = "/dev/shm/provisor-web.ring"
    smp = 1                               # optional
    include = "..."                       # optional: a directory copied into the initramfs

``collect`` and ``status`` read it (hv/fleet.py runs the guests; examiner/status.py reports
on each); the checks are here, once, so a bad file is one line before any guest boots.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from provisor.errors import ProvisorError
from provisor.machine import check_machine, is_postgres_url


class FleetError(ProvisorError):
    pass


@dataclass(frozen=True)
class Guest:
    name: str  # the machine name: its store's namespace or file
    workload: str
    ring: str
    smp: int = 1
    include: str | None = None
    size: str | None = None  # the ring's size when it is made (default: the config's)


@dataclass(frozen=True)
class Fleet:
    path: str
    db: str
    guests: tuple[Guest, ...]

    def store_of(self, g: Guest) -> str:
        """Where guest ``g``'s records are stored: its SQLite file, or the shared URL."""
        return self.db if is_postgres_url(self.db) else os.path.join(self.db, f"{g.name}.db")

    def guest(self, name: str) -> Guest:
        for g in self.guests:
            if g.name == name:
                return g
        raise FleetError(f"{self.path}: no guest {name!r} (guests: "
                         f"{', '.join(g.name for g in self.guests)})")


_GUEST_KEYS = {"name", "workload", "ring", "smp", "include", "size"}


def load(path: str, db: str | None = None) -> Fleet:
    """The fleet file at ``path``, checked (``db`` overrides its [fleet] db)."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise FleetError(f"{path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise FleetError(f"{path}: not valid TOML ({e})") from None
    unknown = set(doc) - {"fleet", "guest"}
    if unknown:
        raise FleetError(f"{path}: unknown section [{sorted(unknown)[0]}] (known: fleet, guest)")
    head = doc.get("fleet", {})
    if not isinstance(head, dict) or set(head) - {"db"}:
        raise FleetError(f"{path}: [fleet] takes one key, db")
    db = db or head.get("db")
    if not isinstance(db, str) or not db.strip():
        raise FleetError(f"{path}: fleet.db is missing (a directory or a postgresql:// URL)")
    here = Path(path).resolve().parent
    rows = doc.get("guest")
    if not isinstance(rows, list) or not rows:
        raise FleetError(f"{path}: no [[guest]] entries")
    guests: list[Guest] = []
    for i, row in enumerate(rows, 1):
        where = f"{path}: guest {i}"
        if not isinstance(row, dict):
            raise FleetError(f"{where}: must be a table ([[guest]])")
        extra = set(row) - _GUEST_KEYS
        if extra:
            raise FleetError(f"{where}: unknown key {sorted(extra)[0]} (known: "
                             f"{', '.join(sorted(_GUEST_KEYS))})")
        for key in ("name", "workload", "ring"):
            if not isinstance(row.get(key), str) or not row[key].strip() or "\0" in row[key]:
                raise FleetError(f"{where}: {key} must be a non-empty string")
        try:
            name = check_machine(row["name"])
        except ProvisorError as e:
            raise FleetError(f"{where}: {e}") from None
        smp = row.get("smp", 1)
        if isinstance(smp, bool) or not isinstance(smp, int) or not 1 <= smp <= 64:
            raise FleetError(f"{where}: smp must be an integer in 1..64")
        inc = row.get("include")
        if inc is not None and (not isinstance(inc, str) or not inc.strip()):
            raise FleetError(f"{where}: include must be a directory")
        size = row.get("size")
        if size is not None:
            from provisor.config import ConfigError, parse_size

            try:
                parse_size(size)
            except ConfigError as e:
                raise FleetError(f"{where}: size: {e}") from None
        guests.append(Guest(name, str(here / row["workload"]),
                            os.path.expanduser(row["ring"]), smp,
                            None if inc is None else str(here / inc), size))
    for attr in ("name", "ring"):
        seen: set[str] = set()
        for g in guests:
            v = getattr(g, attr) if attr == "name" else os.path.realpath(g.ring)
            if v in seen:
                raise FleetError(f"{path}: two guests share the {attr} {getattr(g, attr)!r} "
                                 "(one ring and one store per guest)")
            seen.add(v)
    if not is_postgres_url(db):
        db = os.path.expanduser(db)
    return Fleet(path, db, tuple(guests))
