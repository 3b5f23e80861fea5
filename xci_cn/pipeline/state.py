"""Run state: one record per stage, persisted atomically to state.json after
every transition so that a killed run can be resumed (``xci-cn run --resume``)
and an aborted one still has its partial results."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

PENDING, RUNNING, PASSED, FAILED, SKIPPED, CANCELLED, NOT_SELECTED = (
    "pending", "running", "passed", "failed", "skipped", "cancelled", "not-selected")
TERMINAL = {PASSED, FAILED, SKIPPED, CANCELLED, NOT_SELECTED}
STATE_VERSION = 1


class _StateShape(BaseModel):
    """The top of state.json as --resume reads it (the stages: StageRecord)."""

    run_id: str
    fingerprint: str = ""
    inputs: dict[str, Any] = {}
    stages: list[dict[str, Any]]


_STATE = TypeAdapter(_StateShape)


@dataclass
class AttemptRecord:
    attempt: int
    started: float
    duration: float | None = None
    error: str | None = None


@dataclass
class StageRecord:
    """What happened to one stage; the unit of summary.json and junit.xml."""

    name: str
    type: str
    always: bool = False
    needs: list[str] = field(default_factory=list)
    status: str = PENDING
    started: float | None = None
    duration: float | None = None
    attempts: int = 0
    max_attempts: int = 1
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    history: list[AttemptRecord] = field(default_factory=list)
    fingerprint: str = ""
    resumed: bool = False
    invalid_input: bool = False
    environment_problem: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageRecord:
        """A record read back from state.json, validated (pydantic.ValidationError
        for wrong shapes); keys of other versions are ignored."""
        known = set(cls.__dataclass_fields__)
        return _RECORD.validate_python({k: v for k, v in data.items() if k in known})


_RECORD = TypeAdapter(StageRecord)


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers (and a SIGKILL) see the old or the new file,
    never half of one."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, fsync, rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_state(path: Path) -> dict[str, Any] | None:
    """The previous run's state, or None when there is none (or it is unreadable:
    not JSON, another version — then nothing is resumed and everything runs
    again). A state of this version with the wrong shapes, or nested beyond
    the loader's depth, is InvalidInput naming the file and the field."""
    from pydantic import ValidationError

    from xci_cn.config.loader import NestingTooDeep, load_json_file, shape_problems
    from xci_cn.errors import InvalidInput, ScenarioError

    try:
        data = load_json_file(path)
    except NestingTooDeep:
        raise
    except (FileNotFoundError, InvalidInput):
        return None
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        return None
    try:
        _STATE.validate_python(data)
    except ValidationError as exc:
        raise ScenarioError(shape_problems(path, exc)) from None
    problems = []
    for index, stage in enumerate(data["stages"]):
        try:
            StageRecord.from_dict(stage)
        except ValidationError as exc:
            problems.extend(shape_problems(path, exc, ("stages", index)))
    if problems:
        raise ScenarioError(problems)
    return data


def state_document(run_id: str, run_fingerprint: str, inputs: dict[str, Any],
                   scenario: str, records: list[StageRecord], status: str) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "run_id": run_id,
        "fingerprint": run_fingerprint,
        "scenario": scenario,
        "inputs": inputs,
        "status": status,
        "stages": [asdict(r) for r in records],
    }
