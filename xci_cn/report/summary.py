"""summary.json: the machine-readable record of a run, and the source every
other report is rendered from (``xci-cn report`` re-renders from it)."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from xci_cn import __version__
from xci_cn.files import write_json_atomic
from xci_cn.pipeline.state import RunResult
from xci_cn.secrets import redactor

SUMMARY_VERSION = 1


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_summary(result: RunResult) -> dict[str, Any]:
    stages = []
    for record in result.records:
        data = asdict(record)
        data["started"] = iso(record.started)
        for attempt in data["history"]:
            attempt["started"] = iso(attempt["started"])
        data.pop("fingerprint", None)
        stages.append(data)
    inputs = result.inputs.as_dict()
    return {
        "version": SUMMARY_VERSION,
        "xci_cn_version": __version__,
        "run_id": result.run_id,
        "scenario": result.scenario.name,
        "scenario_file": result.scenario.source,
        "flavor": result.inputs.flavor,
        "installer": result.inputs.installer,
        "inputs": inputs,
        "result": result.status.upper(),
        "interrupted_by": result.interrupted_by,
        "started": iso(result.started),
        "duration": round(result.duration, 3),
        "stages": stages,
    }


def write_summary(summary: dict[str, Any], path: Path) -> Path:
    # Round-trip through the redactor: a secret that reached an output or an
    # error message must not reach the archived artifact.
    text = redactor()(json.dumps(summary, default=str))
    write_json_atomic(path, json.loads(text))
    return path


def read_summary(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
