"""docs/FIDELITY.md against the suite: one table row per group of tests/fidelity/cases.py, in
its order, listing exactly the group's syscalls (each one traced: provisor.syscalls BY_NAME)
and its cases (each a subcommand of the probe)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cases import CASES, GROUPS, XFAIL
from harness import PROBE_C

from provisor.syscalls import BY_NAME

DOC = Path(__file__).resolve().parents[2] / "docs" / "FIDELITY.md"


def table() -> list[dict[str, str]]:
    lines = DOC.read_text().split("## Groups", 1)[1].splitlines()
    rows = [ln for ln in lines if ln.startswith("|")]
    head = [c.strip() for c in rows[0].strip("|").split("|")]
    assert re.fullmatch(r"\|[-| ]+\|", rows[1].replace(" ", "")), "a markdown table"
    return [dict(zip(head, (c.strip() for c in r.strip("|").split("|")), strict=True))
            for r in rows[2:]]


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_one_row_per_group_in_order() -> None:
    assert [r["group"] for r in table()] == [g.name for g in GROUPS]


@pytest.mark.parametrize("group", GROUPS, ids=[g.name for g in GROUPS])
def test_row_lists_the_groups_syscalls_and_cases(group) -> None:
    row = next(r for r in table() if r["group"] == group.name)
    assert ticked(row["syscalls"]) == list(group.syscalls)
    assert ticked(row["cases"]) == [c.name for c in group.cases]
    untraced = [s for s in ticked(row["syscalls"]) if s not in BY_NAME]
    assert not untraced, f"not in provisor.syscalls: {untraced}"
    assert row["pattern (PASS nodes, PROV relations)"] and row["not captured, and why"]


def test_every_case_is_a_probe_subcommand() -> None:
    src = PROBE_C.read_text()
    names = re.findall(r'\{"([a-z0-9_-]+)", t_[a-z0-9_]+\}', src)
    assert sorted(names) == sorted(CASES)
    assert set(XFAIL) <= set(CASES)
