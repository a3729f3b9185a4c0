"""The interceptor against a scripted fake gdbstub and crafted guest memory (write-ahead,
entry/exit matching, fds, pipes, stale entries), instruction emulation, and, marked ``guest``,
real boots under QEMU with and without KASLR."""

from __future__ import annotations

import shutil
import struct
import time

import pytest
from test_linux_layer import PERCPU, FakeGuest, world

from hv.gdbstub import G_PACKET_SIZE, GdbClient, GuestExited, Regs, Stop
from hv.interceptor import TSS_SP2, Interceptor, KernelView, emulate, entry_sites, store_length
from pmem import ring
from provisor import events as E
from provisor.abi import AT_FDCWD
from provisor.syscalls import BY_NAME, nr_of

KSTACK, TOP, TSS, ENTRY = 0x191C0, 0x1FB50, 0x6000, 0xFFFF_FFFF_81C0_0080
KV = KernelView(percpu=PERCPU, kernel_cr3=0, kstack_offset=KSTACK, top_of_stack=TOP,
                tss_rw=TSS, syscall_entry=ENTRY)
W_ENTRY, W_EXIT = PERCPU + TSS + TSS_SP2, PERCPU + KSTACK
PGD_VA = 0xFFFF_8880_0FF0_0000


class FakeGdb:
    """Plays a script of stops. Each step: (watch address, registers or None, a callable that
    mutates guest memory before the stop). Records what the interceptor sent on resume and
    how many events the ring held at that moment (the write-ahead check)."""

    bp_packet = staticmethod(GdbClient.bp_packet)
    watch_packet = GdbClient.watch_packet
    write_registers_packet = staticmethod(GdbClient.write_registers_packet)
    check_ok = staticmethod(GdbClient.check_ok)

    def __init__(self, steps, events_in_ring) -> None:
        self.steps = list(steps)
        self.regs: Regs | None = None
        self.resumes: list[tuple[list[bytes], int]] = []
        self.events_in_ring = events_in_ring
        self.commands: list[bytes] = []

    def command(self, body: bytes) -> bytes:
        self.commands.append(body)
        return b"OK"

    def pipeline(self, bodies, resume=None):
        self.commands.extend(bodies)
        return [b"OK"] * len(bodies)

    def resume(self, before=None, step=False) -> list[bytes]:
        self.resumes.append((list(before or []), self.events_in_ring()))
        return [b"OK"] * len(before or [])

    def wait(self, timeout=None) -> Stop:
        if not self.steps:
            raise GuestExited("W00")
        watch, regs, mutate = self.steps.pop(0)
        if mutate:
            mutate()
        self.regs = regs
        return Stop("T", 5, "01", b"T05", watch)

    def read_registers(self) -> Regs:
        assert self.regs is not None, "the interceptor asked for registers at an exit stop"
        return self.regs


def regs_for(nr: int, *args: int, cr3: int) -> Regs:
    r = Regs(bytes(G_PACKET_SIZE)).with_(rip=ENTRY + 0x31, rax=nr, gs_base=PERCPU, cr3=cr3)
    names = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
    return r.with_(**{n: a for n, a in zip(names, args, strict=False)})


@pytest.fixture
def setup(shm_dir):
    g, w = world()
    g.map(PGD_VA, g.cr3)  # mm->pgd: the same tables, as a kernel direct-map address
    for t in (w["task"], w["init"]):
        mm = g.kalloc(80)
        g.u64(mm + 72, PGD_VA)
        g.u64(t + 64, mm)
    stack = g.kalloc(4096)
    g.u64(PERCPU + TOP, stack + 4096)
    path = str(shm_dir / "r.ring")
    ring.create(path, 1 << 20)
    prod = ring.Producer.open(path)
    yield g, w, prod, path, stack + 4096 - 168
    prod.close()


def events(path: str) -> list[E.Event]:
    return [E.decode(r.payload, r.seq) for r in ring.iter_records(path) if r.type == 16]


def run(g, prod, path, steps, **kw) -> tuple[Interceptor, FakeGdb]:
    kv = KernelView(**{**KV.__dict__, "kernel_cr3": g.cr3})
    gdb = FakeGdb(steps, lambda: len(events(path)))
    lx = g.linux()
    ic = Interceptor(gdb, lx.mem, lx, prod, kv, **kw)
    ic.install()
    ic.run()
    return ic, gdb


def test_openat_entry_exit(setup) -> None:
    g, w, prod, path, regs_ptr = setup
    name = g.ualloc(b"a.txt\0")
    steps = [
        (W_ENTRY, regs_for(nr_of("openat"), AT_FDCWD & (2**64 - 1), name, 0, cr3=g.cr3), None),
        (W_EXIT, None, lambda: g.u64(regs_ptr + 80, 3)),
    ]
    ic, gdb = run(g, prod, path, steps)
    assert gdb.commands[0] == b"Z3,%x,8" % W_ENTRY
    evs = events(path)
    assert [(e.name, e.phase) for e in evs] == [("openat", E.ENTRY), ("openat", E.EXIT)]
    ent, ex = evs
    assert (ent.tgid, ent.pid, ent.ppid, ent.uid, ent.comm) == (80, 80, 1, 1000, "sh")
    assert ent.cwd == "/root/work" and ent.cwd_mnt == 1 and ent.paths == ["a.txt"]
    assert ent.arg(0) == AT_FDCWD and ent.flags == 0
    assert ex.ret == 3 and ex.entry_seq == ent.seq
    assert [(f.ino, f.path) for f in ex.files] == [(77, "/root/work/a.txt")]
    # write-ahead: the entry was in the ring when the guest was let go, and the exit
    # watchpoint went in with that same resume; it came out with the exit's resume
    assert gdb.resumes[1] == ([b"Z2,%x,4" % W_EXIT], 1)
    assert gdb.resumes[2] == ([b"z2,%x,4" % W_EXIT], 2)
    assert not ic.pending and not ic.exit_armed


def test_untraced_and_foreign_stops(setup) -> None:
    g, w, prod, path, regs_ptr = setup
    other = w["init"]
    steps = [
        (W_ENTRY, regs_for(12, 0, cr3=g.cr3), None),  # brk: not traced
        (W_ENTRY, regs_for(nr_of("read"), 3, 0x1000, 10, cr3=g.cr3), None),
        (W_EXIT, None, lambda: g.set_current(other)),  # someone else returns to user space
        (W_EXIT, None, lambda: (g.set_current(w["task"]), g.u64(regs_ptr + 80, 10))),
        (W_ENTRY, regs_for(nr_of("read"), 3, 0, 1, cr3=g.cr3).with_(rip=0x1234), None),
        (0xDEAD, None, None),  # a stop nobody asked for
    ]
    ic, gdb = run(g, prod, path, steps)
    evs = events(path)
    assert [(e.name, e.phase, e.ret) for e in evs] == [("read", 0, None), ("read", 1, 10)]
    assert evs[0].files and evs[0].files[0].ino == 77  # fd 3 identified at entry
    assert ic.stats.spurious == 3 and ic.stats.stops == 6
    assert [r[0] for r in gdb.resumes[1:]] == [[], [b"Z2,%x,4" % W_EXIT], [],
                                               [b"z2,%x,4" % W_EXIT], [], []]


def test_pipe2_and_exit_group(setup) -> None:
    g, w, prod, path, regs_ptr = setup
    fds = g.ualloc(bytes(8))

    def kernel_fills_pipe() -> None:
        g.write(fds, struct.pack("<ii", 4, 9))
        g.u64(regs_ptr + 80, 0)

    steps = [
        (W_ENTRY, regs_for(nr_of("pipe2"), fds, 0, cr3=g.cr3), None),
        (W_EXIT, None, kernel_fills_pipe),
        (W_ENTRY, regs_for(nr_of("exit_group"), 0, cr3=g.cr3), None),
    ]
    ic, gdb = run(g, prod, path, steps)
    evs = events(path)
    assert [(e.name, e.phase) for e in evs] == [("pipe2", 0), ("pipe2", 1), ("exit_group", 0)]
    ex = evs[1]
    assert ex.out_fds == [4, 9]
    assert [f.ino for f in ex.files] == [555]  # fd 4 is the pipe; fd 9 is not open
    assert ex.flags & E.F_FILE_UNREADABLE
    assert gdb.resumes[-1][0] == []  # exit_group: no exit watchpoint


def test_stale_entry_of_a_dead_task(setup) -> None:
    g, w, prod, path, regs_ptr = setup
    steps = [
        (W_ENTRY, regs_for(nr_of("read"), 3, 0, 1, cr3=g.cr3), None),
        # the task is killed inside read(); its task_struct is reused by pid 99
        (W_EXIT, None, lambda: g.write(w["task"], struct.pack("<ii", 99, 99))),
    ]
    ic, _ = run(g, prod, path, steps)
    assert [e.phase for e in events(path)] == [E.ENTRY]
    assert ic.stats.spurious == 1 and not ic.pending


def test_hostile_memory_marks_events(setup) -> None:
    g, w, prod, path, regs_ptr = setup
    argv = g.ualloc(struct.pack("<QQ", 0x7777_0000, 0))
    g.u64(w["work"] + 24, w["work"])  # cwd dentry is its own parent but not the mount root
    g.u32(w["root_d"] + 36, 0xFFFFFFFF)
    steps = [(W_ENTRY, regs_for(nr_of("execve"), 0x6666_0000, argv, 0, cr3=g.cr3), None),
             (W_EXIT, None, lambda: g.u64(regs_ptr + 80, -2 & (2**64 - 1)))]
    run(g, prod, path, steps)
    ent, ex = events(path)
    assert ent.paths == [""] and ent.flags & E.F_PATH_UNREADABLE
    assert not ent.argv and ent.flags & E.F_ARGV_UNREADABLE
    assert ex.ret == -2


def test_exit_only_mode(setup) -> None:
    g, w, prod, path, regs_ptr = setup
    name = g.ualloc(b"b.txt\0")
    steps = [(W_ENTRY, regs_for(nr_of("unlink"), name, cr3=g.cr3), None),
             (W_EXIT, None, lambda: g.u64(regs_ptr + 80, 0))]
    run(g, prod, path, steps, mode="exit-only")
    (ev,) = events(path)
    assert ev.phase == E.EXIT and ev.entry_seq == 0 and ev.paths == ["b.txt"] and ev.ret == 0
    assert ev.cwd == "/root/work"


def test_emulate() -> None:
    r = Regs(bytes(G_PACKET_SIZE)).with_(rip=0x1000, rbx=0xAB, rdi=1)
    assert emulate(b"\x0f\x1f\x44\x00\x00", r)["rip"] == 0x1005
    assert emulate(b"\xf3\x0f\x1e\xfa", r)["rip"] == 0x1004
    assert emulate(b"\xe9\x10\x00\x00\x00", r)["rip"] == 0x1015
    assert emulate(b"\xe9\xf0\xff\xff\xff", r)["rip"] == 0x0FF5
    assert emulate(b"\xeb\xfe", r)["rip"] == 0x1000
    moved = emulate(b"\x48\x89\xdf", r)  # mov %rbx,%rdi
    assert moved["rdi"] == 0xAB and moved["rip"] == 0x1003
    assert emulate(b"\x4c\x89\xc7", r.with_(r8=5))["rdi"] == 5  # mov %r8,%rdi
    assert emulate(b"\x48\x89\xe7", r) is not None  # mov %rsp,%rdi reads rsp: fine
    assert emulate(b"\x48\x89\xc4", r) is None  # writes rsp
    assert emulate(b"\xe8\x00\x00\x00\x00", r) is None  # a call
    assert emulate(b"", r) is None
    assert store_length(b"\x48\x89\x43\x50") == 4  # mov %rax,0x50(%rbx)
    assert store_length(b"\x48\x89\x83\x00\x01\x00\x00") == 7
    assert store_length(b"\x48\x89\x04\x24") is None  # SIB
    assert store_length(b"\x48\x89\xdf") is None  # register to register


def test_entry_sites_prefers_the_dispatcher() -> None:
    g = FakeGuest()
    base = 0xFFFF_FFFF_8100_3320
    g.map_range(base & ~0xFFF, 0x2000)
    targets = {"openat": 0xFFFF_FFFF_8134_7540, "read": 0xFFFF_FFFF_8134_A410,
               "write": 0xFFFF_FFFF_8134_A540}
    code = bytearray(b"\x90" * 64)
    for i, name in enumerate(("openat", "read")):
        at = 8 + 16 * i
        code[at] = 0xE9
        struct.pack_into("<i", code, at + 1, targets[name] - (base + at + 5))
    g.write(base, bytes(code))
    syms = {"x64_sys_call": base, **{f"__x64_sys_{n}": a for n, a in targets.items()}}
    v = g.linux().mem
    sites, missing = entry_sites(v, syms, 0, {"openat", "read", "write", "nosuch"})
    assert sites == {base + 8: BY_NAME["openat"], base + 24: BY_NAME["read"],
                     targets["write"]: BY_NAME["write"]}
    assert missing == ["nosuch"]


# ---------------------------------------------------------------------------------- guest tests

needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86_64 not installed (make setup)")
FIRST = """#!/bin/sh
echo hi > /root/first.txt
"""


def _boot(shm_dir, kaslr: bool, trap: str = "plugin"):
    from hv.collect import collect
    from provisor.config import load

    wl = shm_dir / "w.sh"
    wl.write_text(FIRST)
    r = str(shm_dir / "g.ring")
    s = collect(load(), str(wl), None, r, str(shm_dir / "g.db"), kaslr=kaslr,
                run_daemon=False, trap=trap, log=lambda m: None)
    return s, events(r)


@pytest.mark.guest
@needs_qemu
@pytest.mark.parametrize("trap", ["plugin", "watch"])
def test_guest_boot_nokaslr_first_syscalls_of_init(shm_dir, trap) -> None:
    s, evs = _boot(shm_dir, kaslr=False, trap=trap)
    assert s.slide == 0
    # tracing starts at kernel_init: user-mode helpers the kernel runs before /init (modprobe)
    # come first; then /init (busybox sh, PID 1) opens its script: its first traced syscall
    init = [e for e in evs if e.tgid == 1]
    first = init[0]
    assert first.name == "openat" and first.paths == ["/init"] and first.phase == E.ENTRY
    assert first.comm == "init" and first.cwd == "/" and first.ppid == 0
    assert init[1].phase == E.EXIT and init[1].entry_seq == first.seq and init[1].ret >= 0
    writes = [e for e in evs if e.name == "openat" and e.paths == ["/root/first.txt"]]
    assert writes and writes[0].cwd == "/root"
    ex = next(e for e in evs if e.phase == E.EXIT and e.entry_seq == writes[0].seq)
    assert ex.ret >= 0 and ex.files and ex.files[0].path == "/root/first.txt"
    if trap == "plugin":  # no stops: the hypervisor itself records
        assert s.stops == 0 and s.syscalls > 10 and s.plugin["banner"] is True
    else:
        assert s.stops >= s.syscalls > 10


@pytest.mark.guest
@needs_qemu
@pytest.mark.parametrize("trap", ["plugin", "watch"])
def test_guest_boot_with_kaslr(shm_dir, trap) -> None:
    s, evs = _boot(shm_dir, kaslr=True, trap=trap)
    assert s.slide % 0x200000 == 0
    init = [e for e in evs if e.tgid == 1]
    assert init[0].name == "openat" and init[0].paths == ["/init"]
    assert any(e.name == "openat" and e.paths == ["/root/first.txt"] for e in evs)


def test_hung_guest_times_out(setup) -> None:
    from hv.gdbstub import GdbError

    g, w, prod, path, _ = setup

    class Hung(FakeGdb):
        def wait(self, timeout=None):
            assert timeout is not None and timeout <= 0.05
            time.sleep(timeout)  # as the real client: the timeout elapses, then it raises
            raise GdbError("gdbstub timed out")

    lx = g.linux()
    kv = KernelView(**{**KV.__dict__, "kernel_cr3": g.cr3})
    ic = Interceptor(Hung([], lambda: 0), lx.mem, lx, prod, kv)
    with pytest.raises(GdbError, match="did not power off within 0s"):
        ic.run(timeout=0.05)


def test_fd_arguments_are_32_bit_ints(setup) -> None:
    g, w, prod, path, regs_ptr = setup
    name = g.ualloc(b"a.txt\0")
    steps = [(W_ENTRY, regs_for(nr_of("openat"), 0xFFFFFF9C, name, 0, cr3=g.cr3), None),
             (W_EXIT, None, lambda: g.u64(regs_ptr + 80, 3)),
             (W_ENTRY, regs_for(nr_of("read"), 0xDEAD_0000_0000_0003, 0x1000, 1, cr3=g.cr3),
              None)]
    run(g, prod, path, steps)
    ent, _, rd = events(path)
    assert ent.arg(0) == AT_FDCWD and ent.flags == 0  # zero-extended by libc: still AT_FDCWD
    assert rd.arg(0) == 3 and rd.files and rd.files[0].ino == 77  # upper bits ignored


def test_garbage_task_fields_and_decoder_failures_still_log(setup, monkeypatch) -> None:
    g, w, prod, path, regs_ptr = setup
    g.write(w["task"], struct.pack("<ii", -5, -7))  # negative pid/tgid: must still encode
    name = g.ualloc(b"x\0")

    def boom(*a, **k):
        raise RuntimeError("decoder bug")

    lx = g.linux()
    monkeypatch.setattr(lx, "user_string", boom)
    kv = KernelView(**{**KV.__dict__, "kernel_cr3": g.cr3})
    steps = [(W_ENTRY, regs_for(nr_of("unlink"), name, cr3=g.cr3), None),
             (W_EXIT, None, lambda: g.u64(regs_ptr + 80, 0))]
    gdb = FakeGdb(steps, lambda: len(events(path)))
    ic = Interceptor(gdb, lx.mem, lx, prod, kv)
    ic.install()
    ic.run()
    ent, ex = events(path)
    assert ent.pid == (1 << 32) - 5 and ent.flags & E.F_PATH_UNREADABLE
    # the exit reads the unreadable path again (docs/FORMAT.md, "Paths at an EXIT"), and the
    # decoder fails again: flagged, still logged
    assert ic.stats.decode_errors == 2 and ex.ret == 0
    assert ex.paths == [""] and ex.flags & E.F_PATH_UNREADABLE
