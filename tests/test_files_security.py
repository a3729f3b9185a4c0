"""Who may read what provisor writes, and who may plant what it opens (docs/DECISIONS.md, "Files
provisor creates"): everything is 0600 (or 0640 with ``[files] group``), created with
O_EXCL|O_NOFOLLOW; a symlink, another user's file or a non-regular file is refused in one line
and left as it was; ring space is reserved for real or not at all; arguments are checked before
a file is touched. "Another user" is nobody (uid 65534): the tests run as root, like CI."""

from __future__ import annotations

import ctypes
import errno
import grp
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from crashutil import run

from pmem import layout as L
from pmem import region as regmod
from pmem import ring
from pmem.region import Region, RegionError
from provisor import files

NOBODY = 65534
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root to chown a file to another user")
SIZE = "1M"


def mode(p) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def digest(p) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def one_line(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("provisor: error: ") and r.stderr.count("\n") == 1, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def planted(p: Path, data: bytes = b"planted by nobody\n") -> str:
    """A file another user made in a shared directory, open to all as they would leave it."""
    p.write_bytes(data)
    os.chown(p, NOBODY, NOBODY)
    os.chmod(p, 0o666)
    return digest(p)


@pytest.fixture
def d(tmp_path) -> Path:
    """A world-writable sticky directory, like /dev/shm (the default ring and store)."""
    tmp_path.chmod(0o1777)
    return tmp_path


@pytest.fixture
def store(d) -> tuple[Path, Path]:
    """A ring with events, drained into a store by the real CLI."""
    r, db = d / "p.ring", d / "p.db"
    assert run(["ring", "create", str(r), "--size", SIZE]).returncode == 0
    assert run(["synth", "--ring", str(r), "--events", "300"]).returncode == 0
    x = run(["daemon", "--ring", str(r), "--db", str(db), "--once", "-q"])
    assert x.returncode == 0, x.stderr
    return r, db


# -- modes -----------------------------------------------------------------------------------
def _daemon_running(r: Path, db: Path, env: dict | None = None) -> dict[str, int]:
    """Start the daemon (not --once), wait for its -wal and -shm, return their modes."""
    from crashutil import PROVISOR

    e = dict(os.environ, **(env or {}))
    p = subprocess.Popen(PROVISOR + ["daemon", "--ring", str(r), "--db", str(db), "-q"],
                         env=e, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        side = [Path(f"{db}-wal"), Path(f"{db}-shm")]
        while not all(s.exists() for s in side):
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read()
            time.sleep(0.05)
        return {s.name: (mode(s), os.lstat(s).st_gid) for s in side}
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0


def test_everything_the_cli_creates_is_0600(d, store):
    r, db = store
    assert mode(r) == 0o600 and mode(db) == 0o600
    assert all(m == 0o600 for m, _ in _daemon_running(r, db).values())
    assert run(["verify", "--db", str(db)]).returncode == 0
    assert mode(f"{db}.verified") == 0o600
    out = d / "g.json"
    assert run(["export", "--db", str(db), "-o", str(out)]).returncode == 0
    assert mode(out) == 0o600
    rep = d / "case.json"
    x = run(["recover", "--ring", str(r), "--db", str(d / "case.db"), "--read-only",
             "--report", str(rep)])
    assert x.returncode == 0, x.stderr
    assert mode(rep) == 0o600 and mode(d / "case.db") == 0o600


def _other_group() -> grp.struct_group:
    for g in grp.getgrall():
        if g.gr_gid != os.getegid():
            return g
    pytest.skip("no group other than our own")


@needs_root
def test_group_policy_makes_new_files_0640_with_that_group(d):
    g = _other_group()
    conf = d / "conf.toml"
    conf.write_text(f'[files]\ngroup = "{g.gr_name}"\n')
    env = {"PROVISOR_CONFIG": str(conf)}
    r, db, out = d / "g.ring", d / "g.db", d / "g.provn"
    assert run(["ring", "create", str(r), "--size", SIZE], env=env).returncode == 0
    assert run(["synth", "--ring", str(r), "--events", "100"], env=env).returncode == 0
    assert run(["daemon", "--ring", str(r), "--db", str(db), "--once", "-q"],
               env=env).returncode == 0
    assert set(_daemon_running(r, db, env).values()) == {(0o640, g.gr_gid)}
    assert run(["export", "--db", str(db), "--format", "prov-n", "-o", str(out)],
               env=env).returncode == 0
    for p in (r, db, out):
        assert (mode(p), os.lstat(p).st_gid) == (0o640, g.gr_gid), p
    bad = d / "bad.toml"
    bad.write_text('[files]\ngroup = "no-such-group-here"\n')
    one_line(run(["ring", "info", str(r)], env={"PROVISOR_CONFIG": str(bad)}),
             "no such group")


def test_library_users_get_private_files_without_the_cli(d):
    """No umask from the CLI here: the creators set the mode themselves."""
    from daemon.apply import Applier

    old = os.umask(0o022)
    try:
        ring.create(str(d / "lib.ring"), 1 << 20)
        s = Applier(str(d / "lib.db"))
        try:
            for p in ("lib.ring", "lib.db", "lib.db-wal", "lib.db-shm"):
                assert mode(d / p) == 0o600, p
        finally:
            s.close()
        with files.output(str(d / "o.txt")) as f:
            f.write("x")
        assert mode(d / "o.txt") == 0o600
    finally:
        os.umask(old)


# -- planted files ---------------------------------------------------------------------------
@needs_root
def test_planted_ring_is_refused_and_left_unchanged(d):
    p = d / "p.ring"
    h = planted(p)
    one_line(run(["ring", "create", str(p), "--size", SIZE]), str(p), "owned by uid 65534")
    assert digest(p) == h and os.lstat(p).st_uid == NOBODY and mode(p) == 0o666
    # a valid ring image another user made: no producer or daemon writes into it
    os.unlink(p)
    ring.create(str(p), 1 << 20)
    os.chown(p, NOBODY, NOBODY)
    os.chmod(p, 0o666)
    h = digest(p)
    x = run(["ring", "append", str(p)], input="x\n")
    one_line(x, "owned by uid 65534")
    one_line(run(["daemon", "--ring", str(p), "--db", str(d / "x.db"), "--once"]),
             "owned by uid 65534")
    assert digest(p) == h and not (d / "x.db").exists()


@needs_root
def test_planted_store_and_side_files_are_refused(d, store):
    r, _ = store
    db = d / "planted.db"
    h = planted(db, b"")  # empty, as SQLite would happily make a DB in it
    one_line(run(["daemon", "--ring", str(r), "--db", str(db), "--once"]), str(db),
             "owned by uid 65534")
    assert digest(db) == h and mode(db) == 0o666 and not Path(f"{db}-wal").exists()
    one_line(run(["status", "--db", str(db)]), "owned by uid 65534")
    # our own store, with a -wal or -journal another user put beside it (SQLite would replay
    # it into the DB)
    ours = d / "p.db"
    for side in ("-wal", "-journal"):
        s = Path(f"{ours}{side}")
        hs = planted(s)
        one_line(run(["daemon", "--ring", str(r), "--db", str(ours), "--once"]),
                 f"{s}: owned by uid 65534")
        one_line(run(["query", "ancestors", "/x", "--db", str(ours)]), str(s))
        assert digest(s) == hs
        s.unlink()


def test_store_through_a_symlink_is_refused(d, store):
    r, db = store
    link = d / "link.db"
    link.symlink_to(db)
    h = digest(db)
    one_line(run(["daemon", "--ring", str(r), "--db", str(link), "--once"]), "symbolic link")
    one_line(run(["verify", "--db", str(link)]), "symbolic link")
    assert digest(db) == h and link.is_symlink()
    dangling = d / "dangling.db"
    dangling.symlink_to(d / "victim.db")
    one_line(run(["daemon", "--ring", str(r), "--db", str(dangling), "--once"]))
    assert not (d / "victim.db").exists()


def test_ring_create_through_a_symlink_is_refused_target_untouched(d):
    victim = d / "victim"
    victim.write_bytes(b"precious" * 1000)
    h = digest(victim)
    link = d / "p.ring"
    link.symlink_to(victim)
    one_line(run(["ring", "create", str(link), "--size", SIZE]), "symbolic link")
    assert digest(victim) == h and link.is_symlink()
    dangling = d / "d.ring"
    dangling.symlink_to(d / "made-through-link")
    one_line(run(["ring", "create", str(dangling), "--size", SIZE]))
    assert not (d / "made-through-link").exists()
    # opening an existing ring through a symlink: refused too, naming the target
    real = d / "real.ring"
    ring.create(str(real), 1 << 20)
    lr = d / "lr.ring"
    lr.symlink_to(real)
    one_line(run(["ring", "append", str(lr)], input="x\n"), "symbolic link")
    one_line(run(["ring", "info", str(lr)]), f"symbolic link to {real}")


@needs_root
def test_forensic_read_only_accepts_another_users_image_never_a_symlink(d, store):
    r, _ = store
    ev = d / "evidence.img"
    shutil.copyfile(r, ev)
    os.chown(ev, NOBODY, NOBODY)
    os.chmod(ev, 0o644)
    h = digest(ev)
    assert run(["ring", "info", str(ev)]).returncode == 0
    x = run(["recover", "--ring", str(ev), "--db", str(d / "case.db"), "--read-only"])
    assert x.returncode == 0, x.stderr
    assert digest(ev) == h
    one_line(run(["ring", "append", str(ev)], input="x\n"), "owned by uid 65534")
    one_line(run(["recover", "--ring", str(ev), "--db", str(d / "c2.db"), "--live"]),
             "owned by uid 65534")


@pytest.mark.parametrize("kind", ["fifo", "chardev"])
def test_ring_on_a_fifo_or_other_non_regular_path_is_one_line(d, kind):
    p = d / "p.ring"
    if kind == "fifo":
        os.mkfifo(p)
        want = "FIFO"
    else:
        p = Path("/dev/zero")
        want = "character device"
    for args in (["ring", "create", str(p), "--size", SIZE], ["ring", "info", str(p)],
                 ["ring", "append", str(p)]):
        one_line(run(args, input="", timeout=20), want)
    if kind == "fifo":
        assert stat.S_ISFIFO(os.lstat(p).st_mode)


# -- exports ---------------------------------------------------------------------------------
def test_export_to_dev_full_fails_in_one_line_and_keeps_the_device(store):
    _, db = store
    one_line(run(["export", "--db", str(db), "-o", "/dev/full"]), "/dev/full",
             "No space left on device")
    assert stat.S_ISCHR(os.lstat("/dev/full").st_mode)
    assert not Path("/dev/full.part").exists()
    assert run(["export", "--db", str(db), "-o", "/dev/null"]).returncode == 0
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


def test_export_planted_part_symlink_cannot_redirect(d, store, monkeypatch):
    _, db = store
    victim = d / "victim"
    victim.write_text("keep")
    out = d / "g.json"
    (d / "g.json.part").symlink_to(victim)  # the name export used to write through
    assert run(["export", "--db", str(db), "-o", str(out)]).returncode == 0
    assert victim.read_text() == "keep" and out.read_text().startswith("{")
    assert (d / "g.json.part").is_symlink()
    # even a planted name that matches the random one is never followed (O_EXCL|O_NOFOLLOW)
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: "0" * 2 * n)
    (d / f".g.json.{'0' * 12}.part").symlink_to(victim)
    with pytest.raises(files.FileError, match="already exists"), files.output(str(out)) as f:
        f.write("redirected")
    assert victim.read_text() == "keep" and out.read_text().startswith("{")


@needs_root
def test_export_keeps_the_mode_of_an_existing_file_refuses_another_users(d, store):
    _, db = store
    out = d / "g.json"
    out.write_text("old")
    os.chmod(out, 0o600)
    assert run(["export", "--db", str(db), "-o", str(out)]).returncode == 0
    assert mode(out) == 0o600 and out.read_text().startswith("{")
    theirs = d / "theirs.json"
    h = planted(theirs)
    one_line(run(["export", "--db", str(db), "-o", str(theirs)]), "owned by uid 65534")
    assert digest(theirs) == h and mode(theirs) == 0o666
    fifo = d / "their.fifo"
    os.mkfifo(fifo)
    os.chown(fifo, NOBODY, NOBODY)
    one_line(run(["export", "--db", str(db), "-o", str(fifo)], timeout=20), "FIFO")


# -- space -----------------------------------------------------------------------------------
@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_ring_larger_than_the_filesystem_fails_in_one_line_and_leaves_nothing(small_tmpfs):
    p = small_tmpfs / "p.ring"
    one_line(run(["ring", "create", str(p), "--size", "64M"]), "cannot reserve",
             "No space left on device", str(small_tmpfs))
    assert os.listdir(small_tmpfs) == []
    assert run(["ring", "create", str(p), "--size", "4M"]).returncode == 0
    st = os.stat(p)
    assert st.st_blocks * 512 >= st.st_size == 4 << 20  # reserved, not sparse


def test_a_request_beyond_the_disk_fails_at_once(d):
    vfs = os.statvfs(d)
    free = vfs.f_bavail * vfs.f_frsize
    size = max(200 << 30, free * 2) // (1 << 20) * (1 << 20)
    t0 = time.monotonic()
    one_line(run(["ring", "create", str(d / "big.ring"), "--size", str(size)]),
             "cannot reserve", "No space left on device")
    assert time.monotonic() - t0 < 5
    assert os.listdir(d) == []


@pytest.mark.parametrize("err", [errno.EOPNOTSUPP, errno.ENOSPC, errno.EFBIG])
def test_failed_reservation_never_falls_back_to_a_sparse_file(d, monkeypatch, err):
    def fallocate(fd, mode_, off, length):
        ctypes.set_errno(err)
        return -1

    def posix_fallocate(fd, off, length):  # glibc's, which emulates: never used for this
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(regmod, "_FALLOCATE", fallocate, raising=False)
    monkeypatch.setattr(os, "posix_fallocate", posix_fallocate)
    with pytest.raises(RegionError, match=f"cannot reserve 1048576 bytes in {d}: "
                                          f"{os.strerror(err)}"):
        Region.create(str(d / "p.ring"), 1 << 20)
    assert os.listdir(d) == []
    with pytest.raises(ring.RingError, match="cannot reserve"):
        ring.create(str(d / "q.ring"), 1 << 20)
    assert os.listdir(d) == []


# -- arguments before files ------------------------------------------------------------------
def test_bad_arguments_never_touch_an_existing_ring(d):
    p = d / "p.ring"
    ring.create(str(p), 1 << 20)
    with ring.Producer.open(str(p)) as prod:
        prod.note("keep me")
    h = digest(p)
    one_line(run(["ring", "create", str(p), "--ring-id", "-5"]), "--ring-id")
    one_line(run(["ring", "create", str(p), "--ring-id", str(1 << 32)]), "--ring-id")
    one_line(run(["ring", "create", str(p), "--size", "12K"]), "too small")
    for kw in ({"ring_id": -5}, {"ring_id": 1 << 32}, {"ring_id": "1"}):
        with pytest.raises(ring.RingError, match="ring id"):
            ring.create(str(p), 1 << 20, **kw)
    with pytest.raises(ring.RingError, match="size"):
        ring.create(str(p), -4096)
    with pytest.raises(ring.RingError, match="cannot reserve"):
        ring.create(str(p), 1 << 60, overwrite=True)
    assert digest(p) == h
    assert [r.payload for r in ring.iter_records(str(p))] == [b"keep me"]
    assert os.listdir(d) == ["p.ring"]


def test_re_create_replaces_only_once_the_new_ring_is_complete(d, monkeypatch):
    p = d / "p.ring"
    ring.create(str(p), 1 << 20)
    old = ring.Consumer.open(str(p), readonly=True)
    old_uuid = old.header.uuid
    old.close()
    h = digest(p)

    def broken(*a, **kw):
        raise RuntimeError("power cut while writing the new headers")

    monkeypatch.setattr(L.Header, "pack", broken)
    with pytest.raises(RuntimeError):
        ring.create(str(p), 1 << 20, overwrite=True)
    monkeypatch.undo()
    assert digest(p) == h and os.listdir(d) == ["p.ring"]

    def init_fails(region):
        region.buf[0:8] = b"halfdone"
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError):
        Region.create(str(p), 1 << 20, replace=True, init=init_fails)
    assert digest(p) == h and os.listdir(d) == ["p.ring"]
    with pytest.raises(RegionError, match="already exists"):
        Region.create(str(p), 1 << 20)
    hdr = ring.create(str(p), 2 << 20, ring_id=3, overwrite=True)
    assert hdr.uuid != old_uuid and os.path.getsize(p) == 2 << 20
    assert os.listdir(d) == ["p.ring"] and mode(p) == 0o600


# -- logs, markers, caches -------------------------------------------------------------------
@needs_root
def test_daemon_log_of_collect_is_private_and_never_planted(d, store):
    from hv import collect

    r, db = store
    log = d / "p.db.daemon.log"
    p = collect.start_daemon(str(r), str(db), str(log))
    assert collect.stop_daemon(p) in (0, -signal.SIGTERM)  # killed before its handler: fine
    assert mode(log) == 0o600
    p = collect.start_daemon(str(r), str(db), str(log))  # appended across runs: ours is reused
    assert collect.stop_daemon(p) in (0, -signal.SIGTERM)
    log.unlink()
    h = planted(log)
    with pytest.raises(files.FileError, match="owned by uid 65534"):
        collect.start_daemon(str(r), str(db), str(log))
    assert digest(log) == h
    log.unlink()
    victim = d / "victim"
    victim.write_text("keep")
    log.symlink_to(victim)
    with pytest.raises(files.FileError, match="symbolic link"):
        collect.start_daemon(str(r), str(db), str(log))
    assert victim.read_text() == "keep"


def test_serial_log_is_opened_by_us_and_handed_to_qemu(d):
    from hv.interceptor import QemuGuest

    log = d / "p.ring.serial.log"
    vm = QemuGuest("k", "i", "quiet", serial_log=str(log), qemu="true")
    try:
        assert mode(log) == 0o600
        arg = vm.argv[vm.argv.index("-serial") + 1]
        assert arg.startswith("file:/dev/fd/")
        assert os.path.samefile(arg.removeprefix("file:"), log)
    finally:
        vm.close()
    victim = d / "victim"
    victim.write_text("keep")
    log.unlink()
    log.symlink_to(victim)
    with pytest.raises(files.FileError, match="symbolic link"):
        QemuGuest("k", "i", "quiet", serial_log=str(log), qemu="true")
    assert victim.read_text() == "keep"


@needs_root
def test_planted_verified_marker_is_not_believed(d, store):
    from examiner import verify

    _, db = store
    marker = Path(verify.state_path(str(db)))
    marker.unlink(missing_ok=True)
    planted(marker, b'{"ok": true, "findings": [], "planted": true}')
    assert verify.load_state(str(db)) is None
    assert run(["verify", "--db", str(db)]).returncode == 0
    assert os.lstat(marker).st_uid == NOBODY  # another user's file is left alone
    marker.unlink()
    assert run(["verify", "--db", str(db)]).returncode == 0
    assert mode(marker) == 0o600 and verify.load_state(str(db)) is not None


@pytest.mark.skipif(not Path("/bin/busybox").is_file(), reason="needs busybox-static")
def test_guest_cache_is_private(tmp_path, monkeypatch):
    from hv import guest, profile

    monkeypatch.delenv("PROVISOR_CACHE", raising=False)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    cfg = {"guest": {"cache": str(cache)}}
    w = tmp_path / "w.sh"
    w.write_text("echo hi\n")
    old = os.umask(0o022)
    try:
        initrd = guest.build_initramfs(cfg, w, output=tmp_path / "out.gz", log=lambda m: None)
        cached = next((cache / "initrd").iterdir())
        prof = profile.write({"metadata": {}}, cache / "kernel" / "x" / "profile.json")
    finally:
        os.umask(old)
    assert mode(cache) == 0o700 and mode(cache / "initrd") == 0o700
    assert mode(cached) == 0o600 and mode(initrd) == 0o600 and mode(prof) == 0o600
