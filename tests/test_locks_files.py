"""provisor.locks (role locks for a process's life) and provisor.files (private, exclusive
creation; atomic outputs)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from provisor import files, locks

HOLD = """
import sys, time
from provisor import locks
l = locks.acquire(sys.argv[1], int(sys.argv[2]), "ring consumer")
print("held", flush=True)
time.sleep(60)
"""


def _holder(path, offset):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(offset)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_holder_refused_with_pid_and_lock_dies_with_sigkill(tmp_path):
    f = tmp_path / "r"
    f.write_bytes(b"x")
    p = _holder(f, locks.RING_CONSUMER)
    try:
        with pytest.raises(locks.LockError) as ei:
            locks.acquire(str(f), locks.RING_CONSUMER, "ring consumer")
        assert ei.value.holder == p.pid and f"pid {p.pid}" in str(ei.value)
        assert locks.is_held(str(f), locks.RING_CONSUMER)
        # the other role is free: one producer and one consumer coexist
        with locks.acquire(str(f), locks.RING_PRODUCER, "ring producer"):
            pass
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    deadline = time.monotonic() + 5
    while locks.is_held(str(f), locks.RING_CONSUMER) and time.monotonic() < deadline:
        time.sleep(0.01)
    with locks.acquire(str(f), locks.RING_CONSUMER, "ring consumer"):
        pass


def test_lock_survives_closing_another_fd_of_the_same_file(tmp_path):
    f = tmp_path / "r"
    f.write_bytes(b"x")
    with locks.acquire(str(f), locks.RING_CONSUMER, "ring consumer"):
        with open(f, "rb") as other:
            other.read()
        r = subprocess.run([sys.executable, "-c", HOLD, str(f), str(locks.RING_CONSUMER)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "already running" in r.stderr


def test_create_new_is_private_exclusive_and_never_follows(tmp_path):
    p = tmp_path / "new"
    os.close(files.create_new(str(p)))
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    with pytest.raises(files.FileError, match="already exists"):
        files.create_new(str(p))
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "link").symlink_to(victim)
    with pytest.raises(files.FileError, match="already exists|symbolic link"):
        files.create_new(str(tmp_path / "link"))
    assert victim.read_text() == "keep"


def test_output_replaces_atomically_keeps_mode_and_writes_devices_directly(tmp_path):
    t = tmp_path / "out.json"
    t.write_text("old")
    os.chmod(t, 0o640)
    with files.output(str(t)) as f:
        f.write("new")
    assert t.read_text() == "new" and stat.S_IMODE(t.stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["out.json"]
    with pytest.raises(RuntimeError), files.output(str(t)) as f:
        f.write("half")
        raise RuntimeError("mid-write")
    assert t.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["out.json"]
    with files.output("/dev/null") as f:
        f.write("x")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    with pytest.raises(files.FileError, match="does not exist"):
        files.check_output(str(tmp_path / "missing" / "x"))
    (tmp_path / "lnk").symlink_to(t)
    with pytest.raises(files.FileError, match="symbolic link"):
        files.check_output(str(tmp_path / "lnk"))
