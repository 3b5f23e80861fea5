"""Table tests of the pure rules the pipeline's verdicts rest on: health of
a stored object, the mesh checks, route weights, what the runner makes of an
attempt, and the analysis verdict for every policy and limit (a stub metric
source: no Prometheus, milliseconds; the real-Prometheus tests are in
test_verify.py)."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace
from typing import Any

import pytest

from xci_cn.errors import (
    Cancelled,
    EnvironmentProblem,
    Forbidden,
    InvalidInput,
    Overloaded,
    PermanentError,
    Rejected,
    RolloutPaused,
    StageFailed,
    TemporaryError,
    Unavailable,
)
from xci_cn.k8s.health import DEGRADED, HEALTHY, PROGRESSING, assess
from xci_cn.k8s.istio import route_weights
from xci_cn.pipeline.runner import outcome_of
from xci_cn.pipeline.stage import Check
from xci_cn.pipeline.state import Outcome, RunResult, StageRecord, Status
from xci_cn.verify.analysis import ERROR, FAILED, INCONCLUSIVE, SUCCESSFUL, AnalysisSpec, MetricSpec, analyse
from xci_cn.verify.mesh import MeshSnapshot, check_mesh
from xci_cn.verify.probes import SplitCheck, judge_split
from xci_cn.verify.series import QueryResult, Series


# -- health -----------------------------------------------------------------------------------
def deployment(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None,
               generation: int = 2) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "generation": generation},
            "spec": {"replicas": 2, **(spec or {})},
            "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2,
                       **(status or {})}}


def pod(status: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "status": status}


def crashing(reason: str) -> dict[str, Any]:
    return {"phase": "Running", "containerStatuses": [{"name": "c", "state": {"waiting": {"reason": reason}}}]}


HEALTH_CASES = [
    (deployment(), HEALTHY, "2/2 available"),
    (deployment({"paused": True}), PROGRESSING, "rollout is paused"),
    (deployment(status={"conditions": [{"type": "Progressing", "reason": "ProgressDeadlineExceeded",
                                        "message": "too slow"}]}), DEGRADED, "ProgressDeadlineExceeded: too slow"),
    (deployment(generation=3), PROGRESSING, "waiting for the controller to observe the new generation"),
    (deployment(status={"updatedReplicas": 1}), PROGRESSING, "1 of 2 replicas updated"),
    (deployment(status={"replicas": 3}), PROGRESSING, "1 old replicas pending termination"),
    (deployment(status={"availableReplicas": 1}), PROGRESSING, "1 of 2 updated replicas available"),
    ({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s", "generation": 1},
      "spec": {"replicas": 2}, "status": {"observedGeneration": 1, "readyReplicas": 1}},
     PROGRESSING, "1 of 2 replicas ready"),
    ({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s", "generation": 1},
      "spec": {"replicas": 1}, "status": {"observedGeneration": 1, "readyReplicas": 1, "updateRevision": "b",
                                          "currentRevision": "a", "updatedReplicas": 0}},
     PROGRESSING, "0 of 1 replicas updated"),
    ({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "ds", "generation": 1},
      "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3,
                 "numberAvailable": 3}}, HEALTHY, "3/3 available"),
    ({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
      "status": {"conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]}},
     DEGRADED, "failed: BackoffLimitExceeded"),
    ({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
      "status": {"conditions": [{"type": "Complete", "status": "True"}]}}, HEALTHY, "complete"),
    ({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer"}},
     PROGRESSING, "waiting for a load-balancer address"),
    ({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "c"}, "spec": {"type": "ClusterIP"}},
     HEALTHY, ""),
    (pod(crashing("CrashLoopBackOff")), DEGRADED, "pod p container c: CrashLoopBackOff"),
    (pod(crashing("ImagePullBackOff")), DEGRADED, "pod p container c: ImagePullBackOff"),
    (pod({"phase": "Failed", "message": "OOMKilled"}), DEGRADED, "OOMKilled"),
    (pod({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}), HEALTHY, "ready"),
    (pod({}), PROGRESSING, "phase Pending"),
    ({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "x"},
      "status": {"conditions": [{"type": "Established", "status": "False"}]}}, PROGRESSING,
     "not established yet"),
    ({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "vs"}},
     HEALTHY, "stored"),
]


@pytest.mark.parametrize(("obj", "status", "message"), HEALTH_CASES,
                         ids=[f"{c[0]['kind']}-{i}" for i, c in enumerate(HEALTH_CASES)])
def test_assess(obj: dict[str, Any], status: str, message: str) -> None:
    health = assess(obj)
    assert (health.status, health.message) == (status, message)


# -- mesh checks -----------------------------------------------------------------------------
def snapshot(vs_spec: dict[str, Any], *, subsets: list[dict[str, Any]] | None = None,
             services: set[str] | None = None, gateways: set[str] | None = None,
             pods: list[dict[str, Any]] | None = None) -> MeshSnapshot:
    rules = [] if subsets is None else [{"metadata": {"name": "r"}, "spec": {"host": "web", "subsets": subsets}}]
    return MeshSnapshot("ns", virtual_services=[{"metadata": {"name": "web"}, "spec": vs_spec}],
                        destination_rules=rules, gateways=gateways or set(),
                        services={"ns/web"} if services is None else services,
                        pods=[{"metadata": {"labels": {"version": "v1"}}}] if pods is None else pods)


def split(*pairs: tuple[str, int], host: str = "web") -> dict[str, Any]:
    return {"hosts": ["web"], "http": [{"route": [{"destination": {"host": host, "subset": subset},
                                                   "weight": weight} for subset, weight in pairs]}]}


V1 = [{"name": "v1", "labels": {"version": "v1"}}]
V1_V2 = [*V1, {"name": "v2", "labels": {"version": "v2"}}]

MESH_CASES = [
    ("all good", snapshot(split(("v1", 100)), subsets=V1), True, "routes resolve, weights sum to 100"),
    ("weights", snapshot(split(("v1", 60), ("v2", 30)), subsets=V1_V2,
                         pods=[{"metadata": {"labels": {"version": v}}} for v in ("v1", "v2")]),
     False, "spec.http[0].route: weights sum to 90, not 100"),
    ("no service", snapshot(split(("v1", 100)), subsets=V1, services=set()), False,
     "spec.http[0].route[0].destination.host: 'web' has no Service ns/web"),
    ("no rule", snapshot(split(("v1", 100))), False,
     "spec.http[0].route[0].destination.subset: 'v1' is used but no DestinationRule exists for web"),
    ("no subset", snapshot(split(("v3", 100)), subsets=V1), False,
     "spec.http[0].route[0].destination.subset: 'v3' is not defined in DestinationRule ns/r (subsets: v1)"),
    ("no pods", snapshot(split(("v1", 100)), subsets=V1, pods=[]), False,
     "spec.http[0].route[0].destination.subset: 'v1' selects no pods (labels {'version': 'v1'}) in "
     "DestinationRule ns/r"),
    ("weight 0 needs no pods", snapshot(split(("v1", 100), ("v2", 0)), subsets=V1_V2), True,
     "routes resolve, weights sum to 100"),
    ("gateway", snapshot({**split(("v1", 100)), "gateways": ["gw"]}, subsets=V1), False,
     "spec.gateways[0]: gateway ns/gw does not exist"),
    ("gateway exists", snapshot({**split(("v1", 100)), "gateways": ["gw"]}, subsets=V1, gateways={"ns/gw"}),
     True, "routes resolve, weights sum to 100"),
    ("mirror", snapshot({**split(("v1", 100)), "http": [{**split(("v1", 100))["http"][0],
                                                         "mirror": {"host": "shadow"}}]}, subsets=V1),
     False, "spec.http[0].mirror.host: 'shadow' has no Service ns/shadow"),
    ("external host", snapshot(split(("v1", 100), host="api.example.com")), True,
     "routes resolve, weights sum to 100"),
]


@pytest.mark.parametrize(("snap", "passed", "message"), [c[1:] for c in MESH_CASES], ids=[c[0] for c in MESH_CASES])
def test_check_mesh(snap: MeshSnapshot, passed: bool, message: str) -> None:
    (finding,) = check_mesh(snap)
    assert (finding.check, finding.passed, finding.message) == ("mesh VirtualService ns/web", passed, message)


def test_two_virtual_services_claiming_one_host_on_one_gateway() -> None:
    snap = snapshot(split(("v1", 100)), subsets=V1)
    snap.virtual_services.append({"metadata": {"name": "other"}, "spec": split(("v1", 100))})
    first, second = check_mesh(snap)
    assert first.passed
    assert (second.passed, second.message) == (
        False, "spec.hosts: host 'web' on gateway mesh is also claimed by VirtualService ns/web")


# -- route weights -----------------------------------------------------------------------------
HOST = "web.ns.svc.cluster.local"
WEIGHT_CASES = [
    ("lone destination carries 100", [[{"destination": {"host": HOST, "subset": "v1"}}]], {"v1": 100}),
    ("split", [[{"destination": {"host": HOST, "subset": "v1"}, "weight": 90},
                {"destination": {"host": HOST, "subset": "v2"}, "weight": 10}]], {"v1": 90, "v2": 10}),
    ("two destinations, one without weight", [[{"destination": {"host": HOST, "subset": "v1"}},
                                               {"destination": {"host": HOST, "subset": "v2"}, "weight": 100}]],
     {"v1": 0, "v2": 100}),
    ("summed over routes", [[{"destination": {"host": HOST, "subset": "v1"}, "weight": 50},
                             {"destination": {"host": HOST, "subset": "v2"}, "weight": 50}],
                            [{"destination": {"host": HOST, "subset": "v1"}}]], {"v1": 150, "v2": 50}),
    ("other hosts ignored", [[{"destination": {"host": "other", "subset": "v9"}, "weight": 100}]], {}),
    ("no subset", [[{"destination": {"host": HOST}}]], {"": 100}),
]


@pytest.mark.parametrize(("routes", "weights"), [c[1:] for c in WEIGHT_CASES], ids=[c[0] for c in WEIGHT_CASES])
def test_route_weights(routes: list[list[dict[str, Any]]], weights: dict[str, int]) -> None:
    vs = {"spec": {"http": [{"route": route} for route in routes]}}
    assert route_weights(vs, HOST) == weights



# -- split verdicts ---------------------------------------------------------------------------
SPLIT = SplitCheck(type="split", url="http://gw/x/", requests=500, tolerance=5)
SPLIT_CASES = [
    ({"v1": 400, "v2": 100}, None, True, "v1 80.0%, v2 20.0% within ±5 points of {'v1': 80.0, 'v2': 20.0}"),
    # The cold CI's case: a probe beside 50/s of the stage's own load saw 85.6/14.4 of
    # Traefik's round robin; with the load's answers over the same seconds, the route's 80/20.
    ({"v1": 428, "v2": 72}, None, False, "beyond ±5 points: v1: 85.6% observed, 80.0% expected; "
                                          "v2: 14.4% observed, 20.0% expected"),
    ({"v1": 428, "v2": 72}, {"v1": 772, "v2": 228}, True,
     "v1 80.0%, v2 20.0% within ±5 points of {'v1': 80.0, 'v2': 20.0} (with 1000 answers of the stage's traffic)"),
    ({"v1": 428, "v2": 72}, {"v1": 400, "v2": 0}, False,
     "beyond ±5 points (with 400 answers of the stage's traffic): v1: 92.0% observed, 80.0% expected; "
     "v2: 8.0% observed, 20.0% expected"),
    ({"v1": 400, "v2": 99, "?": 1}, None, True,
     "? 0.2%, v1 80.0%, v2 19.8% within ±5 points of {'v1': 80.0, 'v2': 20.0}"),
]


@pytest.mark.parametrize("counts,also,passed,message", SPLIT_CASES)
def test_split_verdict(counts: dict[str, int], also: dict[str, int] | None, passed: bool, message: str) -> None:
    result = judge_split(SPLIT, {"v1": 80, "v2": 20}, counts, 0, also)
    assert (result.passed, result.message) == (passed, message)
    assert result.details["counts"] == counts and result.details.get("traffic_counts") == also

# -- what the runner makes of an attempt -----------------------------------------------------------
def _with_status(error: Any, status: int) -> Any:
    error.status = status
    return error


ATTEMPT_CASES = [
    ("passed", None, [], Outcome.PASSED, None, 0),
    ("a failed check", None, [Check("c", False)], Outcome.FAILED, None, 1),
    ("temporary", TemporaryError("not yet"), [], Outcome.FAILED, 0, 1),
    ("temporary with its own delay", TemporaryError("not yet", delay=7), [], Outcome.FAILED, 7, 1),
    ("plain stage failure", StageFailed("no"), [], Outcome.FAILED, None, 1),
    ("permanent", PermanentError("SLO broken"), [], Outcome.FAILED, None, 1),
    ("paused", RolloutPaused("inconclusive"), [], Outcome.FAILED, None, 1),
    ("403", _with_status(Forbidden("forbidden (403)"), 403), [], Outcome.FAILED, None, 1),
    ("422", Rejected("rejected (422)"), [], Outcome.INVALID_INPUT, None, 2),
    ("input", InvalidInput("bad"), [], Outcome.INVALID_INPUT, None, 2),
    ("missing tool", EnvironmentProblem("no go"), [], Outcome.ENVIRONMENT, None, 3),
    ("API server gone", Unavailable("unreachable"), [], Outcome.ENVIRONMENT, None, 3),
    ("API server overloaded", Overloaded("503"), [], Outcome.FAILED, 0, 1),
    ("a bug", KeyError("x"), [], Outcome.INTERNAL_ERROR, None, 1),
    ("cancelled", Cancelled("cancelled"), [], Outcome.CANCELLED, None, 0),
]


@pytest.mark.parametrize(("exc", "checks", "outcome", "retry_after", "exit_code"),
                         [c[1:] for c in ATTEMPT_CASES], ids=[c[0] for c in ATTEMPT_CASES])
def test_what_an_attempt_means(exc: BaseException | None, checks: list[Check], outcome: Outcome,
                               retry_after: float | None, exit_code: int) -> None:
    result = outcome_of(exc, SimpleNamespace(checks=checks), {}, logging.getLogger("test"))  # type: ignore[arg-type]
    assert (result.outcome, result.retry_after, result.outcome.exit_code) == (outcome, retry_after, exit_code)


@pytest.mark.parametrize(("outcomes", "interrupted_by", "exit_code"), [
    ([Outcome.PASSED, Outcome.NOT_SELECTED], None, 0),
    ([Outcome.PASSED, Outcome.FAILED, Outcome.SKIPPED], None, 1),
    ([Outcome.FAILED, Outcome.ENVIRONMENT], None, 3),
    ([Outcome.ENVIRONMENT, Outcome.INVALID_INPUT, Outcome.FAILED], None, 2),
    ([Outcome.DID_NOT_STOP, Outcome.PASSED], None, 1),
    ([Outcome.CANCELLED, Outcome.PASSED], 2, 130),
    ([Outcome.INVALID_INPUT], 15, 143),
])
def test_the_run_exit_code_comes_from_the_records(outcomes: list[Outcome], interrupted_by: int | None,
                                                  exit_code: int) -> None:
    records = [StageRecord(name=f"s{i}", type="shell", status=Status.PASSED, outcome=o) for i, o in enumerate(outcomes)]
    result = RunResult("run", None, None, records, 0.0, 0.0, interrupted_by)  # type: ignore[arg-type]
    assert result.exit_code == exit_code


# -- the analysis verdict matrix -------------------------------------------------------------------
class StubMetrics:
    """A metric source answering by the version a query asks for; a value,
    None (no data) or an error text."""

    def __init__(self, **by_version: float | str | None):
        self.by_version = by_version
        self.queries: list[str] = []

    def query(self, promql: str, at: float | None = None) -> QueryResult:
        self.queries.append(promql)
        version = re.search(r'destination_version="([^"]+)"', promql).group(1)  # type: ignore[union-attr]
        value = self.by_version.get(version)
        if isinstance(value, str):
            return QueryResult(error=value)
        if value is None:
            return QueryResult()
        return QueryResult([Series({}, [(at or 0.0, repr(value))])])


def spec(**fields: Any) -> AnalysisSpec:
    metric = {"name": "latency", "type": "latency-p99", "threshold": 500, **fields.pop("metric", {})}
    return AnalysisSpec(interval=0.001, count=fields.pop("count", 3), metrics=[MetricSpec(**metric)], **fields)


VERDICT_CASES = [
    ("within the threshold", spec(), StubMetrics(v2=100), SUCCESSFUL, 3,
     "all 3 measurements within their rules"),
    ("over the threshold", spec(), StubMetrics(v2=900), FAILED, 1,
     "1 failed measurement(s) (limit 1): latency of v2 = 900 must be <= 500"),
    ("failure limit 2 of 3", spec(failure_limit=2), StubMetrics(v2=900), FAILED, 2,
     "2 failed measurement(s) (limit 2): latency of v2 = 900 must be <= 500"),
    ("no data, inconclusive", spec(), StubMetrics(v2=None), INCONCLUSIVE, 3,
     "3 of 3 measurements inconclusive: latency of v2: no data (policy: inconclusive)"),
    ("no data, fail", spec(metric={"no_data": "fail"}), StubMetrics(v2=None), FAILED, 1,
     "1 failed measurement(s) (limit 1): latency of v2: no data (policy: fail)"),
    ("no data, skip", spec(metric={"no_data": "skip"}), StubMetrics(v2=None), SUCCESSFUL, 3,
     "all 3 measurements within their rules"),
    ("unreachable, error limit", spec(count=5, error_limit=2), StubMetrics(v2="Prometheus down"), ERROR, 2,
     "2 measurements in a row could not be taken: latency: Prometheus down"),
    ("unreachable below the error limit", spec(count=2), StubMetrics(v2="Prometheus down"), INCONCLUSIVE, 2,
     "2 of 2 measurements inconclusive: latency: Prometheus down"),
    ("within the baseline limit", spec(metric={"max_vs_baseline": 1.2}), StubMetrics(v2=110, v1=100),
     SUCCESSFUL, 3, "all 3 measurements within their rules"),
    ("over the baseline limit", spec(metric={"max_vs_baseline": 1.2}), StubMetrics(v2=130, v1=100), FAILED, 1,
     "1 failed measurement(s) (limit 1): latency of v2 = 130 must be <= 500; and <= 120% of v1 (100) = 120"),
    ("baseline without data", spec(metric={"max_vs_baseline": 1.2}), StubMetrics(v2=100, v1=None),
     INCONCLUSIVE, 3, "3 of 3 measurements inconclusive: latency of v2 = 100 must be <= 500; baseline v1: no data"),
    ("success rate at the limit", spec(metric={"name": "ok", "type": "success-rate", "threshold": 0.99}),
     StubMetrics(v2=0.99), SUCCESSFUL, 3, "all 3 measurements within their rules"),
]


@pytest.mark.parametrize(("analysis", "metrics", "verdict", "measurements", "reason"),
                         [c[1:] for c in VERDICT_CASES], ids=[c[0] for c in VERDICT_CASES])
def test_analysis_verdict(analysis: AnalysisSpec, metrics: StubMetrics, verdict: str, measurements: int,
                          reason: str) -> None:
    slept: list[float] = []
    result = analyse(metrics, analysis, service="web", namespace="ns", canary="v2", baseline="v1",  # type: ignore[arg-type]
                     sleep=slept.append)
    assert (result.verdict, len(result.measurements), result.reason) == (verdict, measurements, reason)
    assert slept == [analysis.interval] * (measurements - 1)
