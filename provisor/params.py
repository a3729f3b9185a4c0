"""Click parameter types that refuse what ``click.FloatRange`` lets through.

``click.FloatRange`` accepts ``nan`` (every comparison with it is false) and, without a
``max``, ``inf``; both then crash deep inside a command. ``Finite`` is a float range that only
holds finite numbers, so a bad flag is a usage error (one line, exit 2) at the edge.
"""

from __future__ import annotations

import math

import click

MAX_STEPS = 2**31 - 1  # --depth, --limit: far beyond any store, still an SQLite INTEGER


class Finite(click.FloatRange):
    """A finite float within ``[min, max]`` (``min_open``/``max_open`` as in FloatRange)."""

    name = "float"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        rv = click.types.FLOAT.convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(rv, param, ctx)
