"""Real crashes: ``provisor ring append`` SIGKILLed at random moments, over and over, on a small
ring that a concurrent consumer drains (so it wraps many times). Every sequence number the
producer printed (acknowledged) must be in ``ring dump --json`` or already consumed, with its
payload; the next producer continues the numbering where the valid chain ends.

Each producer is the real ``provisor`` entry point (``provisor.cli.main`` with the same argv),
run by this interpreter (``sys.executable``), never a ``provisor`` looked up on PATH.
To keep 60 runs near 10-20 s, the next process is started while the current one runs and
waits, its imports done, for its command line on stdin (importing the whole CLI takes most of a
second; a run itself lasts 20-250 ms).
"""

from __future__ import annotations

import bisect
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from click.testing import CliRunner
from crashutil import PROVISOR

from pmem import layout as L
from pmem import ring
from provisor.cli import cli

RUNS = int(os.environ.get("PROVISOR_KILL_RUNS", "50"))
SIZE = L.DATA_OFFSET + L.MIN_DATA
# the command line is read from the binary stdin, as `ring append` reads its lines: a text-mode
# readline would buffer ahead and keep the first lines from it
ZYGOTE = ("import sys\nimport provisor.cli as c\n"
          "sys.argv = ['provisor', *sys.stdin.buffer.readline().decode().rstrip('\\n')"
          ".split('\\0')]\n"
          "c.main()\n")
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}


def line(run: int, k: int) -> bytes:
    """The k-th line fed to run ``run``: unique, 10..700 bytes."""
    return f"r{run}k{k}:".encode() + b"x" * ((k * 7919 + run * 31) % 690)


class Expected:
    """seq -> payload: run r's k-th line is record start_r + k (block policy: nothing dropped)."""

    def __init__(self) -> None:
        self.starts: list[int] = []

    def __call__(self, seq: int) -> bytes:
        r = bisect.bisect_right(self.starts, seq) - 1
        assert r >= 0, f"record {seq} precedes every run"
        return line(r, seq - self.starts[r])


class Drainer(threading.Thread):
    """The daemon's role: read (a random amount) and often release; remembers what it read.
    ``lock`` is held while it touches the ring so the checks see a still checkpoint."""

    def __init__(self, path: str, expected: Expected, seed: int) -> None:
        super().__init__(daemon=True)
        self.path, self.expected = path, expected
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.consumed: dict[int, bytes] = {}
        self.wraps = 0  # measured: times a record started at a lower offset than the last
        self.last_off = -1
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with ring.Consumer.open(self.path) as cons:
                while not self.stop.is_set():
                    with self.lock:
                        recs = cons.read(self.rng.randint(1, 80))
                        for r in recs:
                            assert r.seq == cons.checkpoint + 1 or r.seq - 1 in self.consumed
                            assert r.payload == self.expected(r.seq), f"record {r.seq}"
                            self.consumed[r.seq] = r.payload
                            if r.offset < self.last_off:
                                self.wraps += 1
                            self.last_off = r.offset
                        # release often, and always before idling (a blocked producer
                        # waits for exactly that)
                        if (recs and self.rng.random() < 0.7) or (
                                not recs and cons.next_seq - 1 > cons.checkpoint):
                            cons.release(cons.next_seq - 1, cons.next_off)
                    if not recs:
                        time.sleep(0.0005)
        except BaseException as e:  # reported by the test thread
            self.error = e


def spawn() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)


def chain_end(path: str) -> int:
    with ring.Consumer.open(path, readonly=True) as c:
        while c.read(100000):
            pass
        assert c.last_end is not None
        return c.last_end.seq


def dump(path: str) -> dict[int, bytes]:
    res = CliRunner().invoke(cli, ["ring", "dump", "--json", path])
    assert res.exit_code == 0, res.output
    out = {}
    for row in res.stdout.splitlines():
        d = json.loads(row)
        assert d["type"] == "NOTE"
        out[d["seq"]] = d["payload"].encode()
    return out


def one_run(run: int, path: str, proc: subprocess.Popen, rng: random.Random,
            ) -> tuple[list[int], int]:
    """Feed lines until SIGKILL; returns the acknowledged sequence numbers and lines sent."""
    assert proc.stdin and proc.stdout
    proc.stdin.write(f"ring\0append\0{path}\n".encode())
    proc.stdin.flush()
    sent = [0]
    first_ack = threading.Event()
    early = rng.random() < 0.15  # sometimes kill during start-up or the first appends

    def feed() -> None:
        k = 0
        try:
            while True:
                # counted before the write: once in the pipe the producer may append them
                # before this thread runs again (an upper bound, as the check needs)
                sent[0] = k + 32
                proc.stdin.write(b"".join(line(run, k + i) + b"\n" for i in range(32)))
                proc.stdin.flush()
                k += 32
        except (BrokenPipeError, OSError, ValueError):
            pass

    def kill() -> None:
        if not early:
            first_ack.wait(20)
        time.sleep(rng.uniform(0.0, 0.03 if early else 0.2))
        proc.send_signal(signal.SIGKILL)

    feeder = threading.Thread(target=feed, daemon=True)
    killer = threading.Thread(target=kill, daemon=True)
    feeder.start()
    killer.start()
    acked = []
    for raw in proc.stdout:
        acked.append(int(raw))
        first_ack.set()
    first_ack.set()
    killer.join(30)
    proc.wait(30)
    feeder.join(30)
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, err)
    return acked, sent[0]


def test_sigkilled_producer_never_loses_an_acknowledged_record(shm_dir: Path) -> None:
    path = str(shm_dir / "kill.ring")
    ring.create(path, SIZE)
    rng = random.Random(int(os.environ.get("PROVISOR_KILL_SEED", "1234")))
    expected = Expected()
    drainer = Drainer(path, expected, rng.randrange(2**32))
    drainer.start()
    nxt = spawn()
    total_acked = 0
    try:
        for run in range(RUNS):
            proc, nxt = nxt, spawn()
            with drainer.lock:
                start = chain_end(path)
            expected.starts.append(start)
            acked, sent = one_run(run, path, proc, rng)
            assert drainer.error is None, drainer.error
            # the numbering continues exactly where the valid chain ended
            assert acked == list(range(start, start + len(acked)))
            with drainer.lock:
                in_ring = dump(path)
                for seq, payload in in_ring.items():  # acknowledged or not: really appended
                    assert payload == expected(seq), f"run {run}: record {seq} is not its line"
                    assert seq < start + max(sent, 1) or seq < start
                for seq in acked:
                    got = in_ring.get(seq, drainer.consumed.get(seq))
                    assert got == expected(seq), f"run {run}: acknowledged {seq} lost"
            total_acked += len(acked)
        # the ring is still an ordinary ring: a clean producer appends after the last run
        with drainer.lock:
            start = chain_end(path)
            expected.starts.append(start)
        final_line = line(RUNS, 0)
        res = subprocess.run([*PROVISOR, "ring", "append", path], input=final_line + b"\n",
                             capture_output=True, timeout=60, env=ENV)
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == [str(start).encode()]
    finally:
        drainer.stop.set()
        drainer.join(10)
        nxt.kill()
        nxt.wait()
    assert drainer.error is None, drainer.error
    final = dump(path)
    assert final_line in (final.get(start), drainer.consumed.get(start))
    assert total_acked > 20 * RUNS  # the kills hit producers that were busy appending
    assert drainer.wraps >= 2 * RUNS, drainer.wraps  # and the small ring wrapped many times
