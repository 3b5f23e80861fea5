"""What a Prometheus query gave, as Prometheus sent it: kept apart from the
HTTP client so that re-judging a recorded tape (``xci-cn analysis replay``)
loads no HTTP library."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Series:
    labels: dict[str, str]
    samples: list[tuple[float, str]]  # (unix seconds, the value as Prometheus wrote it)

    def as_dict(self) -> dict[str, Any]:
        return {"labels": dict(self.labels), "samples": [[t, v] for t, v in self.samples]}


@dataclass
class QueryResult:
    series: list[Series] = field(default_factory=list)
    error: str | None = None  # the server could not be asked, or refused the query
