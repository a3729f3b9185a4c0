"""Crash points for the crash-matrix tests: ``PROVISOR_FAULT=name:n`` SIGKILLs the process at
the n-th time it reaches ``point(name)``; ``PROVISOR_FAULT=name:n:stop`` instead SIGSTOPs it
there once (a test then signals it at exactly that point and SIGCONTs it). Unset (always,
outside tests), a point costs one dictionary lookup."""

from __future__ import annotations

import os
import signal

_spec: tuple[str, int, str] | None = None
_hits = 0
_env = os.environ.get("PROVISOR_FAULT")
if _env:
    name, _, rest = _env.partition(":")
    n, _, action = rest.partition(":")
    _spec = (name, int(n or 1), action or "kill")


def point(name: str) -> None:
    global _hits
    if _spec is None or _spec[0] != name:
        return
    _hits += 1
    if _spec[2] == "stop":
        if _hits == _spec[1]:
            os.kill(os.getpid(), signal.SIGSTOP)
    elif _hits >= _spec[1]:
        os.kill(os.getpid(), signal.SIGKILL)
