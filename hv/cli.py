"""Commands of this package for the ``provisor`` CLI."""

from __future__ import annotations

import click

from hv.synth import synth_command

COMMANDS: list[click.Command] = [synth_command]
