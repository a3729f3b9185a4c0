"""``provisor collect``: guest, interceptor and daemon, end to end.

The daemon runs as a separate process (the seed's privileged-domain daemon): the collector only
produces into the ring, the daemon consumes it into SQLite, and SIGTERM makes it drain, commit
and exit 0 once the guest has powered off.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from provisor.errors import ProvisorError

# per-cpu and boot symbols the profile leaves out; read from System.map when missing
_EXTRA_SYMBOLS = ("kstack_offset", "cpu_current_top_of_stack", "cpu_tss_rw", "kernel_init",
                  "x64_sys_call", "linux_banner", "entry_SYSCALL_64", "system_state",
                  "__per_cpu_offset", "page_offset_base", "__x64_sys_sendfile64")


class CollectError(ProvisorError):
    pass


def _echo(msg: str) -> None:
    click.echo(f"collect: {msg}", err=True)


def kernel_symbols(profile, system_map: str | Path | None) -> dict[str, int]:
    """The symbols the interceptor uses: the profile's, plus a few from System.map
    (an adapter until the profile carries them)."""
    syms = profile.symbols() if hasattr(profile, "symbols") else {}
    missing = [s for s in _EXTRA_SYMBOLS if s not in syms]
    if missing and system_map and Path(system_map).exists():
        want = set(missing)
        with open(system_map) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] in want:
                    syms[parts[2]] = int(parts[0], 16)
    return syms


@dataclass
class Summary:
    events: int = 0
    syscalls: int = 0
    stops: int = 0
    elapsed: float = 0.0
    guest_s: float = 0.0
    vm_s: float = 0.0  # QEMU start to guest poweroff
    us_per_syscall: float = 0.0
    ring_hwm: float = 0.0
    slide: int = 0
    db: dict[str, int] = field(default_factory=dict)
    by_name: dict[str, int] = field(default_factory=dict)
    serial_log: str = ""
    trap: str = ""
    plugin: dict = field(default_factory=dict)  # the native plugin's final stats

    def lines(self) -> list[str]:
        d = self.db
        if self.trap == "plugin":
            p = self.plugin
            out = [f"events       {self.events} ({self.syscalls} syscalls traced by the native "
                   f"plugin, {p.get('vcpus', 1)} vCPU(s); dropped {p.get('dropped', 0)})"]
        else:
            out = [f"events       {self.events} ({self.syscalls} syscalls traced, "
                   f"{self.stops} stops)"]
        if d:
            out += [f"processes    {d.get('processes', 0)}",
                    f"files        {d.get('artifacts', 0)} ({d.get('versions', 0)} versions)",
                    f"relations    {d.get('relations', 0)}"]
        else:
            out.append("store        (no daemon: events left in the ring)")
        out += [f"elapsed      {self.elapsed:.1f}s (guest run {self.guest_s:.1f}s)",
                (f"per syscall  {self.us_per_syscall:.1f} us in the plugin (entry+exit: decode "
                 "and persist)" if self.trap == "plugin" else
                 f"per syscall  {self.us_per_syscall:.0f} us in the collector (entry+exit)"),
                f"ring hwm     {self.ring_hwm * 100:.1f}%",
                f"kaslr slide  {self.slide:#x}",
                f"serial log   {self.serial_log}"]
        return out


def _ring_fill(producer) -> float:
    """Fraction of the ring in use, from the producer's tail and the current checkpoint."""
    try:
        hdr = producer.reload_header()
    except Exception:  # noqa: BLE001 - a torn header read is retried next sample
        return 0.0
    if producer.next_seq - 1 == hdr.checkpoint_seq:
        return 0.0
    used = (producer.tail - hdr.checkpoint_off) % producer.size
    return (used or producer.size) / producer.size


def daemon_available() -> bool:
    try:
        import daemon.cli as dc
    except ImportError:
        return False
    return any(getattr(c, "name", "") == "daemon" for c in getattr(dc, "COMMANDS", []))


def start_daemon(ring: str, db: str, log_path: str, guest_kernel: str | None = None,
                 machine: str | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from provisor.cli import main; main()",
           "daemon", "--ring", ring, "--db", db, "-q"]
    if guest_kernel:
        cmd += ["--guest-kernel", guest_kernel]
    if machine:
        cmd += ["--machine", machine]
    from provisor import files

    # appended across runs; created 0600 (or 0640 with [files] group), never through a planted
    # symlink or into another user's file beside a /dev/shm store
    fd = files.ensure_ours(log_path)
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd)
    finally:
        os.close(fd)


def stop_daemon(proc: subprocess.Popen, timeout: float = 60.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise CollectError(f"the daemon did not stop within {timeout:.0f}s after SIGTERM") \
            from None


def daemon_log(ring_path: str, db: str) -> str:
    """The daemon's log: beside a SQLite store, else beside the ring."""
    from store import postgres

    return f"{ring_path if postgres.is_url(db) else db}.daemon.log"


def db_counts(db: str, machine: str | None = None) -> dict[str, int]:
    """The store's summary counts (store/base.counts), or {} when there is no store yet."""
    from store import base, postgres, reader, sqlite

    if postgres.is_url(db):
        try:
            conn = reader.PgConn(db, machine)
        except ProvisorError as e:
            if "no such store" in str(e):
                return {}
            raise CollectError(str(e)) from None
        try:
            return base.counts(lambda sql: conn.execute(sql).fetchall())
        finally:
            conn.close()
    if not os.path.exists(db):
        return {}
    # the same checks as every opener: never a planted DB or side file, a checked meta
    conn, _ = sqlite.open_conn(db, readonly=True, error=CollectError)
    try:
        return base.counts(lambda sql: conn.execute(sql).fetchall())
    except sqlite3.Error as e:
        raise CollectError(f"{db}: {e}") from None
    finally:
        conn.close()


def collect(cfg: dict[str, Any], workload: str, include: str | None = None,
            ring_path: str | None = None, db: str | None = None, *, kaslr: bool = True,
            mode: str = "entry-exit", trap: str = "plugin", run_daemon: bool = True,
            serial_log: str | None = None, timeout: float = 600.0, mem: str = "file",
            smp: int = 1, machine: str | None = None, log=_echo) -> Summary:
    """Boot, trace until poweroff, stop the daemon. ``trap="plugin"`` (the default): QEMU 10's
    native plugin writes the ring (hv/native.py); ``"watch"``/``"break"``: the gdbstub
    interceptor (hv/interceptor.py), where ``mem="gdb"`` reads guest memory with 'm' packets
    instead of the RAM file (slow; the fallback, nokaslr only)."""
    from hv import guest
    from hv.profile import Profile
    from pmem import ring
    from provisor.config import parse_size
    from store import meta

    t0 = time.monotonic()
    if machine is not None:
        meta.check_machine(machine)
    if trap not in ("plugin", "watch", "break"):
        raise CollectError(f"unknown trap {trap!r}")
    if trap == "plugin" and mode != "entry-exit":
        raise CollectError("--exit-only is a gdbstub mode: the plugin always records entries "
                           "write-ahead")
    if trap != "plugin" and smp != 1:
        raise CollectError("the gdbstub trap traces one vCPU: --smp needs the plugin")
    if mem not in ("file", "gdb"):
        raise CollectError(f"unknown memory access {mem!r}")
    if mem == "gdb" and kaslr:
        raise CollectError("KASLR detection reads the RAM file: use --nokaslr with --mem gdb")
    if not Path(workload).is_file():
        raise CollectError(f"{workload}: no such workload script")
    if trap == "plugin":  # fail before the kit and the initramfs when QEMU 10 or the build lacks
        from hv import native

        native.qemu_version()
        native.plugin_path()
    kit = guest.kit(cfg, log)
    initrd = guest.build_initramfs(cfg, workload, include, log=log)
    profile = Profile.load(kit.profile)

    ring_path = ring_path or cfg["ring"]["path"]
    db = db or cfg["daemon"]["db"]
    if not os.path.exists(ring_path):
        ring.create(ring_path, parse_size(cfg["ring"]["size"]))
    serial_log = serial_log or f"{ring_path}.serial.log"
    append = "console=ttyS0 quiet panic=-1" + ("" if kaslr else " nokaslr")
    policy = cfg["ring"].get("full_policy", "block")
    record_envp = bool(cfg.get("daemon", {}).get("record_envp", False))
    s = Summary(serial_log=serial_log)
    if trap == "plugin":
        _check_producer_free(ring_path)
    producer = None if trap == "plugin" else ring.Producer.open(ring_path, policy)
    dproc = None
    try:
        if run_daemon:
            if daemon_available():
                dproc = start_daemon(ring_path, db, daemon_log(ring_path, db), kit.release,
                                     machine)
            else:
                log("no `provisor daemon` in this build: events stay in the ring")
        if trap == "plugin":
            _run_native(s, kit, str(initrd), append, ring_path, profile, policy, record_envp,
                        smp, kaslr, dproc, db, max(10.0, timeout - (time.monotonic() - t0)), log)
        else:
            _run_gdb(s, kit, str(initrd), append, producer, profile, trap, mode, mem,
                     record_envp, kaslr, dproc, db, max(10.0, timeout - (time.monotonic() - t0)),
                     log)
    finally:
        if producer is not None:
            producer.close()
        if dproc is not None:
            rc = stop_daemon(dproc)
            if rc != 0:
                log(f"the daemon exited with status {rc}: "
                    f"{_last_line(daemon_log(ring_path, db))}")
    if dproc is not None:
        s.db = db_counts(db, machine)
    s.elapsed = time.monotonic() - t0
    return s


def wait_drained(ring_path: str, last_seq: int, dproc: subprocess.Popen | None,
                 timeout: float = 120.0, log=None) -> bool:
    """After the guest powered off: wait until the daemon has stored and released everything up
    to ``last_seq`` (the ring's checkpoint reaches it), so that stopping it loses no time to a
    backlog; False if the daemon died or ``timeout`` passed (the rest stays in the ring)."""
    from pmem import ring

    deadline = time.monotonic() + timeout
    nxt = time.monotonic() + 2
    while True:
        try:
            c = ring.Consumer.open(ring_path, readonly=True)
            try:
                done = c.checkpoint
            finally:
                c.close()
        except ProvisorError:
            return False
        if done >= last_seq:
            return True
        if dproc is None or dproc.poll() is not None or time.monotonic() > deadline:
            return False
        if log and time.monotonic() > nxt:
            nxt = time.monotonic() + 2
            log(f"daemon draining the ring: {done} of {last_seq} records stored")
        time.sleep(0.02)


def _check_producer_free(ring_path: str) -> None:
    """Refuse, with the holder's pid, a ring another producer writes (the plugin would refuse
    it too, without the pid)."""
    from provisor import locks

    try:
        locks.acquire(ring_path, locks.RING_PRODUCER, "ring producer").release()
    except locks.LockError as e:
        who = f"pid {e.holder}" if e.holder else "another process"
        raise CollectError(f"{ring_path}: ring producer already running ({who}); one ring "
                           "producer at a time") from None


def _run_native(s: Summary, kit, initrd: str, append: str, ring_path: str, profile, policy: str,
                record_envp: bool, smp: int, kaslr: bool, dproc, db: str, timeout: float,
                log) -> None:
    from hv import native

    vm = native.PluginGuest(str(kit.kernel), initrd, append, ring_path, profile, smp=smp,
                            policy=policy, envp=record_envp, serial_log=s.serial_log)
    try:
        log(f"booting {kit.release} under QEMU {'.'.join(map(str, vm.qemu_version))} (TCG, "
            f"{smp} vCPU{'s' if smp > 1 else ''}){'' if kaslr else ', nokaslr'}; native plugin")
        t_vm = time.monotonic()
        vm.start()

        def watch() -> None:  # a daemon that died leaves the guest filling the ring for nobody
            if dproc is not None and dproc.poll() is not None:
                when = "at start" if time.monotonic() - t_vm < 10 else "while collecting"
                raise CollectError(f"the daemon exited {when}: "
                                   f"{_last_line(daemon_log(ring_path, db))}")

        def progress(st) -> None:
            s.ring_hwm = max(s.ring_hwm, st.fill)
            log(f"{st.records} events, {st.entries} syscalls")

        try:
            st = vm.run(timeout, progress, watch=watch)
            watch()
        except native.NativeError as e:
            raise CollectError(str(e)) from None
        s.vm_s = s.guest_s = time.monotonic() - t_vm
        s.ring_hwm = max(s.ring_hwm, st.fill)
        if dproc is not None:
            wait_drained(ring_path, int(st.next_seq) - 1, dproc, log=log)
        s.events, s.syscalls, s.stops = st.records, st.entries, 0
        s.slide = int(st.slide)
        s.us_per_syscall = (st.decode_ns + st.persist_ns) / 1000 / max(1, st.entries)
        s.by_name = dict(st.by_name)
        s.trap = "plugin"
        s.plugin = st.raw
    finally:
        vm.close()


def _run_gdb(s: Summary, kit, initrd: str, append: str, producer, profile, trap: str, mode: str,
             mem: str, record_envp: bool, kaslr: bool, dproc, db: str, timeout: float,
             log) -> None:
    from hv.interceptor import (
        Interceptor,
        KernelView,
        QemuGuest,
        boot_to_kernel_init,
        boot_until_slide,
        entry_sites,
    )
    from hv.linux import Linux
    from hv.memory import GdbVirtual, Virtual

    syms = kernel_symbols(profile, kit.system_map)
    for need in ("kernel_init", "current_task", "system_state", "__per_cpu_offset") + (
            ("kstack_offset", "cpu_current_top_of_stack", "cpu_tss_rw", "entry_SYSCALL_64")
            if trap == "watch" else ()):
        if need not in syms:
            raise CollectError(f"kernel symbol {need} not found in the profile or System.map")
    vm = QemuGuest(str(kit.kernel), initrd, append, serial_log=s.serial_log,
                   ram_file=mem == "file")
    try:
        log(f"booting {kit.release} under QEMU (TCG){'' if kaslr else ', nokaslr'}")
        t_vm = time.monotonic()
        gdb = vm.start()
        if kaslr:
            bp = boot_until_slide(gdb, vm.phys, profile, syms)
        else:
            bp = boot_to_kernel_init(gdb, syms, 0)
        s.slide = bp.slide
        vmem = Virtual(vm.phys, bp.kernel_cr3) if vm.phys else GdbVirtual(gdb)
        _check_banner(vmem, profile, syms, s.slide)
        _use_direct_map(vmem, syms, s.slide)
        lx = Linux(vmem, profile)
        kv = KernelView(percpu=bp.percpu, kernel_cr3=bp.kernel_cr3,
                        kstack_offset=syms.get("kstack_offset", 0),
                        top_of_stack=syms.get("cpu_current_top_of_stack", 0),
                        tss_rw=syms.get("cpu_tss_rw", 0),
                        syscall_entry=syms.get("entry_SYSCALL_64", 0) + s.slide,
                        pt_regs_size=profile.size("pt_regs"), slide=s.slide)
        sites = None
        if trap == "break":
            sites, missing = entry_sites(vmem, syms, s.slide)
            if missing:
                log(f"not traced (no symbol): {', '.join(missing)}")
        log(f"kernel at slide {s.slide:#x}; tracing from {bp.how} ({trap} trap, {mode})")

        def progress(st) -> None:
            s.ring_hwm = max(s.ring_hwm, _ring_fill(producer))
            log(f"{st.events} events, {st.syscalls} syscalls")

        ic = Interceptor(gdb, vmem, lx, producer, kv, trap=trap, entry=sites, mode=mode,
                         record_envp=record_envp, progress=progress)
        if dproc is not None and dproc.poll() is not None:
            raise CollectError("the daemon exited at start: "
                               f"{_last_line(daemon_log(producer.region.path, db))}")
        ic.install()
        st = ic.run(timeout=timeout)
        s.ring_hwm = max(s.ring_hwm, _ring_fill(producer))
        vm.wait(10)
        if dproc is not None:
            wait_drained(producer.region.path, producer.next_seq - 1, dproc, log=log)
        s.vm_s = time.monotonic() - t_vm
        s.events, s.syscalls, s.stops = st.events, st.syscalls, st.stops
        s.guest_s = st.run_ns / 1e9
        s.us_per_syscall = st.us_per_syscall
        s.by_name = dict(st.by_name)
        s.trap = trap
    finally:
        vm.close()


def _last_line(path: str) -> str:
    try:
        lines = [x for x in Path(path).read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def _use_direct_map(mem, syms: dict[str, int], slide: int) -> None:
    """Translate direct-map addresses arithmetically, once a page walk agrees."""
    from hv.memory import Unreadable

    addr = syms.get("page_offset_base")
    if addr is None:
        return
    try:
        base = mem.u64(addr + slide)
        if base >> 47 == 0x1FFFF and mem.translate(base + 0x1000) == 0x1000:
            mem.set_direct_map(base)
    except Unreadable:
        pass


def _check_banner(mem, profile, syms: dict[str, int], slide: int) -> None:
    """The guest must run the kernel the profile describes: compare linux_banner."""
    want = getattr(profile, "banner", "")
    addr = syms.get("linux_banner")
    if not want or addr is None:
        return
    from hv.memory import Unreadable

    try:
        got = mem.read(addr + slide, len(want.encode()))
    except Unreadable:
        raise CollectError("cannot read linux_banner in the guest: wrong profile?") from None
    if got != want.encode():
        raise CollectError("the guest kernel is not the one the profile describes "
                           f"(banner {got[:40]!r})")


@click.command("collect")
@click.option("--workload", required=True, type=click.Path(dir_okay=False),
              help="Shell script the guest runs (as /workload).")
@click.option("--include", type=click.Path(file_okay=False),
              help="Directory copied into the initramfs root (DIR/bin/x becomes /bin/x).")
@click.option("--ring", "ring_path", help="Ring image (default: config; created if missing).")
@click.option("--db", help="SQLite file or postgresql:// URL (default: config).")
@click.option("--machine", default=None, metavar="NAME",
              help="The guest's machine name: its store (a SQLite file's machine_name, a "
              "PostgreSQL namespace provisor_NAME).")
@click.option("--nokaslr", is_flag=True, help="Boot the guest with nokaslr.")
@click.option("--exit-only", is_flag=True,
              help="One event per syscall, after it ran (weaker: not write-ahead).")
@click.option("--trap", type=click.Choice(["plugin", "gdb", "watch", "break"]), default="plugin",
              show_default=True,
              help="plugin: QEMU 10's native plugin writes the ring; gdb (= watch): the gdbstub "
                   "interceptor with watchpoints; break: the gdbstub with breakpoints.")
@click.option("--smp", type=click.IntRange(1, 64), default=1, show_default=True,
              help="vCPUs of the guest (more than one needs the plugin).")
@click.option("--no-daemon", is_flag=True, help="Only produce into the ring.")
@click.option("--serial-log", help="Guest console log (default: RING.serial.log).")
@click.option("--mem", type=click.Choice(["file", "gdb"]), default="file", show_default=True,
              help="Guest memory from QEMU's RAM file, or through gdbstub 'm' packets (slow).")
@click.pass_obj
def collect_cmd(cfg: dict[str, Any], workload: str, include: str | None, ring_path: str | None,
                db: str | None, machine: str | None, nokaslr: bool, exit_only: bool, trap: str, smp: int,
                no_daemon: bool, serial_log: str | None, mem: str) -> None:
    """Run WORKLOAD in a QEMU guest, trace its syscalls from outside into the ring, and store
    them with the daemon; print a summary when the guest powers off.

    \b
    Example:
      provisor collect --workload config/guest/workloads/demo.sh --include out/
    """
    s = collect(cfg, workload, include, ring_path, db, kaslr=not nokaslr,
                mode="exit-only" if exit_only else "entry-exit",
                trap="watch" if trap == "gdb" else trap, smp=smp,
                run_daemon=not no_daemon, serial_log=serial_log, mem=mem, machine=machine)
    for line in s.lines():
        click.echo(line)
