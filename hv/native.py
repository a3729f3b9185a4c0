"""The native producer: QEMU 10 runs the guest with provisor's TCG plugin (hv/plugin/), which
traps every syscall and writes the ring itself, write-ahead (docs/HYPERVISORS.md).

This module only prepares and watches: it checks that the QEMU is 10 or newer, that the plugin
is built and that the profile describes the kernel about to boot, writes the plugin's offsets
file from the profile, starts QEMU with ``-plugin`` before the guest's first instruction, and
follows the plugin's stats file for progress. Everything on the guest's path is in C.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provisor import files
from provisor.errors import ProvisorError

PLUGIN = Path(__file__).resolve().parent / "plugin" / "build" / "libprovisor.so"
MIN_QEMU = (10, 0)


class NativeError(ProvisorError):
    """One line: what is missing or wrong, and what to do."""


def plugin_path() -> Path:
    """The built plugin (``PROVISOR_PLUGIN`` overrides): NativeError if it is not there."""
    p = Path(os.environ.get("PROVISOR_PLUGIN", PLUGIN))
    if not p.is_file():
        raise NativeError(f"the native plugin is not built ({p} missing): run `make plugin` "
                          "(or collect with --trap gdb)")
    return p


def qemu_version(qemu: str = "qemu-system-x86_64") -> tuple[int, int, int]:
    """The version QEMU reports; NativeError when it is missing or older than 10."""
    exe = shutil.which(qemu)
    if exe is None:
        raise NativeError(f"{qemu} not found: install QEMU 10 (make setup adds Debian's "
                          "bookworm-backports and installs qemu-system-x86 from it)")
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NativeError(f"{qemu} --version failed: {e}") from None
    m = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", out)
    if not m:
        raise NativeError(f"cannot tell {qemu}'s version from {out.strip()[:60]!r}")
    v = (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
    if v[:2] < MIN_QEMU:
        raise NativeError(f"{qemu} is QEMU {v[0]}.{v[1]}.{v[2]}: the native plugin needs QEMU "
                          "10 (plugin API 4: registers and guest memory); `make setup` installs "
                          "it from bookworm-backports, or collect with --trap gdb")
    return v


def bzimage_version(kernel: str | Path) -> str | None:
    """The version string a bzImage's setup header points to (``kernel_version``), e.g.
    '6.1.0-47-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP ... Debian 6.1.170-3 (...)'."""
    try:
        with open(kernel, "rb") as f:
            head = f.read(0x10000)  # the setup code (kernel_version points into it)
    except OSError:
        return None
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        return None
    (ptr,) = struct.unpack_from("<H", head, 0x20E)
    start = 0x200 + ptr
    if not ptr or start >= len(head):
        return None
    end = head.find(b"\0", start)
    return head[start:end if end != -1 else len(head)].decode(errors="replace")


def check_kernel(profile, kernel: str | Path) -> None:
    """The profile must describe this kernel image: its release and build string (the part of
    linux_banner the bzImage also carries) must match. The plugin checks linux_banner itself in
    the running guest; this catches a wrong pairing before QEMU starts."""
    banner = profile.banner
    kv = bzimage_version(kernel)
    if not banner or kv is None:
        return  # nothing to compare: the plugin's own check in the guest still applies
    release = kv.split(" ", 1)[0]
    build = kv.split(") ", 1)[1] if ") " in kv else ""
    if not banner.startswith(f"Linux version {release} ") or (
            build and not banner.rstrip().endswith(build)):
        raise NativeError(f"the profile does not describe {Path(kernel).name} (profile: "
                          f"{profile.release or banner[:40]!r}; kernel: {kv[:60]!r}): rebuild it "
                          "(provisor profile build) from this kernel's vmlinux")


@dataclass
class Stats:
    """The plugin's stats file (hv/plugin/plugin.c, write_stats)."""

    raw: dict

    def __getattr__(self, name: str):
        try:
            return self.raw[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def records(self) -> int:
        return int(self.raw.get("records", 0))

    @property
    def fill(self) -> float:
        size = self.raw.get("ring_size") or 0
        return (size - self.raw.get("ring_free", size)) / size if size else 0.0


class PluginGuest:
    """QEMU with the plugin loaded before the first guest instruction. Its private files (the
    offsets file, the stats file, QEMU's stderr) live in a fresh 0700 directory; the guest has
    no channel to any of them."""

    def __init__(self, kernel: str, initrd: str, append: str, ring: str, profile, *,
                 mem_mb: int = 256, smp: int = 1, policy: str = "block", envp: bool = False,
                 mode: str = "trace", serial_log: str | None = None,
                 qemu: str = "qemu-system-x86_64", extra: list[str] | None = None,
                 plugin: Path | None = None) -> None:
        from hv.profile import plugin_offsets

        if policy not in ("block", "drop", "fail"):
            raise NativeError(f"unknown ring-full policy {policy!r}")
        if mode not in ("trace", "hook"):
            raise NativeError(f"unknown plugin mode {mode!r}")
        if not isinstance(smp, int) or not 1 <= smp <= 64:
            raise NativeError(f"--smp must be 1 to 64, not {smp!r}")
        self.qemu_version = qemu_version(qemu)
        plugin = plugin or plugin_path()
        check_kernel(profile, kernel)
        offsets = plugin_offsets(profile)
        self._serial_fd: int | None = None
        if serial_log:
            self._serial_fd = files.ensure_ours(serial_log, os.O_WRONLY)
            os.ftruncate(self._serial_fd, 0)
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.dir = tempfile.mkdtemp(prefix="provisor-vm-", dir=base)
        os.chmod(self.dir, 0o700)
        self.offsets = os.path.join(self.dir, "offsets")
        self.stats_path = os.path.join(self.dir, "stats.json")
        fd = files.create_new(self.offsets)
        try:
            os.write(fd, offsets.encode())
        finally:
            os.close(fd)
        self.serial_log = serial_log or os.path.join(self.dir, "serial.log")
        serial = (f"/dev/fd/{self._serial_fd}" if self._serial_fd is not None
                  else self.serial_log)
        for what, v in (("ring", ring), ("plugin", str(plugin))):
            if "," in v:
                raise NativeError(f"the {what} path may not contain a comma (QEMU's option "
                                  f"syntax): {v}")
        opts = [f"ring={os.path.abspath(ring)}", f"offsets={self.offsets}",
                f"stats={self.stats_path}", f"policy={policy}", f"envp={'on' if envp else 'off'}",
                f"mode={mode}"]
        self.argv = [
            qemu, "-accel", "tcg,thread=multi" if smp > 1 else "tcg", "-m", f"{mem_mb}M",
            "-smp", str(smp), "-kernel", kernel, "-initrd", initrd, "-append", append,
            "-display", "none", "-monitor", "none", "-no-reboot", "-nodefaults",
            "-serial", f"file:{serial}", "-plugin", ",".join([str(plugin), *opts]),
            *(extra or []),
        ]
        self.proc: subprocess.Popen | None = None
        self._err = None

    def start(self) -> None:
        self._err = open(os.path.join(self.dir, "qemu.err"), "w+")  # noqa: SIM115
        fds = () if self._serial_fd is None else (self._serial_fd,)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._err, pass_fds=fds)
        if self._serial_fd is not None:
            os.close(self._serial_fd)
            self._serial_fd = None

    def stats(self) -> Stats | None:
        try:
            with open(self.stats_path) as f:
                return Stats(json.load(f))
        except (OSError, ValueError):
            return None

    def error(self) -> str:
        """QEMU's reason for a failure: the plugin's own line if it wrote one, else QEMU's."""
        try:
            self._err.seek(0)
            lines = [x.strip() for x in self._err.read().splitlines() if x.strip()]
        except (OSError, ValueError, AttributeError):
            lines = []
        ours = [x for x in lines if x.startswith("provisor:")]
        if ours:
            return ours[-1].removeprefix("provisor:").strip()
        if lines:
            return lines[-1]
        return f"exit status {self.proc.poll() if self.proc else '?'}"

    def run(self, timeout: float, progress: Callable[[Stats], None] | None = None,
            interval: float = 1.0, watch: Callable[[], None] | None = None) -> Stats:
        """Until the guest powers off; NativeError on a QEMU failure or after ``timeout``.
        ``watch`` is called a few times a second and may raise to stop the guest."""
        if self.proc is None:
            self.start()
        deadline = time.monotonic() + timeout
        nxt = time.monotonic() + interval
        while True:
            try:
                rc = self.proc.wait(min(0.2, max(0.01, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                pass
            if watch is not None:
                try:
                    watch()
                except BaseException:
                    self.kill()
                    raise
            now = time.monotonic()
            if now > deadline:
                self.proc.kill()
                self.proc.wait()
                st = self.stats()
                raise NativeError(f"the guest did not power off within {timeout:.0f}s "
                                  f"({st.records if st else 0} records written)")
            if progress and now >= nxt:
                nxt = now + interval
                st = self.stats()
                if st is not None:
                    progress(st)
        st = self.stats()
        if rc != 0:
            raise NativeError(f"QEMU failed: {self.error()}")
        if st is None or not st.raw.get("final"):
            raise NativeError(f"QEMU exited without the plugin's final stats: {self.error()}")
        return st

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        if self._serial_fd is not None:
            os.close(self._serial_fd)
            self._serial_fd = None
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._err:
            self._err.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PluginGuest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
