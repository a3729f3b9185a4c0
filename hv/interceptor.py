"""The interceptor: one event per traced syscall entry and exit, each in the ring before the
guest runs on (write-ahead), read from outside an unmodified guest through QEMU's gdbstub.

The trap. QEMU 7.2 flushes its whole translation cache on every *breakpoint* stop (gdbstub's
vm-state handler calls tb_flush), so after each one the guest re-translates all the code it
runs: a 4500-stop workload took 87 s instead of 4 s here. Watchpoint stops skip that flush, so
the default ``watch`` trap uses two watchpoints on per-cpu data of the (single) vCPU:

* entry: a read watchpoint on ``cpu_tss_rw.x86_tss.sp2``, entry_SYSCALL_64's scratch slot,
  read once per 64-bit syscall (``pushq sp2``), never on interrupts or faults. The stop comes
  after the read with every user register still live: one 'g' gives the number (rax), the six
  arguments and the task's own CR3 (user half mapped, PTI or not). Untraced numbers resume
  at once; traced ones are decoded, appended to the ring, and then resumed.
* exit: while a traced call is open, a write watchpoint on ``kstack_offset``, which the kernel
  rewrites on every return to user space (choose_random_kstack_offset, 6.1 with
  RANDOMIZE_KSTACK_OFFSET as Debian ships it), after the return value is in pt_regs. The
  returning task (current_task) is matched to its open entry (task pointer, pid, start time);
  its pt_regs sit below cpu_current_top_of_stack. No 'g' needed. Returns of other tasks
  (faults, interrupts, untraced calls) that pass meanwhile cost one stop each.

Nothing is stepped over (watchpoints stop after the access), and packets sent with a resume
(arming or disarming the exit watchpoint) go in the same write as the 'c'.

The ``break`` trap, for kernels without those variables: breakpoints on the dispatcher's
``jmp __x64_sys_X`` and on the return site, each left by emulating its instruction (jmp, NOP,
register move) in a 'G'. Correct, but every stop pays QEMU's tb_flush.

``exit-only`` mode (weaker, docs/HYPERVISORS.md): the entry is only noted; one event per
syscall after it ran, with paths and fds read after the fact (a renamed path already renamed,
a closed fd already gone) and not write-ahead.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hv.eventbuild import normalize_args, read_entry, read_exit, reread_paths
from hv.gdbstub import GdbClient, GdbError, GuestExited, Regs
from hv.linux import Linux, Task
from hv.memory import Unreadable, Virtual
from pmem.layout import RecType
from provisor import events as E
from provisor.abi import to_signed
from provisor.syscalls import BY_NAME, PROVENANCE_SET, Syscall, Trait

ENOSYS = 38
TSS_SP2 = 20  # offsetof(struct x86_hw_tss, sp2): entry_SYSCALL_64's scratch slot
USER_CS = 0x33
_M64 = (1 << 64) - 1
_SYS_FN = {"sendfile": "sendfile64"}  # x86-64's syscall 40 is sys_sendfile64

_NOPS = (  # the multi-byte NOPs compilers and ftrace emit, and endbr64
    b"\x90", b"\x66\x90", b"\x0f\x1f\x00", b"\x0f\x1f\x40\x00", b"\x0f\x1f\x44\x00\x00",
    b"\x66\x0f\x1f\x44\x00\x00", b"\x0f\x1f\x80\x00\x00\x00\x00",
    b"\x0f\x1f\x84\x00\x00\x00\x00\x00", b"\x66\x0f\x1f\x84\x00\x00\x00\x00\x00",
    b"\xf3\x0f\x1e\xfa",
)
_REG64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
          "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


def emulate(code: bytes, regs: Regs) -> Regs | None:
    """``regs`` after executing the instruction at the start of ``code``, for the few
    instructions that only move rip or copy one 64-bit register to another; else None."""
    if len(code) >= 5 and code[0] == 0xE9:  # jmp rel32
        return regs.with_(rip=regs["rip"] + 5 + struct.unpack_from("<i", code, 1)[0])
    if len(code) >= 2 and code[0] == 0xEB:  # jmp rel8
        return regs.with_(rip=regs["rip"] + 2 + struct.unpack_from("<b", code, 1)[0])
    for nop in _NOPS:
        if code.startswith(nop):
            return regs.with_(rip=regs["rip"] + len(nop))
    if len(code) >= 3 and code[0] & 0xF8 == 0x48 and code[1] in (0x89, 0x8B) \
            and code[2] >> 6 == 3:  # REX.W mov r64, r64
        rex, modrm = code[0], code[2]
        reg = ((modrm >> 3) & 7) | ((rex & 4) << 1)
        rm = (modrm & 7) | ((rex & 1) << 3)
        dst, src = (rm, reg) if code[1] == 0x89 else (reg, rm)
        if _REG64[dst] == "rsp":
            return None
        return regs.with_(**{_REG64[dst]: regs[_REG64[src]], "rip": regs["rip"] + 3})
    return None


def store_length(code: bytes) -> int | None:
    """Length of a REX.W ``mov r64 -> [base+disp]`` store (no SIB, not rip-relative), which
    leaves every register as it was: an exit breakpoint may sit just after one."""
    if len(code) < 3 or code[0] & 0xF8 != 0x48 or code[1] != 0x89:
        return None
    mod, rm = code[2] >> 6, code[2] & 7
    if rm == 4 or mod == 3 or (mod == 0 and rm == 5):
        return None
    return {0: 3, 1: 4, 2: 7}[mod]


@dataclass(frozen=True)
class KernelView:
    """Where things are in the running kernel (slid addresses), found once at kernel_init."""

    percpu: int  # per-cpu area of vCPU 0 (gs_base in kernel mode)
    kernel_cr3: int
    kstack_offset: int  # per-cpu offsets
    top_of_stack: int
    tss_rw: int
    syscall_entry: int  # entry_SYSCALL_64, slid
    pt_regs_size: int = 168
    slide: int = 0


@dataclass(slots=True)
class Pending:
    seq: int
    sc: Syscall
    args: tuple[int, ...]
    pid: int
    start_time: int
    site: int = 0
    reread: bool = False  # the entry's paths were unreadable: read them again at the exit


@dataclass
class Stats:
    stops: int = 0
    entries: int = 0
    exits: int = 0
    spurious: int = 0
    dances: int = 0
    decode_errors: int = 0  # unexpected failures decoding guest memory (event still logged)
    events: int = 0
    busy_ns: int = 0  # time the guest stood still for us: stop reply to resume sent
    run_ns: int = 0
    by_name: dict[str, int] = field(default_factory=dict)

    @property
    def syscalls(self) -> int:
        return max(self.entries, self.exits)

    @property
    def us_per_syscall(self) -> float:
        """Collector time per traced syscall (all stops, including the untraced ones)."""
        return self.busy_ns / 1000 / self.syscalls if self.syscalls else 0.0


class Interceptor:
    """Drives a stopped QEMU through its gdbstub until the guest powers off."""

    def __init__(self, gdb: GdbClient, mem: Virtual, linux: Linux, producer, kv: KernelView,
                 *, trap: str = "watch", entry: dict[int, Syscall] | None = None,
                 mode: str = "entry-exit", traced: frozenset[str] | set[str] = PROVENANCE_SET,
                 vcpu: int = 0, record_envp: bool = True,
                 progress: Callable[[Stats], None] | None = None) -> None:
        if mode not in ("entry-exit", "exit-only"):
            raise ValueError(f"unknown mode {mode!r}")
        if trap not in ("watch", "break"):
            raise ValueError(f"unknown trap {trap!r}")
        self.gdb, self.mem, self.linux, self.producer, self.kv = gdb, mem, linux, producer, kv
        self.trap, self.mode, self.vcpu, self.record_envp = trap, mode, vcpu, record_envp
        self.progress = progress
        self.traced = {BY_NAME[n].nr: BY_NAME[n] for n in traced if n in BY_NAME}
        self.entry_bps: dict[int, Syscall] = dict(entry or {})
        self.exit_site: int | None = None
        self.ret_addr: int | None = None
        self.exit_armed = False
        self.pending: dict[int, Pending] = {}  # task_struct address -> its open entry
        self._code: dict[int, bytes] = {}
        self._user_cr3_ok = False
        self.w_entry = kv.percpu + kv.tss_rw + TSS_SP2
        self.w_exit = kv.percpu + kv.kstack_offset
        self.stats = Stats()
        self._next_progress = 0.0

    # -- the loop ----------------------------------------------------------------------------
    def install(self) -> None:
        """Arm the traps (one pipelined write). Call while the guest is stopped."""
        g = self.gdb
        if self.trap == "watch":
            g.check_ok(g.command(g.watch_packet(True, self.w_entry, 8, "read")),
                       "read watchpoint on tss.sp2")
            return
        pk = [g.bp_packet(True, a) for a in self.entry_bps]
        for addr, reply in zip(self.entry_bps, g.pipeline(pk), strict=True):
            if reply != b"OK":
                raise GdbError(f"cannot set breakpoint at {addr:#x}: {reply[:20]!r}")

    def run(self, timeout: float | None = None) -> Stats:
        """Resume the guest and handle stops until it powers off (GdbError after
        ``timeout`` seconds: a hung guest must not hang the collector)."""
        t0 = time.monotonic_ns()
        deadline = None if timeout is None else time.monotonic() + timeout
        handler = self._on_watch if self.trap == "watch" else self._on_break
        self.gdb.resume()
        try:
            while True:
                left = None if deadline is None else max(0.01, deadline - time.monotonic())
                try:
                    stop = self.gdb.wait(left)
                except GuestExited:
                    raise
                except GdbError as e:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise GdbError(f"the guest did not power off within {timeout:.0f}s "
                                       f"({self.stats.events} events recorded)") from None
                    raise e
                t = time.monotonic_ns()
                self.stats.stops += 1
                handler(stop)
                self.stats.busy_ns += time.monotonic_ns() - t
                if self.progress and t > self._next_progress:
                    self._next_progress = t + 1_000_000_000
                    self.progress(self.stats)
        except GuestExited:
            pass
        self.stats.run_ns = time.monotonic_ns() - t0
        return self.stats

    # -- the watch trap ----------------------------------------------------------------------
    def _on_watch(self, stop) -> None:
        before: list[bytes] = []
        try:
            if stop.watch == self.w_entry:
                before = self._w_entry()
            elif stop.watch == self.w_exit:
                before = self._w_exit()
            else:
                self.stats.spurious += 1
        finally:
            self.gdb.resume(before)

    def _w_entry(self) -> list[bytes]:
        """entry_SYSCALL_64 just read tss.sp2: the user's registers are all still live."""
        regs = self.gdb.read_registers()
        rip = regs["rip"]
        if not self.kv.syscall_entry <= rip < self.kv.syscall_entry + 0x100:
            self.stats.spurious += 1  # another entry path (compat): not traced
            return []
        sc = self.traced.get(regs["rax"])
        if sc is None:
            return []
        self.mem.set_cr3(regs["cr3"])  # the task's own page tables: user half mapped
        self.mem.flush()
        self._user_cr3_ok = True
        try:
            taddr = self.linux.current_task(regs["gs_base"])
        except Unreadable:  # still recorded, flagged F_TASK_UNREADABLE (as the plugin does)
            taddr = 0
        args = normalize_args(sc, tuple(regs[r] for r in ("rdi", "rsi", "rdx", "r10", "r8", "r9")))
        if self.mode == "exit-only" and not sc.has(Trait.NO_RETURN):
            task = self.linux.task(taddr)
            if not task.ok:
                return []
            self.pending[taddr] = Pending(0, sc, args, task.pid, task.start_time)
        elif self._entry(sc, args, taddr, None) is None:
            return []
        if self.exit_armed:
            return []
        self.exit_armed = True
        return [self.gdb.watch_packet(True, self.w_exit, 4, "write")]

    def _w_exit(self) -> list[bytes]:
        """choose_random_kstack_offset wrote kstack_offset: someone returns to user space."""
        kv, lx, mem = self.kv, self.linux, self.mem
        mem.set_cr3(kv.kernel_cr3)
        mem.flush()
        self._user_cr3_ok = False
        try:
            taddr = lx.current_task(kv.percpu)
        except Unreadable:
            taddr = 0
        p = self.pending.pop(taddr, None)
        if p is None:
            self.stats.spurious += 1
            return []
        task = lx.task(taddr)
        if task.pid != p.pid or task.start_time != p.start_time:
            self.stats.spurious += 1  # a stale entry: its task died inside the syscall
        else:
            try:
                regs_ptr = mem.u64(kv.percpu + kv.top_of_stack) - kv.pt_regs_size
                ax = mem.u64(regs_ptr + lx.o.pt_regs_ax)
            except Unreadable:
                ax = -1 & _M64
            self._exit(p, ax, task)
        if self.pending:
            return []
        self.exit_armed = False
        return [self.gdb.watch_packet(False, self.w_exit, 4, "write")]

    # -- events ------------------------------------------------------------------------------
    def _entry(self, sc: Syscall, args: tuple[int, ...], taddr: int, task: Task | None,
               site: int = 0) -> Pending | None:
        st = self.stats
        st.entries += 1
        st.by_name[sc.name] = st.by_name.get(sc.name, 0) + 1
        lx = self.linux
        ev = E.Event(sc.nr, E.ENTRY, time.time_ns(), self.vcpu, args=args)
        task = self._fill_task(ev, taddr, task)
        try:
            if task.ok:
                ev.cwd, ev.cwd_mnt = lx.cwd(task)
                if ev.cwd is None:
                    ev.flags |= E.F_CWD_UNREADABLE
            self._decode_args(sc, ev, task)
        except Exception:  # noqa: BLE001 - whatever the guest's memory held, the entry is logged
            self.stats.decode_errors += 1
            ev.flags |= E.F_PATH_UNREADABLE | E.F_ARGV_UNREADABLE | E.F_FILE_UNREADABLE
        seq = self._append(ev)
        if sc.has(Trait.NO_RETURN) or not task.ok:
            return None
        p = Pending(seq, sc, args, task.pid, task.start_time, site,
                    bool(ev.flags & E.F_PATH_UNREADABLE) and bool(sc.path_pairs))
        self.pending[taddr] = p
        return p

    def _exit(self, p: Pending, ax: int, task: Task) -> None:
        st = self.stats
        st.exits += 1
        ev = E.Event(p.sc.nr, E.EXIT, time.time_ns(), self.vcpu, entry_seq=p.seq, args=p.args)
        ev.ret = to_signed(ax)
        self._fill_task(ev, task.addr, task)
        if p.sc.has(Trait.MOVES_NAME):
            self.linux.invalidate_paths()
        if task.ok and p.reread:  # the entry's paths were unreadable: read them again
            try:
                reread_paths(p.sc, ev, _TaskSource(self, task))
            except Exception:  # noqa: BLE001 - as in _entry; the exit's files still follow
                self.stats.decode_errors += 1
                ev.flags |= E.F_PATH_UNREADABLE
                ev.paths = [""] * len(p.sc.path_pairs)
        try:
            if self.mode == "exit-only":
                st.by_name[p.sc.name] = st.by_name.get(p.sc.name, 0) + 1
                if task.ok:
                    ev.cwd, ev.cwd_mnt = self.linux.cwd(task)
                self._decode_args(p.sc, ev, task)
            if task.ok:
                self._exit_files(p.sc, ev, task)
        except Exception:  # noqa: BLE001 - as in _entry
            self.stats.decode_errors += 1
            ev.flags |= E.F_PATH_UNREADABLE | E.F_FILE_UNREADABLE
        self._append(ev)

    def _fill_task(self, ev: E.Event, taddr: int, task: Task | None) -> Task:
        t = task if task is not None else self.linux.task(taddr)
        if not t.ok:
            ev.flags |= E.F_TASK_UNREADABLE
        ev.tgid, ev.pid, ev.ppid, ev.uid = t.tgid, t.pid, t.ppid, t.uid
        ev.start_time, ev.comm, ev.cred = t.start_time, t.comm, t.cred
        return t

    def _user_space(self, task: Task) -> bool:
        """Point the address space at the task's page tables (for its user half)."""
        if self._user_cr3_ok:
            return True
        try:
            self.mem.set_cr3(self.linux.user_cr3(task))
            return True
        except Unreadable:
            return False

    def _decode_args(self, sc: Syscall, ev: E.Event, task: Task) -> None:
        read_entry(sc, ev, _TaskSource(self, task), task_ok=task.ok, envp=self.record_envp)

    def _exit_files(self, sc: Syscall, ev: E.Event, task: Task) -> None:
        read_exit(sc, ev, _TaskSource(self, task))

    def _append(self, ev: E.Event) -> int:
        seq = self.producer.append(RecType.EVENT, E.encode(ev))
        self.stats.events += 1
        return seq or 0

    # -- the break trap ----------------------------------------------------------------------
    def _code_at(self, va: int) -> bytes:
        code = self._code.get(va)
        if code is None:
            try:
                code = self.mem.read(va, 16)
            except Unreadable:
                return b""
            self._code[va] = code  # kernel text does not change while traced
        return code

    def set_exit_site(self, ret_addr: int) -> None:
        """Catch returns at ``ret_addr`` if its instruction can be skipped by emulation,
        else just after a register-preserving store there."""
        code = self._code_at(ret_addr)
        n = None if emulate(code, Regs(bytes(608))) else store_length(code)
        if n and emulate(self._code_at(ret_addr + n), Regs(bytes(608))):
            self.exit_site = ret_addr + n
        else:
            self.exit_site = ret_addr

    def _on_break(self, stop=None) -> None:
        g = self.gdb
        regs = g.read_registers()
        self.mem.set_cr3(regs["cr3"])
        self.mem.flush()
        rip = regs["rip"]
        sc = self.entry_bps.get(rip)
        if sc is not None:
            before = self._break_entry(sc, regs)
        elif rip == self.exit_site and self.exit_armed:
            before = self._break_exit(regs)
            if before is None:  # nothing in flight: remove instead of skipping
                self.exit_armed = False
                g.resume([g.bp_packet(False, rip)])
                return
        else:
            g.resume()
            return
        new = emulate(self._code_at(rip), regs)
        if new is not None:
            g.resume([*before, GdbClient.write_registers_packet(new)])
            return
        self.stats.dances += 1  # lift, step, re-insert
        g.pipeline([*before, g.bp_packet(False, rip)])
        g.step()
        g.resume([g.bp_packet(True, rip)])

    def _break_entry(self, sc: Syscall, regs: Regs) -> list[bytes]:
        try:
            taddr = self.linux.current_task(regs["gs_base"])
            args, _ = self.linux.syscall_args(regs["rdi"])
            args = normalize_args(sc, args)
        except Unreadable:
            self.stats.spurious += 1
            return []
        p = self._entry(sc, args, taddr, None)
        if p is None:
            return []
        try:
            ret_addr = self.mem.u64(regs["rsp"])
        except Unreadable:
            ret_addr = None
        if self.ret_addr is None and ret_addr is not None:
            self.ret_addr = ret_addr
            self.set_exit_site(ret_addr)
        if ret_addr is None or ret_addr != self.ret_addr:
            self.pending.pop(taddr, None)  # not called from the dispatcher: no exit event
            return []
        if not self.exit_armed:
            self.exit_armed = True
            return [self.gdb.bp_packet(True, self.exit_site)]
        return []

    def _break_exit(self, regs: Regs) -> list[bytes] | None:
        try:
            taddr = self.linux.current_task(regs["gs_base"])
        except Unreadable:
            taddr = 0
        p = self.pending.pop(taddr, None)
        if p is None:
            self.stats.spurious += 1
            return [] if self.pending else None
        self._exit(p, regs["rax"], self.linux.task(taddr))
        if self.pending:
            return []
        self.exit_armed = False
        return [self.gdb.bp_packet(False, self.exit_site)]


class _TaskSource:
    """The traced task's memory and files through the Linux layer (an eventbuild.Source)."""

    __slots__ = ("ic", "task")

    def __init__(self, ic: Interceptor, task: Task) -> None:
        self.ic, self.task = ic, task

    def user_space(self) -> bool:
        # a breakpoint stop runs on the stopped task's page tables; a watch exit stop on the
        # kernel's
        return self.ic.trap != "watch" or self.ic._user_space(self.task)

    def string(self, va: int) -> tuple[str | None, bool]:
        return self.ic.linux.user_string(va)

    def strv(self, va: int) -> tuple[list[str] | None, bool, bool]:
        return self.ic.linux.user_strv(va)

    def ints(self, va: int, count: int) -> list[int] | None:
        return self.ic.linux.user_ints(va, count)

    def fd_file(self, fd: int) -> E.FileId | None:
        return self.ic.linux.fd_file(self.task, fd, strict=True)

    def exe_file(self) -> E.FileId | None:
        return self.ic.linux.exe_file(self.task)

    def cwd(self) -> tuple[str | None, int]:
        return self.ic.linux.cwd(self.task)

    def socket(self, fd: int) -> tuple[int, int, str, str, int, int] | None:
        return self.ic.linux.fd_socket(self.task, fd)

    def sockaddr(self, va: int, size: int) -> tuple[int, str] | None:
        return self.ic.linux.user_sockaddr(va, size)


@dataclass(frozen=True)
class BootPoint:
    """Where tracing starts: the slide, a kernel page-table root, vCPU 0's per-cpu base."""

    slide: int
    kernel_cr3: int
    percpu: int
    how: str


SYSTEM_RUNNING = 3  # enum system_states: BOOTING, SCHEDULING, FREEING_INITMEM, RUNNING


def boot_to_kernel_init(gdb: GdbClient, symbols: dict[str, int], slide: int = 0) -> BootPoint:
    """Known slide (nokaslr: 0): run a just-started guest to kernel_init, which runs once,
    after ftrace patched the kernel text and before any user space. One breakpoint stop."""
    addr = symbols["kernel_init"] + slide
    gdb.check_ok(gdb.command(gdb.bp_packet(True, addr)), "breakpoint on kernel_init")
    gdb.resume()
    gdb.wait(None)
    regs = gdb.read_registers()
    gdb.check_ok(gdb.command(gdb.bp_packet(False, addr)), "breakpoint on kernel_init")
    if regs["rip"] != addr:
        raise GdbError(f"guest stopped at {regs['rip']:#x}, not at kernel_init ({addr:#x}): "
                       "is the slide right (KASLR on without detection)?")
    return BootPoint(slide, regs["cr3"], regs["gs_base"], "kernel_init")


def boot_until_slide(gdb: GdbClient, phys, profile, symbols: dict[str, int],
                     interval: float = 0.02, timeout: float = 120.0) -> BootPoint:
    """KASLR: let the guest boot, pausing it every ``interval`` (a pause, unlike a
    breakpoint, costs QEMU no translation-cache flush), until the kernel runs in its
    randomized mapping with per-cpu areas set up; then find the slide from linux_banner
    (hv.kaslr) and check that no user space has run yet (system_state < SYSTEM_RUNNING)."""
    from hv import kaslr as K
    from hv.memory import Virtual as V

    deadline = time.monotonic() + timeout
    gdb.resume()
    while True:
        time.sleep(interval)
        gdb.interrupt()
        gdb.wait(30)
        regs = gdb.read_registers()
        if regs["rip"] >= K.KERNEL_MAP and regs["cr3"]:
            try:
                k = K.detect(profile, phys.read, regs["cr3"], phys.size)
            except K.KaslrError:
                k = None
            if k is not None:
                mem = V(phys, k.pgd or regs["cr3"])
                try:
                    state = struct.unpack("<I", mem.read(symbols["system_state"] + k.slide, 4))[0]
                    percpu = mem.u64(symbols["__per_cpu_offset"] + k.slide)
                except Unreadable:
                    state, percpu = 0, 0
                if state >= SYSTEM_RUNNING:
                    raise GdbError("the guest reached user space before the KASLR slide was "
                                   "found; retry, or boot with nokaslr")
                if state > 0 and percpu >> 47 == 0x1FFFF:
                    return BootPoint(k.slide, k.pgd or regs["cr3"], percpu, "kaslr")
        if time.monotonic() > deadline:
            raise GdbError(f"no KASLR slide found within {timeout:.0f}s of boot")
        gdb.resume()


def entry_sites(mem: Virtual, symbols: dict[str, int], slide: int,
                traced: frozenset[str] | set[str] = PROVENANCE_SET,
                dispatcher: str = "x64_sys_call", span: int = 0x4000
                ) -> tuple[dict[int, Syscall], list[str]]:
    """Where to trap each traced syscall. Preferably at the dispatcher's ``jmp
    __x64_sys_X`` (6.1+ kernels dispatch through a switch in x64_sys_call): under TCG every
    instruction on a page holding a breakpoint runs as its own translation block, and the
    dispatcher's pages are cold, while the ``__x64_sys_*`` share pages with hot VFS code.
    Falls back to the function entry. Returns ({address: syscall}, names not found)."""
    want: dict[int, Syscall] = {}
    missing: list[str] = []
    for name in sorted(traced):
        sc = BY_NAME.get(name)
        fn = _SYS_FN.get(name, name)
        addr = symbols.get(f"__x64_sys_{fn}")
        if sc is None or addr is None:
            missing.append(name)
        else:
            want[addr + slide] = sc
    sites: dict[int, Syscall] = {}
    found: dict[int, list[int]] = {}
    base = symbols.get(dispatcher)
    if base is not None:
        base += slide
        end = min([a + slide for a in symbols.values() if a > base - slide] or [base + span])
        code = b""
        for off in range(0, min(end - base, span), 0x1000):  # up to the first hole
            try:
                code += mem.read(base + off, min(0x1000, end - base - off))
            except Unreadable:
                break
        for i in range(len(code) - 4):
            if code[i] == 0xE9:
                target = base + i + 5 + struct.unpack_from("<i", code, i + 1)[0]
                if target in want:
                    found.setdefault(target, []).append(base + i)
    for target, sc in want.items():
        hits = found.get(target, [])
        sites[hits[0] if len(hits) == 1 else target] = sc
    return sites, missing


class QemuGuest:
    """QEMU (TCG by default) stopped before its first instruction, with the gdbstub on a unix
    socket and guest RAM in a file, both in a fresh 0700 directory: only the collector's user
    can attach to the stub or read the RAM, and the guest has no channel to either."""

    def __init__(self, kernel: str, initrd: str, append: str, *, mem_mb: int = 256,
                 ram_file: bool = True,
                 accel: str = "tcg", serial_log: str | None = None,
                 qemu: str = "qemu-system-x86_64", extra: list[str] | None = None,
                 base_dir: str | None = None) -> None:
        import os
        import shutil
        import tempfile

        from provisor import files

        if shutil.which(qemu) is None:
            from provisor.errors import ProvisorError
            raise ProvisorError(f"{qemu} not found (install qemu-system-x86: make setup)")
        # a serial log outside the private directory (RING.serial.log beside a /dev/shm ring)
        # is opened here, never through a planted symlink or another user's file, and QEMU
        # writes it through the inherited descriptor
        self._serial_fd: int | None = None
        if serial_log:
            self._serial_fd = files.ensure_ours(serial_log, os.O_WRONLY)
            os.ftruncate(self._serial_fd, 0)
        base = base_dir or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
        self.dir = tempfile.mkdtemp(prefix="provisor-vm-", dir=base)
        os.chmod(self.dir, 0o700)
        self.sock = os.path.join(self.dir, "gdb.sock")
        self.ram = os.path.join(self.dir, "ram")
        self.serial_log = serial_log or os.path.join(self.dir, "serial.log")
        serial = (f"/dev/fd/{self._serial_fd}" if self._serial_fd is not None
                  else self.serial_log)
        self.mem_mb = mem_mb
        self.ram_file = ram_file
        self.argv = [
            qemu, "-accel", accel, "-m", f"{mem_mb}M", "-smp", "1",
            *(["-object",
                f"memory-backend-file,id=ram,size={mem_mb}M,mem-path={self.ram},share=on",
                "-machine", "memory-backend=ram"] if ram_file else []),
            "-kernel", kernel, "-initrd", initrd, "-append", append,
            "-display", "none", "-monitor", "none", "-no-reboot", "-nodefaults",
            "-serial", f"file:{serial}",
            "-chardev", f"socket,id=gdb0,path={self.sock},server=on,wait=on",
            "-gdb", "chardev:gdb0", "-S", *(extra or []),
        ]
        self.proc = None
        self.gdb: GdbClient | None = None
        self.phys = None

    def start(self) -> GdbClient:
        import os
        import subprocess

        from hv.memory import PhysicalFile

        self._err = open(os.path.join(self.dir, "qemu.err"), "w+")  # noqa: SIM115
        fds = () if self._serial_fd is None else (self._serial_fd,)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._err,
                                     pass_fds=fds)
        self._close_serial()
        deadline = time.monotonic() + 15
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise GdbError(f"QEMU did not start: {self.qemu_error()}")
            time.sleep(0.01)
        self.gdb = GdbClient.connect_unix(self.sock)
        self.gdb.supported()
        self.gdb.halt_reason()
        if self.ram_file:
            self.phys = PhysicalFile(self.ram, self.mem_mb << 20)
        return self.gdb

    def qemu_error(self) -> str:
        try:
            self._err.seek(0)
            lines = [x for x in self._err.read().splitlines() if x.strip()]
            return lines[-1] if lines else f"exit status {self.proc.poll()}"
        except (OSError, ValueError, AttributeError):
            return "unknown error"

    def wait(self, timeout: float = 30.0) -> int | None:
        import subprocess

        try:
            return self.proc.wait(timeout) if self.proc else None
        except subprocess.TimeoutExpired:
            return None

    def _close_serial(self) -> None:
        import os

        if self._serial_fd is not None:
            os.close(self._serial_fd)
            self._serial_fd = None

    def close(self) -> None:
        import shutil

        self._close_serial()
        if self.gdb:
            self.gdb.close()
        if self.phys:
            self.phys.close()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            if self.wait(5) is None:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> QemuGuest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
