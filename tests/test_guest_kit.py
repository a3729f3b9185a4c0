"""The guest kit: initramfs contents and caching, ABI fallback, QEMU arguments, a real boot."""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import hv.guest as g
from hv.guest import Cpio, GuestError, build_initramfs, qemu_args

HAVE_BUSYBOX = Path("/bin/busybox").is_file()


def parse_newc(blob: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """name -> (mode, data, (rdevmajor, rdevminor)), checking the newc framing on the way."""
    out, off = {}, 0
    while True:
        assert blob[off:off + 6] == b"070701", off
        f = [int(blob[off + 6 + 8 * i: off + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name = blob[off + 110: off + 110 + namesize - 1].decode()
        assert blob[off + 110 + namesize - 1] == 0
        off += 110 + namesize
        off += -off % 4
        data = blob[off:off + filesize]
        off += filesize
        off += -off % 4
        if name == "TRAILER!!!":
            assert off == len(blob)
            return out
        out[name] = (f[1], data, (f[9], f[10]))


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.delenv("PROVISOR_CACHE", raising=False)
    return {"guest": {"cache": str(tmp_path / "cache"), "debian_abi": "6.1.0-47"}}


@pytest.fixture
def workload(tmp_path) -> Path:
    w = tmp_path / "w.sh"
    w.write_text("echo hi > a.txt\n")
    return w


def test_cpio_writer_is_newc_and_cpio_reads_it(tmp_path):
    c = Cpio()
    c.dir("d")
    c.file("d/f", b"hello", 0o750)
    c.symlink("d/l", "f")
    c.chardev("console", 5, 1)
    blob = c.finish()
    got = parse_newc(blob)
    assert got["d/f"][1] == b"hello" and stat.S_IMODE(got["d/f"][0]) == 0o750
    assert stat.S_ISLNK(got["d/l"][0]) and got["d/l"][1] == b"f"
    assert stat.S_ISCHR(got["console"][0]) and got["console"][2] == (5, 1)
    if shutil.which("cpio"):
        r = subprocess.run(["cpio", "-it", "--quiet"], input=blob, capture_output=True, check=True)
        assert r.stdout.decode().split() == ["d", "d/f", "d/l", "console"]


@pytest.mark.skipif(not HAVE_BUSYBOX, reason="needs busybox-static")
def test_initramfs_contents(cfg, workload, tmp_path):
    inc = tmp_path / "inc"
    (inc / "bin").mkdir(parents=True)
    (inc / "bin" / "tool").write_bytes(b"\x7fELF fake")
    (inc / "bin" / "tool").chmod(0o755)
    (inc / "etc" / "deep" / "er").mkdir(parents=True)
    (inc / "etc" / "deep" / "er" / "conf").write_text("x=1\n")
    os.symlink("tool", inc / "bin" / "tool2")
    out = build_initramfs(cfg, workload, inc, tmp_path / "initrd.gz", log=lambda _m: None)
    files = parse_newc(gzip.decompress(out.read_bytes()))
    assert files["init"][1] == g.INIT_TEMPLATE.read_bytes() and stat.S_IMODE(files["init"][0]) == 0o755
    assert files["workload"][1] == workload.read_bytes()
    assert files["bin/busybox"][1] == Path("/bin/busybox").read_bytes()
    for applet in ("bin/sh", "sbin/poweroff", "bin/mount", "bin/cat"):
        mode, target, _ = files[applet]
        assert stat.S_ISLNK(mode) and target == b"/bin/busybox", applet
    assert stat.S_ISCHR(files["dev/console"][0]) and files["dev/console"][2] == (5, 1)
    for d in ("proc", "sys", "dev", "root", "tmp", "etc/deep", "etc/deep/er"):
        assert stat.S_ISDIR(files[d][0]), d
    assert files["bin/tool"][1] == b"\x7fELF fake" and stat.S_IMODE(files["bin/tool"][0]) == 0o755
    assert files["etc/deep/er/conf"][1] == b"x=1\n"
    assert files["bin/tool2"][1] == b"tool"
    names = list(files)
    for n in names:  # every parent precedes its children
        if "/" in n:
            assert names.index(n.rsplit("/", 1)[0]) < names.index(n), n


@pytest.mark.skipif(not HAVE_BUSYBOX, reason="needs busybox-static")
def test_initramfs_cache_by_content(cfg, workload, tmp_path):
    a = build_initramfs(cfg, workload, log=lambda _m: None)
    t = a.stat().st_mtime_ns
    b = build_initramfs(cfg, workload, log=lambda _m: None)
    assert a == b and b.stat().st_mtime_ns == t and a.parent == tmp_path / "cache" / "initrd"
    workload.write_text("echo other\n")
    c = build_initramfs(cfg, workload, log=lambda _m: None)
    assert c != a and c.exists()


def test_initramfs_errors(cfg, workload, tmp_path):
    with pytest.raises(GuestError, match="no such workload"):
        build_initramfs(cfg, tmp_path / "nope.sh")
    with pytest.raises(GuestError, match="wants a directory"):
        build_initramfs(cfg, workload, workload)
    cfg["guest"]["busybox"] = str(tmp_path / "nobusybox")
    with pytest.raises(GuestError, match="busybox-static"):
        build_initramfs(cfg, workload)
    cfg["guest"]["busybox"] = sys.executable  # dynamically linked
    with pytest.raises(GuestError, match="not a static busybox"):
        build_initramfs(cfg, workload)


def test_abi_resolution(monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr(g, "_run", lambda cmd, what, cwd=None: calls.append(cmd) or "")
    monkeypatch.setattr(g, "_available_abis", lambda: ["6.1.0-47", "6.1.0-50", "6.1.0-56"])
    assert g.resolve_abi("6.1.0-47", log=lambda _m: None) == "6.1.0-47" and not calls
    said: list[str] = []
    assert g.resolve_abi("6.1.0-12", log=said.append) == "6.1.0-56"
    assert calls and calls[0][:2] == ["apt-get", "update"]  # refreshed lists before giving up
    assert any("6.1.0-56" in m and "gone" in m for m in said)
    monkeypatch.setattr(g, "_available_abis", lambda: [])
    with pytest.raises(GuestError, match="no linux-image"):
        g.resolve_abi("6.1.0-47", log=lambda _m: None)


def test_command_failures_are_one_line():
    with pytest.raises(GuestError, match="not found"):
        g._run(["provisor-no-such-binary"], "x")
    with pytest.raises(GuestError, match="^y failed: .*boom$"):
        g._run(["sh", "-c", "echo W: warn >&2; echo boom >&2; exit 3"], "y")


def test_qemu_args():
    a = qemu_args("k", "i", serial_log="/tmp/s.log", kaslr=False, extra=["-S"])
    cmdline = a[a.index("-append") + 1]
    assert "nokaslr" in cmdline.split() and "console=ttyS0" in cmdline and "panic=-1" in cmdline
    assert a[a.index("-serial") + 1] == "file:/tmp/s.log" and "-no-reboot" in a and a[-1] == "-S"
    assert "accel=tcg" in a[a.index("-machine") + 1]
    assert "nokaslr" not in qemu_args("k", "i")[-1]


@pytest.mark.guest
@pytest.mark.parametrize("kaslr", [True, False])
def test_boot_runs_the_workload_and_powers_off(tmp_path, kaslr):
    from provisor.config import load

    cfg = load()
    k = g.kit(cfg)
    w = tmp_path / "w.sh"
    w.write_text("echo marker-$((6*7))\ncat /proc/cmdline\nls /bin/tool\nstat -c %t:%T /dev/null\n")
    inc = tmp_path / "inc"
    (inc / "bin").mkdir(parents=True)
    (inc / "bin" / "tool").write_text("#!/bin/sh\n")
    initrd = build_initramfs(cfg, w, inc, log=lambda _m: None)
    log = g.boot(k.kernel, initrd, tmp_path / "serial.log", kaslr=kaslr)
    assert "marker-42" in log and "/bin/tool" in log
    assert "1:3" in log                                  # devtmpfs mounted
    assert ("nokaslr" in log) is (not kaslr)
    assert "provisor-guest: workload exit 0" in log and "Power down" in log


@pytest.mark.guest
def test_cli_build_and_boot(tmp_path):
    w = tmp_path / "w.sh"
    w.write_text("echo cli-marker\n")
    run = [sys.executable, "-c", "from provisor.cli import main; main()", "guest"]
    r = subprocess.run([*run, "build", "--workload", str(w), "-o", str(tmp_path / "i.gz")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and (tmp_path / "i.gz").exists(), r.stderr
    r = subprocess.run([*run, "boot", "--workload", str(w)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "cli-marker" in r.stdout, r.stderr


def test_corrupt_deb_is_dropped(tmp_path):
    deb = tmp_path / "linux-image-x_1_amd64.deb"
    deb.write_bytes(b"!<arch>\ngarbage")
    with pytest.raises(GuestError, match="extracting"):
        g._extract(deb, {"./boot/vmlinuz-*": tmp_path / "vmlinuz"}, log=lambda _m: None)
    assert not deb.exists() and not (tmp_path / "vmlinuz").exists()
