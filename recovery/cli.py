"""Commands of this package for the ``provisor`` CLI."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
