"""The region: modes, preallocation, exact persist ranges, the mmap fallback, bad paths."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pmem import region as regmod
from pmem.libpmem import libpmem
from pmem.region import PAGE, Mode, Region, RegionError
from provisor.errors import ProvisorError


def test_create_preallocates_and_maps_emulated(shm_dir):
    path = str(shm_dir / "r.img")
    r = Region.create(path, 64 * PAGE)
    try:
        st = os.stat(path)
        assert st.st_size == 64 * PAGE
        assert st.st_blocks * 512 >= 64 * PAGE  # allocated, not sparse
        expected = Mode.EMULATED if libpmem() is not None else Mode.MMAP
        assert r.mode is expected  # /dev/shm is not persistent memory
        r.buf[5000:5004] = b"abcd"
        r.persist(5000, 4)
    finally:
        r.close()
    with open(path, "rb") as f:
        f.seek(5000)
        assert f.read(4) == b"abcd"


def test_libpmem_is_installed_by_the_project():
    assert libpmem() is not None, "libpmem1 missing: make setup installs it"


def test_mmap_fallback_without_libpmem(shm_dir):
    """Without libpmem the CLI still works, on Python mmap + msync, and says so."""
    path = str(shm_dir / "f.ring")
    env = dict(os.environ, PROVISOR_NO_LIBPMEM="1")
    cli = [sys.executable, "-m", "provisor.cli"]
    subprocess.run(cli + ["ring", "create", path, "--size", "1M"], env=env, check=True,
                   capture_output=True)
    out = subprocess.run(cli + ["ring", "append", path], env=env, input="x\ny\n", text=True,
                         capture_output=True, check=True).stdout.split()
    assert out == ["1", "2"]
    info = subprocess.run(cli + ["ring", "info", path, "--json"], env=env, text=True,
                          capture_output=True, check=True).stdout
    assert '"mode": "mmap"' in info
    assert '"NOTE": 2' in info


class FakeLib:
    """Stands in for libpmem on a real pmem device, which this machine does not have: it
    records the calls so the exact ranges can be checked (beside the real emulated test)."""

    def __init__(self) -> None:
        self.persists: list[tuple[int, int]] = []
        self.msyncs: list[tuple[int, int]] = []

    def persist(self, addr: int, n: int) -> None:
        self.persists.append((addr, n))

    def msync(self, addr: int, n: int) -> int:
        self.msyncs.append((addr, n))
        return 0


@pytest.mark.skipif(libpmem() is None, reason="needs libpmem")
def test_persist_ranges_exact_on_pmem_page_aligned_on_emulated(shm_dir):
    path = str(shm_dir / "p.img")
    r = Region.create(path, 16 * PAGE)
    real = r._lib
    try:
        fake = FakeLib()
        r._lib = fake  # type: ignore[assignment]
        base = r._addr
        r.mode = Mode.PMEM
        r.persist(4100, 40)
        assert fake.persists == [(base + 4100, 40)] and not fake.msyncs
        r.mode = Mode.EMULATED
        r.persist(4100, 40)
        assert fake.msyncs == [(base + 4096, 44)]
        r.persist(0, 0)
        assert len(fake.msyncs) == 1
    finally:
        r._lib = real
        r.close()


def test_bad_paths(shm_dir):
    with pytest.raises(RegionError, match="is a directory"):
        Region(str(shm_dir))
    with pytest.raises(ProvisorError):
        Region(str(shm_dir / "missing"))
    empty = shm_dir / "empty"
    empty.write_bytes(b"")
    with pytest.raises(RegionError, match="empty file"):
        Region(str(empty))
    with pytest.raises(RegionError, match="multiple"):
        Region.create(str(shm_dir / "odd"), 1000)


def test_readonly_mapping_cannot_write(shm_dir):
    path = str(shm_dir / "ro.img")
    Region.create(path, 4 * PAGE).close()
    r = Region(path, readonly=True)
    try:
        with pytest.raises(TypeError):
            r.buf[0:1] = b"x"
    finally:
        r.close()
    assert regmod.DEFAULT_DIR == "/dev/shm"


@pytest.mark.parametrize("args", [["daemon", "--bogus"], ["ring", "create"], ["nosuch"],
                                  ["synth", "--ring", "/x", "--events", "-5"]])
def test_bad_flags_are_one_line_errors(args):
    r = subprocess.run([sys.executable, "-m", "provisor.cli", *args], capture_output=True,
                       text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("provisor: error: ") and r.stderr.count("\n") == 1, r.stderr
