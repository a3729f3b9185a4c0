"""The cyclic garbage collector paused over a bounded burst of allocations.

A daemon batch (or a generated event stream) allocates a few hundred thousand small container
objects that die together when it ends; with the collector on, its generation-0 and -1 passes
run every few hundred allocations and a batch spent a third of its time in them
(bench/daemon.py: 68k -> 92k events/s with the pause). Reference counting frees nearly all of
it; a cycle made meanwhile is found by the young collection run at the end of the burst, and
anything older by the collector's own full passes between bursts.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused(collect: int | None = None) -> Iterator[None]:
    """The GC off inside; afterwards ``gc.collect(collect)`` when given (1: the young
    generations, what the burst allocated), and the GC back as it was."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collect is not None:
            gc.collect(collect)
        if was:
            gc.enable()
