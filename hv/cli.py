"""Commands of this package for the ``provisor`` CLI."""

from __future__ import annotations

import click

from hv.collect import collect_cmd
from hv.fleet import fleet_cmd
from hv.guest import guest_group
from hv.profile import profile_group
from hv.synth import synth_command

COMMANDS: list[click.Command] = [synth_command, profile_group, guest_group, collect_cmd,
                                 fleet_cmd]
