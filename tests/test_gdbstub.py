"""The RSP client against a fake stub on a socketpair: framing, acks, retransmission, partial
reads, run-length encoding, the 'g' layout, stop replies, pipelining."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from hv.gdbstub import (
    G_PACKET_SIZE,
    GdbClient,
    GdbError,
    GuestExited,
    Regs,
    Stop,
    checksum,
    decode_body,
    escape,
    frame,
)


def rle(data: bytes) -> bytes:
    """Run-length encode like a stub may: 'X*' + chr(n + 29) for n extra repeats."""
    out = bytearray()
    i = 0
    while i < len(data):
        j = i
        while j < len(data) and data[j] == data[i] and j - i < 97:
            j += 1
        n = j - i
        if n > 3:
            extra = n - 1
            while chr(extra + 29) in "#$+-":  # forbidden repeat counts
                extra -= 1
            out += bytes((data[i],)) + b"*" + bytes((extra + 29,))
            i += extra + 1
        else:
            out += data[i:j]
            i = j
    return bytes(out)


class FakeStub(threading.Thread):
    """Answers packets like QEMU: '+' on a good checksum, then the reply. Options: send its
    output a byte at a time, NACK the first packet, corrupt the first reply, RLE replies."""

    def __init__(self, sock: socket.socket, *, dribble: bool = False, nack_first: bool = False,
                 corrupt_first: bool = False, use_rle: bool = False) -> None:
        super().__init__(daemon=True)
        self.sock, self.dribble, self.use_rle = sock, dribble, use_rle
        self.nack_first, self.corrupt_first = nack_first, corrupt_first
        self.received: list[bytes] = []
        self.acks = 0
        self.mem = bytearray(range(256)) * 64
        self.regs = bytearray(G_PACKET_SIZE)
        self.last_reply = b""

    def send(self, data: bytes) -> None:
        if self.dribble:
            for b in data:
                self.sock.sendall(bytes((b,)))
        else:
            self.sock.sendall(data)

    def reply(self, body: bytes) -> None:
        enc = rle(body) if self.use_rle else body
        pkt = frame(enc)
        self.last_reply = pkt
        if self.corrupt_first:
            self.corrupt_first = False
            pkt = pkt[:-2] + b"00" if pkt[-2:] != b"00" else pkt[:-2] + b"11"
        self.send(pkt)

    def handle(self, body: bytes) -> None:
        self.received.append(body)
        if body == b"?":
            self.reply(b"T05thread:01;")
        elif body == b"g":
            self.reply(bytes(self.regs).hex().encode())
        elif body.startswith(b"G"):
            self.regs[:] = bytes.fromhex(body[1:].decode())
            self.reply(b"OK")
        elif body.startswith(b"m"):
            a, n = (int(x, 16) for x in body[1:].split(b","))
            if a + n > len(self.mem):
                self.reply(b"E14")
            else:
                self.reply(self.mem[a:a + n].hex().encode())
        elif body[:1] in (b"Z", b"z"):
            self.reply(b"OK")
        elif body.startswith(b"qSupported"):
            self.reply(b"PacketSize=1000;qXfer:features:read+;vContSupported+")
        elif body in (b"c", b"s"):
            self.reply(b"T05thread:01;rwatch:ffff88800f806014;" if body == b"c"
                       else b"T05thread:01;")
        elif body == b"k":
            self.sock.close()
            raise SystemExit
        else:
            self.reply(b"")

    def run(self) -> None:
        buf = bytearray()
        try:
            while True:
                chunk = self.sock.recv(4096)
                if not chunk:
                    return
                buf += chunk
                while buf:
                    if buf[0:1] == b"+":
                        self.acks += 1
                        del buf[0]
                    elif buf[0:1] == b"-":
                        del buf[0]
                        self.send(self.last_reply)
                    elif buf[0:1] == b"\x03":
                        del buf[0]
                        self.reply(b"T02thread:01;")
                    elif buf[0:1] == b"$":
                        end = buf.find(b"#")
                        if end < 0 or len(buf) < end + 3:
                            break
                        body = bytes(buf[1:end])
                        ok = int(buf[end + 1:end + 3], 16) == checksum(body)
                        del buf[:end + 3]
                        if self.nack_first or not ok:
                            self.nack_first = False
                            self.send(b"-")
                            continue
                        self.send(b"+")
                        self.handle(body)
                    else:
                        del buf[0]
        except (OSError, SystemExit):
            return


@pytest.fixture
def pair():
    made = []

    def make(**kw) -> tuple[GdbClient, FakeStub]:
        a, b = socket.socketpair()
        stub = FakeStub(b, **kw)
        stub.start()
        c = GdbClient(a, timeout=5)
        made.append((c, b))
        return c, stub

    yield make
    for c, b in made:
        c.close()
        b.close()


def test_framing_helpers() -> None:
    assert frame(b"g") == b"$g#67"
    assert checksum(b"OK") == 0x9A
    assert escape(b"a#b}c") == b"a}\x03b}]c"
    assert decode_body(b"}\x03}]") == b"#}"
    assert decode_body(b"0* ") == b"0" * 4  # ' ' is 32: three more
    assert decode_body(rle(b"0" * 1216)) == b"0" * 1216


@pytest.mark.parametrize("opts", [{}, {"dribble": True}, {"nack_first": True},
                                  {"corrupt_first": True}, {"use_rle": True},
                                  {"dribble": True, "use_rle": True}])
def test_registers_through_every_transport_quirk(pair, opts) -> None:
    c, stub = pair(**opts)
    struct.pack_into("<Q", stub.regs, 128, 0xFFFF_FFFF_8134_7540)  # rip
    struct.pack_into("<Q", stub.regs, 172, 0xFFFF_8880_0F80_0000)  # gs_base
    struct.pack_into("<Q", stub.regs, 204, 0x5696000)  # cr3
    struct.pack_into("<Q", stub.regs, 5 * 8, 0xFFFF_C900_0001_3F58)  # rdi
    regs = c.read_registers()
    assert regs["rip"] == 0xFFFF_FFFF_8134_7540
    assert regs["gs_base"] == 0xFFFF_8880_0F80_0000
    assert regs["cr3"] == 0x5696000
    assert regs["rdi"] == 0xFFFF_C900_0001_3F58
    assert regs["rax"] == 0 and regs["k_gs_base"] == 0
    assert len(regs.raw) == G_PACKET_SIZE


def test_write_registers_and_lazy_acks(pair) -> None:
    c, stub = pair()
    regs = c.read_registers().with_(rip=0x1234, rax=-38, eflags=0x202)
    assert regs["rax"] == (1 << 64) - 38 and regs["eflags"] == 0x202
    c.write_registers(regs)
    assert stub.regs[128:136] == struct.pack("<Q", 0x1234)
    c.halt_reason()  # carries the ack of the previous reply
    assert stub.acks >= 2
    assert stub.received[0] == b"g" and stub.received[1].startswith(b"G")


def test_memory_reads_are_chunked(pair) -> None:
    c, stub = pair()
    c.supported()
    c.max_mem_packet = 100
    data = c.read_memory(10, 350)
    assert data == bytes(stub.mem[10:360])
    assert sum(1 for r in stub.received if r.startswith(b"m")) == 4
    with pytest.raises(GdbError):
        c.read_memory(len(stub.mem) - 4, 8)


def test_pipeline_and_resume(pair) -> None:
    c, stub = pair()
    replies = c.pipeline([c.bp_packet(True, 0x1000), c.watch_packet(True, 0x2000, 8, "read"),
                          c.watch_packet(False, 0x3000, 4, "write")])
    assert replies == [b"OK", b"OK", b"OK"]
    assert stub.received == [b"Z0,1000,1", b"Z3,2000,8", b"z2,3000,4"]
    c.resume([c.bp_packet(False, 0x1000)])
    stop = c.wait(5)
    assert stop.signal == 5 and stop.thread == "01" and stop.watch == 0xFFFF_8880_0F80_6014
    assert stub.received[-2:] == [b"z0,1000,1", b"c"]
    c.resume()
    c.interrupt()
    assert c.wait(5).signal == 5  # the 'c' reply first
    assert c.wait(5).signal == 2  # then the interrupt's


def test_stop_parsing() -> None:
    assert Stop.parse(b"T05thread:p01.01;swbreak:;").thread == "p01.01"
    assert Stop.parse(b"S02").signal == 2
    assert Stop.parse(b"W00").exited
    assert Stop.parse(b"T05thread:01;watch:1000;").watch == 0x1000
    with pytest.raises(GdbError):
        Stop.parse(b"OK")
    with pytest.raises(GdbError):
        Stop.parse(b"")


def test_regs_helpers() -> None:
    r = Regs(bytes(G_PACKET_SIZE)).with_(r15=7, cs=0x10, cr3=0x1000)
    d = r.as_dict()
    assert d["r15"] == 7 and d["cs"] == 0x10 and d["cr3"] == 0x1000
    assert r.get("nonsense", 9) == 9


def test_closed_connection_is_guest_exited(pair) -> None:
    c, stub = pair()
    c.send_packets([b"k"])
    with pytest.raises(GuestExited):
        c.recv_packet(5)


def test_timeout(pair) -> None:
    c, stub = pair()
    c.resume()
    c.recv_packet(5)  # the stop reply
    with pytest.raises(GdbError, match="timed out"):
        c.recv_packet(0.05)


def test_unix_connect_errors(tmp_path) -> None:
    with pytest.raises(GdbError, match="cannot connect"):
        GdbClient.connect_unix(str(tmp_path / "nothing.sock"), wait=0.05)


def test_tcp(pair) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    out: dict = {}

    def accept() -> None:
        s, _ = srv.accept()
        out["stub"] = FakeStub(s)
        out["stub"].start()

    t = threading.Thread(target=accept)
    t.start()
    c = GdbClient.connect_tcp("127.0.0.1", port)
    t.join()
    assert c.halt_reason().signal == 5
    c.close()
    srv.close()
