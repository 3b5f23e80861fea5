"""Verification against real parts: Prometheus (the Debian package) scraping
simulated Istio metrics, local HTTP servers for probes, and the sandbox API
server for mesh checks and a canary that analysis rolls back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import (
    cli,
    deploy_scenario,
    kubectl,
    run_on_cluster,
    run_scenario,
    sdc_copy,
    vs_weights,
    write_scenario,
)
from tests.meshmetrics import free_port, version_servers
from xci_cn.verify.analysis import (
    ERROR,
    FAILED,
    INCONCLUSIVE,
    SUCCESSFUL,
    AnalysisSpec,
    MetricSpec,
    analyse,
)
from xci_cn.verify.prometheus import Prometheus

FAST = {"interval": 0.5, "count": 3, "window": 5}


def judge(prometheus, service: str, **spec: object):
    prom = Prometheus(prometheus.url)
    try:
        return analyse(prom, AnalysisSpec(**{**FAST, **spec}), service=service, namespace="sdc",
                       canary="v2", baseline="v1")
    finally:
        prom.close()


def test_healthy_canary_is_successful(mesh_service: tuple) -> None:
    service, _, prometheus = mesh_service
    result = judge(prometheus, service)
    assert result.verdict == SUCCESSFUL, result.reason
    assert len(result.measurements) == 3
    rate = next(m for m in result.measurements[-1].metrics if m.name == "request-success-rate")
    assert rate.value == pytest.approx(1.0) and rate.verdict == SUCCESSFUL
    assert "request-success-rate of v2 = 1 must be >= 0.99" == rate.rule


def test_failing_canary_is_failed_with_the_measured_value(mesh_service: tuple) -> None:
    service, traffic, prometheus = mesh_service
    traffic.set(service, "v2", error_ratio=0.5)
    import time

    time.sleep(3)
    result = judge(prometheus, service, failure_limit=1)
    assert result.verdict == FAILED
    rate = next(m for m in result.measurements[-1].metrics if m.name == "request-success-rate")
    assert rate.value is not None and rate.value < 0.95
    assert result.reason.startswith("1 failed measurement(s) (limit 1): request-success-rate of v2 = 0.")
    assert len(result.measurements) == 1, "stops at the first failure when the limit is 1"


def test_latency_relative_to_baseline(mesh_service: tuple) -> None:
    service, traffic, prometheus = mesh_service
    traffic.set(service, "v2", latency_ms=60.0)
    import time

    time.sleep(4)
    metric = MetricSpec(name="p99", type="latency-p99", threshold=500, max_vs_baseline=1.2)
    result = judge(prometheus, service, metrics=[metric])
    assert result.verdict == FAILED, result.reason
    measured = result.measurements[-1].metrics[0]
    assert measured.baseline is not None and measured.value > 1.2 * measured.baseline
    assert "<= 120% of v1" in measured.rule


@pytest.mark.parametrize("policy,verdict", [("inconclusive", INCONCLUSIVE), ("fail", FAILED),
                                            ("skip", SUCCESSFUL)])
def test_no_data_policy_is_explicit(mesh_metrics: tuple, policy: str, verdict: str) -> None:
    _, prometheus = mesh_metrics
    metric = MetricSpec(name="rate", type="success-rate", threshold=0.99, no_data=policy)
    other = MetricSpec(name="up", type="query", query="vector(1)", op=">=", threshold=1)
    result = judge(prometheus, "no-such-service", metrics=[metric, other])
    assert result.verdict == verdict, result.reason
    if policy != "skip":
        assert "no data (policy: " + policy + ")" in result.measurements[0].metrics[0].rule


def test_unreachable_prometheus_is_an_error_verdict() -> None:
    prom = Prometheus(f"http://127.0.0.1:{free_port()}", timeout=1)
    result = analyse(prom, AnalysisSpec(**{**FAST, "error_limit": 2, "interval": 0.05}), service="s",
                     namespace="sdc", canary="v2", baseline="v1")
    assert result.verdict == ERROR and "could not be taken" in result.reason
    assert "unreachable" in result.reason


def test_custom_promql_with_threshold(mesh_service: tuple) -> None:
    service, _, prometheus = mesh_service
    metric = MetricSpec(name="rps", type="query", op=">=", threshold=1000,
                        query='sum(rate(istio_requests_total{destination_service_name="$service",'
                              'destination_version="$version"}[$window]))')
    result = judge(prometheus, service, metrics=[metric], count=1)
    assert result.verdict == FAILED  # ~40 rps is below 1000
    assert result.measurements[0].metrics[0].query.endswith('destination_version="v2"}[5s]))')


def test_http_and_split_probes_against_real_servers(tmp_path: Path) -> None:
    with version_servers({"v1": 50, "v2": 50}) as urls:
        text = f"""name: probes
stages:
  - name: verify
    type: verify
    with:
      checks:
        - {{type: http, url: "{urls['v1']}", expect_body: "http-lb v1"}}
        - {{type: http, name: flaky backend, url: "{urls['flaky']}", retries: 3}}
        - {{type: http, name: wrong body, url: "{urls['v2']}", expect_body: "v1", retries: 1}}
        - {{type: split, url: "{urls['mesh']}", requests: 400, weights: {{v1: 50, v2: 50}}}}
        - {{type: split, name: split 90/10, url: "{urls['mesh']}", requests: 200, weights: {{v1: 90, v2: 10}}}}
"""
        result = run_scenario(tmp_path, text)
    checks = {c["name"]: c for c in result.records[0].checks}
    assert checks[f"http GET {urls['v1']}"]["passed"]
    assert checks["flaky backend"]["passed"] and checks["flaky backend"]["details"]["attempts"] == 3
    assert not checks["wrong body"]["passed"]
    assert "body does not match 'v1'" in checks["wrong body"]["message"]
    assert "(after 2 attempts)" in checks["wrong body"]["message"]
    split = checks[f"split {urls['mesh']}"]
    assert split["passed"], split["message"]
    assert abs(split["details"]["observed"]["v1"] - 50) <= 10
    assert not checks["split 90/10"]["passed"]
    assert "beyond ±10 points" in checks["split 90/10"]["message"]
    assert result.records[0].status == "failed"
    assert result.records[0].error == "2 check(s) failed: wrong body, split 90/10"


def test_mesh_checks_find_seeded_misconfigurations(sandbox: dict, tmp_path: Path) -> None:
    manifests, namespace = sdc_copy(tmp_path)
    broken = manifests / "90-broken.yaml"
    host = f"http-lb.{namespace}.svc.cluster.local"
    broken.write_text(f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: missing-subset, namespace: {namespace}}}
spec:
  hosts: [lb-a.example]
  http:
    - route:
        - {{destination: {{host: {host}, subset: v3}}, weight: 100}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ninety, namespace: {namespace}}}
spec:
  hosts: [lb-b.example]
  http:
    - route:
        - {{destination: {{host: {host}, subset: v1}}, weight: 60}}
        - {{destination: {{host: {host}, subset: v2}}, weight: 30}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: no-service, namespace: {namespace}}}
spec:
  hosts: [lb-c.example]
  http:
    - route:
        - destination: {{host: ghost.{namespace}.svc.cluster.local}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: unknown-gateway, namespace: {namespace}}}
spec:
  hosts: [lb-d.example]
  gateways: [no-such-gateway]
  http:
    - route:
        - destination: {{host: {host}, subset: v1}}
""")
    text = deploy_scenario(manifests, namespace) + f"""  - name: verify
    type: verify
    needs: [deploy]
    with:
      namespace: {namespace}
      checks:
        - {{type: platform}}
        - {{type: mesh}}
"""
    write_scenario(tmp_path, text, "s.yaml")
    proc = cli("run", "--scenario", "s.yaml", "--kubeconfig", str(sandbox["kubeconfig"]), "--results-dir", "R",
               cwd=tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "R" / "summary.json").read_text())
    checks = {c["name"]: c for c in summary["stages"][1]["checks"]}
    vs = f"mesh VirtualService {namespace}/"
    assert checks["platform Istio CRDs Established"]["passed"]
    assert checks["platform namespace istio-system"]["passed"]
    assert checks[vs + "sdc"]["passed"] and checks[vs + "http-lb"]["passed"]
    assert "spec.http[0].route[0].destination.subset: 'v3' is not defined in DestinationRule " \
           f"{namespace}/http-lb (subsets: v1, v2)" in checks[vs + "missing-subset"]["message"]
    assert "spec.http[0].route: weights sum to 90, not 100" in checks[vs + "ninety"]["message"]
    assert f"spec.http[0].route[0].destination.host: 'ghost.{namespace}.svc.cluster.local' has no Service " \
           f"{namespace}/ghost" in checks[vs + "no-service"]["message"]
    assert f"spec.gateways[0]: gateway {namespace}/no-such-gateway does not exist" in \
        checks[vs + "unknown-gateway"]["message"]
    assert "verify failed" in proc.stdout and "4 check(s) failed" in proc.stdout
    from junitparser import JUnitXml

    failures = [case.name for suite in JUnitXml.fromfile(str(tmp_path / "R" / "junit.xml")) for case in suite
                if case.result and case.result[0]._tag == "failure"]
    assert sorted(failures) == sorted(["verify", vs + "missing-subset", vs + "ninety", vs + "no-service",
                                       vs + "unknown-gateway"])


def test_bad_canary_is_rolled_back_by_analysis(sandbox: dict, mesh_service: tuple, tmp_path: Path) -> None:
    service, traffic, prometheus = mesh_service
    traffic.set(service, "v2", error_ratio=0.4)
    import time

    time.sleep(3)
    manifests, namespace = sdc_copy(tmp_path)
    analysis = {"prometheus": prometheus.url, "service": service, "namespace": "sdc", "interval": "0.5s",
                "count": 2, "failure_limit": 1, "window": "5s"}
    code, summary, out = _run_deploy(tmp_path, sandbox, manifests, namespace, analysis)
    assert code == 1, out
    stage = summary["stages"][0]
    assert "canary v2 rolled back at step 1 (10%)" in stage["error"]
    steps = stage["outputs"]["steps"]
    assert steps[0]["analysis"]["verdict"] == FAILED
    failing = [m for m in steps[0]["analysis"]["metrics"] if not m["passed"]]
    assert failing and failing[0]["name"] == "request-success-rate" and failing[0]["value"] < 0.99
    assert steps[-1]["action"] == "rollback" and steps[-1]["weights"] == {"v1": 100}
    assert vs_weights(sandbox, namespace) == {"v1": 100}
    status = json.loads(kubectl(sandbox, "get", "virtualservice", "http-lb", "-n", namespace, "-o", "json"))
    state = json.loads(status["metadata"]["annotations"]["xci-cn.opnfv.org/rollout"])
    assert state["phase"] == "rolled-back"
    # The real failed canary is charted in report.html (each chart is drawn
    # wide and narrow): the shift and the rollback, the failing metric point.
    report = (tmp_path / "R" / "report.html").read_text()
    assert report.count('<g class="step"') == 4 and report.count('data-action="rollback"') == 2
    assert 'data-metric="request-success-rate"' in report and 'data-passed="false"' in report
    # The run's analysis tape replays to what was recorded; with a loose
    # threshold the first measurement passes, but the run took only 1 of its 2
    # (it stopped at the failure), so the replay cannot call it a pass.
    same = cli("analysis", "replay", str(tmp_path / "R"))
    assert same.returncode == 1, same.stderr
    assert same.stdout.splitlines()[0] == "deploy step 1/4 (v1 90% / v2 10%) v2: Failed (as recorded)"
    loose = tmp_path / "loose.yaml"
    loose.write_text("metrics:\n  - {name: request-success-rate, type: success-rate, threshold: 0.1}\n"
                     "  - {name: request-duration-p99, type: latency-p99, threshold: 500}\n")
    replayed = cli("analysis", "replay", str(tmp_path / "R"), "--metrics", str(loose))
    assert replayed.returncode == 1, replayed.stderr
    lines = replayed.stdout.splitlines()
    assert lines[:2] == ["deploy step 1/4 (v1 90% / v2 10%) v2: Failed -> Inconclusive",
                         "  request-success-rate (v2): Failed -> Successful"]
    assert "the recorded analysis stopped after 1 of 2 measurements" in lines[2]


def test_good_canary_passes_every_step_with_analysis(sandbox: dict, mesh_service: tuple, tmp_path: Path
                                                     ) -> None:
    service, _, prometheus = mesh_service
    manifests, namespace = sdc_copy(tmp_path)
    analysis = {"prometheus": prometheus.url, "service": service, "namespace": "sdc", "interval": "0.2s",
                "count": 1, "window": "5s"}
    code, summary, out = _run_deploy(tmp_path, sandbox, manifests, namespace, analysis)
    assert code == 0, out
    steps = summary["stages"][0]["outputs"]["steps"]
    assert [s["analysis"]["verdict"] for s in steps] == [SUCCESSFUL] * 4
    assert vs_weights(sandbox, namespace) == {"v1": 0, "v2": 100}
    # Replayed as recorded it passes; a p99 limit of 1 ms fails step 1, and
    # the replayed rollout never reaches the later steps.
    same = cli("analysis", "replay", str(tmp_path / "R"))
    assert same.returncode == 0, same.stdout + same.stderr
    assert same.stdout.splitlines()[-1] == "replayed outcome: PASS (recorded: PASS)"
    strict = tmp_path / "strict.yaml"
    strict.write_text("- {name: request-success-rate, type: success-rate, threshold: 0.99}\n"
                      "- {name: request-duration-p99, type: latency-p99, threshold: 1}\n")
    replayed = cli("analysis", "replay", str(tmp_path / "R"), "--metrics", str(strict))
    assert replayed.returncode == 1
    lines = replayed.stdout.splitlines()
    assert lines[:2] == ["deploy step 1/4 (v1 90% / v2 10%) v2: Successful -> Failed",
                         "  request-duration-p99 (v2): Successful -> Failed"]
    assert lines[3:6] == ["deploy step 2/4 (v1 75% / v2 25%) v2: Successful -> not reached",
                          "deploy step 3/4 (v1 50% / v2 50%) v2: Successful -> not reached",
                          "deploy step 4/4 (v1 0% / v2 100%) v2: Successful -> not reached"]
    assert lines[6] == "4 of 4 analysed step(s) changed their verdict"


def test_inconclusive_canary_pauses_where_it_is(sandbox: dict, mesh_metrics: tuple, tmp_path: Path) -> None:
    _, prometheus = mesh_metrics
    manifests, namespace = sdc_copy(tmp_path)
    analysis = {"prometheus": prometheus.url, "service": "nobody-calls-this", "namespace": "sdc",
                "interval": "0.2s", "count": 1, "window": "5s", "inconclusive": "pause"}
    code, summary, out = _run_deploy(tmp_path, sandbox, manifests, namespace, analysis)
    assert code == 1, out
    stage = summary["stages"][0]
    assert "paused at step 1 (10%)" in stage["error"] and "policy: pause" in stage["error"]
    assert vs_weights(sandbox, namespace) == {"v1": 90, "v2": 10}
    state = json.loads(cli("rollout", "status", "-n", namespace, "--service", "http-lb", "--kubeconfig",
                           str(sandbox["kubeconfig"])).stdout)["rollout"]
    assert state["phase"] == "paused"


def _run_deploy(tmp_path: Path, sandbox: dict, manifests: Path, namespace: str, analysis: dict
                ) -> tuple[int, dict, str]:

    text = deploy_scenario(manifests, namespace, strategy="canary", service="http-lb", stable="v1",
                           canary="v2", analysis=analysis)
    return run_on_cluster(tmp_path, sandbox, text)
