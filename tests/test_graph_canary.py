"""Several services of the SDC graph canaried as one unit, on the real
sandbox API server, judged by the real Prometheus of tests/meshmetrics.py.

The SDC sample has one versioned service (http-lb); the tests give
proxy-access-control, the first hop, a v1 and a v2 as well."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.helpers import cli, deploy_scenario, kubectl, run_on_cluster, sdc_copy
from tests.meshmetrics import Profile
from xci_cn.errors import InvalidInput
from xci_cn.k8s.istio import RolloutTarget
from xci_cn.k8s.strategies.graph import Member, dependency_order

PROXY_VERSIONS = """# Access control proxy in two versions (the graph canary moves both).
apiVersion: apps/v1
kind: Deployment
metadata:
  name: proxy-access-control-{version}
  namespace: sdc
  labels: {{app: proxy-access-control, version: {version}}}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: proxy-access-control, version: {version}}}
  template:
    metadata:
      labels: {{app: proxy-access-control, version: {version}}}
    spec:
      containers:
        - name: proxy-access-control
          image: xci-cn.local/sdc-app:1.2.0
          imagePullPolicy: Never
          args: [http, --port=9180, --name=proxy-access-control, --version={version}, '--upstream=http://http-lb:9180']
          ports: [{{name: http, containerPort: 9180}}]
          readinessProbe:
            httpGet: {{path: /readyz, port: http}}
            periodSeconds: 2
          resources:
            requests: {{cpu: 10m, memory: 16Mi}}
            limits: {{cpu: 200m, memory: 32Mi}}
---
"""
PROXY_ROUTING = """apiVersion: v1
kind: Service
metadata:
  name: proxy-access-control
  namespace: sdc
spec:
  selector: {app: proxy-access-control}
  ports:
    - {name: http, port: 9180, targetPort: 9180}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: proxy-access-control
  namespace: sdc
spec:
  host: proxy-access-control.sdc.svc.cluster.local
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: proxy-access-control
  namespace: sdc
spec:
  hosts: [proxy-access-control.sdc.svc.cluster.local]
  http:
    - name: primary
      route:
        - destination: {host: proxy-access-control.sdc.svc.cluster.local, subset: v1}
          weight: 100
"""
GRAPH = [{"service": "http-lb"}, {"service": "proxy-access-control", "depends_on": ["http-lb"]}]


def graph_copy(tmp_path: Path) -> tuple[Path, str]:
    manifests, namespace = sdc_copy(tmp_path)
    text = "".join(PROXY_VERSIONS.format(version=v) for v in ("v1", "v2")) + PROXY_ROUTING
    (manifests / "20-proxy-access-control.yaml").write_text(
        text.replace("namespace: sdc", f"namespace: {namespace}").replace(".sdc.svc", f".{namespace}.svc"))
    return manifests, namespace


def weights_of(sandbox: dict, namespace: str, service: str) -> tuple[dict[str, int], dict]:
    vs = json.loads(kubectl(sandbox, "get", "virtualservice", service, "-n", namespace, "-o", "json"))
    weights = {d["destination"]["subset"]: d.get("weight", 100) for d in vs["spec"]["http"][0]["route"]}
    return weights, json.loads(vs["metadata"]["annotations"]["xci-cn.opnfv.org/rollout"])


def _member(name: str, *depends_on: str) -> Member:
    return Member(RolloutTarget.of("ns", name), "v1", "v2", list(depends_on))


def test_dependency_order_puts_dependencies_first_and_refuses_cycles() -> None:
    members = [_member("proxy-access-control", "snort-ids"), _member("http-lb"), _member("snort-ids", "http-lb")]
    assert [m.service for m in dependency_order(members)] == ["http-lb", "snort-ids", "proxy-access-control"]
    with pytest.raises(InvalidInput, match="graph: depends_on forms a cycle: "):
        dependency_order([_member("a", "b"), _member("b", "a")])
    with pytest.raises(InvalidInput, match="graph: depends_on names redis, not a service of the graph"):
        dependency_order([_member("a", "redis"), _member("b")])


def test_graph_canary_where_only_the_second_service_degrades_rolls_both_back(
        sandbox: dict, mesh_metrics: tuple, tmp_path: Path) -> None:
    traffic, prometheus = mesh_metrics
    traffic.add("http-lb", v1=Profile(), v2=Profile())
    traffic.add("proxy-access-control", v1=Profile(), v2=Profile(error_ratio=0.5))
    prometheus.wait_for_series('istio_requests_total{destination_service_name="proxy-access-control"}')
    time.sleep(3)
    manifests, namespace = graph_copy(tmp_path)
    analysis = {"prometheus": prometheus.url, "namespace": "sdc", "interval": "0.2s", "count": 1, "window": "5s"}
    text = deploy_scenario(manifests, namespace, strategy="canary", stable="v1", canary="v2", graph=GRAPH,
                           analysis=analysis)
    code, summary, out = run_on_cluster(tmp_path, sandbox, text)
    assert code == 1, out
    stage = summary["stages"][0]
    assert ("graph canary http-lb, proxy-access-control rolled back at step 1 (10%), in the order "
            "proxy-access-control, http-lb: analysis Failed: ") in stage["error"]
    assert stage["error"].endswith("read-back: every stable version has 100%")
    first, rollback = stage["outputs"]["steps"]
    assert first["order"] == ["http-lb", "proxy-access-control"]
    assert first["services"]["http-lb"]["analysis"]["verdict"] == "Successful"
    assert first["services"]["proxy-access-control"]["analysis"]["verdict"] == "Failed"
    assert first["analysis"]["verdict"] == "Failed"
    assert {m["name"] for m in first["analysis"]["metrics"] if not m["passed"]} == \
        {"proxy-access-control request-success-rate"}
    assert rollback["action"] == "rollback" and rollback["order"] == ["proxy-access-control", "http-lb"]
    for service in ("http-lb", "proxy-access-control"):
        assert rollback["services"][service]["read_back"] == {"weights": {"v1": 100}, "ok": True}
        weights, state = weights_of(sandbox, namespace, service)
        assert weights == {"v1": 100} and state["phase"] == "rolled-back"
    assert stage["outputs"]["rollout"]["graph"]["proxy-access-control"]["depends_on"] == ["http-lb"]
    report = (tmp_path / "R" / "report.html").read_text()
    assert "proxy-access-control: v1 90%, v2 10%, analysis Failed" in report
    assert "proxy-access-control: v1 100%, read back ok" in report and "http-lb: v1 100%, read back ok" in report
    # The tape has each service's analysis of the step; the replay shows both.
    lines = cli("analysis", "replay", str(tmp_path / "R")).stdout.splitlines()
    assert lines[:2] == ["deploy step 1/4 http-lb (v1 90% / v2 10%) v2: Successful (as recorded)",
                         "deploy step 1/4 proxy-access-control (v1 90% / v2 10%) v2: Failed (as recorded)"]


def test_graph_canary_steps_in_lockstep_and_promotes_dependencies_first(sandbox: dict, tmp_path: Path) -> None:
    manifests, namespace = graph_copy(tmp_path)
    text = deploy_scenario(manifests, namespace, strategy="canary", stable="v1", canary="v2", graph=GRAPH,
                           steps=[50, 100])
    text += ("  - name: promote\n    type: rollout\n    needs: [deploy]\n"
             f"    with: {{action: promote, namespace: {namespace}, services: [http-lb, proxy-access-control]}}\n")
    code, summary, out = run_on_cluster(tmp_path, sandbox, text)
    assert code == 0, out
    deploy, promote = summary["stages"]
    assert [s["services"] for s in deploy["outputs"]["steps"]] == [
        {"http-lb": {"weights": {"v1": 50, "v2": 50}}, "proxy-access-control": {"weights": {"v1": 50, "v2": 50}}},
        {"http-lb": {"weights": {"v1": 0, "v2": 100}}, "proxy-access-control": {"weights": {"v1": 0, "v2": 100}}}]
    assert promote["outputs"]["order"] == ["http-lb", "proxy-access-control"]
    for service in ("http-lb", "proxy-access-control"):
        assert promote["outputs"]["services"][service]["scaled_down"] == [f"{service}-v1"]
        weights, state = weights_of(sandbox, namespace, service)
        assert weights == {"v2": 100} and state["phase"] == "promoted" and state["stable"] == "v2"
