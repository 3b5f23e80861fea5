"""Re-judging a recorded analysis tape with the same or changed rules, with
no cluster and no Prometheus (``xci-cn analysis replay``).

Each recorded measurement is judged again by ``xci_cn.verify.analysis.judge``
— the code a live analysis runs — and the measurements are counted again by
``decide``, so the same tape and rules give the same verdicts, byte for
byte. A rule can change thresholds, operators, no-data policies, limits, the
statistical judge's parameters and the scoring, but not what was asked of
Prometheus: a metric the tape lacks, or whose query differs from the one
recorded, is refused (one line each).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xci_cn.errors import InvalidInput, ScenarioError
from xci_cn.verify.analysis import (
    AnalysisResult,
    AnalysisSpec,
    MetricSpec,
    ScoringSpec,
    combine_records,
    decide,
    judge,
    outcome,
)
from xci_cn.verify.judge import INCONCLUSIVE, Observation
from xci_cn.verify.series import Series
from xci_cn.verify.tape import Tape, TapeAnalysis


class ReplayRules(BaseModel):
    """What ``--metrics FILE`` may change; a bare list is ``metrics``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metrics: list[MetricSpec] | None = Field(default=None, min_length=1, description="Replaces the "
                                             "recorded metric rules.")
    scoring: ScoringSpec | None = None
    failure_limit: int | None = Field(default=None, ge=1)
    error_limit: int | None = Field(default=None, ge=1)
    inconclusive: Literal["pause", "fail", "pass"] | None = None

    def overrides(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def load_rules(path: Path) -> ReplayRules:
    """Read ``--metrics FILE`` (YAML or JSON); every problem as file:line: field: message."""
    from xci_cn.config.loader import format_loc, load_yaml_file

    loaded = load_yaml_file(path)
    data = {"metrics": loaded.data} if isinstance(loaded.data, list) else loaded.data
    if not isinstance(data, dict):
        raise ScenarioError([f"{path}:1: expected a list of metrics or a mapping with `metrics`"])
    try:
        return ReplayRules.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            if isinstance(loaded.data, list):
                loc = loc[1:]  # the file's own list is `metrics`
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{path}:{loaded.line_of(loc)}: {format_loc(loc)}: {message}")
        raise ScenarioError(problems) from None


@dataclass
class StepReplay:
    entry: TapeAnalysis
    label: str
    result: AnalysisResult | None  # None: the replayed rollout would have stopped before this step
    outcome: str  # pass, fail, pause, or "not reached"
    reason: str
    changes: list[str] = field(default_factory=list)

    @property
    def recorded(self) -> str:
        return self.entry.verdict

    def record(self) -> dict[str, Any] | None:
        """The replayed analysis as the stage would have recorded it."""
        if self.result is None:
            return None
        return {**self.result.as_dict(), "reason": self.reason, "replayed": True}


@dataclass
class Replay:
    steps: list[StepReplay]
    passed: bool
    recorded_passed: bool
    reasons: list[str]
    rules_changed: bool

    def lines(self) -> list[str]:
        """The replay as a person reads it: per step the verdict (and what
        changed, per metric), then the outcome."""
        out = []
        for step in self.steps:
            now = step.result.verdict if step.result else "not reached"
            if now == step.recorded:
                out.append(f"{step.label}: {now} (as recorded)")
            else:
                out.append(f"{step.label}: {step.recorded} -> {now}")
            out += [f"  {line}" for line in step.changes]
            if step.result is not None and step.result.verdict != step.recorded:
                out.append(f"  because: {step.reason}")
        changed = sum(1 for s in self.steps if (s.result.verdict if s.result else "not reached") != s.recorded)
        out.append(f"{changed} of {len(self.steps)} analysed step(s) changed their verdict")
        verdict = "PASS" if self.passed else "FAIL"
        was = "PASS" if self.recorded_passed else "FAIL"
        out.append(f"replayed outcome: {verdict} (recorded: {was})"
                   + (f": {'; '.join(self.reasons)}" if self.reasons else ""))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "recorded_passed": self.recorded_passed, "reasons": self.reasons,
                "steps": [{"id": s.entry.id, "label": s.label, "recorded": s.recorded,
                           "replayed": s.result.verdict if s.result else None, "outcome": s.outcome,
                           "reason": s.reason, "changes": s.changes, "analysis": s.record()}
                          for s in self.steps]}


def _label(entry: TapeAnalysis) -> str:
    source = entry.source
    weights = " / ".join(f"{k} {v:g}%" for k, v in (source.weights or {}).items())
    if source.kind == "canary-step" and source.service:
        return f"{entry.stage} step {source.step}/{source.steps} {source.service} ({weights}) {entry.canary}"
    if source.kind == "canary-step":
        return f"{entry.stage} step {source.step}/{source.steps} ({weights}) {entry.canary}"
    if source.kind == "bluegreen-switch":
        return f"{entry.stage} switch ({weights}) {entry.canary}"
    return f"{entry.stage} check {(source.index or 0) + 1} {entry.service} {entry.canary}"


def _observations(entry: TapeAnalysis, index: int) -> list[Observation]:
    return [Observation(o.metric, o.role, o.version, o.query, o.kind, o.start, o.end, o.step,
                        [Series(dict(s.labels), [(t, v) for t, v in s.samples]) for s in o.series], o.error)
            for o in entry.measurements[index].observations]


def _spec(entry: TapeAnalysis, rules: ReplayRules | None) -> AnalysisSpec:
    data = {**entry.spec, **(rules.overrides() if rules else {})}
    try:
        return AnalysisSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInput(f"analysis {entry.id}: the recorded rules do not validate in this xci-cn: "
                           f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


def missing_data(tape: Tape, rules: ReplayRules, source: str) -> list[str]:
    """Rules the tape cannot answer, one line each (once per metric)."""
    problems: dict[str, str] = {}
    for entry in tape.analyses:
        recorded = {(o.metric, o.role): o for m in entry.measurements for o in m.observations}
        names = sorted({metric for metric, _ in recorded})
        spec = _spec(entry, rules)
        for metric in spec.metrics:
            if metric.name in problems:
                continue
            canary = recorded.get((metric.name, "canary"))
            wants = "range" if metric.judge == "mann-whitney" else "instant"
            if canary is None:
                problems[metric.name] = (f"{source}: metric {metric.name!r} is not on the tape "
                                         f"(it has {', '.join(names) or 'no metrics'})")
            elif canary.kind != wants:
                problems[metric.name] = (
                    f"{source}: metric {metric.name!r}: judge {metric.judge} needs "
                    f"{'samples over a window' if wants == 'range' else 'an instant value'}; the tape "
                    f"recorded {'samples over a window' if canary.kind == 'range' else 'an instant value'}")
            elif metric.promql(entry.service, entry.namespace, entry.canary, spec.window) != canary.query:
                problems[metric.name] = (f"{source}: metric {metric.name!r}: its query differs from the "
                                         f"recorded one ({canary.query}); a replay cannot ask Prometheus")
            elif ((metric.judge == "mann-whitney" or metric.max_vs_baseline) and entry.baseline
                  and (metric.name, "baseline") not in recorded):
                problems[metric.name] = (f"{source}: metric {metric.name!r} compares with the baseline "
                                         f"{entry.baseline}, which the tape did not record for it")
    return list(problems.values())


def replay_entry(entry: TapeAnalysis, spec: AnalysisSpec) -> tuple[AnalysisResult, str, str]:
    """Judge one recorded analysis again: (result, outcome, reason)."""
    measurements = []
    for index in range(len(entry.measurements)):
        measurements.append(judge(spec, entry.measurements[index].at, _observations(entry, index)))
        sure, result = decide(spec, measurements)
        if sure:
            break
    else:
        sure, result = decide(spec, measurements)
        if len(measurements) < spec.count:
            result.verdict = INCONCLUSIVE
            result.reason = (f"the recorded analysis stopped after {len(measurements)} of {spec.count} "
                             f"measurements ({entry.reason}); the rules now need the rest, which the tape "
                             "does not have")
    decision, reason = outcome(spec, result)
    return result, decision, reason


def _changes(entry: TapeAnalysis, result: AnalysisResult) -> list[str]:
    """Per metric, the verdicts of its measurements, recorded -> replayed."""
    def verdicts(measurements: list[dict[str, Any]]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for m in measurements:
            for metric in m.get("metrics", []):
                found.setdefault(f"{metric['name']} ({metric['version']})", []).append(metric["verdict"])
        return found

    before = verdicts([m.recorded for m in entry.measurements])
    after = verdicts([m.as_dict() for m in result.measurements])
    lines = []
    for name in list(before) + [n for n in after if n not in before]:
        was, now = before.get(name, []), after.get(name, [])
        if was != now:
            lines.append(f"{name}: {', '.join(was) or 'not judged'} -> {', '.join(now) or 'not judged'}")
    return lines


def replay(tape: Tape, rules: ReplayRules | None = None, source: str = "--metrics") -> Replay:
    """Re-judge every analysis on the tape; InvalidInput when ``rules``
    need data the tape does not have."""
    if rules is not None:
        problems = missing_data(tape, rules, source)
        if problems:
            raise ScenarioError(problems)
    steps: list[StepReplay] = []
    stopped: dict[str, str] = {}  # stage -> the step where its replayed rollout stopped
    for entry in tape.analyses:
        label = _label(entry)
        if entry.stage in stopped and entry.source.kind != "verify-check":
            steps.append(StepReplay(entry, label, None, "not reached",
                                    f"the replayed rollout stopped at {stopped[entry.stage]}"))
            continue
        result, decision, reason = replay_entry(entry, _spec(entry, rules))
        steps.append(StepReplay(entry, label, result, decision, reason, _changes(entry, result)))
        if decision != "pass" and entry.source.kind != "verify-check":
            stopped[entry.stage] = label
    passed, recorded_passed, reasons = _judge_outcome(tape, steps)
    return Replay(steps, passed, recorded_passed, reasons, rules is not None)


def _judge_outcome(tape: Tape, steps: list[StepReplay]) -> tuple[bool, bool, list[str]]:
    """(replayed pass, recorded pass, why the replay is not a pass)."""
    reasons = []
    for step in steps:
        if step.outcome not in ("pass", "not reached"):
            reasons.append(f"{step.label}: {step.result.verdict if step.result else ''}: {step.reason}")
    rollouts: dict[str, tuple[int, set[int]]] = {}
    for entry in tape.analyses:
        if entry.source.kind != "verify-check" and entry.source.step is not None:
            total, seen = rollouts.setdefault(entry.stage, (entry.source.steps or 0, set()))
            seen.add(entry.source.step)
    for stage, (total, seen) in rollouts.items():
        missing = [n for n in range(1, total + 1) if n not in seen]
        failed_stage = any(s.entry.stage == stage and s.outcome not in ("pass", "not reached") for s in steps)
        if missing and not failed_stage:
            reasons.append(f"{stage}: step(s) {', '.join(map(str, missing))} of {total} were never run in the "
                           "recorded run; a replay cannot judge them")
    recorded = all(e.outcome == "pass" for e in tape.analyses) and not any(
        n not in seen for total, seen in rollouts.values() for n in range(1, total + 1))
    return not reasons, recorded, reasons


def replayed_summary(summary: dict[str, Any], result: Replay, rules: str | None) -> dict[str, Any]:
    """A copy of the run's summary.json with each replayed analysis in place
    of the recorded one, for report.html; its title says it is a replay."""
    import copy

    out = copy.deepcopy(summary)
    stages = {s.get("name"): s for s in out.get("stages") or [] if isinstance(s, dict)}
    for step in result.steps:
        outputs = (stages.get(step.entry.stage) or {}).get("outputs")
        if not isinstance(outputs, dict):
            continue
        source = step.entry.source
        if source.kind == "verify-check":
            records = outputs.get("analysis") or []
            index = sum(1 for s in result.steps[:result.steps.index(step)]
                        if s.entry.stage == step.entry.stage and s.entry.source.kind == "verify-check")
            if index < len(records) and step.record() is not None:
                records[index] = step.record()
            continue
        for recorded in outputs.get("steps") or []:
            if not (isinstance(recorded, dict) and recorded.get("step") == source.step
                    and recorded.get("action") in ("shift", "switch")):
                continue
            services = recorded.get("services")
            if source.service and isinstance(services, dict) and isinstance(services.get(source.service), dict):
                services[source.service]["analysis"] = step.record()
                recorded["analysis"] = combine_records({name: s.get("analysis") for name, s in services.items()
                                                        if isinstance(s, dict)})
            else:
                recorded["analysis"] = step.record()
    out["result"] = "PASSED" if result.passed else "FAILED"
    out["scenario"] = f"{summary.get('scenario')} (analysis replay{', rules ' + rules if rules else ''})"
    return out
