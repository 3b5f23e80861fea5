"""The analysis tape, ``analysis.json`` in a run's results: every analysis of
the run with, per measurement, the PromQL as sent, the series Prometheus
returned, the traffic meanwhile, and the verdicts reached. Enough to re-judge
the run without Prometheus (``xci-cn analysis replay``).

The tape is versioned (``version``) and sealed by a SHA-256 digest of its
canonical JSON, so a tape of another format, a truncated file or a hand edit
is refused with one line (InvalidInput, exit 2) instead of being re-judged
into a wrong answer. The deploy and verify stages write it through a
``TapeWriter``; ``read_tape`` reads it for the replay.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xci_cn import __version__
from xci_cn.errors import InvalidInput
from xci_cn.files import write_text_atomic
from xci_cn.secrets import redactor

if TYPE_CHECKING:
    from xci_cn.verify.analysis import AnalysisResult, AnalysisSpec

TAPE_FORMAT = "xci-cn analysis tape"
TAPE_VERSION = 1
TAPE_NAME = "analysis.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TapeSeries(_Strict):
    labels: dict[str, str]
    samples: list[tuple[float, str]]


class TapeObservation(_Strict):
    metric: str
    role: Literal["canary", "baseline"]
    version: str
    query: str
    kind: Literal["instant", "range"]
    start: float
    end: float
    step: float | None
    series: list[TapeSeries]
    error: str | None


class TapeMeasurement(_Strict):
    at: str
    observations: list[TapeObservation]
    traffic: dict[str, Any] | None
    recorded: dict[str, Any] = Field(description="The verdict reached at the time: verdict, metrics, score.")


class TapeSource(_Strict):
    """Where in the run an analysis happened: a canary step of a deploy
    stage (``step`` of ``steps``) or an analysis check of a verify stage."""

    kind: Literal["canary-step", "bluegreen-switch", "verify-check"]
    step: int | None = None
    steps: int | None = None
    weights: dict[str, float] | None = None
    index: int | None = None
    service: str | None = None  # the service of a graph canary's step


class TapeAnalysis(_Strict):
    id: str
    stage: str
    attempt: int
    source: TapeSource
    service: str
    namespace: str
    canary: str
    baseline: str | None
    spec: dict[str, Any]
    measurements: list[TapeMeasurement]
    verdict: str
    reason: str
    outcome: Literal["pass", "fail", "pause"]


class Tape(_Strict):
    format: Literal["xci-cn analysis tape"]
    version: int
    xci_cn_version: str
    digest: str
    analyses: list[TapeAnalysis]


def analysis_entry(stage: str, attempt: int, source: dict[str, Any], *, service: str, namespace: str,
                   canary: str, baseline: str | None, spec: AnalysisSpec, result: AnalysisResult,
                   decision: str) -> dict[str, Any]:
    """One analysis as the tape holds it (see TapeAnalysis)."""
    from xci_cn.verify.analysis import AnalysisSpec

    where = source.get("step", source.get("index"))
    member = f"-{source['service']}" if source.get("service") else ""
    return {
        "id": f"{stage}/{source['kind']}-{where}{member}", "stage": stage, "attempt": attempt, "source": source,
        "service": service, "namespace": namespace, "canary": canary, "baseline": baseline,
        # The Prometheus URL stays out: it may carry credentials, and a replay needs none.
        "spec": spec.model_dump(mode="json", include=set(AnalysisSpec.model_fields) - {"prometheus"}),
        "measurements": [{"at": m.at, "observations": [o.as_dict() for o in m.observations],
                          "traffic": m.traffic, "recorded": {k: v for k, v in m.as_dict().items() if k != "at"}}
                         for m in result.measurements],
        "verdict": result.verdict, "reason": result.reason, "outcome": decision,
    }


def digest_of(body: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of everything but the digest."""
    canonical = json.dumps({k: v for k, v in body.items() if k != "digest"}, sort_keys=True,
                           separators=(",", ":"), allow_nan=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def encode(analyses: list[dict[str, Any]], redact: Callable[[str], str]) -> str:
    """The tape's text: redacted first (a secret that reached a query or a
    label never reaches the artifact), then sealed."""
    body = {"format": TAPE_FORMAT, "version": TAPE_VERSION, "xci_cn_version": __version__,
            "analyses": analyses}
    body = json.loads(redact(json.dumps(body, allow_nan=False)))
    body["digest"] = digest_of(body)
    Tape.model_validate(body)  # what is written must read back
    return json.dumps(body, indent=1, sort_keys=True, allow_nan=False) + "\n"


def _ends_open(text: str) -> bool:
    """Whether the text stops inside a string, an object or a list: what a
    file cut short looks like (unlike a stray character)."""
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
    return in_string or depth > 0


def read_tape(path: Path) -> tuple[Tape, list[str]]:
    """Read and check a tape: (tape, notes). Refuses, one line each, a
    missing, truncated, hand-edited or other-format tape."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file (an analysis in 'xci-cn run' writes it)") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: not UTF-8 text: not an analysis tape") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        cut = " (truncated: the JSON ends early)" if _ends_open(text) else ""
        raise InvalidInput(f"{path}: not a complete analysis tape{cut}: {exc.msg} at line {exc.lineno} "
                           f"column {exc.colno}") from None
    if not isinstance(body, dict) or body.get("format") != TAPE_FORMAT:
        raise InvalidInput(f"{path}: not an xci-cn analysis tape (no format {TAPE_FORMAT!r})")
    notes = []
    written_by = body.get("xci_cn_version")
    if body.get("version") != TAPE_VERSION:
        raise InvalidInput(f"{path}: tape format version {body.get('version')!r} written by xci-cn "
                           f"{written_by}; this xci-cn {__version__} reads tape format version {TAPE_VERSION}")
    if written_by != __version__:
        notes.append(f"{path}: recorded by xci-cn {written_by}, replayed by {__version__} "
                     f"(same tape format {TAPE_VERSION})")
    if body.get("digest") != digest_of(body):
        raise InvalidInput(f"{path}: digest mismatch: the tape was changed after it was written "
                           "(hand-edited or damaged)")
    try:
        return Tape.model_validate(body), notes
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"{path}: {where}: {first['msg']} (a damaged tape)") from None


_LOCK = threading.Lock()
# Which writer last wrote a stage's analyses to a tape: a new attempt (or a
# resumed run) replaces that stage's earlier analyses; other stages' stay.
_OWNERS: dict[tuple[str, str], int] = {}


class TapeWriter:
    """Adds the analyses of one stage attempt to RESULTS_DIR/analysis.json,
    rewritten atomically after each, so a killed run keeps what it analysed."""

    def __init__(self, results_dir: Path, stage: str, attempt: int):
        self.path = results_dir / TAPE_NAME
        self.stage = stage
        self.attempt = attempt

    def record(self, spec: AnalysisSpec, result: AnalysisResult, decision: str, source: dict[str, Any], *,
               service: str, namespace: str, canary: str, baseline: str | None) -> None:
        self.add(analysis_entry(self.stage, self.attempt, source, service=service, namespace=namespace,
                                canary=canary, baseline=baseline, spec=spec, result=result, decision=decision))

    def add(self, entry: dict[str, Any]) -> None:
        with _LOCK:
            analyses: list[dict[str, Any]] = []
            try:
                analyses = json.loads(self.path.read_text())["analyses"]
            except FileNotFoundError:
                pass
            except (ValueError, KeyError, TypeError):
                pass  # unreadable: this run starts a new tape
            key = (str(self.path), self.stage)
            if _OWNERS.get(key) != id(self):
                analyses = [a for a in analyses if a.get("stage") != self.stage]
                _OWNERS[key] = id(self)
            analyses = [a for a in analyses if a.get("id") != entry["id"]] + [entry]
            write_text_atomic(self.path, encode(analyses, redactor()))
