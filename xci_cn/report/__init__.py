"""Results for Jenkins: junit.xml, summary.json, scenario.properties (and later
report.html). Written atomically into the results dir; see docs for layout."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xci_cn.pipeline.runner import RunResult


def write_results(result: RunResult, results_dir: Path) -> list[Path]:
    """Write every result file for ``result``; return their paths."""
    from xci_cn.report.junit import write_junit
    from xci_cn.report.properties import write_properties
    from xci_cn.report.summary import build_summary, write_summary

    summary = build_summary(result)
    return [
        write_summary(summary, results_dir / "summary.json"),
        write_junit(summary, results_dir / "junit.xml"),
        write_properties(summary, results_dir / "scenario.properties"),
    ]
