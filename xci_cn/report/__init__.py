"""Results for Jenkins: summary.json, junit.xml, scenario.properties and
report.html, all rendered from the summary. Written atomically into the
results dir by ``xci-cn run`` (also after a failure or an abort); ``xci-cn
report`` re-renders report.html from a summary.json."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xci_cn.pipeline.state import RunResult


def write_results(result: RunResult, results_dir: Path) -> list[Path]:
    """Write every result file for ``result``; return their paths."""
    from xci_cn.report.html import write_html
    from xci_cn.report.junit import write_junit
    from xci_cn.report.properties import write_properties
    from xci_cn.report.summary import build_summary, write_summary

    summary = build_summary(result)
    return [
        write_summary(summary, results_dir / "summary.json"),
        write_junit(summary, results_dir / "junit.xml"),
        write_properties(summary, results_dir / "scenario.properties"),
        # Last: it links to the files above, and only to those that exist.
        write_html(summary, results_dir / "report.html"),
    ]
