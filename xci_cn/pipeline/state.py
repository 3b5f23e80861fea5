"""Run state: one record per stage, persisted atomically to state.json after
every transition so that a killed run can be resumed (``xci-cn run --resume``)
and an aborted one still has its partial results.

The records are dataclasses that pydantic validates: state.json is written
from them and read back through them, so a resumed run sees the same shapes
it wrote (or a one-line error naming the file and the field).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from xci_cn.config.model import Scenario
from xci_cn.errors import (
    EXIT_ENVIRONMENT,
    EXIT_FAILED,
    EXIT_INVALID_INPUT,
    EXIT_PASSED,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    InvalidInput,
)
from xci_cn.files import write_json_atomic
from xci_cn.pipeline.stage import RunInputs

STATE_VERSION: Literal[1] = 1


class Status(StrEnum):
    """Where a stage is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    NOT_SELECTED = "not-selected"


PENDING, RUNNING, PASSED, FAILED, SKIPPED, CANCELLED, NOT_SELECTED = Status
TERMINAL = frozenset({PASSED, FAILED, SKIPPED, CANCELLED, NOT_SELECTED})


class Outcome(StrEnum):
    """Why a stage ended as it did, and the exit code that implies."""

    PASSED = "passed"
    FAILED = "failed"  # a check failed, a command failed, a rollout broke its SLO
    TIMED_OUT = "timed-out"
    DID_NOT_STOP = "did-not-stop"  # timed out and ignored its cancel: never retried
    INVALID_INPUT = "invalid-input"
    ENVIRONMENT = "environment"  # a tool or service is missing or unreachable
    INTERNAL_ERROR = "internal-error"  # an unexpected exception: a bug
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    NOT_SELECTED = "not-selected"

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES.get(self, EXIT_FAILED)


_EXIT_CODES = {Outcome.PASSED: EXIT_PASSED, Outcome.SKIPPED: EXIT_PASSED, Outcome.NOT_SELECTED: EXIT_PASSED,
               Outcome.CANCELLED: EXIT_PASSED, Outcome.INVALID_INPUT: EXIT_INVALID_INPUT,
               Outcome.ENVIRONMENT: EXIT_ENVIRONMENT}
# When stages fail for different reasons, the run exits with the first of
# these: the user's input first (fixing it may change everything else).
EXIT_PRECEDENCE = (EXIT_INVALID_INPUT, EXIT_ENVIRONMENT, EXIT_FAILED)


class RunStatus(StrEnum):
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


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
    status: Status = Status.PENDING
    outcome: Outcome | None = None
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

    def end(self, status: Status, outcome: Outcome, error: str | None = None) -> None:
        self.status, self.outcome = status, outcome
        if error is not None:
            self.error = error


@dataclass
class StateDocument:
    """state.json."""

    version: Literal[1]
    run_id: str
    fingerprint: str
    scenario: str
    inputs: dict[str, Any]
    status: RunStatus
    stages: list[StageRecord]


_STATE = TypeAdapter(StateDocument)


@dataclass
class RunResult:
    """A finished run: its records, and the exit code they imply."""

    run_id: str
    scenario: Scenario
    inputs: RunInputs
    records: list[StageRecord]
    started: float
    duration: float
    interrupted_by: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> RunStatus:
        if self.interrupted_by:
            return RunStatus.INTERRUPTED
        if any(r.status == FAILED for r in self.records):
            return RunStatus.FAILED
        return RunStatus.PASSED

    @property
    def exit_code(self) -> int:
        """130/143 when interrupted, else the most telling stage outcome's."""
        import signal

        if self.interrupted_by:
            return EXIT_SIGTERM if self.interrupted_by == signal.SIGTERM else EXIT_SIGINT
        codes = {r.outcome.exit_code for r in self.records if r.outcome is not None}
        return next((code for code in EXIT_PRECEDENCE if code in codes), EXIT_PASSED)


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def state_document(run_id: str, run_fingerprint: str, inputs: dict[str, Any], scenario: str,
                   records: list[StageRecord], status: RunStatus) -> dict[str, Any]:
    """state.json as JSON-ready data, through the model."""
    doc = StateDocument(STATE_VERSION, run_id, run_fingerprint, scenario, inputs, status, records)
    return _STATE.dump_python(doc, mode="json")


def write_state(path: Path, doc: dict[str, Any]) -> None:
    write_json_atomic(path, doc)


def load_state(path: Path) -> StateDocument | None:
    """The previous run's state; None when there is none, or it was written
    by another version (then everything runs again). A file of this version
    that does not match the model is the user's to look at: InvalidInput
    naming the file and the field."""
    from xci_cn.config.loader import NestingTooDeep, load_json_file, shape_problems
    from xci_cn.errors import ScenarioError

    try:
        data = load_json_file(path)
    except NestingTooDeep:
        raise
    except FileNotFoundError:
        return None
    except InvalidInput:
        return None  # not JSON: nothing to resume, everything runs again
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        return None
    try:
        return _STATE.validate_python(data)
    except ValidationError as exc:
        raise ScenarioError(shape_problems(path, exc)) from None
