"""Crash points for the crash-matrix tests: ``PROVISOR_FAULT=name:n`` SIGKILLs the process at
the n-th time it reaches ``point(name)``. Unset (always, outside tests), a point costs one
dictionary lookup."""

from __future__ import annotations

import os
import signal

_spec: tuple[str, int] | None = None
_hits = 0
_env = os.environ.get("PROVISOR_FAULT")
if _env:
    name, _, n = _env.partition(":")
    _spec = (name, int(n or 1))


def point(name: str) -> None:
    global _hits
    if _spec is None or _spec[0] != name:
        return
    _hits += 1
    if _hits >= _spec[1]:
        os.kill(os.getpid(), signal.SIGKILL)
