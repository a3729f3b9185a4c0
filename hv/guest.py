"""The guest kit: the Debian cloud kernel, its DWARF vmlinux and profile, and busybox initramfs.

Everything lands in one cache directory (``[guest] cache`` or ``$PROVISOR_CACHE``) and every
step is skipped when its output exists, so a second ``kit()`` costs a few stat calls and works
offline. The guest stays unmodified: a stock distribution kernel, a stock static busybox.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from provisor import files
from provisor.errors import ProvisorError
from provisor.params import Finite

Log = Callable[[str], None]
INIT_TEMPLATE = Path(__file__).resolve().parent.parent / "config" / "guest" / "init.sh"
FLAVOUR = "cloud-amd64"


class GuestError(ProvisorError):
    pass


def _echo(msg: str) -> None:
    click.echo(f"guest: {msg}", err=True)


def cache_dir(cfg: dict[str, Any]) -> Path:
    raw = os.environ.get("PROVISOR_CACHE") or cfg.get("guest", {}).get("cache", "~/.cache/provisor")
    return Path(raw).expanduser()


def _private_dir(d: Path) -> Path:
    """``d`` as a private (0700) directory of ours: the cache holds the workload and the files
    it was given. An existing one of ours is tightened; another user's (or a symlink of
    another user's) is refused."""
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = d.lstat()
    if stat.S_ISLNK(st.st_mode) and st.st_uid == os.geteuid():
        st = d.stat()  # our own symlink (a cache moved to another disk)
    if not stat.S_ISDIR(st.st_mode):
        raise GuestError(f"{d}: not a directory")
    if st.st_uid != os.geteuid():
        raise GuestError(f"{d}: owned by uid {st.st_uid}, not by us: refusing a cache "
                         "directory another user may have planted")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(d, 0o700)
    return d


@dataclass(frozen=True)
class Kit:
    """The guest kernel files provisor needs, all inside the cache."""

    kernel: Path       # vmlinuz (bzImage) to boot
    vmlinux: Path      # ELF with DWARF, for the profile
    system_map: Path
    profile: Path      # ISF-shaped JSON (hv.profile)
    release: str       # e.g. 6.1.0-47-cloud-amd64


def _paths(cache: Path, abi: str) -> Kit:
    release = f"{abi}-{FLAVOUR}"
    d = cache / "kernel" / release
    return Kit(d / f"vmlinuz-{release}", d / f"vmlinux-{release}", d / f"System.map-{release}",
               d / "profile.json", release)


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise GuestError(f"{what}: {cmd[0]} not found (a Debian host with apt is needed)") from None
    if r.returncode != 0:
        lines = [ln.strip() for ln in (r.stderr or r.stdout).splitlines()
                 if ln.strip() and not ln.startswith("W:")]
        raise GuestError(f"{what} failed: {lines[-1] if lines else f'exit status {r.returncode}'}")
    return r.stdout


# ------------------------------------------------------------------------------------- fetching

def _available_abis() -> list[str]:
    out = _run(["apt-cache", "search", "--names-only", rf"^linux-image-[0-9.]+-[0-9]+-{FLAVOUR}-dbg$"],
               "apt-cache search")
    abis = re.findall(rf"^linux-image-([0-9.]+-[0-9]+)-{FLAVOUR}-dbg ", out, re.M)
    return sorted(set(abis), key=lambda a: [int(x) for x in re.split(r"[.-]", a)])


def resolve_abi(wanted: str, log: Log = _echo) -> str:
    """The pinned ABI if the mirror has it, else the newest one of the same series (saying so)."""
    abis = _available_abis()
    if wanted not in abis:
        log("package lists lack the kernel; running apt-get update")
        _run(["apt-get", "update", "-qq"], "apt-get update (needs root and network)")
        abis = _available_abis()
    if wanted in abis:
        return wanted
    series = wanted.rsplit("-", 1)[0]
    same = [a for a in abis if a.startswith(series + "-")] or abis
    if not same:
        raise GuestError(f"no linux-image-*-{FLAVOUR}-dbg package in the apt sources")
    log(f"ABI {wanted} is gone from the mirror; using the newest available, {same[-1]}")
    return same[-1]


def _download(pkgs: Iterable[str], dest: Path, log: Log) -> Path:
    """apt-get download the first of ``pkgs`` that exists; returns the .deb."""
    _private_dir(dest)
    err: GuestError | None = None
    for pkg in pkgs:
        have = sorted(dest.glob(f"{pkg}_*.deb"))
        if have:
            return have[-1]
        t0 = time.monotonic()
        log(f"downloading {pkg}")
        try:
            _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", pkg],
                 f"apt-get download {pkg}", cwd=dest)
        except GuestError as e:
            err = e
            continue
        deb = sorted(dest.glob(f"{pkg}_*.deb"))
        if deb:
            log(f"downloaded {deb[-1].name} ({deb[-1].stat().st_size >> 20} MB, {time.monotonic() - t0:.1f}s)")
            return deb[-1]
    raise err or GuestError(f"could not download any of {', '.join(pkgs)}")


def _extract(deb: Path, members: dict[str, Path], log: Log) -> None:
    """Pull only the wanted members (tar wildcards -> final path) out of a .deb; a .deb that
    fails is deleted so that the next fetch downloads it again."""
    try:
        _extract_members(deb, members, log)
    except GuestError:
        deb.unlink(missing_ok=True)
        raise


def _extract_members(deb: Path, members: dict[str, Path], log: Log) -> None:
    t0 = time.monotonic()
    log(f"extracting {', '.join(p.name for p in members.values())} from {deb.name}")
    with tempfile.TemporaryDirectory(dir=next(iter(members.values())).parent) as tmp:
        try:
            deb_proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL)
        except FileNotFoundError:
            raise GuestError("dpkg-deb not found (a Debian host is needed)") from None
        # --occurrence: stop at the first match; the boot files lead the -dbg archive, so the
        # rest (module debug info) is never decompressed and dpkg-deb dies of SIGPIPE, harmlessly
        tar = subprocess.run(["tar", "-x", "-C", tmp, "--occurrence=1", "--wildcards", *members],
                             stdin=deb_proc.stdout, capture_output=True, text=True)
        deb_proc.stdout.close()
        deb_proc.wait()
        if tar.returncode != 0:
            msg = (tar.stderr.strip().splitlines() or [f"tar exit status {tar.returncode}"])[-1]
            raise GuestError(f"extracting {deb.name} failed: {msg}")
        for pattern, final in members.items():
            found = sorted(Path(tmp).glob(pattern.lstrip("./")))
            if not found:
                raise GuestError(f"{deb.name} has no {pattern}")
            os.chmod(found[-1], 0o600)  # the package's mode was 0644: the cache is private
            os.replace(found[-1], final)
    log(f"extracted in {time.monotonic() - t0:.1f}s")


@contextlib.contextmanager
def _locked(cache: Path):
    """One fetch at a time per cache (tests and a collect run may start together)."""
    _private_dir(cache)
    fd = files.ensure_ours(str(cache / ".fetch.lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def fetch(cfg: dict[str, Any], log: Log = _echo, build_profile: bool = True) -> Kit:
    """Download and unpack the pinned kernel and its -dbg vmlinux, then build the profile."""
    with _locked(cache_dir(cfg)):
        return _fetch(cfg, log, build_profile)


def _fetch(cfg: dict[str, Any], log: Log, build_profile: bool) -> Kit:
    cache = cache_dir(cfg)
    abi = str(cfg.get("guest", {}).get("debian_abi", "6.1.0-47"))
    k = _paths(cache, abi)
    if not (k.kernel.exists() and k.vmlinux.exists() and k.system_map.exists()):
        abi = resolve_abi(abi, log)
        k = _paths(cache, abi)
    _private_dir(k.kernel.parent)
    debs = cache / "debs"
    base = f"linux-image-{abi}-{FLAVOUR}"
    if not k.kernel.exists():
        deb = _download([f"{base}-unsigned", base], debs, log)
        _extract(deb, {"./boot/vmlinuz-*": k.kernel}, log)
    if not (k.vmlinux.exists() and k.system_map.exists()):
        deb = _download([f"{base}-dbg"], debs, log)
        _extract(deb, {"./usr/lib/debug/boot/vmlinux-*": k.vmlinux,
                       "./usr/lib/debug/boot/System.map-*": k.system_map}, log)
        deb.unlink()  # 280 MB; the vmlinux is what we keep
    from hv import profile

    if build_profile and not profile.is_current(k.profile):
        t0 = time.monotonic()
        log(f"building the kernel profile from {k.vmlinux.name}")
        profile.write(profile.build(k.vmlinux, k.system_map, log=lambda m: log(f"profile: {m}")), k.profile)
        log(f"profile built in {time.monotonic() - t0:.1f}s")
    return k


def _complete(k: Kit) -> bool:
    from hv.profile import is_current

    return all(p.exists() for p in (k.kernel, k.vmlinux, k.system_map)) and is_current(k.profile)


def kit(cfg: dict[str, Any], log: Log = _echo) -> Kit:
    """The guest kit, fetched and built on first use (no apt calls once cached). Offline, a kit
    fetched earlier for another ABI (the mirror's fallback) is used, saying so."""
    cache = cache_dir(cfg)
    k = _paths(cache, str(cfg.get("guest", {}).get("debian_abi", "6.1.0-47")))
    if _complete(k):
        return k
    try:
        return fetch(cfg, log)
    except GuestError:
        kdir = cache / "kernel"
        for d in sorted(kdir.glob(f"*-{FLAVOUR}"), reverse=True) if kdir.is_dir() else []:
            alt = _paths(cache, d.name.removesuffix(f"-{FLAVOUR}"))
            if _complete(alt):
                log(f"cannot fetch {k.release}; using the cached {alt.release}")
                return alt
        raise


# ------------------------------------------------------------------------------------ initramfs

class Cpio:
    """A newc ("070701") cpio writer: the initramfs format the kernel unpacks. Pure Python so
    that device nodes and root ownership need no root privileges on the host."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        nb = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0]
        self.ino += 1
        hdr = b"070701" + b"".join(f"{v:08x}".encode() for v in fields) + nb
        self.buf.write(hdr + b"\0" * (-len(hdr) % 4))
        self.buf.write(data + b"\0" * (-len(data) % 4))

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, nlink=1)
        return self.buf.getvalue()


def _busybox(cfg: dict[str, Any]) -> Path:
    bb = Path(cfg.get("guest", {}).get("busybox", "/bin/busybox"))
    if not bb.is_file():
        raise GuestError(f"{bb}: not found (install Debian's busybox-static)")
    head = bb.read_bytes()
    if head[:4] != b"\x7fELF" or b"/lib64/ld-linux" in head[:4096] or b"/lib/ld-" in head[:4096]:
        raise GuestError(f"{bb}: not a static busybox (install Debian's busybox-static)")
    return bb


def _applets(bb: Path) -> list[str]:
    out = _run([str(bb), "--list-full"], "busybox --list-full")
    return sorted({ln.strip().lstrip("/") for ln in out.splitlines() if ln.strip()})


def _walk(root: Path) -> list[tuple[str, Path]]:
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(dirnames + filenames):
            p = Path(dirpath) / n
            items.append((p.relative_to(root).as_posix(), p))
    return sorted(items)


def build_initramfs(cfg: dict[str, Any], workload: str | Path, include: str | Path | None = None,
                    output: str | Path | None = None, log: Log = _echo) -> Path:
    """A gzip'd newc initramfs: static busybox (+ applet symlinks), /init, /workload, DIR's tree.

    Cached under ``<cache>/initrd/<content-hash>.cpio.gz``; ``output`` gets a copy."""
    wl = Path(workload)
    if not wl.is_file():
        raise GuestError(f"{wl}: no such workload script")
    inc = Path(include) if include else None
    if inc is not None and not inc.is_dir():
        raise GuestError(f"{inc}: --include wants a directory")
    tmpl = Path(cfg.get("guest", {}).get("init", INIT_TEMPLATE))
    if not tmpl.is_file():
        raise GuestError(f"{tmpl}: the /init template is missing")
    bb = _busybox(cfg)

    h = hashlib.sha256(b"provisor-initramfs-1\0")
    bb_data = bb.read_bytes()
    init, wl_data = tmpl.read_bytes(), wl.read_bytes()
    for part in (bb_data, init, wl_data):
        h.update(hashlib.sha256(part).digest())
    tree = _walk(inc) if inc else []
    for rel, p in tree:
        st = p.lstat()
        h.update(f"{rel}\0{st.st_mode:o}\0".encode())
        if p.is_symlink():
            h.update(os.readlink(p).encode())
        elif p.is_file():
            h.update(hashlib.sha256(p.read_bytes()).digest())
    digest = h.hexdigest()[:16]
    cached = cache_dir(cfg) / "initrd" / f"{digest}.cpio.gz"

    if not cached.exists():
        t0 = time.monotonic()
        entries: dict[str, tuple] = {}
        for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "root", "etc"):
            entries[d] = ("dir", 0o1777 if d == "tmp" else 0o755)
        entries["dev/console"] = ("chr", 5, 1, 0o600)  # the kernel opens it before /init runs
        entries["dev/null"] = ("chr", 1, 3, 0o666)
        entries["bin/busybox"] = ("file", bb_data, 0o755)
        for app in _applets(bb):
            if app != "bin/busybox":
                entries[app] = ("link", "/bin/busybox")
        entries["init"] = ("file", init, 0o755)
        entries["workload"] = ("file", wl_data, 0o755)
        for rel, p in tree:
            if p.is_symlink():
                entries[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                entries[rel] = ("dir", stat.S_IMODE(p.stat().st_mode))
            elif p.is_file():
                entries[rel] = ("file", p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for rel in list(entries):  # parents of included files
            parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
            while parent and parent not in entries:
                entries[parent] = ("dir", 0o755)
                parent = parent.rsplit("/", 1)[0] if "/" in parent else ""
        c = Cpio()
        for name in sorted(entries, key=lambda n: (n.count("/"), n)):  # parents first
            e = entries[name]
            if e[0] == "dir":
                c.dir(name, e[1])
            elif e[0] == "file":
                c.file(name, e[1], e[2])
            elif e[0] == "link":
                c.symlink(name, e[1])
            else:
                c.chardev(name, e[1], e[2], e[3])
        _private_dir(cache_dir(cfg))
        _private_dir(cached.parent)
        with files.output(str(cached), binary=True) as f, \
                gzip.GzipFile(fileobj=f, mode="wb", mtime=0, compresslevel=6) as gz:
            gz.write(c.finish())
        log(f"initramfs {cached.name}: {len(entries)} entries, {cached.stat().st_size >> 10} KB, "
            f"{time.monotonic() - t0:.1f}s")
    else:
        log(f"initramfs {cached.name}: cached")
    if output is not None:
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        with files.output(str(out), binary=True) as f, open(cached, "rb") as src:
            shutil.copyfileobj(src, f)
        return out
    return cached


# ------------------------------------------------------------------------------------ booting

def qemu_args(kernel: str | Path, initrd: str | Path, *, serial_log: str | Path | None = None,
              memory: str = "256M", kaslr: bool = True, accel: str = "tcg",
              append: Iterable[str] = (), extra: Iterable[str] = ()) -> list[str]:
    """The qemu-system-x86_64 command line for a quick guest boot; launchers add their own
    ``extra`` (gdbstub, memory backend) on top."""
    cmdline = ["console=ttyS0", "quiet", "panic=-1", *([] if kaslr else ["nokaslr"]), *append]
    return ["qemu-system-x86_64", "-machine", f"q35,accel={accel}", "-m", memory,
            "-display", "none", "-monitor", "none", "-nic", "none", "-no-reboot",
            "-serial", f"file:{serial_log}" if serial_log else "stdio",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", " ".join(cmdline), *extra]


def boot(kernel: str | Path, initrd: str | Path, log_path: str | Path, *, timeout: float = 180,
         **kw: Any) -> str:
    """Boot to poweroff under QEMU and return the serial log (raises on a hang or QEMU error)."""
    log_path = Path(log_path)
    args = qemu_args(kernel, initrd, serial_log=log_path, **kw)
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise GuestError("qemu-system-x86_64 not found (install qemu-system-x86)") from None
    except subprocess.TimeoutExpired:
        raise GuestError(f"guest did not power off within {timeout:.0f}s (log: {log_path})") from None
    if r.returncode != 0:
        msg = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        raise GuestError(f"qemu failed: {msg}")
    return log_path.read_text(errors="replace") if log_path.exists() else ""


# ----------------------------------------------------------------------------------------- CLI

@click.group("guest")
def guest_group() -> None:
    """The guest kit: Debian cloud kernel, its DWARF profile, busybox initramfs."""


@guest_group.command("fetch")
@click.pass_obj
def guest_fetch_cmd(cfg: dict[str, Any]) -> None:
    """Download the pinned kernel and its -dbg vmlinux into the cache and build the profile.

    \b
    Example:
      PROVISOR_CACHE=/var/cache/provisor provisor guest fetch
    """
    t0 = time.monotonic()
    k = fetch(cfg)
    click.echo(f"kernel   {k.kernel}\nvmlinux  {k.vmlinux}\nprofile  {k.profile}\n"
               f"release  {k.release} ({time.monotonic() - t0:.1f}s)")


@guest_group.command("build")
@click.option("--workload", required=True, type=click.Path(dir_okay=False),
              help="Shell script the guest runs (busybox sh, cwd /root).")
@click.option("--include", type=click.Path(file_okay=False),
              help="Directory copied to the initramfs root keeping its layout (DIR/bin/x -> /bin/x).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where to copy the initramfs.")
@click.pass_obj
def guest_build_cmd(cfg: dict[str, Any], workload: str, include: str | None, output: str | None) -> None:
    """Build the busybox initramfs that runs WORKLOAD and powers off.

    \b
    Example:
      provisor guest build --workload config/guest/workloads/demo.sh --include out/ -o initrd.gz
    """
    click.echo(build_initramfs(cfg, workload, include, output))


@guest_group.command("boot")
@click.option("--workload", required=True, type=click.Path(dir_okay=False), help="Shell script to run.")
@click.option("--include", type=click.Path(file_okay=False), help="Directory copied to the initramfs root.")
@click.option("--nokaslr", is_flag=True, help="Boot with nokaslr.")
@click.option("--timeout", default=180.0, show_default=True, type=Finite(0, 86400, min_open=True),
              help="Seconds before giving up.")
@click.pass_obj
def guest_boot_cmd(cfg: dict[str, Any], workload: str, include: str | None, nokaslr: bool,
                   timeout: float) -> None:
    """Boot the guest under QEMU (TCG, no tracing) and print its serial console.

    \b
    Example:
      provisor guest boot --workload config/guest/workloads/demo.sh
    """
    k = kit(cfg)
    initrd = build_initramfs(cfg, workload, include)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        out = boot(k.kernel, initrd, Path(tmp) / "serial.log", timeout=timeout, kaslr=not nokaslr)
    click.echo(out, nl=False)
    _echo(f"powered off after {time.monotonic() - t0:.1f}s")
