"""Bad input gets one line and a non-zero exit: config values and flags checked at the edge,
damaged stores and rings refused, OS and SQLite failures reported with the file they concern.

Every test runs the real CLI (``python -m provisor.cli``) and asserts exit status 2, exactly one
line on stderr starting ``provisor: error:``, no traceback and no "internal error".
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from crashutil import PROVISOR, run

from pmem import ring as R


def one_line_error(p: subprocess.CompletedProcess, *want: str, code: int = 2) -> str:
    err = p.stderr
    assert "Traceback" not in err and "internal error" not in err, err
    lines = err.splitlines()
    assert p.returncode == code, (p.returncode, err)
    assert len(lines) == 1 and lines[0].startswith("provisor: error:"), err
    for w in want:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, Path]:
    """A ring that held 500 synthetic events, and the store they were applied to (built once;
    each test gets copies)."""
    d = tmp_path_factory.mktemp("badinput")
    ring, db = d / "p.ring", d / "p.db"
    assert run(["ring", "create", str(ring), "--size", "1M"]).returncode == 0
    assert run(["synth", "--ring", str(ring), "--events", "500"]).returncode == 0
    ring.with_suffix(".full").write_bytes(ring.read_bytes())  # before the daemon released it
    p = run(["daemon", "--ring", str(ring), "--db", str(db), "--once", "-q"])
    assert p.returncode == 0, p.stderr
    return ring, db


@pytest.fixture
def ring500(pristine, shm_dir: Path) -> str:
    """A ring holding 500 unreleased synthetic events."""
    path = shm_dir / "p.ring"
    shutil.copy(pristine[0].with_suffix(".full"), path)
    return str(path)


@pytest.fixture
def store(pristine, shm_dir: Path) -> str:
    """A store with those 500 events applied (a copy)."""
    path = shm_dir / "p.db"
    shutil.copy(pristine[1], path)
    return str(path)


# -- 1. one config schema --------------------------------------------------------------------
CONFIGS = [
    ("[daemon]\nbatch_min = 0\n", "daemon.batch_min must be an integer >= 1, got 0"),
    ("[daemon]\nbatch_min = -5\n", "daemon.batch_min must be an integer >= 1, got -5"),
    ('[daemon]\nbatch_min = "abc"\n', "daemon.batch_min must be an integer >= 1, got 'abc'"),
    ("[daemon]\nbatch_min = true\n", "daemon.batch_min must be an integer >= 1, got true"),
    ("[daemon]\nbatch_min = 64.0\n", "daemon.batch_min must be an integer"),
    ("[daemon]\nbatch_min = 64\nbatch_max = 32\n", "daemon.batch_max must be >= daemon.batch_min"),
    ('[ring]\nfull_policy = "yolo"\n', "ring.full_policy must be one of block, drop, fail"),
    ("[daemon]\ndb = 5\n", "daemon.db must be a non-empty string, got 5"),
    ('[daemon]\ndb = ""\n', "daemon.db must be a non-empty string"),
    ('[ring]\npath = ""\n', "ring.path must be a non-empty string"),
    ("[daemon]\nstatus_interval = inf\n", "daemon.status_interval must be a finite number > 0"),
    ("[daemon]\nstatus_interval = nan\n", "daemon.status_interval must be a finite number > 0"),
    ("[daemon]\nstatus_interval = 0\n", "daemon.status_interval"),
    ("[daemon]\nfill_warn = 1.5\n", "daemon.fill_warn must be a number in (0, 1]"),
    ("[daemon]\nfill_warn = 0\n", "daemon.fill_warn"),
    ('[daemon]\nrecord_envp = "yes"\n', "daemon.record_envp must be true or false"),
    ('[ring]\nsize = "nanM"\n', "ring.size must be a positive size"),
    ('[ring]\nsize = "infG"\n', "ring.size must be a positive size"),
    ('[ring]\nsize = "-64M"\n', "ring.size must be a positive size"),
    ("[ring]\nsize = 0\n", "ring.size must be a positive size"),
    ('[guest]\nkvm = "maybe"\n', "guest.kvm must be one of auto, on, off"),
    ("[daemon]\nbatchmin = 5\n", "unknown key daemon.batchmin"),
    ("[deamon]\ndb = 'x.db'\n", "unknown section [deamon]"),
    ("daemon = 5\n", "daemon must be a table"),
]


@pytest.mark.parametrize("body,want", CONFIGS, ids=[c[1][:40] for c in CONFIGS])
def test_bad_config_is_one_line_naming_file_and_key(ring500, shm_dir, body, want):
    cfg = shm_dir / "c.toml"
    cfg.write_text(body)
    db = shm_dir / "never.db"
    before = sha(ring500)
    p = run(["--config", str(cfg), "daemon", "--ring", ring500, "--db", str(db), "--once"])
    one_line_error(p, f"{cfg}: ", want)
    assert not db.exists() and sha(ring500) == before


def test_config_schema_accepts_the_defaults_and_valid_overrides(ring500, shm_dir):
    from provisor import config

    cfg = config.load()
    assert cfg["daemon"]["batch_min"] >= 1  # the embedded defaults fit the schema
    f = shm_dir / "c.toml"
    f.write_text("[daemon]\nbatch_min = 8\nbatch_max = 8\nfill_warn = 1\nstatus_interval = 1\n"
                 "[guest]\nbusybox = '/bin/busybox'\n")
    assert config.load(str(f))["daemon"]["batch_max"] == 8
    p = run(["--config", str(f), "daemon", "--ring", ring500, "--db",
             str(shm_dir / "ok.db"), "--once"])
    assert p.returncode == 0 and "applied 500 records" in p.stderr, p.stderr


def test_config_file_from_the_environment_is_checked_too(ring500, shm_dir):
    f = shm_dir / "env.toml"
    f.write_text("[daemon]\nbatch_min = 0\n")
    p = run(["daemon", "--ring", ring500, "--db", str(shm_dir / "x.db"), "--once"],
            env={"PROVISOR_CONFIG": str(f)})
    one_line_error(p, str(f), "daemon.batch_min")


@pytest.mark.parametrize("text", ["nan", "inf", "nanM", "infK", "-1", "-64M", "0", "0K",
                                  "0.0001K", "1e400M", "", "abc"])
def test_parse_size_refuses_non_positive_and_non_finite(text):
    from provisor.config import ConfigError, parse_size

    with pytest.raises(ConfigError):
        parse_size(text)


def test_parse_size_still_parses_sizes():
    from provisor.config import parse_size

    assert parse_size("64M") == 64 << 20 and parse_size("1.5K") == 1536
    assert parse_size("4096") == 4096 and parse_size(8192) == 8192


# -- 2. flags at the edge -------------------------------------------------------------------
@pytest.mark.parametrize("rate", ["inf", "nan", "-inf", "1e-300", "0", "-1", "1e300"])
def test_synth_rate_must_be_finite_and_sane(ring500, rate):
    before = sha(ring500)
    p = run(["synth", "--ring", ring500, "--events", "1", "--rate", rate])
    one_line_error(p, "--rate")
    assert sha(ring500) == before


def test_numeric_flags_have_ranges(ring500, store, shm_dir):
    for args, flag in (
            (["synth", "--ring", ring500, "--events", "1", "--file-fraction", "nan"],
             "--file-fraction"),
            (["synth", "--ring", ring500, "--events", "1", "--batch", str(1 << 40)], "--batch"),
            (["daemon", "--ring", ring500, "--db", store, "--once", "--cpu",
              "99999999999999999999"], "--cpu"),
            (["ring", "dump", ring500, "--from", "-1"], "--from"),
            (["query", "ancestors", "v:1", "--db", store, "--depth", "1e30"], "--depth"),
            (["query", "ancestors", "v:1", "--db", store, "--depth",
              "99999999999999999999"], "--depth"),
            (["query", "ancestors", "v:1", "--db", store, "--limit",
              "99999999999999999999"], "--limit"),
            (["export", "--db", store, "-o", str(shm_dir / "x.json"), "--chunk",
              "99999999999999999999"], "--chunk"),
            (["guest", "boot", "--workload", str(shm_dir / "w.sh"), "--timeout", "nan"],
             "--timeout")):
        one_line_error(run(args), flag)
    assert not (shm_dir / "x.json").exists()


@pytest.mark.parametrize("when", ["-1e30", "-99999999999999999999", "99999999999999999999",
                                  "9223372036854775808", "0001-01-01T00:00:00+14:00",
                                  "9999-12-31T23:59:59-14:00", "2262-04-12T00:00:00Z", "²"])
@pytest.mark.parametrize("flag", ["--since", "--until"])
def test_times_outside_int64_nanoseconds_are_refused(store, shm_dir, when, flag):
    one_line_error(run(["query", "ancestors", "v:1", "--db", store, f"{flag}={when}"]),
                   "timestamp")
    out = shm_dir / "x.json"
    one_line_error(run(["export", "--db", store, "-o", str(out), f"{flag}={when}"]), "timestamp")
    assert not out.exists()


def test_time_parsing_bounds():
    from examiner.query import QueryError, parse_time

    assert parse_time("1677-09-22T00:00:00Z") < 0 < parse_time("2262-04-10T00:00:00Z")
    assert parse_time("1970-01-01T01:00:00+01:00") == 0
    assert parse_time("2026-11-23T08:00:00.5Z") == 1795420800_500_000_000
    assert parse_time(str((1 << 63) - 1)) == (1 << 63) - 1
    for bad in (str(1 << 63), str(-(1 << 63) - 1), "0001-01-01T00:00:00+14:00"):
        with pytest.raises(QueryError):
            parse_time(bad)


@pytest.mark.parametrize("target", ["v:99999999999999999999", "v:²", "a:9223372036854775808",
                                    "p:¹²", "tgid:99999999999999999999", "artifact:-1"])
def test_ids_beyond_int64_or_not_ascii_digits_are_not_valid(store, shm_dir, target):
    one_line_error(run(["query", "ancestors", target, "--db", store]), "not a valid id")
    out = shm_dir / "x.json"
    one_line_error(run(["export", "--db", store, "-o", str(out), "--object", target]),
                   "not a valid id")
    assert not out.exists()


@pytest.mark.parametrize("tgid", ["99999999999999999999", "²"])
def test_process_tgid_must_be_a_valid_id(store, tgid):
    one_line_error(run(["query", "process", tgid, "--db", store]), "not a valid id")


def test_huge_depth_stops_when_nothing_is_left(store):
    """--depth 2^31-1 on writers/process walks while there is something to walk, not 2^31
    rounds of empty queries."""
    for q, t in (("process", "1"), ("writers", "a:1")):
        p = run(["query", q, t, "--db", store, "--depth", str(2**31 - 1)], timeout=60)
        assert p.returncode in (0, 2) and "internal error" not in p.stderr, p.stderr


# -- 3. ring append takes bytes ----------------------------------------------------------------
def test_ring_append_takes_the_exact_bytes_of_each_line(shm_dir):
    path = str(shm_dir / "n.ring")
    R.create(path, 1 << 20)
    data = b"plain\n\xff\xfe not utf-8\nlatin-1 \xe9t\xe9\r\n\n\xed\xa0\x80 surrogate\nno newline"
    p = subprocess.run([*PROVISOR, "ring", "append", path], input=data, capture_output=True)
    assert p.returncode == 0 and not p.stderr, p.stderr
    assert p.stdout.split() == [b"1", b"2", b"3", b"4", b"5", b"6"]
    got = [r.payload for r in R.iter_records(path)]
    assert got == [b"plain", b"\xff\xfe not utf-8", b"latin-1 \xe9t\xe9\r", b"",
                   b"\xed\xa0\x80 surrogate", b"no newline"]
    dump = run(["ring", "dump", path, "--json"])
    assert dump.returncode == 0 and len(dump.stdout.splitlines()) == 6



# -- 4. OS and SQLite failures: one line naming the file ------------------------------------
@pytest.fixture
def tmpfs(shm_dir: Path):
    """Mount a small tmpfs (root only): ``mount(size)`` returns its directory. Unmounted at
    the end; skipped where mounting is not permitted."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        d = shm_dir / f"mnt{len(mounted)}"
        d.mkdir()
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {p.stderr.strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["chattr", "-R", "-i", str(d)], capture_output=True)
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[Path, Path]:
    """A ring holding 5000 unreleased events and a store of the same 5000 events (~1.5 MB)."""
    from crashutil import filled_ring, payloads, reference

    d = tmp_path_factory.mktemp("big")
    pls = payloads(5000, 11)
    filled_ring(str(d / "big.ring"), pls, size=4 << 20)
    reference(str(d / "big.db"), pls)
    return d / "big.ring", d / "big.db"


def _behind_store(mnt: Path, shm_dir: Path) -> tuple[str, Path]:
    """A ring and a store in ``mnt`` that has applied its first 100 records, not the next 100:
    the daemon has something to write."""
    ring = str(shm_dir / "behind.ring")
    db = mnt / "p.db"
    assert run(["ring", "create", ring, "--size", "1M"]).returncode == 0
    assert run(["synth", "--ring", ring, "--events", "100"]).returncode == 0
    assert run(["daemon", "--ring", ring, "--db", str(db), "--once", "-q"]).returncode == 0
    assert run(["synth", "--ring", ring, "--events", "100", "--seed", "1"]).returncode == 0
    return ring, db


def test_daemon_and_recover_on_an_immutable_store(tmpfs, shm_dir):
    mnt = tmpfs("8m")
    ring, db = _behind_store(mnt, shm_dir)
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i not supported here")
    before, ring_before = sha(db), sha(ring)
    for args in (["daemon", "--ring", ring, "--db", str(db), "--once"],
                 ["recover", "--ring", ring, "--db", str(db)]):
        line = one_line_error(run(args), str(db))
        # refused by the writer's lock (it opens the DB for writing) or by SQLite's write probe
        assert "attempt to write a readonly database" in line or "not permitted" in line, line
        assert sha(db) == before and sha(ring) == ring_before
    assert run(["query", "ancestors", "v:1", "--db", str(db)]).returncode == 0


def test_daemon_and_recover_on_a_read_only_mount(tmpfs, shm_dir):
    mnt = tmpfs("8m")
    ring, db = _behind_store(mnt, shm_dir)
    assert subprocess.run(["mount", "-o", "remount,ro", str(mnt)]).returncode == 0
    ring_before = sha(ring)
    for args in (["daemon", "--ring", ring, "--db", str(db), "--once"],
                 ["recover", "--ring", ring, "--db", str(db)],
                 ["daemon", "--ring", ring, "--db", str(mnt / "new.db"), "--once"]):
        one_line_error(run(args), str(mnt))
        assert sha(ring) == ring_before
    # reading it still works: a WAL store on read-only media is opened as immutable
    p = run(["query", "ancestors", "v:1", "--db", str(db)])
    assert p.returncode == 0, p.stderr
    assert run(["verify", "--db", str(db)]).returncode == 0


@pytest.mark.parametrize("cmd", ["daemon", "recover"])
def test_disk_full_in_the_daemon(big, tmpfs, shm_dir, cmd):
    from pmem.ring import Consumer

    ring = shm_dir / "big.ring"
    shutil.copy(big[0], ring)
    mnt = tmpfs("256k")
    db = mnt / "full.db"
    args = ["--once", "-q"] if cmd == "daemon" else ["--live"]
    p = run([cmd, "--ring", str(ring), "--db", str(db), *args], timeout=120)
    one_line_error(p, str(db), "cannot write the store", "database or disk is full")
    # nothing was released that is not committed
    with Consumer.open(str(ring), readonly=True) as c:
        checkpoint = c.checkpoint
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    applied = int(conn.execute("SELECT value FROM meta WHERE key='applied_seq'").fetchone()[0])
    conn.close()
    assert checkpoint <= applied < 5000


def test_disk_full_in_export_leaves_no_file(big, tmpfs):
    mnt = tmpfs("64k")
    out = mnt / "graph.json"
    for fmt in ("prov-json", "dot"):
        p = run(["export", "--db", str(big[1]), "--format", fmt, "-o", str(out)], timeout=120)
        one_line_error(p, str(out), "No space left on device")
        assert list(mnt.iterdir()) == []


def test_stdout_on_dev_full(big):
    with open("/dev/full", "w") as full:
        for args, want in ((["export", "--db", str(big[1]), "-o", "-"], "stdout"),
                           (["query", "ancestors", "v:1", "--db", str(big[1])], ""),
                           (["ring", "dump", str(big[0])], "")):
            p = subprocess.run(PROVISOR + args, stdout=full, stderr=subprocess.PIPE, text=True,
                               timeout=120)
            one_line_error(p, want, "No space left on device")


# -- 5. a damaged meta (or live state) is refused, the store untouched ----------------------
DAMAGE = [
    ("DELETE FROM meta WHERE key='schema_version'", "meta schema_version is missing"),
    ("UPDATE meta SET value='abc' WHERE key='schema_version'", "meta schema_version is not an"),
    ("UPDATE meta SET value='abc' WHERE key='applied_seq'", "meta applied_seq is not an integer"),
    ("UPDATE meta SET value='-5' WHERE key='applied_seq'", "meta applied_seq is not an integer"),
    ("UPDATE meta SET value='99999999999999999999' WHERE key='applied_seq'",
     "meta applied_seq is not an integer"),
    ("UPDATE meta SET value=x'0102' WHERE key='chain_head'", "meta chain_head is not text"),
    ("UPDATE meta SET value='zz' WHERE key='chain_head'", "meta chain_head is not 64 hex"),
    ("UPDATE meta SET value=upper(value) WHERE key='chain_head'", "meta chain_head is not 64"),
    ("UPDATE meta SET value='abc' WHERE key='batches'", "meta batches is not an integer"),
    ("UPDATE meta SET value=x'37' WHERE key='batches'", "meta batches is not text"),
    ("DELETE FROM meta WHERE key='ring_uuid'", "meta ring_uuid is missing"),
    ("DROP TABLE meta", "no meta table"),
]


@pytest.mark.parametrize("sql,want", DAMAGE, ids=[d[1] for d in DAMAGE])
def test_damaged_meta_is_one_line_for_every_opener(ring500, store, shm_dir, sql, want):
    c = sqlite3.connect(store)
    c.execute(sql)
    c.commit()
    c.close()
    before, ring_before = sha(store), sha(ring500)
    for args in (["daemon", "--ring", ring500, "--db", store, "--once"],
                 ["recover", "--ring", ring500, "--db", store],
                 ["verify", "--db", store],
                 ["verify", "--db", store, "--ring", ring500],
                 ["status", "--db", store, "--ring", ring500],
                 ["query", "ancestors", "v:1", "--db", store],
                 ["export", "--db", store, "-o", str(shm_dir / "x.json")]):
        one_line_error(run(args), f"{store}: damaged store: {want}")
        assert sha(store) == before and sha(ring500) == ring_before
    assert not (shm_dir / "x.json").exists()


ORPHANS = [
    ("INSERT INTO fds VALUES (9999, 3, 1, 0)", "fds row proc_id=9999 fd=3 belongs to process "
     "9999, which does not exist"),
    ("INSERT INTO proc_used VALUES (9999, 0, 1)", "proc_used row proc_id=9999 pos=0 belongs to"),
    ("UPDATE fds SET artifact_id=99999 WHERE rowid=(SELECT min(rowid) FROM fds)",
     "fds row proc_id=2 fd=3 names artifact 99999, which does not exist"),
    ("UPDATE names SET artifact_id=99999 WHERE id=(SELECT min(id) FROM names WHERE "
     "unbind_seq IS NULL)", "names row id=1 names artifact 99999, which does not exist"),
]


@pytest.mark.parametrize("sql,want", ORPHANS, ids=["fds", "proc_used", "fd-artifact", "name"])
def test_live_state_pointing_nowhere_is_refused_by_the_writers(ring500, store, sql, want):
    c = sqlite3.connect(store)
    assert c.execute(sql).rowcount == 1
    c.commit()
    c.close()
    before = sha(store)
    for args in (["daemon", "--ring", ring500, "--db", store, "--once"],
                 ["recover", "--ring", ring500, "--db", store]):
        one_line_error(run(args), f"{store}: damaged store: ", want)
        assert sha(store) == before


# -- 6. ring sequence numbers stay below 2^63 -------------------------------------------------
def _ring_at(path: Path, checkpoint_seq: int) -> str:
    """A fresh ring whose (valid, CRC-checked) header says ``checkpoint_seq``."""
    import mmap
    from dataclasses import replace

    from pmem import layout as L

    R.create(str(path), 1 << 20)
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        hdr, _ = L.read_header(m)
        m[0:L.HEADER_LEN] = replace(hdr, checkpoint_seq=checkpoint_seq).pack()
        assert L.unpack_header(m[0:L.HEADER_LEN]) is not None
    return str(path)


@pytest.mark.parametrize("seq", [2**64 - 1, 2**63, 2**63 + 1])
def test_a_header_checkpoint_of_2_63_or_more_is_refused_everywhere(shm_dir, store, seq):
    ring = _ring_at(shm_dir / "huge.ring", seq)
    before, db_before = sha(ring), sha(store)
    fresh = str(shm_dir / "fresh.db")
    for args in (["ring", "info", ring], ["ring", "dump", ring],
                 ["synth", "--ring", ring, "--events", "3"],
                 ["daemon", "--ring", ring, "--db", fresh, "--once"],
                 ["recover", "--ring", ring, "--db", fresh],
                 ["verify", "--db", store, "--ring", ring],
                 ["status", "--db", store, "--ring", ring]):
        one_line_error(run(args), ring, f"checkpoint sequence number {seq} out of range")
        assert sha(ring) == before and sha(store) == db_before
    p = subprocess.run(PROVISOR + ["ring", "append", ring], input=b"x\n", capture_output=True)
    assert p.returncode == 2 and b"out of range" in p.stderr and b"Traceback" not in p.stderr
    assert not os.path.exists(fresh)


def test_the_last_sequence_numbers_below_2_63(shm_dir):
    """A ring 10 records short of 2^63: records up to 2^63-1 are appended and stored; an
    append that would reach 2^63 is refused before anything is written."""
    top = 2**63 - 1
    ring = _ring_at(shm_dir / "top.ring", top - 10)
    db = str(shm_dir / "top.db")
    p = run(["synth", "--ring", ring, "--events", "8", "--batch", "1"])
    assert p.returncode == 0, p.stderr
    before = sha(ring)
    p = run(["synth", "--ring", ring, "--events", "4"])
    one_line_error(p, "sequence numbers exhausted")
    assert sha(ring) == before
    p = subprocess.run(PROVISOR + ["ring", "append", ring], input=b"a\nlast\n",
                       capture_output=True)
    assert p.returncode == 0 and p.stdout.split() == [str(top - 1).encode(), str(top).encode()]
    p = subprocess.run(PROVISOR + ["ring", "append", ring], input=b"more\n", capture_output=True)
    assert p.returncode == 2 and b"exhausted" in p.stderr and len(p.stderr.splitlines()) == 1
    for args in (["daemon", "--ring", ring, "--db", db, "--once", "-q"],
                 ["recover", "--ring", ring, "--db", db],
                 ["verify", "--db", db, "--ring", ring],
                 ["ring", "info", ring], ["status", "--db", db, "--ring", ring]):
        p = run(args)
        assert p.returncode == 0 and "error" not in p.stderr, (args, p.stderr)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT value FROM meta WHERE key='applied_seq'").fetchone()[0] == \
        str(top)
    assert conn.execute("SELECT count(*) FROM notes WHERE seq=?", (top,)).fetchone()[0] == 1
    conn.close()
