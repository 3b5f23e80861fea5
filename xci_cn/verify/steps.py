"""The analysis of one rollout step, as the deploy and verify stages use it:
a verdict that is not good enough becomes an exception the strategies know
(``PermanentError``: roll back; ``RolloutPaused``: leave the weights)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from xci_cn import settings
from xci_cn.errors import InvalidInput, PermanentError, RolloutPaused
from xci_cn.verify.analysis import AnalysisSpec, analyse, outcome, request_rates
from xci_cn.verify.prometheus import Prometheus
from xci_cn.verify.tape import TapeWriter


class AnalysisFailed(PermanentError):
    """Failed or Error (or Inconclusive with policy fail); ``record`` is the
    analysis as summary.json keeps it."""

    def __init__(self, verdict: str, reason: str, record: dict[str, Any]):
        self.record = record
        super().__init__(f"analysis {verdict}: {reason}")


class AnalysisPaused(RolloutPaused):
    """Inconclusive with policy pause."""

    def __init__(self, reason: str, record: dict[str, Any]):
        self.record = record
        super().__init__(f"analysis Inconclusive: {reason} (policy: pause)")


def prometheus_url(spec: AnalysisSpec, provisioned: str | None = None) -> str:
    """The spec's ``prometheus``, else the one a provision stage brought up
    (the sandbox's), else $XCI_CN_PROMETHEUS_URL."""
    url = spec.prometheus or provisioned or settings.current().prometheus_url
    if not url:
        raise InvalidInput("analysis needs Prometheus: set `prometheus` or $XCI_CN_PROMETHEUS_URL "
                           "(the sandbox provides its own)")
    return url


def judge_step(spec: AnalysisSpec, *, service: str, namespace: str, canary: str, baseline: str | None,
               sleep: Callable[[float], None], log: logging.Logger, progress: Callable[[str], None],
               tape: TapeWriter | None = None, source: dict[str, Any] | None = None,
               prometheus: str | None = None) -> dict[str, Any]:
    """Analyse one step; the record when good enough, else AnalysisFailed or
    AnalysisPaused. ``sleep`` must wake up (raise) on cancel. With ``tape``,
    the analysis is recorded on the run's analysis tape; ``source`` says
    where in the run it happened (xci_cn.verify.tape.TapeSource)."""
    service, namespace = spec.service or service, spec.namespace or namespace
    canary, baseline = spec.canary or canary, spec.baseline or baseline
    prom = Prometheus(prometheus_url(spec, prometheus))
    try:
        result = analyse(prom, spec, service=service, namespace=namespace, canary=canary, baseline=baseline,
                         sleep=sleep,
                         on_measurement=lambda m: log.info(
                             "analysis %s: %s", m.verdict, "; ".join(r.rule for r in m.metrics)),
                         traffic=lambda: request_rates(prom, spec, service, namespace,
                                                       [v for v in (canary, baseline) if v]))
    finally:
        prom.close()
    decision, reason = outcome(spec, result)
    record = result.as_dict()
    record["reason"] = reason
    if tape is not None:
        tape.record(spec, result, decision, source or {"kind": "verify-check"}, service=service,
                    namespace=namespace, canary=canary, baseline=baseline)
    progress(f"analysis of {canary}: {result.verdict}: {result.reason}")
    if decision == "fail":
        raise AnalysisFailed(result.verdict, reason, record)
    if decision == "pause":
        raise AnalysisPaused(reason, record)
    return record
