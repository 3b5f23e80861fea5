"""summary.json: the machine-readable record of a run, and the source every
other report is rendered from (``xci-cn report`` re-renders from it)."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from xci_cn import __version__
from xci_cn.pipeline.state import write_json_atomic
from xci_cn.secrets import redactor

if TYPE_CHECKING:
    from xci_cn.pipeline.runner import RunResult

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


class _Open(BaseModel):
    # Fields of later versions are kept; the known ones must have their shape.
    model_config = ConfigDict(extra="allow")


class _Attempt(_Open):
    attempt: int
    started: str | None = None
    duration: float | None = None
    error: str | None = None


class _Check(_Open):
    name: str
    passed: bool
    message: str = ""
    details: dict[str, Any] = {}


class _Stage(_Open):
    name: str
    type: str = ""
    status: str
    always: bool = False
    needs: list[str] = []
    started: str | None = None
    duration: float | None = None
    attempts: int = 0
    max_attempts: int = 0
    outputs: dict[str, Any] = {}
    error: str | None = None
    checks: list[_Check] = []
    history: list[_Attempt] = []


class _Summary(_Open):
    """What ``xci-cn report`` renders from: validated before use."""

    version: int = SUMMARY_VERSION
    run_id: str = ""
    scenario: str = ""
    result: str = ""
    inputs: dict[str, Any] = {}
    stages: list[_Stage]


def read_summary(path: Path) -> dict[str, Any]:
    """summary.json, read with the loader's defences and checked against its
    shape: InvalidInput naming the file and the field; FileNotFoundError
    when there is none."""
    from pydantic import ValidationError

    from xci_cn.config.loader import load_json_file, shape_problems
    from xci_cn.errors import ScenarioError

    data = load_json_file(path)
    try:
        _Summary.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(shape_problems(path, exc)) from None
    return data
