"""A GDB remote-serial-protocol client for QEMU's gdbstub, in pure Python.

Why not gdb: the interceptor needs a handful of packets at the lowest possible latency and full
control over when bytes reach QEMU. QEMU (system mode) stops a running guest on *any* byte it
receives, so nothing may be sent while the guest runs except the interrupt; and QEMU 7.2 has no
QStartNoAckMode, so acknowledgements are sent lazily, as a '+' prefixed to the next packet,
which costs no extra round trip. Packets sent while the guest is stopped may be pipelined in one
write (``pipeline``): QEMU handles them in order, so "insert breakpoint, write registers,
continue" is one write and no waiting.
"""

from __future__ import annotations

import socket
import struct
import time
from collections import deque
from dataclasses import dataclass

from provisor.errors import ProvisorError

G_PACKET_SIZE = 608
GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
# offsets in QEMU 7.2's x86-64 'g' packet (target/i386/gdbstub.c)
_U64_AT = {**{n: 8 * i for i, n in enumerate(GPR_NAMES)}, "rip": 128,
           "fs_base": 164, "gs_base": 172, "k_gs_base": 180, "cr0": 188, "cr2": 196,
           "cr3": 204, "cr4": 212, "cr8": 220, "efer": 228}
_U32_AT = {"eflags": 136, "cs": 140, "ss": 144, "ds": 148, "es": 152, "fs": 156, "gs": 160}


class GdbError(ProvisorError):
    """The stub went away, answered with an error, or broke the protocol."""


class GuestExited(GdbError):
    """The guest is gone (W/X stop reply or the connection closed)."""


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def escape(data: bytes) -> bytes:
    """Binary-escape packet data ('#', '$', '}', '*' become '}' + byte ^ 0x20)."""
    out = bytearray()
    for b in data:
        if b in b"#$}*":
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def frame(data: bytes) -> bytes:
    return b"$" + data + b"#%02x" % checksum(data)


def decode_body(raw: bytes) -> bytes:
    """Undo escapes and run-length encoding of a received packet body."""
    if b"}" not in raw and b"*" not in raw:
        return raw
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        b = raw[i]
        if b == 0x7D and i + 1 < n:  # '}'
            out.append(raw[i + 1] ^ 0x20)
            i += 2
        elif b == 0x2A and out and i + 1 < n:  # '*': repeat the previous byte
            out += bytes((out[-1],)) * (raw[i + 1] - 29)
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


@dataclass(frozen=True)
class Regs:
    """The 'g' packet, parsed lazily: raw bytes plus the named registers provisor uses."""

    raw: bytes

    def __getitem__(self, name: str) -> int:
        if name in _U64_AT:
            return struct.unpack_from("<Q", self.raw, _U64_AT[name])[0]
        return struct.unpack_from("<I", self.raw, _U32_AT[name])[0]

    def get(self, name: str, default: int = 0) -> int:
        try:
            return self[name]
        except (KeyError, struct.error):
            return default

    def as_dict(self) -> dict[str, int]:
        return {n: self[n] for n in (*_U64_AT, *_U32_AT)}

    def with_(self, **values: int) -> Regs:
        buf = bytearray(self.raw)
        for name, v in values.items():
            if name in _U64_AT:
                struct.pack_into("<Q", buf, _U64_AT[name], v & 0xFFFFFFFFFFFFFFFF)
            else:
                struct.pack_into("<I", buf, _U32_AT[name], v & 0xFFFFFFFF)
        return Regs(bytes(buf))


@dataclass(frozen=True)
class Stop:
    """A stop reply: 'T05thread:01;' (signal 5: breakpoint or step), 'W00' (exited)."""

    kind: str
    signal: int
    thread: str = ""
    raw: bytes = b""
    watch: int | None = None  # the address of the watchpoint that fired, if one did

    @classmethod
    def parse(cls, pkt: bytes) -> Stop:
        if not pkt:
            raise GdbError("empty stop reply")
        kind = chr(pkt[0])
        if kind in "TS" and len(pkt) >= 3:
            sig = int(pkt[1:3], 16)
            thread = ""
            watch = None
            for field in pkt[3:].split(b";"):
                k, _, v = field.partition(b":")
                if k == b"thread":
                    thread = v.decode()
                elif k in (b"watch", b"rwatch", b"awatch"):
                    try:
                        watch = int(v, 16)
                    except ValueError:
                        pass
            return cls(kind, sig, thread, pkt, watch)
        if kind in "WX":
            return cls(kind, int(pkt[1:3] or b"0", 16), "", pkt)
        raise GdbError(f"unexpected stop reply {pkt[:40]!r}")

    @property
    def exited(self) -> bool:
        return self.kind in "WX"


class GdbClient:
    """One connection to a gdbstub. Not thread-safe; one user at a time."""

    def __init__(self, sock: socket.socket, timeout: float | None = 30.0) -> None:
        self.sock = sock
        self.timeout = timeout
        self._buf = bytearray()
        self._owe_ack = False
        self._unacked: deque[bytes] = deque()  # framed packets awaiting '+'
        self._deferred: list[bytes] = []  # sent with a resume; replies not yet read
        self.round_trips = 0
        self.max_mem_packet = 0x800  # bytes per 'm' request; QEMU's buffer is 4K hex chars
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    # -- connecting ----------------------------------------------------------------------
    @classmethod
    def connect_unix(cls, path: str, timeout: float = 30.0, wait: float = 10.0) -> GdbClient:
        """Connect to a unix-socket stub, retrying while QEMU creates the socket."""
        deadline = time.monotonic() + wait
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                return cls(s, timeout)
            except OSError as e:
                s.close()
                if time.monotonic() > deadline:
                    raise GdbError(f"cannot connect to gdbstub at {path}: {e.strerror}") from None
                time.sleep(0.02)

    @classmethod
    def connect_tcp(cls, host: str, port: int, timeout: float = 30.0) -> GdbClient:
        try:
            return cls(socket.create_connection((host, port), timeout=timeout), timeout)
        except OSError as e:
            raise GdbError(f"cannot connect to gdbstub at {host}:{port}: {e}") from None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- framing -------------------------------------------------------------------------
    def _fill(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise GdbError("gdbstub timed out") from None
        except OSError as e:
            raise GuestExited(f"gdbstub connection lost: {e}") from None
        if not chunk:
            raise GuestExited("gdbstub closed the connection")
        self._buf += chunk

    def _write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise GuestExited(f"gdbstub connection lost: {e}") from None

    def send_packets(self, bodies: list[bytes]) -> None:
        """Frame and send packets in one write, prefixed by the ack we owe, if any."""
        framed = [frame(b) for b in bodies]
        out = (b"+" if self._owe_ack else b"") + b"".join(framed)
        self._owe_ack = False
        self._unacked.extend(framed)
        self._write(out)

    def recv_packet(self, timeout: float | None = -1.0) -> bytes:
        """The next packet's decoded body. Handles '+'/'-' (retransmitting on '-'), partial
        reads, bad checksums (answered '-') and notifications ('%', ignored)."""
        if timeout == -1.0:
            timeout = self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            buf = self._buf
            i = 0
            n = len(buf)
            while i < n and buf[i] not in (0x24, 0x25):  # '$' or '%'
                c = buf[i]
                if c == 0x2B and self._unacked:  # '+'
                    self._unacked.popleft()
                elif c == 0x2D and self._unacked:  # '-': resend the oldest unacked packet
                    self._write(self._unacked[0])
                i += 1
            if i:
                del buf[:i]
                n = len(buf)
            if n:
                end = buf.find(b"#")
                if end != -1 and end + 3 <= n:
                    start, body, cs = buf[0], bytes(buf[1:end]), bytes(buf[end + 1:end + 3])
                    del buf[:end + 3]
                    if start == 0x25:  # notification: no ack, not ours
                        continue
                    try:
                        ok = int(cs, 16) == checksum(body)
                    except ValueError:
                        ok = False
                    if not ok:
                        self._write(b"-")
                        continue
                    self._owe_ack = True
                    return decode_body(body)
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if remaining == 0.0:
                raise GdbError("gdbstub timed out")
            self._fill(remaining)

    def command(self, body: bytes) -> bytes:
        """Send one packet and return its reply."""
        self.round_trips += 1
        self.send_packets([body])
        return self.recv_packet()

    def pipeline(self, bodies: list[bytes], resume: bytes | None = None) -> list[bytes]:
        """Send packets (and optionally a final resume packet, 'c' or 's', whose stop reply is
        *not* awaited) in one write; return the replies of the non-resume packets."""
        self.round_trips += 1
        self.send_packets(bodies + ([resume] if resume else []))
        replies = [self.recv_packet() for _ in bodies]
        return replies

    @staticmethod
    def check_ok(reply: bytes, what: str) -> None:
        if reply != b"OK":
            raise GdbError(f"{what}: stub answered {reply[:40]!r}")

    # -- commands ------------------------------------------------------------------------
    def supported(self) -> dict[str, str]:
        reply = self.command(b"qSupported:swbreak+;hwbreak+")
        feats: dict[str, str] = {}
        for f in reply.split(b";"):
            if not f:
                continue
            k, eq, v = f.partition(b"=")
            if eq:
                feats[k.decode()] = v.decode()
            else:
                feats[k[:-1].decode()] = k[-1:].decode()
        size = feats.get("PacketSize")
        if size:
            try:
                self.max_mem_packet = max(64, min(0x800, int(size, 16) // 2 - 16))
            except ValueError:
                pass
        return feats

    def halt_reason(self) -> Stop:
        return Stop.parse(self.command(b"?"))

    def read_registers(self) -> Regs:
        reply = self.command(b"g")
        if reply.startswith(b"E") and len(reply) == 3:
            raise GdbError(f"'g' failed: {reply.decode()}")
        try:
            raw = bytes.fromhex(reply.decode())
        except ValueError:
            raise GdbError("'g' reply is not hex") from None
        if len(raw) < 236:
            raise GdbError(f"'g' reply too short ({len(raw)} bytes)")
        return Regs(raw)

    @staticmethod
    def write_registers_packet(regs: Regs) -> bytes:
        return b"G" + regs.raw.hex().encode()

    def write_registers(self, regs: Regs) -> None:
        self.check_ok(self.command(self.write_registers_packet(regs)), "'G'")

    def read_memory(self, addr: int, length: int) -> bytes:
        """Virtual memory as the vCPU sees it now ('m', chunked). GdbError on failure."""
        out = bytearray()
        while length > 0:
            n = min(length, self.max_mem_packet)
            reply = self.command(b"m%x,%x" % (addr, n))
            if not reply or (reply[:1] == b"E" and len(reply) == 3):
                raise GdbError(f"cannot read guest memory at {addr:#x}")
            try:
                chunk = bytes.fromhex(reply.decode())
            except ValueError:
                raise GdbError("'m' reply is not hex") from None
            if not chunk:
                raise GdbError(f"cannot read guest memory at {addr:#x}")
            out += chunk
            addr += len(chunk)
            length -= len(chunk)
        return bytes(out)

    def write_memory(self, addr: int, data: bytes) -> None:
        self.check_ok(self.command(b"M%x,%x:%s" % (addr, len(data), data.hex().encode())),
                      "'M'")

    @staticmethod
    def bp_packet(insert: bool, addr: int, hw: bool = False, kind: int = 1) -> bytes:
        return b"%s%d,%x,%x" % (b"Z" if insert else b"z", 1 if hw else 0, addr, kind)

    WATCH_TYPES = {"write": 2, "read": 3, "access": 4}

    @classmethod
    def watch_packet(cls, insert: bool, addr: int, length: int, kind: str = "read") -> bytes:
        """Z2 (write), Z3 (read), Z4 (access) watchpoint packets."""
        return b"%s%d,%x,%x" % (b"Z" if insert else b"z", cls.WATCH_TYPES[kind], addr, length)

    def insert_breakpoint(self, addr: int, hw: bool = False) -> None:
        reply = self.command(self.bp_packet(True, addr, hw))
        if reply == b"":
            raise GdbError(f"stub does not support {'hardware' if hw else 'software'} "
                           "breakpoints")
        self.check_ok(reply, f"breakpoint at {addr:#x}")

    def remove_breakpoint(self, addr: int, hw: bool = False) -> None:
        self.check_ok(self.command(self.bp_packet(False, addr, hw)), f"remove {addr:#x}")

    def resume(self, before: list[bytes] | None = None, step: bool = False) -> None:
        """Let the guest run, after ``before`` packets sent in the same write. Their replies
        are not waited for here (that would cost a round trip): ``wait`` checks them."""
        before = before or []
        self.send_packets(before + [b"s" if step else b"c"])
        self._deferred.extend(before)

    def wait(self, timeout: float | None = None) -> Stop:
        """Block until the running guest stops; GuestExited when it is gone. Replies to the
        packets sent with the resume come first and must all be OK."""
        while self._deferred:
            body = self._deferred.pop(0)
            reply = self.recv_packet(timeout)
            if reply != b"OK":
                self._deferred.clear()
                if reply[:1] in (b"T", b"S", b"W", b"X"):
                    raise GdbError(f"no reply to {body[:30]!r} before the stop")
                raise GdbError(f"{body[:30]!r}: stub answered {reply[:40]!r}")
        stop = Stop.parse(self.recv_packet(timeout))
        if stop.exited:
            raise GuestExited(f"guest exited ({stop.raw.decode(errors='replace')})")
        return stop

    def cont(self, timeout: float | None = None) -> Stop:
        self.resume()
        return self.wait(timeout)

    def step(self, timeout: float | None = 30.0) -> Stop:
        self.resume(step=True)
        return self.wait(timeout)

    def interrupt(self) -> None:
        """Ask a running guest to stop (the stop reply follows, read it with ``wait``)."""
        self._write(b"\x03")

    def __enter__(self) -> GdbClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
