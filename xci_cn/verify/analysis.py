"""Metric-based canary analysis from Prometheus.

Per metric: a threshold (and optionally a limit relative to the baseline
version: Clover accepted canary latency <= 120 % of the stable one) and an
explicit no-data policy — no traffic means no metrics, which must never pass
silently. A step's analysis takes ``count`` measurements ``interval`` apart
and stops early once ``failure_limit`` measurements failed (Flagger's
threshold semantics) or ``error_limit`` consecutive ones could not be taken.

A metric is judged either by its threshold or, with ``judge:
mann-whitney``, statistically against the baseline's samples of the same
window (Kayenta's NetflixACAJudge; see xci_cn/verify/judge.py), the
statistical metrics scored together.

Verdicts: Successful, Failed, Inconclusive, Error — each measurement keeps
the measured values and the rule that decided, and the observations (the
PromQL as sent and the series returned) that an analysis tape records so a
replay can re-judge them without Prometheus.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from string import Template
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, model_validator

from xci_cn.config.model import STRICT, Duration
from xci_cn.verify.judge import (
    ERROR,
    FAILED,
    INCONCLUSIVE,
    OPS,
    SUCCESSFUL,
    MetricResult,
    Observation,
    judge_mann_whitney,
    judge_threshold,
    measurement_verdict,
    score,
)

if TYPE_CHECKING:  # the client (and requests) only where Prometheus is asked, not to re-judge a tape
    from xci_cn.verify.prometheus import Prometheus

_ISTIO = ('reporter="destination",destination_service_name="$service",'
          'destination_workload_namespace="$namespace",destination_version="$version"')
QUERIES = {
    "success-rate": (f'sum(rate(istio_requests_total{{{_ISTIO},response_code!~"5.."}}[$window]))'
                     f' / sum(rate(istio_requests_total{{{_ISTIO}}}[$window]))'),
    "latency-p99": ("histogram_quantile(0.99, sum by (le) "
                    f"(rate(istio_request_duration_milliseconds_bucket{{{_ISTIO}}}[$window])))"),
}
# The proxy's own request metrics per backend Service (Traefik names it
# <namespace>-<service>-http-<port>@kubernetesgateway); latency in ms like Istio's.
_GATEWAY = 'service=~"$namespace-$backend-http-[0-9]+@kubernetesgateway"'
GATEWAY_QUERIES = {
    "success-rate": (f'sum(rate(traefik_service_requests_total{{{_GATEWAY},code!~"5.."}}[$window]))'
                     f' / sum(rate(traefik_service_requests_total{{{_GATEWAY}}}[$window]))'),
    "latency-p99": ("1000 * histogram_quantile(0.99, sum by (le) "
                    f"(rate(traefik_service_request_duration_seconds_bucket{{{_GATEWAY}}}[$window])))"),
}
PROFILES = {"istio": QUERIES, "gateway": GATEWAY_QUERIES}
DEFAULT_OPS = {"success-rate": ">=", "latency-p99": "<="}
# Which change of a statistically judged metric is bad, by type.
DEFAULT_DIRECTIONS = {"success-rate": "decrease", "latency-p99": "increase", "query": "either"}
# Requests per second that reached a version, by profile: recorded with each measurement.
REQUEST_RATES = {"istio": f"sum(rate(istio_requests_total{{{_ISTIO}}}[$window]))",
                 "gateway": f"sum(rate(traefik_service_requests_total{{{_GATEWAY}}}[$window]))"}


class MetricSpec(BaseModel):
    """One metric and the rule it must keep."""

    model_config = STRICT

    name: str = Field(description="Name shown in verdicts and reports.")
    type: Literal["success-rate", "latency-p99", "query"] = Field(
        default="query", description="Request success rate, p99 latency (ms) — from the analysis' metric "
                                     "profile — or own PromQL.")
    query: str | None = Field(default=None, description="PromQL for type query; $service, $namespace, "
                                                         "$version, $backend and $window are substituted.")
    judge: Literal["threshold", "mann-whitney"] = Field(
        default="threshold", description="threshold: the canary's value against `threshold`; mann-whitney: "
                                         "the canary's samples against the baseline's over the same window.")
    threshold: float | None = Field(default=None, description="The limit the canary's value must keep "
                                                              "(judge threshold).")
    op: Literal[">=", "<=", ">", "<"] | None = Field(
        default=None, description="How value compares to threshold (default: >= for success-rate, "
                                  "<= for latency-p99; required for query).")
    max_vs_baseline: float | None = Field(
        default=None, gt=0, le=100, description="Canary value must be <= this factor x the baseline's (1.2 = 120 %).")
    no_data: Literal["fail", "inconclusive", "skip"] = Field(
        default="inconclusive", description="What a measurement without data counts as (judge threshold).")
    confidence: float = Field(default=0.95, gt=0.5, lt=1, description="mann-whitney: confidence level; a "
                                                                      "difference counts when p < 1 - confidence.")
    direction: Literal["increase", "decrease", "either"] | None = Field(
        default=None, description="mann-whitney: which change is bad (default: decrease for success-rate, "
                                  "increase for latency-p99, either for query).")
    allowed_increase: float = Field(default=1.0, ge=1, description="mann-whitney: a significant increase "
                                    "fails only when the canary's mean is >= this x the baseline's.")
    allowed_decrease: float = Field(default=1.0, gt=0, le=1, description="mann-whitney: a significant "
                                    "decrease fails only when the canary's mean is <= this x the baseline's.")
    critical: bool = Field(default=False, description="mann-whitney: a failure (or no data) of this metric "
                                                      "fails the whole analysis at once.")
    must_have_data: bool = Field(default=False, description="mann-whitney: no data counts as a failure in "
                                                            "the metric's group.")
    group: str = Field(default="default", description="mann-whitney: the score group (weights: the "
                                                      "analysis's `scoring.groups`).")
    lookback: Duration | None = Field(default=None, gt=0, description="mann-whitney: the window of samples "
                                                                      "compared (default: the interval).")
    resolution: Duration = Field(default=1.0, gt=0, description="mann-whitney: seconds between samples.")

    @model_validator(mode="after")
    def _complete(self) -> MetricSpec:
        if self.type == "query" and not self.query:
            raise ValueError(f"metric {self.name!r}: type query needs a query")
        if self.judge == "threshold":
            if self.threshold is None:
                raise ValueError(f"metric {self.name!r}: judge threshold needs threshold")
            if self.type == "query" and self.op is None:
                raise ValueError(f"metric {self.name!r}: type query needs op")
        elif self.threshold is not None or self.max_vs_baseline is not None:
            raise ValueError(f"metric {self.name!r}: judge mann-whitney compares with the baseline; "
                             "threshold and max_vs_baseline belong to judge threshold")
        return self

    def comparison(self) -> str:
        if self.judge == "mann-whitney":
            return "mann-whitney"
        return self.op or DEFAULT_OPS[self.type]

    def bad_direction(self) -> str:
        return self.direction or DEFAULT_DIRECTIONS[self.type]

    def promql(self, service: str, namespace: str, version: str, window: float, profile: str = "istio",
               backend: str | None = None) -> str:
        """The query for ``version``; ``backend`` is its Service (gateway
        profile, default ``<service>-<version>``)."""
        template = self.query if self.type == "query" else PROFILES[profile][self.type]
        return Template(template or "").safe_substitute(
            service=service, namespace=namespace, version=version, window=f"{int(max(window, 1))}s",
            backend=backend or f"{service}-{version}")


def default_metrics() -> list[MetricSpec]:
    """Flagger's defaults: success rate >= 99 %, p99 latency <= 500 ms."""
    return [MetricSpec(name="request-success-rate", type="success-rate", threshold=0.99),
            MetricSpec(name="request-duration-p99", type="latency-p99", threshold=500)]


class ScoringSpec(BaseModel):
    """How the statistically judged metrics of a measurement are scored
    (Kayenta's score thresholds and group weights)."""

    model_config = STRICT

    pass_score: float = Field(default=95, ge=0, le=100, description="A score at or above passes.")
    marginal_score: float = Field(default=75, ge=0, le=100, description="A score at or above (and below "
                                  "pass_score) is marginal: Inconclusive; below it fails.")
    groups: dict[str, float] = Field(default_factory=dict, description="Weight of each metric group, "
                                     "in percent; groups not named share what is left of 100.")

    @model_validator(mode="after")
    def _consistent(self) -> ScoringSpec:
        if self.marginal_score > self.pass_score:
            raise ValueError(f"marginal_score {self.marginal_score:g} is above pass_score {self.pass_score:g}")
        if any(w < 0 for w in self.groups.values()) or sum(self.groups.values()) > 100:
            raise ValueError("group weights must be >= 0 and add up to at most 100")
        return self


class AnalysisSpec(BaseModel):
    """How a canary (or a running version) is judged."""

    model_config = STRICT

    prometheus: str | None = Field(default=None, description="Prometheus base URL "
                                                             "(default: $XCI_CN_PROMETHEUS_URL).")
    service: str | None = Field(default=None, description="destination_service_name (default: the "
                                                          "deploy stage's service).")
    namespace: str | None = Field(default=None, description="Namespace (default: the stage's).")
    canary: str | None = Field(default=None, description="Version label judged (default: the rollout's).")
    baseline: str | None = Field(default=None, description="Version compared against (default: stable).")
    interval: Duration = Field(default=30.0, description="Time between measurements.")
    count: int = Field(default=3, ge=1, le=100, description="Measurements per step.")
    failure_limit: int = Field(default=1, ge=1, le=100, description="Failed measurements that fail the analysis.")
    error_limit: int = Field(default=4, ge=1, le=100, description="Consecutive measurements that could not be "
                                                          "taken (Prometheus down) before Error.")
    window: Duration = Field(default=60.0, description="Range of rate() in the built-in queries.")
    profile: Literal["istio", "gateway"] | None = Field(
        default=None, description="Built-in queries: istio (istio_requests_total) or gateway (the proxy's "
                                  "own request metrics per backend Service); default: follows the router "
                                  "(gateway-api: gateway).")
    backends: dict[str, str] | None = Field(
        default=None, description="Version -> backend Service for the gateway profile (default: the "
                                  "router's, else <service>-<version>).")
    inconclusive: Literal["pause", "fail", "pass"] = Field(
        default="pause", description="What an Inconclusive verdict does to a rollout.")
    metrics: list[MetricSpec] = Field(default_factory=default_metrics, min_length=1,
                                      description="Metrics judged (default: success rate >= 99 %, "
                                                  "p99 latency <= 500 ms).")
    scoring: ScoringSpec = Field(default_factory=ScoringSpec, description="Score of the mann-whitney "
                                 "metrics (pass 95, marginal 75, equal group weights).")

    @model_validator(mode="after")
    def _unique_names(self) -> AnalysisSpec:
        names = [m.name for m in self.metrics]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"metric names must be unique: {', '.join(twice)}")
        return self


@dataclass
class Measurement:
    at: str
    verdict: str
    metrics: list[MetricResult] = field(default_factory=list)
    score: dict[str, Any] | None = None  # the mann-whitney metrics' score
    warnings: list[str] = field(default_factory=list)
    # For the tape, not for summary.json: what was asked and answered.
    observations: list[Observation] = field(default_factory=list)
    traffic: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"at": self.at, "verdict": self.verdict,
                                "metrics": [asdict(m) for m in self.metrics]}
        if self.score is not None:
            data["score"] = self.score
        if self.warnings:
            data["warnings"] = list(self.warnings)
        return data


@dataclass
class AnalysisResult:
    verdict: str
    reason: str
    measurements: list[Measurement] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        last = self.measurements[-1] if self.measurements else None
        data: dict[str, Any] = {
            "verdict": self.verdict, "reason": self.reason,
            "measurements": [m.as_dict() for m in self.measurements],
            # The report charts the last measurement of each step.
            "metrics": [_metric_summary(m) for m in (last.metrics if last else [])]}
        if self.warnings:
            data["warnings"] = list(self.warnings)
        return data


def _metric_summary(m: MetricResult) -> dict[str, Any]:
    return {"name": m.name, "version": m.version, "value": m.value, "threshold": m.threshold, "op": m.op,
            "passed": m.verdict == SUCCESSFUL, "verdict": m.verdict, "rule": m.rule, "baseline": m.baseline}


def _now_iso(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def observe(prom: Prometheus, spec: AnalysisSpec, service: str, namespace: str, canary: str,
            baseline: str | None, now: float | None = None) -> tuple[float, list[Observation]]:
    """Ask Prometheus everything one measurement needs, all at the same
    instant: the canary's value (threshold) or samples (mann-whitney), and the
    baseline's wherever a rule compares with it."""
    now = time.time() if now is None else now
    observations: list[Observation] = []
    for metric in spec.metrics:
        roles = [("canary", canary)]
        if baseline and (metric.judge == "mann-whitney" or metric.max_vs_baseline):
            roles.append(("baseline", baseline))
        for role, version in roles:
            query = metric.promql(service, namespace, version, spec.window, spec.profile or "istio",
                                  (spec.backends or {}).get(version))
            if metric.judge == "mann-whitney":
                start = now - (metric.lookback or spec.interval)
                got = prom.query_range(query, start, now, metric.resolution)
                observations.append(Observation.of(metric.name, role, version, query, "range", start, now,
                                                   metric.resolution, got))
            else:
                observations.append(Observation.of(metric.name, role, version, query, "instant", now, now,
                                                   None, prom.query(query, at=now)))
    return now, observations


def judge(spec: AnalysisSpec, at: str, observations: list[Observation]) -> Measurement:
    """Judge one measurement's observations by ``spec``'s rules (no I/O)."""
    found = {(o.metric, o.role): o for o in observations}
    results: list[MetricResult] = []
    for metric in spec.metrics:
        canary = found[(metric.name, "canary")]
        baseline = found.get((metric.name, "baseline"))
        if metric.judge == "mann-whitney":
            results.append(judge_mann_whitney(metric, canary, baseline, metric.bad_direction()))
        else:
            judged = judge_threshold(metric, canary, baseline, metric.comparison())
            if judged is not None:
                results.append(judged)
    scored = score(results, spec.scoring)
    warnings = [r.warning for r in results if r.warning]
    return Measurement(at, measurement_verdict(results, scored), results,
                       scored.as_dict() if scored else None, warnings, list(observations))


def measure(prom: Prometheus, spec: AnalysisSpec, service: str, namespace: str, canary: str,
            baseline: str | None) -> Measurement:
    """One round: every metric of the canary (and of the baseline where a
    rule compares with it)."""
    now, observations = observe(prom, spec, service, namespace, canary, baseline)
    return judge(spec, _now_iso(now), observations)


def decide(spec: AnalysisSpec, measurements: list[Measurement]) -> tuple[bool, AnalysisResult]:
    """The verdict after ``measurements`` (pure): (sure, result). Sure once
    ``failure_limit`` measurements failed, a critical metric failed, or
    ``error_limit`` in a row could not be taken; the measurements after that
    point are not counted."""
    result = AnalysisResult(SUCCESSFUL, "", warnings=[w for m in measurements for w in m.warnings])
    failures = consecutive_errors = 0
    for measurement in measurements:
        result.measurements.append(measurement)
        consecutive_errors = consecutive_errors + 1 if measurement.verdict == ERROR else 0
        if measurement.verdict == FAILED:
            failures += 1
        critical = [m.rule for m in measurement.metrics if m.critical and m.verdict == FAILED]
        if critical:
            result.verdict = FAILED
            result.reason = "critical metric failed: " + "; ".join(critical)
            return True, result
        if failures >= spec.failure_limit:
            failed = [m.rule for m in measurement.metrics if m.verdict == FAILED]
            if measurement.score and measurement.score["verdict"] == FAILED:
                failed.append(measurement.score["reason"])
            result.verdict = FAILED
            result.reason = (f"{failures} failed measurement(s) (limit {spec.failure_limit}): "
                             + "; ".join(failed))
            return True, result
        if consecutive_errors >= spec.error_limit:
            errors = [m.rule for m in measurement.metrics if m.verdict == ERROR]
            result.verdict = ERROR
            result.reason = f"{consecutive_errors} measurements in a row could not be taken: " + "; ".join(errors)
            return True, result
    inconclusive = [m for m in result.measurements if m.verdict in (INCONCLUSIVE, ERROR)]
    if inconclusive:
        last = inconclusive[-1]
        rules = [r.rule for r in last.metrics if r.verdict in (INCONCLUSIVE, ERROR)
                 or (r.judge != "threshold" and r.verdict == FAILED)]
        if last.score and last.score["verdict"] == INCONCLUSIVE:
            rules.append(last.score["reason"])
        result.verdict = INCONCLUSIVE
        result.reason = f"{len(inconclusive)} of {len(result.measurements)} measurements inconclusive: " \
                        + "; ".join(rules)
    elif failures:
        result.reason = f"{failures} failed measurement(s), below the limit {spec.failure_limit}; " \
                        f"{len(result.measurements)} taken"
    else:
        result.reason = f"all {len(result.measurements)} measurements within their rules"
    if result.warnings:
        result.reason += f" (warning: {result.warnings[-1]})"
    return False, result


def analyse(prom: Prometheus, spec: AnalysisSpec, *, service: str, namespace: str, canary: str,
            baseline: str | None, sleep: Callable[[float], None] = time.sleep,
            on_measurement: Callable[[Measurement], None] | None = None,
            traffic: Callable[[], dict[str, Any]] | None = None) -> AnalysisResult:
    """Take up to ``count`` measurements; stop as soon as the verdict is
    sure. ``traffic`` tells what traffic the versions had meanwhile; it is
    recorded with each measurement."""
    measurements: list[Measurement] = []
    for index in range(spec.count):
        if index:
            sleep(spec.interval)
        measurement = measure(prom, spec, service, namespace, canary, baseline)
        if traffic is not None:
            measurement.traffic = traffic()
        measurements.append(measurement)
        if on_measurement is not None:
            on_measurement(measurement)
        sure, result = decide(spec, measurements)
        if sure:
            return result
    return decide(spec, measurements)[1]


def request_rates(prom: Prometheus, spec: AnalysisSpec, service: str, namespace: str,
                  versions: list[str]) -> dict[str, Any]:
    """Requests per second that reached each version over the analysis
    window, as the profile's metrics count them (Istio's destination side,
    or the proxy's per backend Service)."""
    from xci_cn.verify.judge import single_value

    rates: dict[str, Any] = {"unit": "requests/s", "window": f"{int(max(spec.window, 1))}s"}
    template = REQUEST_RATES[spec.profile or "istio"]
    now = time.time()
    for version in versions:
        backend = (spec.backends or {}).get(version) or f"{service}-{version}"
        query = Template(template).safe_substitute(service=service, namespace=namespace, version=version,
                                                   window=rates["window"], backend=backend)
        got = Observation.of("request-rate", "traffic", version, query, "instant", now, now, None,
                             prom.query(query, at=now))
        value, error = single_value(got)
        rates[version] = error or value
    return rates


def outcome(spec: AnalysisSpec, result: AnalysisResult) -> tuple[str, str]:
    """What a verdict does to a rollout under the spec's inconclusive policy:
    ("pass" | "fail" | "pause", reason)."""
    if result.verdict in (FAILED, ERROR):
        return "fail", result.reason
    if result.verdict == INCONCLUSIVE:
        if spec.inconclusive == "fail":
            return "fail", f"{result.reason} (policy: fail)"
        if spec.inconclusive == "pause":
            return "pause", result.reason
        return "pass", f"{result.reason} (policy: pass)"
    return "pass", result.reason


def combine_records(records: dict[str, Any]) -> dict[str, Any]:
    """The analyses of several services at one step (a graph canary) as one
    record: the worst verdict, each service's reason, every metric named
    after its service."""
    judged = {name: r for name, r in records.items() if isinstance(r, dict)}
    verdicts = [r.get("verdict") for r in judged.values()]
    verdict = next((v for v in (FAILED, ERROR, INCONCLUSIVE) if v in verdicts), SUCCESSFUL)
    return {"verdict": verdict, "reason": "; ".join(f"{name}: {r.get('reason')}" for name, r in judged.items()),
            "metrics": [{**m, "name": f"{name} {m['name']}"} for name, r in judged.items()
                        for m in r.get("metrics") or []],
            "services": list(judged)}


__all__ = ["ERROR", "FAILED", "INCONCLUSIVE", "OPS", "SUCCESSFUL", "AnalysisResult", "AnalysisSpec",
           "Measurement", "MetricResult", "MetricSpec", "ScoringSpec", "analyse", "combine_records", "decide", "judge",
           "measure", "observe", "outcome"]
