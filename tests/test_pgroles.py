"""Least privilege on PostgreSQL (store/pgroles), on a real server: an admin that is no
superuser makes each machine's namespace; a machine's daemon role applies a whole stream and
ends with the tables a superuser's daemon writes, and is refused everything else (another
machine's store, UPDATE/DELETE of chained rows, meta's fixed keys, DDL); an examiner role reads
everything and writes nothing; what a daemon role may still rewrite is caught by the chain."""

from __future__ import annotations

import itertools
import os
from urllib.parse import urlsplit

import psycopg
import pytest
from crashutil import TABLES, diff, payloads, run
from psycopg.errors import InsufficientPrivilege

from daemon.apply import Applier, StoreError
from examiner import query as Q
from examiner import verify
from pmem.layout import Record, RecType
from store import chain, meta, pgroles, postgres, schema

_names = itertools.count(1)
CHAINED = TABLES + ("chain", "attrs")


class Fleet:
    """One test database: an admin role (CREATE on the database only), and roles by name."""

    def __init__(self, cluster, su_url: str) -> None:
        self.cluster, self.su = cluster, su_url
        self.db = urlsplit(su_url).path.lstrip("/")
        self.tag = f"r{os.getpid()}_{next(_names)}"
        self.admin = self.role("admin")
        with psycopg.connect(su_url, autocommit=True) as c:
            c.execute(f'GRANT CREATE ON DATABASE "{self.db}" TO "{self.admin}"')

    def role(self, what: str) -> str:
        """A new LOGIN role (roles are the cluster's: named apart per test)."""
        name = f"{self.tag}_{what}"
        with psycopg.connect(self.su, autocommit=True) as c:
            c.execute(f'CREATE ROLE "{name}" LOGIN')
        return name

    def url(self, role: str) -> str:
        return self.cluster.url(self.db, user=role)


@pytest.fixture
def fleet(pg_cluster, pg_url) -> Fleet:
    """Machines a and b made by the admin, a daemon role each, one examiner role for all."""
    f = Fleet(pg_cluster, pg_url)
    adm = f.url(f.admin)
    f.daemon = {m: f.role(f"d_{m}") for m in "ab"}
    for m in "ab":
        assert pgroles.init(adm, m) == f"provisor_{m}"
        pgroles.grant_daemon(adm, m, f.daemon[m])
    return f


def records(pls: list[bytes]) -> list[Record]:
    return [Record(i + 1, RecType.EVENT, 0, p) for i, p in enumerate(pls)]


def apply_all(url: str, machine: str, pls: list[bytes], step: int = 700, uuid: str = "u-1"
              ) -> None:
    """A daemon's life: bind the ring, record the machine, apply, restart half-way."""
    recs = records(pls)
    half = (len(recs) // 2 // step) * step
    for part in (recs[:half], recs[half:]):
        s = Applier(url, uuid, machine=machine)
        try:
            s.record_machine({"host": "h1", "guest_kernel": "6.1"})
            for i in range(0, len(part), step):
                s.apply(part[i:i + step])
        finally:
            s.close()


def dump(url: str, machine: str, tables=CHAINED) -> dict[str, list[tuple]]:
    with psycopg.connect(url) as c:
        c.execute(f'SET search_path TO "{postgres.namespace(machine)}"')
        out = {t: sorted((tuple(bytes(v) if isinstance(v, memoryview) else v for v in r)
                          for r in c.execute(schema.TABLES[t].select()).fetchall()), key=repr)
               for t in tables}
        out["meta"] = sorted(c.execute("SELECT key, value FROM meta WHERE key <> "
                                       "'machine_name'").fetchall())
    return out


def connect_as(f: Fleet, role: str, machine: str) -> psycopg.Connection:
    c = psycopg.connect(f.url(role), autocommit=True)
    c.execute(f'SET search_path TO "{postgres.namespace(machine)}"')
    return c


def refused(c: psycopg.Connection, sql: str) -> None:
    with pytest.raises(InsufficientPrivilege):
        c.execute(sql)


def test_daemon_role_writes_what_a_superuser_writes(fleet, pg_url):
    """A whole synthetic stream through Applier as machine a's daemon role (bind, record the
    machine, batches, a restart): every table, the chain and meta equal a superuser's run."""
    pls = payloads(5000, 31)
    apply_all(fleet.url(fleet.daemon["a"]), "a", pls)
    apply_all(pg_url, "ref", pls)  # the superuser: its own namespace, made on first open
    got, want = dump(pg_url, "a"), dump(pg_url, "ref")
    assert diff(got, want) == ""
    assert sum(len(v) for v in got.values()) > 5000
    assert dict(got["meta"])["applied_seq"] == "5000"
    assert "h1" in dict(got["meta"])["machine"]
    # the namespace is the admin's, not the daemon's
    with psycopg.connect(pg_url) as c:
        assert c.execute("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = "
                         "'provisor_a'").fetchone()[0] == fleet.admin


def test_one_writer_for_a_non_owner(fleet):
    """The advisory lock needs no ownership: a second writer as the same role is refused."""
    url = fleet.url(fleet.daemon["a"])
    s = Applier(url, machine="a")
    try:
        with pytest.raises(StoreError, match="another writer"):
            Applier(url, machine="a")
    finally:
        s.close()


def test_daemon_role_refused_all_else(fleet):
    """Machine a's daemon role: nothing on machine b; no UPDATE or DELETE of chained rows, of
    ids, of meta's fixed keys; no DDL. What the apply path does is allowed (and no more)."""
    da = fleet.daemon["a"]
    apply_all(fleet.url(da), "a", payloads(1500, 4))
    apply_all(fleet.url(fleet.daemon["b"]), "b", payloads(300, 5))
    c = connect_as(fleet, da, "a")
    for t in pgroles.APPEND_ONLY:
        col = schema.TABLES[t].cols[-1]
        if t != "names":
            refused(c, f"UPDATE {t} SET {col} = {col}")
        refused(c, f"DELETE FROM {t}")
        refused(c, f"TRUNCATE {t}")
    refused(c, "UPDATE names SET path = 'x'")
    refused(c, "UPDATE names SET bind_seq = bind_seq")
    assert c.execute("UPDATE names SET unbind_seq = unbind_seq").rowcount > 0  # its one column
    for t in pgroles.UPSERTED:
        refused(c, f"UPDATE {t} SET id = id + 1000000")
        refused(c, f"DELETE FROM {t}")
    for t in pgroles.REPLACED:
        col = schema.TABLES[t].cols[0]
        refused(c, f"UPDATE {t} SET {col} = {col}")
    # meta: each batch's keys only; the fixed ones are hidden from its UPDATE (row-level
    # security), its key column is not its to change, no new key but 'machine', no DELETE
    for key in ("schema_version", "chain_encoding", "machine_name", "ring_uuid"):
        assert c.execute("UPDATE meta SET value = '9' WHERE key = %s", (key,)).rowcount == 0
    assert c.execute("UPDATE meta SET value = value WHERE key = 'batches'").rowcount == 1
    refused(c, "UPDATE meta SET key = 'x' WHERE key = 'batches'")
    refused(c, "INSERT INTO meta VALUES ('schema_version2', '1')")
    refused(c, "DELETE FROM meta")
    refused(c, "CREATE TABLE mine (a int)")
    refused(c, "CREATE INDEX mine ON events (ts_ns)")
    refused(c, "ALTER TABLE events ADD COLUMN x int")
    refused(c, "DROP TABLE events")
    refused(c, "CREATE VIEW v AS SELECT 1")
    refused(c, "ALTER TABLE meta DISABLE ROW LEVEL SECURITY")
    c.execute(f'GRANT SELECT ON events TO "{fleet.daemon["b"]}"')  # a warning: no grant option
    assert not c.execute("SELECT has_table_privilege(%s, 'provisor_a.events', 'SELECT')",
                         (fleet.daemon["b"],)).fetchone()[0]
    refused(c, "CREATE SCHEMA provisor_z")
    for t in ("events", "meta", "chain"):
        refused(c, f"SELECT * FROM provisor_b.{t}")
        refused(c, f"DELETE FROM provisor_b.{t}")
    refused(c, "INSERT INTO provisor_b.notes VALUES (999999, 'x')")
    c.close()
    with psycopg.connect(fleet.su) as su:
        assert su.execute("SELECT value FROM provisor_a.meta WHERE key = 'schema_version'"
                          ).fetchone()[0] == str(meta.SCHEMA_VERSION)
    # through the store: one line each, never a traceback
    with pytest.raises(StoreError, match="permission denied for schema provisor_b"):
        Applier(fleet.url(da), machine="b")
    with pytest.raises(StoreError, match=r"no such store .*provisor pg init"):
        Applier(fleet.url(da), machine="c")
    s = Applier(fleet.url(da), machine="a")
    try:  # a store holding batches keeps its ring, whatever the daemon role tries
        with pytest.raises(StoreError, match="may not set the store's ring"):
            s.db.set_ring("u-3")
    finally:
        s.close()


def test_examiner_reads_everything_writes_nothing(fleet):
    """An examiner role of every machine: SELECT of every table, the examiner's own connect
    and a lineage query; no INSERT, UPDATE, DELETE or DDL anywhere; a writer's open fails at
    the first write."""
    for m in "ab":
        apply_all(fleet.url(fleet.daemon[m]), m, payloads(800, 6))
    ex = fleet.role("examiner")
    assert pgroles.grant_examiner(fleet.url(fleet.admin), ex) == ["a", "b"]
    for m in "ab":
        c = connect_as(fleet, ex, m)
        for t in schema.TABLES:
            c.execute(f"SELECT * FROM {t}").fetchall()
        assert len(c.execute("SELECT * FROM meta").fetchall()) == 8  # all of it (RLS: read)
        for t, tab in schema.TABLES.items():
            col = tab.cols[-1]
            refused(c, f"INSERT INTO {t} ({col}) VALUES (NULL)")
            refused(c, f"UPDATE {t} SET {col} = {col}")
            refused(c, f"DELETE FROM {t}")
        refused(c, "CREATE TABLE mine (a int)")
        c.close()
        conn = Q.connect(fleet.url(ex), m)
        try:
            path = conn.execute("SELECT path FROM names WHERE path LIKE '/%' ORDER BY id LIMIT 1"
                                ).fetchone()[0]
            assert len(Q.walk(conn, Q.resolve(conn, path).nodes, up=False)) > 1
        finally:
            conn.close()
    s = Applier(fleet.url(ex), machine="a")
    try:
        with pytest.raises(StoreError, match="permission denied for table"):
            s.apply(records(payloads(900, 6))[800:])
    finally:
        s.close()
    # named machines only
    ex_b = fleet.role("examiner_b")
    assert pgroles.grant_examiner(fleet.url(fleet.admin), ex_b, ["b"]) == ["b"]
    with pytest.raises(Q.QueryError, match="permission denied"):
        Q.connect(fleet.url(ex_b), "a")
    Q.connect(fleet.url(ex_b), "b").close()


def test_grants_refused_where_they_would_not_limit(fleet):
    """A daemon role is one machine's only; an examiner role writes nothing; a superuser or
    a missing role or store gets no grant; the CLI says so on one line."""
    adm = fleet.url(fleet.admin)
    with pytest.raises(StoreError, match="already reaches machine a"):
        pgroles.grant_daemon(adm, "b", fleet.daemon["a"])
    with pytest.raises(StoreError, match="an examiner role only reads"):
        pgroles.grant_examiner(adm, fleet.daemon["a"])
    with pytest.raises(StoreError, match="owns provisor_a"):
        pgroles.grant_daemon(adm, "a", fleet.admin)
    with pytest.raises(StoreError, match="superuser"):
        pgroles.grant_daemon(adm, "a", "postgres")
    with pytest.raises(StoreError, match="no role"):
        pgroles.grant_daemon(adm, "a", "nobody_here")
    with pytest.raises(StoreError, match="no store for machine c"):
        pgroles.grant_daemon(adm, "c", fleet.role("d_c"))
    # a role that owns nothing may not grant
    with pytest.raises(StoreError, match="admin that owns"):
        pgroles.grant_examiner(fleet.url(fleet.daemon["b"]), fleet.role("x"), ["a"])
    r = run(["pg", "grant", "--db", adm, "--machine", "b", "--daemon-role", fleet.daemon["a"]])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "already reaches" in r.stderr
    r = run(["pg", "grant", "--db", adm, "--daemon-role", fleet.daemon["a"]])
    assert r.returncode == 2 and "exactly one --machine" in r.stderr


def test_migration_needs_the_admin_cli(fleet, pg_url):
    """A store made by an earlier provisor (a query index missing): its daemon role may not
    migrate it and says which admin step does; `provisor pg init` (as the admin) does, and a
    current store opens without any DDL. Then `pg revoke` takes the role's rights."""
    with psycopg.connect(fleet.url(fleet.admin), autocommit=True) as c:
        c.execute("DROP INDEX provisor_a.relations_up")
    url = fleet.url(fleet.daemon["a"])
    with pytest.raises(StoreError, match=r"needs migrating .*`provisor pg init --db URL "
                       r"--machine a`"):
        Applier(url, machine="a")
    adm = fleet.url(fleet.admin)
    r = run(["pg", "init", "--db", adm, "--machine", "a"])
    assert r.returncode == 0, r.stderr
    assert "provisor_a: ready" in r.stdout
    with psycopg.connect(pg_url) as c:
        assert postgres.migration_needed(c, "provisor_a") == []
    Applier(url, machine="a").close()
    ex = fleet.role("ex")
    r = run(["pg", "grant", "--db", adm, "--examiner-role", ex, "--machine", "a"])
    assert r.returncode == 0 and f"{ex} may read machines: a" in r.stdout, r.stderr
    r = run(["pg", "revoke", "--db", adm, "--role", fleet.daemon["a"], "--machine", "a"])
    assert r.returncode == 0, r.stderr
    with pytest.raises(StoreError, match="permission denied"):
        Applier(url, machine="a")


def _recomputed_link(c: psycopg.Connection) -> bytes:
    """The link of a store's only batch, recomputed from its stored rows (store/chain)."""
    def rows(t: str, order: str) -> list[tuple]:
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r)
                for r in c.execute(f"{schema.TABLES[t].select()} ORDER BY {order}")]

    names = rows("names", "id")
    extra = chain.Extra(rows("versions", "id"), [r[:4] for r in names],
                        sorted((r[4], r[0]) for r in names if r[4] is not None),
                        rows("losses", "seq"), rows("notes", "seq"),
                        chain.State.of(c, chain.ENCODING).digest(), rows("attrs", "rowid"),
                        chain.ENCODING >= "4", chain.binary(chain.ENCODING))
    return chain.digest(chain.GENESIS, rows("events", "seq"), rows("relations", "id"), extra)


def test_tampering_by_writers_is_caught_by_the_chain(fleet, pg_url):
    """What the server lets a writer change is caught (checked here with store/chain directly,
    and with verify): the daemon role's rewrite of a process row breaks the chained state (its
    next open refuses the store); the owner's edit of an event's payload makes its batch's
    recomputed link differ from the stored, and an edit of one of its columns disagrees with
    the payload it is derived from."""
    da = fleet.daemon["a"]
    s = Applier(fleet.url(da), machine="a")
    try:
        s.apply(records(payloads(1200, 8)))  # one batch
    finally:
        s.close()
    with psycopg.connect(pg_url) as c:  # the superuser (the admin could do as much)
        c.execute("SET search_path TO provisor_a")
        assert c.execute("SELECT count(*) FROM chain").fetchone()[0] == 1
        stored, state = c.execute("SELECT digest, state FROM chain").fetchone()
        assert _recomputed_link(c) == bytes(stored)  # the recomputation is the store's
        c.execute("UPDATE events SET payload = payload || '\\x00'::bytea WHERE seq = 7")
        assert _recomputed_link(c) != bytes(stored)
        c.rollback()
        c.execute("SET search_path TO provisor_a")
        c.execute("UPDATE events SET comm = 'evil' WHERE seq = 7")
        c.commit()
    f = verify.run(pg_url, machine="a").findings[0]
    assert (f.what, f.table, f.key) == ("altered", "events", "seq=7"), str(f)
    d = connect_as(fleet, da, "a")
    assert d.execute("UPDATE processes SET exe = '/bin/evil' WHERE id = 1").rowcount == 1
    with psycopg.connect(pg_url) as c:
        c.execute("SET search_path TO provisor_a")
        assert chain.State.of(c, chain.ENCODING).digest() != bytes(state)
    d.close()
    with pytest.raises(meta.DamagedStore, match="processes rows differ"):
        Applier(fleet.url(da), machine="a")


def test_daemon_and_recover_commands_as_the_daemon_role(fleet, shm_dir, pg_url):
    """`provisor daemon --once` and `provisor recover` as machine a's daemon role: the ring is
    bound and drained into the admin's namespace; the role's URL never needs the admin's."""
    from crashutil import filled_ring

    ring = f"{shm_dir}/a.ring"
    filled_ring(ring, payloads(2000, 12))
    url = fleet.url(fleet.daemon["a"])
    r = run(["daemon", "--ring", ring, "--db", url, "--machine", "a", "--once", "--quiet"])
    assert r.returncode == 0, r.stderr
    r = run(["recover", "--ring", ring, "--db", url, "--machine", "a", "--read-only"])
    assert r.returncode == 0, r.stderr
    got = dict(dump(pg_url, "a")["meta"])
    assert got["applied_seq"] == "2000" and got["ring_uuid"] and "machine" in got
