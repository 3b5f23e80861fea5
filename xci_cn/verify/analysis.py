"""Metric-based canary analysis from Prometheus.

Per metric: a threshold (and optionally a limit relative to the baseline
version: Clover accepted canary latency <= 120 % of the stable one) and an
explicit no-data policy — no traffic means no metrics, which must never pass
silently. A step's analysis takes ``count`` measurements ``interval`` apart
and stops early once ``failure_limit`` measurements failed (Flagger's
threshold semantics) or ``error_limit`` consecutive ones could not be taken.

Verdicts: Successful, Failed, Inconclusive, Error — each measurement keeps
the measured values and the rule that decided.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from string import Template
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from xci_cn.config.model import STRICT, Duration
from xci_cn.verify.prometheus import Prometheus

SUCCESSFUL, FAILED, INCONCLUSIVE, ERROR = "Successful", "Failed", "Inconclusive", "Error"

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
OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


class MetricSpec(BaseModel):
    """One metric and the rule it must keep."""

    model_config = STRICT

    name: str = Field(description="Name shown in verdicts and reports.")
    type: Literal["success-rate", "latency-p99", "query"] = Field(
        default="query", description="Request success rate, p99 latency (ms) — from the analysis' metric "
                                     "profile — or own PromQL.")
    query: str | None = Field(default=None, description="PromQL for type query; $service, $namespace, "
                                                         "$version, $backend and $window are substituted.")
    threshold: float = Field(description="The limit the canary's value must keep.")
    op: Literal[">=", "<=", ">", "<"] | None = Field(
        default=None, description="How value compares to threshold (default: >= for success-rate, "
                                  "<= for latency-p99; required for query).")
    max_vs_baseline: float | None = Field(
        default=None, gt=0, le=100, description="Canary value must be <= this factor x the baseline's (1.2 = 120 %).")
    no_data: Literal["fail", "inconclusive", "skip"] = Field(
        default="inconclusive", description="What a measurement without data counts as.")

    @model_validator(mode="after")
    def _complete(self) -> MetricSpec:
        if self.type == "query" and not self.query:
            raise ValueError(f"metric {self.name!r}: type query needs a query")
        if self.type == "query" and self.op is None:
            raise ValueError(f"metric {self.name!r}: type query needs op")
        return self

    def comparison(self) -> str:
        return self.op or DEFAULT_OPS[self.type]

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


@dataclass
class MetricResult:
    name: str
    version: str
    value: float | None
    threshold: float
    op: str
    verdict: str
    rule: str
    baseline: float | None = None
    query: str = ""


@dataclass
class Measurement:
    at: str
    verdict: str
    metrics: list[MetricResult] = field(default_factory=list)


@dataclass
class AnalysisResult:
    verdict: str
    reason: str
    measurements: list[Measurement] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        last = self.measurements[-1] if self.measurements else None
        return {"verdict": self.verdict, "reason": self.reason,
                "measurements": [asdict(m) for m in self.measurements],
                # The report charts the last measurement of each step.
                "metrics": [_metric_summary(m) for m in (last.metrics if last else [])]}


def _metric_summary(m: MetricResult) -> dict[str, Any]:
    return {"name": m.name, "version": m.version, "value": m.value, "threshold": m.threshold, "op": m.op,
            "passed": m.verdict == SUCCESSFUL, "verdict": m.verdict, "rule": m.rule, "baseline": m.baseline}


def _fmt(value: float | None) -> str:
    return "no data" if value is None else f"{value:.4g}"


def measure(prom: Prometheus, spec: AnalysisSpec, service: str, namespace: str, canary: str,
            baseline: str | None) -> Measurement:
    """One round: every metric of the canary (and of the baseline where a
    relative limit is set)."""
    results: list[MetricResult] = []
    profile = spec.profile or "istio"
    backends = spec.backends or {}
    for metric in spec.metrics:
        query = metric.promql(service, namespace, canary, spec.window, profile, backends.get(canary))
        got = prom.query(query)
        op = metric.comparison()
        if got.error:
            results.append(MetricResult(metric.name, canary, None, metric.threshold, op, ERROR,
                                        f"{metric.name}: {got.error}", query=query))
            continue
        if got.value is None:
            if metric.no_data == "skip":
                continue
            verdict = FAILED if metric.no_data == "fail" else INCONCLUSIVE
            results.append(MetricResult(metric.name, canary, None, metric.threshold, op, verdict,
                                        f"{metric.name} of {canary}: no data (policy: {metric.no_data})",
                                        query=query))
            continue
        ok = OPS[op](got.value, metric.threshold)
        rule = f"{metric.name} of {canary} = {_fmt(got.value)} must be {op} {metric.threshold:g}"
        base_value = None
        if ok and metric.max_vs_baseline and baseline:
            base = prom.query(metric.promql(service, namespace, baseline, spec.window, profile,
                                            backends.get(baseline)))
            base_value = base.value
            if base.error or base.value is None:
                verdict = ERROR if base.error else (FAILED if metric.no_data == "fail" else INCONCLUSIVE)
                results.append(MetricResult(metric.name, canary, got.value, metric.threshold, op, verdict,
                                            f"{rule}; baseline {baseline}: {base.error or 'no data'}",
                                            query=query))
                continue
            limit = base.value * metric.max_vs_baseline
            ok = got.value <= limit
            rule += (f"; and <= {metric.max_vs_baseline:.0%} of {baseline} ({_fmt(base.value)}) = "
                     f"{_fmt(limit)}")
        results.append(MetricResult(metric.name, canary, got.value, metric.threshold, op,
                                    SUCCESSFUL if ok else FAILED, rule, base_value, query))
    verdicts = {r.verdict for r in results}
    verdict = (FAILED if FAILED in verdicts else ERROR if ERROR in verdicts
               else INCONCLUSIVE if INCONCLUSIVE in verdicts else SUCCESSFUL)
    return Measurement(datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                       verdict, results)


def analyse(prom: Prometheus, spec: AnalysisSpec, *, service: str, namespace: str, canary: str,
            baseline: str | None, sleep: Callable[[float], None] = time.sleep,
            on_measurement: Callable[[Measurement], None] | None = None) -> AnalysisResult:
    """Take up to ``count`` measurements; stop as soon as the verdict is sure."""
    result = AnalysisResult(SUCCESSFUL, "")
    failures = consecutive_errors = 0
    for index in range(spec.count):
        if index:
            sleep(spec.interval)
        measurement = measure(prom, spec, service, namespace, canary, baseline)
        result.measurements.append(measurement)
        if on_measurement is not None:
            on_measurement(measurement)
        consecutive_errors = consecutive_errors + 1 if measurement.verdict == ERROR else 0
        if measurement.verdict == FAILED:
            failures += 1
        if failures >= spec.failure_limit:
            failed = [m.rule for m in measurement.metrics if m.verdict == FAILED]
            result.verdict = FAILED
            result.reason = (f"{failures} failed measurement(s) (limit {spec.failure_limit}): "
                             + "; ".join(failed))
            return result
        if consecutive_errors >= spec.error_limit:
            errors = [m.rule for m in measurement.metrics if m.verdict == ERROR]
            result.verdict = ERROR
            result.reason = f"{consecutive_errors} measurements in a row could not be taken: " + "; ".join(errors)
            return result
    inconclusive = [m for m in result.measurements if m.verdict in (INCONCLUSIVE, ERROR)]
    if inconclusive:
        rules = [r.rule for r in inconclusive[-1].metrics if r.verdict in (INCONCLUSIVE, ERROR)]
        result.verdict = INCONCLUSIVE
        result.reason = f"{len(inconclusive)} of {len(result.measurements)} measurements inconclusive: " \
                        + "; ".join(rules)
        return result
    if failures:
        result.reason = f"{failures} failed measurement(s), below the limit {spec.failure_limit}; " \
                        f"{len(result.measurements)} taken"
    else:
        result.reason = f"all {len(result.measurements)} measurements within their rules"
    return result
