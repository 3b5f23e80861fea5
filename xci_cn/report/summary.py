"""summary.json: the machine-readable record of a run, and the source every
other report is rendered from (``xci-cn report`` re-renders from it)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from xci_cn import __version__
from xci_cn.errors import InvalidInput
from xci_cn.files import write_json_atomic
from xci_cn.pipeline.state import RunResult, StageRecord, Status
from xci_cn.secrets import redactor

SUMMARY_VERSION = 1
_RECORD = TypeAdapter(StageRecord)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class AttemptSummary(_Open):
    attempt: int
    started: str | None = None
    duration: float | None = None
    error: str | None = None


class CheckSummary(_Open):
    name: str
    passed: bool
    message: str = ""
    details: dict[str, Any] = {}


class StageSummary(_Open):
    name: str
    type: str = ""
    status: Status
    started: str | None = None
    duration: float | None = None
    attempts: int = 0
    error: str | None = None
    outputs: dict[str, Any] = {}
    checks: list[CheckSummary] = []
    history: list[AttemptSummary] = []


class Summary(_Open):
    """What summary.json must hold for the reports rendered from it."""

    version: int = SUMMARY_VERSION
    run_id: str = ""
    scenario: str = ""
    result: str = ""
    inputs: dict[str, Any] = {}
    stages: list[StageSummary]


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_summary(result: RunResult) -> dict[str, Any]:
    stages = []
    for record in result.records:
        data = _RECORD.dump_python(record, mode="json")
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
    """summary.json as written by ``write_summary``, read with the loader's
    defences (size, UTF-8, nesting depth) and checked against its shape:
    InvalidInput naming the file (and the field) when it is missing, not
    JSON or not a summary."""
    from xci_cn.config.loader import load_json_file, shape_problems
    from xci_cn.errors import ScenarioError

    try:
        data = load_json_file(path)
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file (a results directory of 'xci-cn run' has one)") from None
    try:
        Summary.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(shape_problems(path, exc)) from None
    return data
