"""A power-failure simulator: a twin of ``pmem.region.Region`` that remembers what is durable.

The ring's crash safety rests on which stores have reached the persistence domain when power
fails, which no real run can show. Here every store is split into 8-byte chunks (the atomic
unit of x86-64 stores to pmem) inside 64-byte cache lines. A store only makes its chunks
*dirty*; ``persist(off, n)`` flushes the covering cache lines and fences, and only then do
those chunks become *persisted*. A crash image is the persisted image plus any subset of the
dirty chunks, in any order, each holding its latest value or (cache evictions, which can write
a line back at any moment) any value it held since its last flush. This is the idea of PMDK's
pmreorder, taken down to 8-byte chunks.

Images live in an in-memory registry keyed by path, so ``pmem.ring`` opens them through
``region_cls=SimRegion`` exactly as it opens files; two regions on one path share one image,
like two mappings of one file (a producer and a consumer).

The log (stores, flushes, fences and test marks) can be replayed with ``fence_points`` to get
the durable state at every fence of a workload, e.g. to check crash images at each of them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pmem.region import RegionError

CHUNK = 8
LINE = 64


class SimMode(StrEnum):
    SIM = "simulated"

    def describe(self) -> str:
        return "simulated pmem (power-failure simulator: 8-byte chunks, 64-byte lines)"


@dataclass(frozen=True)
class Store:
    off: int
    data: bytes


@dataclass(frozen=True)
class Flush:
    line: int  # byte offset of the cache line


@dataclass(frozen=True)
class Fence:
    pass


@dataclass(frozen=True)
class Mark:
    """A test's note in the log (e.g. what was acknowledged so far); replay hands it back."""

    value: Any


class _Buffer(bytearray):
    """The mapping the program sees. A bytearray subclass so that reads (``struct.unpack_from``,
    slicing, ``len``) stay native and fast, while every item/slice assignment is logged.
    Writes through the buffer protocol (``struct.pack_into``, a memoryview) would bypass the
    log: the ring does not use them, and ``SimImage.check_shadow`` catches it if it starts to."""

    image: SimImage

    def __setitem__(self, key, value) -> None:  # type: ignore[override]
        if isinstance(key, int):
            n = len(self)
            off = key + n if key < 0 else key
            super().__setitem__(key, value)
            self.image._stored(off, bytes((value,)))
            return
        if not isinstance(key, slice):
            raise TypeError(f"unsupported index {key!r}")
        start, stop, step = key.indices(len(self))
        data = bytes(value)
        if step != 1 or len(data) != max(0, stop - start):
            raise ValueError("simulated pmem: only same-length contiguous slice stores")
        super().__setitem__(key, data)
        self.image._stored(start, data)

    def __delitem__(self, key) -> None:  # type: ignore[override]
        raise TypeError("simulated pmem cannot be resized")

    def extend(self, *_a) -> None:  # type: ignore[override]
        raise TypeError("simulated pmem cannot be resized")


@dataclass
class CrashState:
    """The durable state at one moment: what has persisted, and the dirty chunks with the values
    each held since its last flush (oldest first; the last is what the program sees)."""

    persisted: bytes
    dirty: dict[int, list[bytes]]
    mark: Any = None
    index: int = 0  # fence number (replay) or -1 (the current point)

    def image(self, rng: random.Random, p: float | None = None,
              history: bool = True) -> bytearray:
        """One crash image: each dirty chunk lands with probability ``p`` (drawn when None),
        holding its latest value or, with ``history``, any value since its last flush."""
        if p is None:
            p = rng.choice((0.0, 0.1, 0.5, 0.9, 1.0, rng.random()))
        img = bytearray(self.persisted)
        for c, values in self.dirty.items():
            if rng.random() >= p:
                continue
            v = values[rng.randrange(len(values))] if history and rng.random() < 0.3 \
                else values[-1]
            img[c * CHUNK:c * CHUNK + len(v)] = v
        return img

    def images(self, k: int, rng: random.Random, history: bool = True) -> list[bytearray]:
        """``k`` crash images; the first two are the extremes (nothing landed, all landed)."""
        out = []
        for i in range(k):
            p = 0.0 if i == 0 else 1.0 if i == 1 else None
            out.append(self.image(rng, p, history))
        return out

    def all_landed(self) -> bytearray:
        return self.image(random.Random(0), 1.0, history=False)


@dataclass
class SimImage:
    """One simulated device: the program's view, the persisted bytes, the dirty chunks and the
    log of everything done to it."""

    size: int
    initial: bytes = b""
    mem: _Buffer = field(init=False)
    persisted: bytearray = field(init=False)
    dirty: dict[int, list[bytes]] = field(default_factory=dict)
    log: list[Store | Flush | Fence | Mark] = field(default_factory=list)
    logging: bool = True
    on_fence: list[Callable[[SimImage], None]] = field(default_factory=list)
    _flushed: set[int] = field(default_factory=set)
    stores: int = 0
    fences: int = 0

    def __post_init__(self) -> None:
        init = self.initial or bytes(self.size)
        if len(init) != self.size:
            raise ValueError("initial image has the wrong size")
        self.initial = bytes(init)
        self.mem = _Buffer(init)
        self.mem.image = self
        self.persisted = bytearray(init)

    # -- the hardware model ---------------------------------------------------------------
    def _stored(self, off: int, data: bytes) -> None:
        if not data:
            return
        self.stores += 1
        if self.logging:
            self.log.append(Store(off, data))
        mem = self.mem
        for c in range(off // CHUNK, (off + len(data) - 1) // CHUNK + 1):
            self.dirty.setdefault(c, []).append(bytes(mem[c * CHUNK:(c + 1) * CHUNK]))

    def flush(self, off: int, n: int) -> None:
        """Write back the cache lines covering ``[off, off+n)`` (clwb): durable at the fence."""
        if n <= 0:
            return
        for line in range(off // LINE * LINE, off + n, LINE):
            self._flushed.add(line)
            if self.logging:
                self.log.append(Flush(line))

    def fence(self) -> None:
        """sfence: the flushed lines are now persisted; then tell the fence hooks."""
        for hook in self.on_fence:
            hook(self)  # the moment before the fence: everything since is still dirty
        self.fences += 1
        if self.logging:
            self.log.append(Fence())
        _apply_flushed(self.persisted, self.dirty, self._flushed, self.mem)
        self._flushed.clear()

    def rebase(self) -> None:
        """Start the log afresh from the current, fully persisted state (e.g. after setup)."""
        if self.dirty or self._flushed:
            raise ValueError("rebase needs a fully persisted image")
        self.initial = bytes(self.mem)
        self.log.clear()

    def mark(self, value: Any) -> None:
        if self.logging:
            self.log.append(Mark(value))

    # -- crash images ------------------------------------------------------------------------
    def state(self, mark: Any = None) -> CrashState:
        """The durable state right now (as if power failed at this instant)."""
        return CrashState(bytes(self.persisted), {c: list(v) for c, v in self.dirty.items()},
                          mark, -1)

    def crash_images(self, k: int, rng: random.Random, history: bool = True) -> list[bytearray]:
        """``k`` crash images at the current point (see ``CrashState.image``)."""
        return self.state().images(k, rng, history)

    def fence_points(self) -> Iterator[CrashState]:
        """Replay the log: the durable state just before every fence (when the most is dirty),
        with the last Mark logged before it, and finally the current state."""
        persisted = bytearray(self.initial)
        mem = bytearray(self.initial)
        dirty: dict[int, list[bytes]] = {}
        flushed: set[int] = set()
        mark: Any = None
        n = 0
        for op in self.log:
            if isinstance(op, Store):
                mem[op.off:op.off + len(op.data)] = op.data
                for c in range(op.off // CHUNK, (op.off + len(op.data) - 1) // CHUNK + 1):
                    dirty.setdefault(c, []).append(bytes(mem[c * CHUNK:(c + 1) * CHUNK]))
            elif isinstance(op, Flush):
                flushed.add(op.line)
            elif isinstance(op, Fence):
                yield CrashState(bytes(persisted), {c: list(v) for c, v in dirty.items()}, mark, n)
                n += 1
                _apply_flushed(persisted, dirty, flushed, mem)
                flushed.clear()
            else:
                mark = op.value
        yield CrashState(bytes(persisted), {c: list(v) for c, v in dirty.items()}, mark, n)

    def check_shadow(self) -> None:
        """Every byte the program sees must be persisted or dirty: a write that bypassed the log
        (buffer protocol) would otherwise go unnoticed and make every crash image optimistic."""
        diff = [i for i in range(0, self.size, CHUNK)
                if self.mem[i:i + CHUNK] != self.persisted[i:i + CHUNK]
                and i // CHUNK not in self.dirty]
        if diff:
            raise AssertionError(f"unlogged writes at offsets {diff[:8]}")


def _apply_flushed(persisted: bytearray, dirty: dict[int, list[bytes]], flushed: set[int],
                   mem: bytearray) -> None:
    per_line = LINE // CHUNK
    for line in flushed:
        c0 = line // CHUNK
        for c in range(c0, c0 + per_line):
            if c in dirty:
                del dirty[c]
                persisted[c * CHUNK:(c + 1) * CHUNK] = mem[c * CHUNK:(c + 1) * CHUNK]


_REGISTRY: dict[str, SimImage] = {}


def register(path: str, image: bytes | bytearray | SimImage) -> SimImage:
    """Put an image at ``path`` (e.g. a crash image, to reopen a ring on it); all persisted."""
    img = image if isinstance(image, SimImage) else SimImage(len(image), bytes(image))
    _REGISTRY[path] = img
    return img


def image_at(path: str) -> SimImage:
    try:
        return _REGISTRY[path]
    except KeyError:
        raise RegionError(f"{path}: no such simulated image") from None


def forget(path: str) -> None:
    _REGISTRY.pop(path, None)


class SimRegion:
    """Drop-in for ``pmem.region.Region`` over a simulated image (see the module docstring)."""

    mode = SimMode.SIM

    def __init__(self, path: str, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self.image = image_at(path)
        self.size = self.image.size
        self.buf: Any = memoryview(self.image.mem).toreadonly() if readonly else self.image.mem
        self._closed = False

    @classmethod
    def create(cls, path: str, size: int, *, replace: bool = False,
               init: Callable[[SimRegion], None] | None = None) -> SimRegion:
        """A fresh, zeroed and fully persisted image (like a preallocated file); ``init`` runs
        on it before it is returned (``replace`` is accepted for Region's signature)."""
        if size <= 0 or size % 4096:
            raise RegionError("size must be a positive multiple of 4096")
        register(path, bytes(size))
        region = cls(path)
        if init is not None:
            init(region)
        return region

    def persist(self, off: int, length: int) -> None:
        """Flush the covering cache lines and fence (what ``pmem_persist`` does)."""
        if length <= 0 or self.readonly:
            return
        self.image.flush(off, length)
        self.image.fence()

    def fence(self) -> None:
        """Region.fence is a no-op: every persist above is already fenced."""

    def crash_images(self, k: int, rng: random.Random, history: bool = True) -> list[bytearray]:
        return self.image.crash_images(k, rng, history)

    def close(self) -> None:
        if isinstance(self.buf, memoryview):
            self.buf.release()
        self.buf = memoryview(b"")
        self._closed = True

    def __enter__(self) -> SimRegion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
