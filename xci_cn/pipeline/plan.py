"""The plan of a scenario: its stages grouped by DAG depth (for --dry-run and
the report's DAG view)."""

from __future__ import annotations

from typing import Any


def levels(scenario: Any) -> list[list[str]]:
    """Stages grouped so that each group needs only earlier groups."""
    depth: dict[str, int] = {}
    specs = {s.name: s for s in scenario.stages}

    def of(name: str) -> int:
        if name not in depth:
            depth[name] = 1 + max((of(n) for n in specs[name].needs), default=-1)
        return depth[name]

    for name in specs:
        of(name)
    out: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for name in specs:
        out[depth[name]].append(name)
    return out
