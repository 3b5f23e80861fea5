"""Judging what an analysis observed: pure functions of the observations and
the rules, no I/O, no clock. The same code judges a live analysis and
re-judges a recorded tape (``xci_cn.verify.replay``), so both give the same
verdicts.

Two judges:

* ``threshold``: the canary's value against a limit (Flagger), optionally
  also against a factor of the baseline's value (Clover).
* ``mann-whitney``: the canary's samples against the baseline's over the same
  window, with the semantics of Kayenta's NetflixACAJudge: a Mann–Whitney U
  test at a confidence level, an effect size (ratio of the means) that must
  be reached, a direction that is bad, ``critical`` and ``must_have_data``;
  the classified metrics are scored per group, weighted, against pass and
  marginal scores. docs/analysis.rst works an example through.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from xci_cn.verify.series import QueryResult, Series


class JudgedMetric(Protocol):
    """What the judges read of a metric's rule (the scenario's MetricSpec in
    xci_cn.verify.analysis): the judges know no scenario model."""

    @property
    def name(self) -> str: ...
    @property
    def threshold(self) -> float | None: ...
    @property
    def no_data(self) -> str: ...
    @property
    def max_vs_baseline(self) -> float | None: ...
    @property
    def confidence(self) -> float: ...
    @property
    def allowed_increase(self) -> float: ...
    @property
    def allowed_decrease(self) -> float: ...
    @property
    def critical(self) -> bool: ...
    @property
    def must_have_data(self) -> bool: ...
    @property
    def group(self) -> str: ...


class Scoring(Protocol):
    """Pass and marginal scores and group weights (the analysis' ScoringSpec)."""

    @property
    def pass_score(self) -> float: ...
    @property
    def marginal_score(self) -> float: ...
    @property
    def groups(self) -> dict[str, float]: ...

SUCCESSFUL, FAILED, INCONCLUSIVE, ERROR = "Successful", "Failed", "Inconclusive", "Error"
# Kayenta's metric classifications.
PASS, HIGH, LOW, NODATA, NODATA_FAIL = "Pass", "High", "Low", "Nodata", "NodataFailMetric"
OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass
class Observation:
    """One query as sent and what came back: all a re-judge needs."""

    metric: str
    role: str  # "canary" or "baseline"
    version: str
    query: str
    kind: str  # "instant" or "range"
    start: float
    end: float
    step: float | None = None
    series: list[Series] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "role": self.role, "version": self.version, "query": self.query,
                "kind": self.kind, "start": self.start, "end": self.end, "step": self.step,
                "series": [s.as_dict() for s in self.series], "error": self.error}

    @classmethod
    def of(cls, metric: str, role: str, version: str, query: str, kind: str, start: float, end: float,
           step: float | None, result: QueryResult) -> Observation:
        return cls(metric, role, version, query, kind, start, end, step, result.series, result.error)


@dataclass
class MetricResult:
    name: str
    version: str
    value: float | None
    threshold: float | None
    op: str
    verdict: str
    rule: str
    baseline: float | None = None
    query: str = ""
    judge: str = "threshold"
    # mann-whitney only: Kayenta's classification and the figures behind it.
    classification: str | None = None
    critical: bool = False
    group: str | None = None
    stats: dict[str, Any] | None = None
    warning: str | None = None


def _fmt(value: float | None) -> str:
    return "no data" if value is None else f"{value:.4g}"


def single_value(observation: Observation) -> tuple[float | None, str | None]:
    """An instant query's one value: (value, None), (None, None) for no data
    (an empty vector, or NaN such as 0/0), or (None, why it is an error)."""
    if observation.error:
        return None, observation.error
    if not observation.series:
        return None, None
    if len(observation.series) > 1:
        return None, f"query returned {len(observation.series)} series; aggregate it to one"
    samples = observation.series[0].samples
    if not samples:
        return None, None
    value = float(samples[-1][1])
    return (None if math.isnan(value) else value), None


def window_values(observation: Observation) -> tuple[list[float], int, str | None]:
    """A range query's finite values in time order, how many were dropped
    (NaN, ±Inf: Kayenta's NaN strategy 'remove'), or an error."""
    if observation.error:
        return [], 0, observation.error
    if len(observation.series) > 1:
        return [], 0, f"query returned {len(observation.series)} series; aggregate it to one"
    raw = [float(v) for _, v in observation.series[0].samples] if observation.series else []
    values = [v for v in raw if math.isfinite(v)]
    return values, len(raw) - len(values), None


def judge_threshold(metric: JudgedMetric, canary: Observation, baseline: Observation | None,
                    op: str) -> MetricResult | None:
    """Flagger's threshold check (and Clover's limit relative to the
    baseline); None when the metric has no data and its policy is skip."""
    assert metric.threshold is not None
    value, error = single_value(canary)
    name, version = metric.name, canary.version
    if error:
        return MetricResult(name, version, None, metric.threshold, op, ERROR, f"{name}: {error}",
                            query=canary.query)
    if value is None:
        if metric.no_data == "skip":
            return None
        verdict = FAILED if metric.no_data == "fail" else INCONCLUSIVE
        return MetricResult(name, version, None, metric.threshold, op, verdict,
                            f"{name} of {version}: no data (policy: {metric.no_data})", query=canary.query)
    ok = OPS[op](value, metric.threshold)
    rule = f"{name} of {version} = {_fmt(value)} must be {op} {metric.threshold:g}"
    base_value = None
    if ok and metric.max_vs_baseline and baseline is not None:
        base_value, base_error = single_value(baseline)
        if base_error or base_value is None:
            verdict = ERROR if base_error else (FAILED if metric.no_data == "fail" else INCONCLUSIVE)
            return MetricResult(name, version, value, metric.threshold, op, verdict,
                                f"{rule}; baseline {baseline.version}: {base_error or 'no data'}",
                                query=canary.query)
        limit = base_value * metric.max_vs_baseline
        ok = value <= limit
        rule += (f"; and <= {metric.max_vs_baseline:.0%} of {baseline.version} ({_fmt(base_value)}) = "
                 f"{_fmt(limit)}")
    return MetricResult(name, version, value, metric.threshold, op, SUCCESSFUL if ok else FAILED, rule,
                        base_value, canary.query)


# -- Mann–Whitney (Kayenta's NetflixACAJudge) ------------------------------------------------
def too_few_samples(canary: int, baseline: int, confidence: float) -> bool:
    """True when no outcome of a two-sided Mann–Whitney test with these
    sample sizes could be significant: its smallest p-value, 2 / C(n+m, n)
    (the samples entirely apart), is above 1 - confidence. At 95 % that is
    3 or fewer on each side, 3 against 4, 2 against fewer than 8, 1 against
    fewer than 39."""
    return 2 / math.comb(canary + baseline, canary) > 1 - confidence


@dataclass
class Comparison:
    classification: str  # Pass, High or Low
    reason: str
    stats: dict[str, Any]


def mann_whitney(canary: list[float], baseline: list[float], *, confidence: float, direction: str,
                 allowed_increase: float, allowed_decrease: float) -> Comparison:
    """Kayenta's comparison of the canary (experiment) with the baseline
    (control): identical data and a single value everywhere pass; otherwise
    High when the canary is significantly higher (p < 1 - confidence, a
    positive Hodges–Lehmann shift) and its mean is at least
    ``allowed_increase`` x the baseline's; Low likewise downwards. Only the
    ``direction`` that is bad can fail. Deterministic: ties are handled by
    scipy's tie correction, not by Kayenta's added noise."""
    import numpy
    from scipy.stats import mannwhitneyu

    base_mean, canary_mean = float(numpy.mean(baseline)), float(numpy.mean(canary))
    stats: dict[str, Any] = {"canary_samples": len(canary), "baseline_samples": len(baseline),
                             "canary_mean": canary_mean, "baseline_mean": base_mean}
    if sorted(canary) == sorted(baseline):
        return Comparison(PASS, "canary and baseline data are identical", stats)
    if len(set(canary) | set(baseline)) == 1:
        return Comparison(PASS, "every sample has the same value", stats)
    # Kayenta: a baseline mean of 0 gives a ratio of 1 (no effect measurable).
    ratio = 1.0 if base_mean == 0 else canary_mean / base_mean
    p_value = float(mannwhitneyu(canary, baseline, alternative="two-sided", method="auto").pvalue)
    shift = float(numpy.median(numpy.subtract.outer(numpy.asarray(canary), numpy.asarray(baseline))))
    significant = p_value < 1 - confidence
    stats.update({"p_value": p_value, "shift": shift, "ratio": ratio, "confidence": confidence})
    evidence = f"p = {p_value:.3g} {'<' if significant else '>='} {1 - confidence:.3g}, " \
               f"shift {shift:+.4g}, mean ratio {ratio:.3g}"
    if significant and shift > 0 and direction in ("increase", "either") and ratio >= allowed_increase:
        return Comparison(HIGH, f"High: {evidence} >= {allowed_increase:g}", stats)
    if significant and shift < 0 and direction in ("decrease", "either") and ratio <= allowed_decrease:
        return Comparison(LOW, f"Low: {evidence} <= {allowed_decrease:g}", stats)
    return Comparison(PASS, f"Pass: {evidence}", stats)


def judge_mann_whitney(metric: JudgedMetric, canary: Observation, baseline: Observation | None,
                       direction: str) -> MetricResult:
    name, version = metric.name, canary.version

    def result(verdict: str, classification: str | None, rule: str, stats: dict[str, Any] | None = None,
               warning: str | None = None) -> MetricResult:
        stats = stats or {}
        return MetricResult(name, version, stats.get("canary_mean"), None, "mann-whitney", verdict, rule,
                            stats.get("baseline_mean"), canary.query, "mann-whitney", classification,
                            metric.critical, metric.group, stats or None, warning)

    if baseline is None:
        return result(ERROR, None, f"{name}: the mann-whitney judge needs a baseline version")
    canary_values, canary_dropped, error = window_values(canary)
    base_values, base_dropped, base_error = window_values(baseline)
    if error or base_error:
        return result(ERROR, None, f"{name}: {error or base_error}")
    about = f"{name} of {version} vs {baseline.version}"
    counts = {"canary_samples": len(canary_values), "baseline_samples": len(base_values),
              "dropped": canary_dropped + base_dropped}
    no_data = NODATA_FAIL if metric.must_have_data and not metric.critical else NODATA
    verdict = FAILED if no_data == NODATA_FAIL or metric.critical else INCONCLUSIVE
    if not canary_values or not base_values:
        side = "canary" if not canary_values else "baseline"
        return result(verdict, no_data, f"{about}: no data for the {side} ({no_data}"
                      f"{', critical' if metric.critical else ''})", counts)
    if too_few_samples(len(canary_values), len(base_values), metric.confidence):
        warning = (f"{about}: too few samples to judge ({len(canary_values)} canary, {len(base_values)} "
                   f"baseline): no difference could be significant at {metric.confidence:.0%}")
        return result(verdict, no_data, f"{warning} ({no_data})", counts, warning)
    comparison = mann_whitney(canary_values, base_values, confidence=metric.confidence, direction=direction,
                              allowed_increase=metric.allowed_increase,
                              allowed_decrease=metric.allowed_decrease)
    stats = {**comparison.stats, "dropped": counts["dropped"]}
    verdict = SUCCESSFUL if comparison.classification == PASS else FAILED
    critical = " (critical)" if metric.critical and verdict == FAILED else ""
    return result(verdict, comparison.classification, f"{about}: {comparison.reason}{critical}", stats)


# -- the score ------------------------------------------------------------------------------
@dataclass
class Score:
    score: float | None  # None: no scored metric had data
    verdict: str
    reason: str
    groups: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"score": self.score, "verdict": self.verdict, "reason": self.reason, "groups": self.groups}


def score(results: list[MetricResult], scoring: Scoring) -> Score | None:
    """Kayenta's WeightedSumScorer and ThresholdScoreClassifier over the
    Mann–Whitney metrics of one measurement (None when there are none): per
    group the share of Pass among Pass/High/Low/NodataFailMetric, x 100;
    the summary is the groups' scores weighted (groups without a weight share
    what the given weights leave of 100; a group without data adds nothing
    but keeps its weight); any critical metric that is not Pass scores 0.
    Pass at or above ``pass_score``, Inconclusive (Kayenta: Marginal) at or
    above ``marginal_score``, else Failed."""
    judged = [r for r in results if r.judge == "mann-whitney" and r.classification is not None]
    if not any(r.judge == "mann-whitney" for r in results):
        return None
    labels: dict[str, list[str]] = {}
    for item in judged:
        labels.setdefault(item.group or "default", []).append(item.classification or NODATA)
    groups: dict[str, float] = {}
    for group, found in labels.items():
        counted = [c for c in found if c in (PASS, HIGH, LOW, NODATA_FAIL)]
        if counted:
            groups[group] = 100.0 * counted.count(PASS) / len(counted)
    if not groups:
        return Score(None, INCONCLUSIVE, "no statistical metric had data to score")
    given = {g: w for g, w in scoring.groups.items() if g in labels}
    unweighted = [g for g in labels if g not in scoring.groups]
    share = (100.0 - sum(given.values())) / len(unweighted) if unweighted else 0.0
    total = round(sum(groups[g] * scoring.groups.get(g, share) / 100.0 for g in groups), 6)
    critical = [r for r in judged if r.critical and r.classification != PASS]
    parts = ", ".join(f"{g} {s:.0f}" for g, s in sorted(groups.items()))
    if critical:
        return Score(0.0, FAILED, f"score 0: critical metric {critical[0].name} is {critical[0].classification}",
                     groups)
    thresholds = f"(pass {scoring.pass_score:g}, marginal {scoring.marginal_score:g}; groups: {parts})"
    if total >= scoring.pass_score:
        return Score(total, SUCCESSFUL, f"score {total:.4g} passes {thresholds}", groups)
    if total >= scoring.marginal_score:
        return Score(total, INCONCLUSIVE, f"score {total:.4g} is marginal {thresholds}", groups)
    return Score(total, FAILED, f"score {total:.4g} fails {thresholds}", groups)


def measurement_verdict(results: list[MetricResult], scored: Score | None) -> str:
    """Threshold metrics are gates (one Failed fails the measurement); the
    statistical metrics count through their score."""
    verdicts = {r.verdict for r in results if r.judge == "threshold"}
    if scored is not None:
        verdicts.add(scored.verdict)
        verdicts |= {ERROR for r in results if r.judge != "threshold" and r.verdict == ERROR}
    return (FAILED if FAILED in verdicts else ERROR if ERROR in verdicts
            else INCONCLUSIVE if INCONCLUSIVE in verdicts else SUCCESSFUL)
