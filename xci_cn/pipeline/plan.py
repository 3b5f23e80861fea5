"""The plan of a scenario: its stages grouped by DAG depth (for --dry-run and
the report's DAG view)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from graphlib import TopologicalSorter
from typing import Protocol


class Node(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def needs(self) -> Sequence[str]: ...


class HasStages(Protocol):
    @property
    def stages(self) -> Iterable[Node]: ...


def levels(scenario: HasStages) -> list[list[str]]:
    """Stages grouped so that each group needs only earlier groups, each group
    in the scenario's order."""
    stages = list(scenario.stages)
    order = {s.name: index for index, s in enumerate(stages)}
    sorter = TopologicalSorter({s.name: list(s.needs) for s in stages})
    sorter.prepare()
    out: list[list[str]] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=lambda name: order.get(name, len(order)))
        out.append(ready)
        sorter.done(*ready)
    return out
