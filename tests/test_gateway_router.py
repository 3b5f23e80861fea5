"""The Gateway API router against the real sandbox API server with the
Gateway API CRDs (standard channel) installed: canary steps, blue/green,
promote, rollback with the read-back of the stored HTTPRoute, and the bad
inputs that must stop a rollout before any weight moves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests

from tests.helpers import cli, deploy_scenario, kubectl, run_on_cluster, sdc_copy, until
from xci_cn.paths import SAMPLES_DIR

GATEWAY = {"router": "gateway-api", "service": "http-lb", "stable": "v1", "canary": "v2"}


def test_sandbox_serves_the_gateway_and_prometheus_scrapes_the_proxy(simulated_sandbox: dict) -> None:
    sandbox = simulated_sandbox
    report = json.loads(cli("sandbox", "status", "--name", sandbox["name"], "--json").stdout)
    gateway, prometheus = urlparse(report["gateway_url"]), urlparse(report["prometheus_url"])
    assert gateway.hostname == prometheus.hostname == "127.0.0.1"
    assert {"traefik", "prometheus"} <= set(report["components"])
    assert all(c["established"] for c in report["gateway_api_crds"])
    assert {c["name"] for c in report["gateway_api_crds"]} >= {
        "httproutes.gateway.networking.k8s.io", "gateways.gateway.networking.k8s.io"}

    def accepted() -> bool:
        stored = json.loads(kubectl(sandbox, "get", "gateway", "edge", "-n", "xci-gateway", "-o", "json"))
        conditions = {c["type"]: c["status"] for c in stored.get("status", {}).get("conditions", [])}
        return conditions.get("Accepted") == "True" and conditions.get("Programmed") == "True"

    until("the Gateway accepted by Traefik", accepted)
    stored = json.loads(kubectl(sandbox, "get", "gateway", "edge", "-n", "xci-gateway", "-o", "json"))
    assert stored["spec"]["listeners"][0]["port"] == gateway.port
    assert stored["status"]["addresses"] == [{"type": "IPAddress", "value": "127.0.0.1"}]
    # Nothing routes yet (this is the first test on the gateway sandbox: the
    # others leave their routes behind): the proxy answers 404 itself.
    assert requests.get(report["gateway_url"] + "/nothing-here", timeout=5).status_code == 404

    def scraped() -> list:
        targets = requests.get(report["prometheus_url"] + "/api/v1/targets", timeout=5).json()
        return [t for t in targets["data"]["activeTargets"]
                if t["labels"]["job"] == "gateway" and t["health"] == "up"]

    until("the proxy scraped by Prometheus", scraped)
    body = requests.get(report["prometheus_url"] + "/api/v1/query",
                        params={"query": 'traefik_config_reloads_total{job="gateway"}'}, timeout=5).json()
    assert float(body["data"]["result"][0]["value"][1]) >= 1


def sdc_gateway_copy(tmp_path: Path) -> tuple[Path, Path, str]:
    """The SDC sample and its HTTPRoute, in a namespace of their own."""
    manifests, namespace = sdc_copy(tmp_path)
    routes = tmp_path / "sdc-gateway"
    shutil.copytree(SAMPLES_DIR / "sdc-gateway", routes)
    for path in routes.glob("*.yaml"):
        path.write_text(path.read_text().replace("namespace: sdc\n", f"namespace: {namespace}\n"))
    return manifests, routes, namespace


def route_scenario(manifests: Path, routes: Path, namespace: str, **options: object) -> str:
    text = deploy_scenario(manifests, namespace, **options)
    return text.replace(f'manifests: ["{manifests}"]', f'manifests: ["{manifests}", "{routes}"]')


def stored_route(sandbox: dict, namespace: str, name: str = "http-lb") -> dict:
    return json.loads(kubectl(sandbox, "get", "httproute", name, "-n", namespace, "-o", "json"))


def stored_weights(sandbox: dict, namespace: str) -> dict[str, int]:
    rule = stored_route(sandbox, namespace)["spec"]["rules"][0]
    return {ref["name"]: ref.get("weight", 1) for ref in rule["backendRefs"]}


def rollout_cli(sandbox: dict, action: str, namespace: str) -> tuple[int, dict | None, str]:
    proc = cli("rollout", action, "-n", namespace, "--service", "http-lb", "--router", "gateway-api",
               "--kubeconfig", str(sandbox["kubeconfig"]))
    return proc.returncode, json.loads(proc.stdout) if proc.returncode == 0 else None, proc.stderr


def test_canary_steps_the_httproute_weights_then_promote(simulated_sandbox: dict, tmp_path: Path) -> None:
    manifests, routes, namespace = sdc_gateway_copy(tmp_path)
    code, summary, out = run_on_cluster(
        tmp_path, simulated_sandbox, route_scenario(manifests, routes, namespace, strategy="canary",
                                                               steps=[10, 50, 100], **GATEWAY))
    assert code == 0, out
    steps = summary["stages"][0]["outputs"]["steps"]
    assert [s["weights"] for s in steps] == [{"v1": 90, "v2": 10}, {"v1": 50, "v2": 50}, {"v1": 0, "v2": 100}]
    assert stored_weights(simulated_sandbox, namespace) == {"http-lb-v1": 0, "http-lb-v2": 100}
    code, status, err = rollout_cli(simulated_sandbox, "status", namespace)
    assert code == 0, err
    assert status["router"] == "gateway-api" and status["route"] == f"HTTPRoute {namespace}/http-lb"
    assert status["weights"] == {"v1": 0, "v2": 100} and status["rollout"]["phase"] == "completed"
    code, promoted, err = rollout_cli(simulated_sandbox, "promote", namespace)
    assert code == 0, err
    assert promoted["stable"] == "v2" and promoted["scaled_down"] == ["http-lb-v1"]
    assert stored_weights(simulated_sandbox, namespace) == {"http-lb-v2": 100}
    v1 = json.loads(kubectl(simulated_sandbox, "get", "deploy", "http-lb-v1", "-n", namespace, "-o", "json"))
    assert v1["spec"]["replicas"] == 0
    # The rest of the stored route is the user's, untouched.
    route = stored_route(simulated_sandbox, namespace)
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                            "name": "edge", "namespace": "xci-gateway"}]
    assert route["spec"]["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]


def test_rollback_reads_back_the_stored_httproute(simulated_sandbox: dict, tmp_path: Path) -> None:
    manifests, routes, namespace = sdc_gateway_copy(tmp_path)
    text = route_scenario(manifests, routes, namespace, strategy="canary", steps=[25, 100], **GATEWAY) + f"""\
  - name: rollback
    type: rollout
    needs: [deploy]
    with: {{action: rollback, namespace: {namespace}, service: http-lb, router: gateway-api}}
"""
    code, summary, out = run_on_cluster(tmp_path, simulated_sandbox, text)
    assert code == 0, out
    rollback = summary["stages"][1]
    assert rollback["outputs"]["read_back"] == {"weights": {"v1": 100}, "ok": True}
    assert rollback["checks"][0]["passed"]
    rule = stored_route(simulated_sandbox, namespace)["spec"]["rules"][0]
    assert [(r["name"], r["weight"]) for r in rule["backendRefs"]] == [("http-lb-v1", 100)]
    assert "filters" not in rule
    v2 = json.loads(kubectl(simulated_sandbox, "get", "deploy", "http-lb-v2", "-n", namespace, "-o", "json"))
    assert v2["spec"]["replicas"] == 0


def test_bluegreen_switch_then_rollback_from_the_cli(simulated_sandbox: dict, tmp_path: Path) -> None:
    manifests, routes, namespace = sdc_gateway_copy(tmp_path)
    code, summary, out = run_on_cluster(tmp_path, simulated_sandbox, route_scenario(manifests, routes, namespace,
                                                               strategy="bluegreen", **GATEWAY))
    assert code == 0, out
    assert stored_weights(simulated_sandbox, namespace) == {"http-lb-v1": 0, "http-lb-v2": 100}
    code, back, err = rollout_cli(simulated_sandbox, "rollback", namespace)
    assert code == 0, err
    assert back["read_back"]["ok"] is True
    assert stored_weights(simulated_sandbox, namespace) == {"http-lb-v1": 100}


def _without_v2_service(routes: Path) -> None:
    path = routes / "45-http-lb-route.yaml"
    docs = path.read_text().split("\n---\n")
    path.write_text("\n---\n".join(d for d in docs if "name: http-lb-v2\n" not in d))


def _with_foreign_backend(routes: Path) -> None:
    path = routes / "45-http-lb-route.yaml"
    path.write_text(path.read_text().replace(
        "        - {name: http-lb-v2, port: 9180, weight: 0}\n",
        "        - {name: http-lb-v2, port: 9180, weight: 0}\n        - {name: redis, port: 6379, weight: 5}\n"))


@pytest.mark.parametrize("break_it,options,message", [
    (None, {"route": "nosuch"}, "HTTPRoute {ns}/nosuch does not exist: the service graph must define it"),
    (_without_v2_service, {}, "HTTPRoute {ns}/http-lb: backendRef Service {ns}/http-lb-v2 (version v2) "
                              "does not exist"),
    (_with_foreign_backend, {}, "HTTPRoute {ns}/http-lb rule 0 also sends traffic to redis, which is not a "
                                "version of http-lb (http-lb-v1, http-lb-v2): the rollout sets the weights "
                                "of whole rules; give those backends a rule of their own"),
    (None, {"mirror": 10}, "HTTPRoute {ns}/http-lb: mirror is not available: Traefik does not implement "
                           "the Gateway API RequestMirror filter"),
], ids=["missing-route", "missing-backend-service", "foreign-backend", "mirror-on-traefik"])
def test_bad_routing_stops_before_any_weight_moves(simulated_sandbox: dict, tmp_path: Path, break_it, options: dict,
                                                   message: str) -> None:
    manifests, routes, namespace = sdc_gateway_copy(tmp_path)
    if break_it is not None:
        break_it(routes)
    code, summary, out = run_on_cluster(
        tmp_path, simulated_sandbox, route_scenario(manifests, routes, namespace, strategy="canary",
                                                               **{**GATEWAY, **options}))
    assert code == 2, out
    error = summary["stages"][0]["error"]
    assert message.format(ns=namespace) in error and "\n" not in error, out
    assert "deploy failed" in out and "Traceback" not in out
    route = stored_route(simulated_sandbox, namespace)  # what the user applied, as applied
    assert "xci-cn.opnfv.org/rollout" not in (route["metadata"].get("annotations") or {})
    assert route["spec"]["rules"][0]["backendRefs"][:2] == [
        {"group": "", "kind": "Service", "name": "http-lb-v1", "port": 9180, "weight": 100},
        {"group": "", "kind": "Service", "name": "http-lb-v2", "port": 9180, "weight": 0}]


def test_a_gateway_api_version_the_cluster_does_not_serve(simulated_sandbox: dict, tmp_path: Path) -> None:
    manifests, routes, namespace = sdc_gateway_copy(tmp_path)
    path = routes / "45-http-lb-route.yaml"
    path.write_text(path.read_text().replace("gateway.networking.k8s.io/v1\n",
                                             "gateway.networking.k8s.io/v1alpha2\n"))
    code, summary, out = run_on_cluster(
        tmp_path, simulated_sandbox, route_scenario(manifests, routes, namespace, strategy="canary",
                                                               **GATEWAY))
    assert code == 2, out
    assert "45-http-lb-route.yaml:28:1: document 3: HTTPRoute/http-lb: kind HTTPRoute is not served by the " \
           "cluster in apiVersion gateway.networking.k8s.io/v1alpha2" in summary["stages"][0]["error"]
    assert namespace not in kubectl(simulated_sandbox, "get", "namespaces", "-o", "name")
