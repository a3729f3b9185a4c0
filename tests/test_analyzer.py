"""PASS semantics per syscall family, through the real store (SQLite) and apply path."""

from __future__ import annotations

import pytest
from eventscript import Script

from daemon.apply import Applier
from provisor.events import Endpoint, FileId

O_WRONLY, O_CREAT, O_TRUNC, O_CLOEXEC = 0o1, 0o100, 0o1000, 0o2000000
W = O_WRONLY | O_CREAT | O_TRUNC


@pytest.fixture
def store(tmp_path):
    s = Applier(str(tmp_path / "p.db"), "test-ring")
    yield s
    s.close()


def labels(store: Applier) -> set[tuple[str, str, str]]:
    """Relations as (kind, src, dst) with readable node labels: p<tgid>.v<n> / f<name>.v<n>."""
    q = store.conn.execute
    names = {aid: path for aid, path in q(
        "SELECT artifact_id, path FROM names n WHERE id = (SELECT min(id) FROM names "
        "WHERE artifact_id = n.artifact_id)")}
    tgids = dict(q("SELECT id, tgid FROM processes"))
    kinds = {r[0]: r[1:] for r in q("SELECT id, kind, object_id, version FROM versions")}

    def lab(node: int) -> str:
        kind, obj, ver = kinds[node]
        if kind == "process":
            return f"p{tgids[obj]}.v{ver}"
        return f"{kind}:{names.get(obj, obj)}.v{ver}"

    return {(k, lab(s), lab(d)) for k, s, d in q("SELECT kind, src, dst FROM relations")}


def test_cat_redirect_attributes_write_to_target(store):
    """sh forks; the child opens b on fd 1 by dup2 (cat a > b), reads a, writes fd 1."""
    sc = Script()
    sc.fork(1, 10)
    sc.open(10, "b", W, fd=3)
    sc.call(10, "dup2", (3, 1), (), 1)
    sc.call(10, "close", (3,), (), 0)
    sc.call(10, "execve", (0, 0, 0), ["/bin/cat"], 0, argv=["cat", "a"])
    sc.open(10, "a", 0, fd=3)
    sc.call(10, "read", (3, 0, 4096), (), 100)
    sc.call(10, "write", (1, 0, 100), (), 100)
    store.apply(sc.records)
    rel = labels(store)
    assert ("wasInformedBy", "p10.v1", "p1.v1") in rel
    assert ("used", "p10.v2", "file:/bin/cat.v1") in rel
    assert ("used", "p10.v2", "file:/w/a.v1") in rel
    # b is still v1: its O_TRUNC open on a new, empty file starts no version (nothing was
    # generated into it or derived before), and nobody read it, so the write after exec is
    # no "write after use" either: both process versions generated b.v1
    assert {r for r in rel if r[1].startswith("file:/w/b") and r[0] == "wasGeneratedBy"} == {
        ("wasGeneratedBy", "file:/w/b.v1", "p10.v1"), ("wasGeneratedBy", "file:/w/b.v1", "p10.v2")}
    derived = {r for r in rel if r[0] == "wasDerivedFrom" and r[2] == "file:/w/a.v1"}
    assert derived and all(r[1].startswith("file:/w/b") for r in derived)


def test_failed_calls_make_events_not_relations(store):
    sc = Script()
    sc.call(1, "openat", (-100, 0, 0, 0), ["missing"], -2)
    sc.call(1, "read", (7, 0, 10), (), -9)
    store.apply(sc.records)
    assert store.counts()["events"] == 4
    assert store.counts()["relations"] == 0


def test_entry_without_exit_is_outcome_unknown(store):
    sc = Script()
    sc.open(1, "a", 0, fd=3)
    e = sc.entry(1, "read", (3, 0, 10))
    store.apply(sc.records)
    rows = store.conn.execute("SELECT seq, name FROM outcome_unknown").fetchall()
    assert rows == [(e, "read")]
    # the exit arrives later (another batch): no longer unknown, and the relation appears
    sc.exit(e, 1, "read", 10)
    store.apply(sc.records)
    assert store.conn.execute("SELECT count(*) FROM outcome_unknown").fetchone()[0] == 0
    assert ("used", "p1.v1", "file:/w/a.v1") in labels(store)


def test_pipe_between_two_processes(store):
    """cat a | sort > c: the pipe is an artifact between writer and reader."""
    sc = Script()
    sc.call(1, "pipe2", (0, 0), (), 0, out_fds=[3, 4])
    sc.fork(1, 20)
    sc.fork(1, 21)
    sc.call(20, "dup2", (4, 1), (), 1)
    sc.open(20, "a", 0, fd=5)
    sc.call(20, "read", (5, 0, 10), (), 10)
    sc.call(20, "write", (1, 0, 10), (), 10)
    sc.call(21, "dup2", (3, 0), (), 0)
    sc.open(21, "c", W, fd=5)
    sc.call(21, "read", (0, 0, 10), (), 10)
    sc.call(21, "write", (5, 0, 10), (), 10)
    store.apply(sc.records)
    rel = labels(store)
    pipe = [r for r in rel if r[0] == "wasGeneratedBy" and r[1].startswith("pipe")]
    # made by the shell (pipe2), written by p20
    assert sorted(r[2] for r in pipe) == ["p1.v1", "p20.v1"]
    pipe_node = pipe[0][1]
    # (p21 generated c by opening it O_TRUNC first, so its read is by a later version)
    assert any(r[0] == "used" and r[1].startswith("p21.") and r[2] == pipe_node for r in rel)
    assert ("wasDerivedFrom", pipe_node, "file:/w/a.v1") in rel
    assert any(r[0] == "wasDerivedFrom" and r[1].startswith("file:/w/c") and r[2] == pipe_node
               for r in rel)


def test_rename_chain_keeps_identity(store):
    sc = Script()
    sc.open(1, "x", W, fd=3, ino=77)
    sc.call(1, "write", (3, 0, 5), (), 5)
    sc.call(1, "rename", (0, 0), ["x", "y"], 0)
    sc.call(1, "rename", (0, 0), ["y", "z"], 0)
    sc.open(1, "z", 0, fd=4, ino=77)
    store.apply(sc.records)
    q = store.conn.execute
    assert q("SELECT count(*) FROM artifacts WHERE kind='file'").fetchone()[0] == 1
    names = q("SELECT path, unbind_seq IS NULL FROM names ORDER BY id").fetchall()
    assert names == [("/w/x", 0), ("/w/y", 0), ("/w/z", 1)]


def test_exec_replaces_image_and_cloexec(store):
    sc = Script()
    sc.open(1, "keep", 0, fd=3)
    sc.open(1, "drop", O_CLOEXEC, fd=4)
    sc.call(1, "execve", (0, 0, 0), ["/bin/tool"], 0, files=[FileId(8, 500, "/bin/tool"),
                                                              FileId(8, 501, "/lib/ld.so")])
    sc.call(1, "read", (4, 0, 1), (), 1)  # fd 4 closed at exec: unknown fd, no relation
    sc.call(1, "read", (3, 0, 1), (), 1)
    store.apply(sc.records)
    rel = labels(store)
    assert ("wasInformedBy", "p1.v2", "p1.v1") in rel
    assert ("used", "p1.v2", "file:/bin/tool.v1") in rel
    assert ("used", "p1.v2", "file:/lib/ld.so.v1") in rel
    assert ("used", "p1.v2", "file:/w/keep.v1") in rel
    assert not any("drop" in r[2] for r in rel)


def test_read_write_same_file_avoids_cycle(store):
    """A process that writes f, reads it back and writes again: versions, never a cycle."""
    sc = Script()
    sc.open(1, "f", O_CREAT | 2, fd=3)
    sc.call(1, "write", (3, 0, 1), (), 1)
    sc.call(1, "read", (3, 0, 1), (), 1)
    sc.call(1, "write", (3, 0, 1), (), 1)
    sc.fork(1, 2)
    sc.call(2, "read", (3, 0, 1), (), 1)
    sc.call(2, "write", (3, 0, 1), (), 1)
    sc.call(1, "read", (3, 0, 1), (), 1)
    store.apply(sc.records)
    edges = store.conn.execute("SELECT src, dst FROM relations").fetchall()
    graph: dict[int, list[int]] = {}
    for s, d in edges:
        graph.setdefault(s, []).append(d)
    seen: dict[int, int] = {}

    def dfs(n: int) -> None:
        seen[n] = 1
        for m in graph.get(n, []):
            assert seen.get(m) != 1, "cycle in the provenance graph"
            if m not in seen:
                dfs(m)
        seen[n] = 2

    for n in list(graph):
        if n not in seen:
            dfs(n)
    assert store.conn.execute("SELECT max(version) FROM versions WHERE kind='file'"
                              ).fetchone()[0] >= 2


def test_apply_is_idempotent(store):
    sc = Script()
    sc.open(1, "a", 0, fd=3)
    sc.call(1, "read", (3, 0, 1), (), 1)
    store.apply(sc.records)
    before = store.counts()
    store.apply(sc.records)
    assert store.counts() == before
    assert store.applied_seq == sc.seq


def test_threads_share_the_process(store):
    sc = Script()
    sc.call(1, "clone", (0x10000 | 0x100, 0, 0, 0, 0), (), 101)
    sc.open(1, "t", W, fd=3)
    sc.call(1, "write", (3, 0, 1), (), 1, pid=101)
    store.apply(sc.records)
    assert store.conn.execute("SELECT count(*) FROM processes").fetchone()[0] == 1
    # the thread's write is the process's (tgid 1), into the version its O_TRUNC open of a
    # new file made: t.v1 (no new version: nothing was in it), one relation, not two
    assert labels(store) == {("wasGeneratedBy", "file:/w/t.v1", "p1.v1")}
    assert store.counts()["relations"] == 1


def test_reused_pid_is_a_new_process(store):
    sc = Script()
    sc.call(1, "read", (0, 0, 1), (), -9)
    e = sc.entry(1, "read", (0, 0, 1))
    store.apply(sc.records)
    # same tgid, new start time
    from pmem.layout import Record, RecType
    from provisor.events import ENTRY, Event, encode
    ev = Event(0, ENTRY, tgid=1, pid=1, start_time=999, comm="new")
    store.apply([Record(e + 1, RecType.EVENT, 0, encode(ev))])
    assert store.conn.execute("SELECT count(*) FROM processes WHERE tgid=1").fetchone()[0] == 2


def test_db_of_another_ring_is_refused(tmp_path):
    from provisor.errors import ProvisorError
    Applier(str(tmp_path / "d.db"), "ring-a").close()
    with pytest.raises(ProvisorError, match="belongs to ring ring-a"):
        Applier(str(tmp_path / "d.db"), "ring-b")
    Applier(str(tmp_path / "d.db"), "ring-b", force=True).close()


def test_mmap_read_and_shared_write(store):
    sc = Script()
    sc.open(1, "lib.so", 0, fd=3)
    sc.call(1, "mmap", (0, 4096, 1 | 4, 2, 3, 0), (), 0x7000)  # PROT_READ|EXEC, MAP_PRIVATE
    sc.open(1, "shm", 2 | O_CREAT, fd=4)
    sc.call(1, "mmap", (0, 4096, 1 | 2, 1, 4, 0), (), 0x8000)  # PROT_READ|WRITE, MAP_SHARED
    sc.call(1, "mmap", (0, 4096, 3, 0x22, -1 & (2**64 - 1), 0), (), 0x9000)  # anonymous
    store.apply(sc.records)
    rel = labels(store)
    assert ("used", "p1.v1", "file:/w/lib.so.v1") in rel
    assert any(r[0] == "wasGeneratedBy" and r[1].startswith("file:/w/shm") for r in rel)
    # shm is new (O_CREAT): generated by p1.v1, which freezes p1.v1. The shared writable
    # mapping is a read first (PROT_READ: p1.v2 used shm.v1, which freezes it) and then a
    # write, so the write goes to shm.v2, derived from shm.v1 and from lib.so
    assert ("used", "p1.v2", "file:/w/shm.v1") in rel
    assert {r for r in rel if r[1].startswith("file:/w/shm")} == {
        ("wasGeneratedBy", "file:/w/shm.v1", "p1.v1"),
        ("wasGeneratedBy", "file:/w/shm.v2", "p1.v2"),
        ("wasDerivedFrom", "file:/w/shm.v2", "file:/w/shm.v1"),
        ("wasDerivedFrom", "file:/w/shm.v2", "file:/w/lib.so.v1")}


def test_truncate_starts_a_version_derived_from_nothing(store):
    sc = Script()
    sc.open(1, "log", 2 | O_CREAT, fd=3)
    sc.call(1, "write", (3, 0, 9), (), 9)
    sc.fork(1, 2)
    sc.call(2, "read", (3, 0, 9), (), 9)
    sc.call(1, "ftruncate", (3, 0), (), 0)
    store.apply(sc.records)
    rel = labels(store)
    assert ("used", "p2.v1", "file:/w/log.v1") in rel
    assert any(r[0] == "wasGeneratedBy" and r[1] == "file:/w/log.v2" for r in rel)
    assert not any(r[0] == "wasDerivedFrom" and r[1] == "file:/w/log.v2" for r in rel)


def test_link_unlink_and_recreate(store):
    sc = Script()
    sc.open(1, "a", W, fd=3, ino=10)
    sc.call(1, "link", (0, 0), ["a", "hard"], 0)
    sc.call(1, "unlink", (0,), ["a"], 0)
    sc.open(1, "a", W, fd=4, ino=11)  # a new file under the old name
    store.apply(sc.records)
    q = store.conn.execute
    assert q("SELECT count(*) FROM artifacts WHERE kind='file'").fetchone()[0] == 2
    live = dict(q("SELECT path, artifact_id FROM names WHERE unbind_seq IS NULL"))
    assert live["/w/hard"] != live["/w/a"]


def test_fcntl_dupfd_and_sendfile(store):
    sc = Script()
    sc.open(1, "src", 0, fd=3)
    sc.open(1, "dst", W, fd=4)
    sc.call(1, "fcntl", (4, 0, 10), (), 10)  # F_DUPFD -> 10
    sc.call(1, "close", (4,), (), 0)
    sc.call(1, "sendfile", (10, 3, 0, 100), (), 100)
    store.apply(sc.records)
    rel = labels(store)
    assert any(r[0] == "used" and r[2] == "file:/w/src.v1" for r in rel)
    assert any(r[0] == "wasDerivedFrom" and r[1].startswith("file:/w/dst")
               and r[2] == "file:/w/src.v1" for r in rel)


def test_state_survives_a_restart(tmp_path):
    """fd tables, pending entries and current versions come back from the DB: a stream applied
    in two stores (the first closed mid-stream) equals one applied in a single store."""
    sc = Script()
    sc.open(1, "a", 0, fd=3)
    sc.fork(1, 5)
    e = sc.entry(5, "read", (3, 0, 4))
    half = len(sc.records)
    sc.exit(e, 5, "read", 4)
    sc.open(5, "b", W, fd=4)
    sc.call(5, "write", (4, 0, 4), (), 4)
    one = Applier(str(tmp_path / "one.db"), "r")
    one.apply(sc.records)
    two = Applier(str(tmp_path / "two.db"), "r")
    two.apply(sc.records[:half])
    two.close()
    two = Applier(str(tmp_path / "two.db"), "r")
    two.apply(sc.records[half:])
    for t in ("events", "relations", "versions", "processes", "artifacts", "fds", "names",
              "pending", "proc_used"):
        a = one.conn.execute(f"SELECT * FROM {t}").fetchall()
        b = two.conn.execute(f"SELECT * FROM {t}").fetchall()
        assert sorted(a, key=repr) == sorted(b, key=repr), t
    # the read whose exit came after the restart still counts: p5 used a.v1, and b (new, so
    # its O_TRUNC open starts no version) is v1, derived from a.v1
    assert labels(two) == {("wasInformedBy", "p5.v1", "p1.v1"), ("used", "p5.v1", "file:/w/a.v1"),
                           ("wasGeneratedBy", "file:/w/b.v1", "p5.v1"),
                           ("wasDerivedFrom", "file:/w/b.v1", "file:/w/a.v1")}


def test_exec_through_proc_self_exe_names_the_binary(store):
    sc = Script()
    sc.call(1, "execve", (0, 0, 0), ["/proc/self/exe"], 0, files=[FileId(8, 600, "/bin/busybox")])
    store.apply(sc.records)
    assert store.conn.execute("SELECT exe FROM processes").fetchone()[0] == "/bin/busybox"
    assert ("used", "p1.v2", "file:/bin/busybox.v1") in labels(store)


# -- issue 14: every syscall group's pattern ------------------------------------------------
AT_FDCWD, O_DIRECTORY = -100, 0o200000


def attrs(store: Applier, key: str | None = None) -> list[tuple[str, str, str]]:
    """attrs rows as (node label, key, value)."""
    q = store.conn.execute
    tgids = dict(q("SELECT id, tgid FROM processes"))
    rows = q("SELECT a.node, a.key, a.value, v.kind, v.object_id, v.version FROM attrs a "
             "JOIN versions v ON v.id = a.node ORDER BY a.rowid").fetchall()
    out = []
    for _node, k, val, kind, obj, ver in rows:
        lab = f"p{tgids[obj]}.v{ver}" if kind == "process" else f"{kind}:{obj}.v{ver}"
        if key is None or k == key:
            out.append((lab, k, val))
    return out


def bound(store: Applier) -> dict[str, int]:
    return dict(store.conn.execute(
        "SELECT path, artifact_id FROM names WHERE unbind_seq IS NULL"))


def test_linkat_with_a_directory_fd_names_the_file_not_the_directory(store):
    """The issue's bug: linkat(d, "test.txt", d, "linkat-test.txt") with d an O_DIRECTORY fd
    of the stage: the entry's files are the dirfd's, never the path's identity."""
    sc = Script()
    stage = FileId(8, 50, "/w/stage")
    sc.open(1, "/w/stage", O_DIRECTORY, fd=5, ino=50)
    sc.open(1, "/w/stage/test.txt", W, fd=6, ino=60)
    sc.call(1, "linkat", (5, 0, 5, 0, 0), ["test.txt", "linkat-test.txt"], 0,
            entry_files=[stage, stage])
    sc.call(1, "unlinkat", (5, 0, 0), ["linkat-test.txt"], 0, entry_files=[stage])
    sc.call(1, "renameat", (5, 0, 5, 0), ["test.txt", "renamed.txt"], 0,
            entry_files=[stage, stage])
    sc.call(1, "fchmodat", (5, 0, 0o600), ["renamed.txt"], 0, entry_files=[stage])
    store.apply(sc.records)
    names = bound(store)
    f = names["/w/stage/renamed.txt"]
    assert names["/w/stage"] != f and "/w/stage/test.txt" not in names
    assert "/w/stage/test.txt/linkat-test.txt" not in names
    assert "/w/stage/linkat-test.txt" not in names  # linked, then unlinked
    assert store.conn.execute("SELECT count(*) FROM names WHERE artifact_id=? AND path="
                              "'/w/stage/linkat-test.txt'", (f,)).fetchone()[0] == 1
    reasons = [r for (r,) in store.conn.execute(
        "SELECT reason FROM versions WHERE object_id=? AND kind='file' ORDER BY version", (f,))]
    assert reasons == ["created", "linked", "renamed", "chmod"]
    assert (f"file:{f}.v2", "unlinked", "/w/stage/linkat-test.txt") in attrs(store)
    assert (f"file:{f}.v4", "mode", "0600") in attrs(store)
    # the directory keeps its one version: nothing was done to it
    d = names["/w/stage"]
    assert store.conn.execute("SELECT max(version) FROM versions WHERE object_id=? AND "
                              "kind='file'", (d,)).fetchone()[0] == 1


def test_rename_is_a_new_version_derived_from_the_old_by_the_renamer(store):
    sc = Script()
    sc.open(1, "copy.txt", W, fd=3, ino=10)
    sc.open(1, "victim.txt", W, fd=4, ino=11)
    sc.fork(1, 2)
    sc.call(2, "rename", (0, 0), ["copy.txt", "victim.txt"], 0)
    store.apply(sc.records)
    rel = labels(store)
    assert ("wasDerivedFrom", "file:/w/copy.txt.v2", "file:/w/copy.txt.v1") in rel
    assert ("wasGeneratedBy", "file:/w/copy.txt.v2", "p2.v1") in rel
    assert bound(store)["/w/victim.txt"] == bound(store).get("/w/victim.txt")
    names = bound(store)
    assert "/w/copy.txt" not in names and store.conn.execute(
        "SELECT artifact_id FROM names WHERE path='/w/victim.txt' AND unbind_seq IS NULL"
    ).fetchone()[0] != 2
    # the file it replaced lost its last name: invalidated by the renamer, no new version
    victim = [a for a in attrs(store) if a[0].startswith("file:2.")]
    assert [a[1:] for a in victim][-2:] == [("unlinked", "/w/victim.txt"),
                                           ("invalidated_by", victim[-1][2])]
    p2 = store.conn.execute("SELECT node FROM processes WHERE tgid=2").fetchone()[0]
    assert victim[-1][2] == str(p2)


def test_unlink_of_one_of_two_links_does_not_invalidate(store):
    sc = Script()
    sc.open(1, "a", W, fd=3, ino=10)
    sc.call(1, "link", (0, 0), ["a", "b"], 0)
    sc.call(1, "unlink", (0,), ["a"], 0)
    store.apply(sc.records)
    assert [a[1] for a in attrs(store) if a[0].startswith("file:")] == ["mode", "unlinked"]
    sc2 = Script()
    sc2.seq = sc.seq
    sc2.call(1, "unlink", (0,), ["b"], 0)
    store.apply(sc2.records)
    assert [a[1] for a in attrs(store) if a[0].startswith("file:")] == [
        "mode", "unlinked", "unlinked", "invalidated_by"]


def test_chown_records_the_owner_and_leaves_minus_one_out(store):
    sc = Script()
    sc.open(1, "f", W, fd=3, ino=10)
    sc.call(1, "fchown", (3, 1000, -1), (), 0, entry_files=[FileId(8, 10, "/w/f")])
    sc.call(1, "lchown", (0, -1, 50), ["f"], 0)
    store.apply(sc.records)
    assert [a[1:] for a in attrs(store) if a[0].startswith("file:")] == [
        ("mode", "0644"), ("owner_uid", "1000"), ("owner_gid", "50")]
    assert ("wasGeneratedBy", "file:/w/f.v3", "p1.v1") in labels(store)


def test_mknod_fifo_carries_data_between_two_processes(store):
    sc = Script()
    sc.call(1, "mknodat", (AT_FDCWD, 0, 0o010644, 0), ["fifo"], 0)
    sc.fork(1, 2)
    sc.fork(1, 3)
    sc.open(2, "fifo", O_WRONLY, fd=3, ino=77)
    sc.call(2, "write", (3, 0, 5), (), 5, entry_files=[FileId(8, 77, "/w/fifo")])
    sc.open(3, "fifo", 0, fd=3, ino=77)
    sc.call(3, "read", (3, 0, 5), (), 5, entry_files=[FileId(8, 77, "/w/fifo")])
    store.apply(sc.records)
    rel = labels(store)
    assert ("wasGeneratedBy", "fifo:/w/fifo.v1", "p1.v1") in rel  # mknod made it
    assert ("wasGeneratedBy", "fifo:/w/fifo.v1", "p2.v1") in rel
    assert ("used", "p3.v1", "fifo:/w/fifo.v1") in rel
    assert ("fifo:1.v1", "file_type", "fifo") in attrs(store)


def test_credentials_change_is_a_new_process_version(store):
    sc = Script()
    sc.call(1, "setresuid", (1000, 1000, -1), (), 0)
    sc.call(1, "setgid", (-1,), (), -1)  # failed: nothing
    store.apply(sc.records)
    assert ("wasInformedBy", "p1.v2", "p1.v1") in labels(store)
    assert ("p1.v2", "cred_call", "setresuid(1000, 1000, -1)") in attrs(store)
    assert store.conn.execute("SELECT reason FROM versions WHERE kind='process' AND version=2"
                              ).fetchone()[0] == "credentials"
    assert len([a for a in attrs(store) if a[1] == "cred_call"]) == 1


def test_kill_informs_the_receiver_and_probes_or_groups_do_not(store):
    sc = Script()
    sc.fork(1, 2)
    sc.call(1, "kill", (2, 15), (), 0)
    sc.call(1, "kill", (2, 0), (), 0)  # a probe
    sc.call(1, "kill", (0, 15), (), 0)  # the process group: receivers unknown
    sc.call(1, "tgkill", (2, 2, 10), (), 0)
    sc.call(1, "kill", (99, 9), (), -3)  # ESRCH
    store.apply(sc.records)
    rel = labels(store)
    assert ("wasInformedBy", "p2.v2", "p1.v1") in rel
    assert ("wasInformedBy", "p2.v2", "p2.v1") in rel
    assert ("wasInformedBy", "p2.v3", "p1.v1") in rel  # tgkill
    assert [a for a in attrs(store, "signal")] == [("p2.v2", "signal", "15"),
                                                   ("p2.v3", "signal", "10")]
    assert [a[2] for a in attrs(store, "signal_sent")] == [
        "kill(2, 15)", "kill(2, 0)", "kill(0, 15)", "tgkill(2, 10)"]
    assert not any("p99" in r[1] or "p99" in r[2] for r in rel)


def _socketpair(sc: Script) -> None:
    a, b = FileId(9, 501, "socket:[501]"), FileId(9, 502, "socket:[502]")
    sc.call(1, "socketpair", (1, 1, 0, 0x1000), (), 0, files=[a, b], out_fds=[3, 4])
    return a, b


def test_socketpair_flow_from_writer_to_reader(store):
    sc = Script()
    a, b = _socketpair(sc)
    sc.fork(1, 2)
    sc.open(1, "src", 0, fd=5, ino=10)
    sc.call(1, "read", (5, 0, 5), (), 5)
    sc.call(1, "write", (3, 0, 5), (), 5, entry_files=[a])
    sc.call(2, "recvfrom", (4, 0, 5, 0, 0, 0), (), 5, entry_files=[b])
    sc.open(2, "dst", W, fd=6, ino=11)
    sc.call(2, "write", (6, 0, 5), (), 5)
    store.apply(sc.records)
    rel = labels(store)
    assert ("wasDerivedFrom", "socket:2.v1", "socket:1.v1") in rel
    assert any(r[0] == "wasDerivedFrom" and r[1].startswith("socket:1.") and r[2] ==
               "file:/w/src.v1" for r in rel)
    assert ("used", "p2.v1", "socket:2.v1") in rel
    # dst derives from the socket p2 read, which derives from what p1 wrote into its peer
    assert any(r[0] == "wasDerivedFrom" and r[1].startswith("file:/w/dst") and r[2] ==
               "socket:2.v1" for r in rel)


def test_socket_pairing_survives_a_daemon_restart(tmp_path):
    from examiner import verify as V
    path = str(tmp_path / "p.db")
    sc = Script()
    a, b = _socketpair(sc)
    sc.fork(1, 2)
    s = Applier(path, "test-ring")
    s.apply(sc.records)
    s.close()
    n = len(sc.records)
    sc.call(1, "write", (3, 0, 5), (), 5, entry_files=[a])
    sc.call(2, "read", (4, 0, 5), (), 5, entry_files=[b])
    s = Applier(path, "test-ring")
    s.apply(sc.records[n:])
    assert ("wasDerivedFrom", "socket:2.v1", "socket:1.v1") in labels(s)
    s.close()
    conn = V.sqlite3.connect(path)
    assert V.verify(conn, path).ok
    conn.close()


def test_failed_calls_make_no_relation_version_or_attribute(store):
    sc = Script()
    sc.open(1, "f", W, fd=3, ino=10)
    store.apply(sc.records)
    before = (labels(store), attrs(store),
              store.conn.execute("SELECT count(*) FROM versions").fetchone()[0])
    sc2 = Script()
    sc2.seq = sc.seq
    for name, args, paths in (("rename", (0, 0), ["f", "g"]), ("unlink", (0,), ["f"]),
                              ("chmod", (0, 0o777), ["f"]), ("link", (0, 0), ["f", "h"]),
                              ("fchown", (3, 0, 0), ()), ("setuid", (0,), ()),
                              ("kill", (1, 9), ()), ("mknod", (0, 0o10600, 0), ["x"]),
                              ("close", (9,), ()), ("dup", (9,), ()),
                              ("socketpair", (1, 1, 0, 0), ()), ("write", (3, 0, 1), ())):
        sc2.call(1, name, args, paths, -13)
    store.apply(sc2.records)
    assert (labels(store), attrs(store),
            store.conn.execute("SELECT count(*) FROM versions").fetchone()[0]) == before


def test_fd_events_exit_status_and_argv_are_on_the_process(store):
    sc = Script()
    sc.open(1, "f", 0, fd=3, ino=10)
    sc.call(1, "dup2", (3, 7), (), 7)
    sc.call(1, "close", (3,), (), 0)
    sc.call(1, "execve", (0, 0, 0), ["/bin/tool"], 0, files=[FileId(8, 500, "/bin/tool")],
            argv=["tool", "-x", "caf\\xe9"])
    sc.entry(1, "exit_group", (3,))
    store.apply(sc.records)
    a = attrs(store)
    assert [x[2] for x in a if x[1] == "fd_event"] == [
        "openat fd=3 /w/f", "dup2 fd=3 -> fd=7", "close fd=3 /w/f"]
    assert ("p1.v2", "argv", '["tool", "-x", "caf\\\\xe9"]') in a
    assert ("p1.v2", "exe", "/bin/tool") in a
    assert ("p1.v2", "exit_status", "3") in a


def test_open_through_a_symlink_uses_the_link_and_binds_the_target(store):
    sc = Script()
    sc.open(1, "target", W, fd=3, ino=10)
    sc.call(1, "symlink", (0, 0), ["target", "sym"], 0)
    sc.call(1, "openat", (AT_FDCWD, 0, 0, 0), ["sym"], 4,  # the kernel's path: the target's
            files=[FileId(8, 10, "/w/target")])
    store.apply(sc.records)
    names = bound(store)
    assert names["/w/sym"] != names["/w/target"]
    rel = labels(store)
    assert ("wasGeneratedBy", "symlink:/w/sym.v1", "p1.v1") in rel
    assert any(r[0] == "used" and r[2] == "symlink:/w/sym.v1" for r in rel)
    assert ("symlink:2.v1", "link_target", "target") in attrs(store)


def test_vfork_child_that_exits_before_the_parent_resumes_is_one_process(store):
    """vfork: the child runs (and here exits) before the parent's call returns."""
    sc = Script()
    e = sc.entry(1, "vfork")
    sc.ppid[2] = 1
    sc.call(2, "execve", (0, 0, 0), ["/bin/true"], 0, files=[FileId(8, 5, "/bin/true")])
    sc.entry(2, "exit_group", (0,))
    sc.exit(e, 1, "vfork", 2)
    sc.fork(1, 2)  # the pid reused by a later fork: a new process
    store.apply(sc.records)
    assert store.conn.execute("SELECT count(*) FROM processes WHERE tgid=2").fetchone()[0] == 2
    first = store.conn.execute("SELECT reason FROM versions WHERE kind='process' AND object_id="
                               "(SELECT min(id) FROM processes WHERE tgid=2) AND version=1"
                               ).fetchone()[0]
    assert first == "first seen"


def test_credentials_read_at_exit_are_the_new_versions_and_no_change_makes_none(store):
    sc = Script()
    sc.cred[1] = (0,) * 8
    sc.call(1, "setuid", (0,), (), 0)  # root to root: the creds the producer read are equal
    e = sc.entry(1, "setresuid", (1000, 1000, 1000))
    sc.cred[1] = (1000, 0, 1000, 0, 1000, 0, 1000, 0)
    sc.exit(e, 1, "setresuid", 0)
    store.apply(sc.records)
    a = attrs(store)
    assert [x for x in a if x[0] == "p1.v1" and x[1] in ("uid", "euid")] == [
        ("p1.v1", "uid", "0"), ("p1.v1", "euid", "0")]
    assert [x for x in a if x[0] == "p1.v2" and x[1] in ("uid", "gid", "euid")] == [
        ("p1.v2", "uid", "1000"), ("p1.v2", "gid", "0"), ("p1.v2", "euid", "1000")]
    assert [x[2] for x in a if x[1] == "cred_call"] == ["setresuid(1000, 1000, 1000)"]
    assert store.conn.execute("SELECT max(version) FROM processes").fetchone()[0] == 2


@pytest.mark.parametrize("restart", [False, True])
def test_a_read_sees_a_write_still_in_its_call(tmp_path, restart):
    """One vCPU: the writer's write wakes the blocked reader, which returns with the data
    before the writer's exit is recorded. The generation is made at the read, from the
    write's entry, once (a daemon restart in between changes nothing)."""
    from examiner import verify as V
    path = str(tmp_path / "p.db")
    sc = Script()
    sc.call(1, "pipe2", (0, 0), (), 0, out_fds=[3, 4])
    sc.fork(1, 2)
    sc.open(1, "src", 0, fd=5, ino=10)
    sc.call(1, "read", (5, 0, 5), (), 5)
    w = sc.entry(1, "write", (4, 0, 5))
    sc.call(2, "read", (3, 0, 5), (), 5)
    sc.open(2, "dst", W, fd=6, ino=11)
    sc.call(2, "write", (6, 0, 5), (), 5)
    cut = len(sc.records)
    sc.exit(w, 1, "write", 5)
    s = Applier(path, "test-ring")
    if restart:
        s.apply(sc.records[:cut])
        s.close()
        s = Applier(path, "test-ring")
    s.apply(sc.records)
    rel = labels(s)
    gens = s.conn.execute("SELECT count(*), min(entry_seq) FROM relations r JOIN versions v ON "
                          "v.id = r.src WHERE r.kind='wasGeneratedBy' AND v.kind='pipe' AND "
                          "r.dst IN (SELECT id FROM versions WHERE kind='process' AND "
                          "object_id=1 AND version > 1)").fetchone()
    assert gens == (1, w)
    assert any(r[0] == "wasDerivedFrom" and r[1].startswith("file:/w/dst") and
               r[2].startswith("pipe:") for r in rel)
    assert ("wasDerivedFrom", "pipe:1.v1", "file:/w/src.v1") in rel
    assert max(v for (v,) in s.conn.execute("SELECT version FROM versions WHERE kind='pipe'")) == 1
    s.close()
    conn = V.sqlite3.connect(path)
    assert V.verify(conn, path).ok
    conn.close()


def _udp(sc: Script, tgid: int, ino: int) -> FileId:
    """socket(AF_INET, SOCK_DGRAM) as fd 3 of ``tgid``."""
    s = FileId(9, ino, f"socket:[{ino}]")
    sc.call(tgid, "socket", (2, 2, 0), (), 3, files=[s])
    return s


def _ep(local: str = "", sk: int = 0) -> list[Endpoint]:
    return [Endpoint(0, 2, 2, local, "", sk, 0)]


@pytest.mark.parametrize("order", ["sent-first", "receiver-waits", "restart", "wildcard"])
def test_unconnected_udp_flow_from_sender_to_bound_server(tmp_path, order):
    """A sendto on an unconnected UDP socket names its destination only in its address
    argument (Event.addr): the sender pairs with the endpoint bound there unconnected, whether
    the server's endpoint is seen before the datagram (blocked in recvfrom) or after it, and
    across a daemon restart; a server bound to 0.0.0.0 receives a datagram sent to loopback.
    What the server then receives derives from what the sender wrote."""
    from examiner import verify as V
    path = str(tmp_path / "p.db")
    sc = Script()
    srv = _udp(sc, 1, 601)
    bind_to = "0.0.0.0:5002" if order == "wildcard" else "127.0.0.1:5002"
    sc.call(1, "bind", (3, 0x1000, 16), (), 0, entry_files=[srv], endpoints=_ep(sk=0xA1),
            addr=bind_to, addr_family=2)
    sc.fork(1, 2)
    sc.open(2, "src", 0, fd=5, ino=10)
    sc.call(2, "read", (5, 0, 4), (), 4)
    cli = _udp(sc, 2, 602)
    recv = None
    if order == "receiver-waits":
        recv = sc.entry(1, "recvfrom", (3, 0, 4, 0, 0, 0), files=[srv],
                        endpoints=_ep(bind_to, 0xA1))
    sc.call(2, "sendto", (3, 0, 4, 0, 0x2000, 16), (), 4, entry_files=[cli],
            endpoints=_ep(sk=0xA2),
            addr="127.0.0.1:5002", addr_family=2)
    s = Applier(path, "test-ring")
    n = len(sc.records)
    if order == "restart":
        s.apply(sc.records)
        s.close()
        s = Applier(path, "test-ring")
    if recv is None:
        sc.call(1, "recvfrom", (3, 0, 4, 0, 0, 0), (), 4, entry_files=[srv],
                endpoints=_ep(bind_to, 0xA1))
    else:
        sc.exit(recv, 1, "recvfrom", 4)
    sc.open(1, "dst", W, fd=6, ino=11)
    sc.call(1, "write", (6, 0, 4), (), 4)
    s.apply(sc.records[n:] if order == "restart" else sc.records)
    rel = labels(s)
    # the server's socket is artifact 1, the file src 2, the sender's socket 3
    assert ("wasDerivedFrom", "socket:1.v1", "socket:3.v1") in rel, rel
    assert any(r[0] == "used" and r[2] == "socket:1.v1" for r in rel)
    assert ("wasDerivedFrom", "socket:3.v1", "file:/w/src.v1") in rel
    assert any(r[0] == "wasDerivedFrom" and r[1].startswith("file:/w/dst") and r[2] ==
               "socket:1.v1" for r in rel)
    assert [v for _, k, v in attrs(s, "sent_to")] == ["2:2:127.0.0.1:5002"]
    s.close()
    conn = V.sqlite3.connect(path)
    assert V.verify(conn, path).ok
    conn.close()


def test_udp_datagram_to_another_address_pairs_nothing(store):
    """A datagram to an address no endpoint here is bound at (or a connected sender) makes
    no pairing: the server's later read derives from nothing the sender wrote."""
    sc = Script()
    srv = _udp(sc, 1, 601)
    sc.call(1, "bind", (3, 0x1000, 16), (), 0, entry_files=[srv], endpoints=_ep(sk=0xA1),
            addr="127.0.0.1:5002", addr_family=2)
    sc.fork(1, 2)
    cli = _udp(sc, 2, 602)
    sc.call(2, "sendto", (3, 0, 4, 0, 0x2000, 16), (), 4, entry_files=[cli],
            endpoints=_ep(sk=0xA2),
            addr="10.0.0.1:5002", addr_family=2)
    sc.call(1, "recvfrom", (3, 0, 4, 0, 0, 0), (), 4, entry_files=[srv],
            endpoints=_ep("127.0.0.1:5002", 0xA1))
    store.apply(sc.records)
    assert not attrs(store, "peer")
    assert not any(r[0] == "wasDerivedFrom" and r[1].startswith("socket:1.")
                   for r in labels(store))


def test_path_unreadable_at_entry_is_taken_from_the_exit(store):
    """A fork child's first call names a path in a page it has not faulted in: the entry has
    paths [''] and F_PATH_UNREADABLE, the exit the path read again (docs/FORMAT.md, "Paths at
    an EXIT"); the analyzer acts on the exit's."""
    from provisor.events import F_PATH_UNREADABLE
    sc = Script()
    sc.open(1, "gone", W, fd=3, ino=10)
    sc.fork(1, 2)
    e = sc.entry(2, "unlinkat", (-100, 0x1000, 0), [""], flags=F_PATH_UNREADABLE)
    sc.exit(e, 2, "unlinkat", 0, paths=["gone"])
    e = sc.entry(2, "openat", (-100, 0x1000, W, 0o644), [""], flags=F_PATH_UNREADABLE)
    sc.exit(e, 2, "openat", 4, paths=["new"])
    store.apply(sc.records)
    live = bound(store)
    assert "/w/gone" not in live and "/w/new" in live and "/w" not in live
