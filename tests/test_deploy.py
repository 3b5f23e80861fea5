"""Deploying the SDC service graph onto the real sandbox API server with each
strategy; pre-flight rejections leave nothing applied."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from tests.helpers import cli, deploy_scenario, kubectl, run_on_cluster, sdc_copy, vs_weights, write_scenario


def test_full_sdc_deploy_then_idempotent_reapply(sandbox: dict, tmp_path: Path) -> None:
    manifests, namespace = sdc_copy(tmp_path)
    code, summary, out = run_on_cluster(tmp_path, sandbox, deploy_scenario(manifests, namespace))
    assert code == 0, out
    outputs = summary["stages"][0]["outputs"]
    assert outputs["counts"] == {"created": 20, "configured": 0, "unchanged": 0}
    assert set(outputs["revisions"]) == {"proxy-access-control", "snort-ids", "http-lb-v1", "http-lb-v2",
                                         "clover-server1", "clover-server2", "clover-server3", "redis"}
    deployments = json.loads(kubectl(sandbox, "get", "deploy", "-n", namespace, "-o", "json",
                                     "--show-managed-fields"))["items"]
    assert len(deployments) == 8
    for item in deployments:
        assert item["status"]["availableReplicas"] == item["spec"]["replicas"]
    managers = {m["manager"] for m in deployments[0]["metadata"]["managedFields"]}
    assert "xci-cn" in managers
    # Qualified: the Gateway API's Gateway is served too.
    gateway = json.loads(kubectl(sandbox, "get", "gateways.networking.istio.io", "sdc-gateway", "-n", namespace,
                                 "-o", "json"))
    assert gateway["apiVersion"] == "networking.istio.io/v1"
    code, summary, out = run_on_cluster(tmp_path, sandbox, deploy_scenario(manifests, namespace), "R2")
    assert code == 0, out
    assert summary["stages"][0]["outputs"]["counts"] == {"created": 0, "configured": 0, "unchanged": 20}


def test_canary_four_steps_then_promote(sandbox: dict, tmp_path: Path) -> None:
    manifests, namespace = sdc_copy(tmp_path)
    code, summary, out = run_on_cluster(tmp_path, sandbox, deploy_scenario(
        manifests, namespace, strategy="canary", service="http-lb", stable="v1", canary="v2", mirror=20))
    assert code == 0, out
    steps = summary["stages"][0]["outputs"]["steps"]
    assert [s["weights"] for s in steps] == [{"v1": 90, "v2": 10}, {"v1": 75, "v2": 25},
                                             {"v1": 50, "v2": 50}, {"v1": 0, "v2": 100}]
    assert all(s["at"] for s in steps) and steps[0]["mirror"] == {"subset": "v2", "percent": 20.0}
    assert vs_weights(sandbox, namespace) == {"v1": 0, "v2": 100}
    status = json.loads(cli("rollout", "status", "-n", namespace, "--service", "http-lb",
                            "--kubeconfig", str(sandbox["kubeconfig"])).stdout)
    assert status["rollout"]["phase"] == "completed"
    promoted = cli("rollout", "promote", "-n", namespace, "--service", "http-lb",
                   "--kubeconfig", str(sandbox["kubeconfig"]))
    assert promoted.returncode == 0, promoted.stderr
    assert vs_weights(sandbox, namespace) == {"v2": 100}
    v1 = json.loads(kubectl(sandbox, "get", "deploy", "http-lb-v1", "-n", namespace, "-o", "json"))
    assert v1["spec"]["replicas"] == 0
    status = json.loads(cli("rollout", "status", "-n", namespace, "--service", "http-lb",
                            "--kubeconfig", str(sandbox["kubeconfig"])).stdout)
    assert status["rollout"]["phase"] == "promoted" and status["rollout"]["stable"] == "v2"


def test_canary_then_rollback_reads_back_stable_at_100(sandbox: dict, tmp_path: Path) -> None:
    manifests, namespace = sdc_copy(tmp_path)
    text = deploy_scenario(manifests, namespace, strategy="canary", service="http-lb", stable="v1",
                           canary="v2", steps=[10, 50, 100]) + """  - name: rollback
    type: rollout
    needs: [deploy]
    with: {action: rollback, namespace: NS, service: http-lb}
""".replace("NS", namespace)
    code, summary, out = run_on_cluster(tmp_path, sandbox, text)
    assert code == 0, out
    rollback = summary["stages"][1]
    assert rollback["outputs"]["read_back"] == {"weights": {"v1": 100}, "ok": True}
    assert rollback["checks"][0]["passed"]
    # What the API server stores, read independently of xci-cn:
    vs = json.loads(kubectl(sandbox, "get", "virtualservice", "http-lb", "-n", namespace, "-o", "json"))
    route = vs["spec"]["http"][0]
    assert [(d["destination"]["subset"], d["weight"]) for d in route["route"]] == [("v1", 100)]
    assert "mirror" not in route
    v2 = json.loads(kubectl(sandbox, "get", "deploy", "http-lb-v2", "-n", namespace, "-o", "json"))
    assert v2["spec"]["replicas"] == 0


def test_bluegreen_switch_and_rollback(sandbox: dict, tmp_path: Path) -> None:
    manifests, namespace = sdc_copy(tmp_path)
    code, summary, out = run_on_cluster(tmp_path, sandbox, deploy_scenario(
        manifests, namespace, strategy="bluegreen", service="http-lb", stable="v1", canary="v2"))
    assert code == 0, out
    assert summary["stages"][0]["outputs"]["steps"][0]["weights"] == {"v1": 0, "v2": 100}
    assert vs_weights(sandbox, namespace) == {"v1": 0, "v2": 100}
    # The old version is still there, scaled up, for rollback.
    v1 = json.loads(kubectl(sandbox, "get", "deploy", "http-lb-v1", "-n", namespace, "-o", "json"))
    assert v1["status"]["availableReplicas"] == 2
    back = cli("rollout", "rollback", "-n", namespace, "--service", "http-lb",
               "--kubeconfig", str(sandbox["kubeconfig"]))
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["read_back"]["ok"] is True
    assert vs_weights(sandbox, namespace) == {"v1": 100}


def test_removed_api_is_rejected_before_anything_is_applied(sandbox: dict, tmp_path: Path) -> None:
    namespace = f"old-{uuid.uuid4().hex[:6]}"
    manifests = tmp_path / "old"
    manifests.mkdir()
    (manifests / "app.yaml").write_text(f"""apiVersion: v1
kind: ConfigMap
metadata: {{name: settings, namespace: {namespace}}}
data: {{a: "1"}}
---
apiVersion: extensions/v1beta1
kind: Deployment
metadata: {{name: legacy, namespace: {namespace}}}
spec:
  template:
    spec:
      containers: [{{name: c, image: nginx}}]
""")
    code, summary, out = run_on_cluster(tmp_path, sandbox, deploy_scenario(manifests, namespace))
    assert code == 2, out
    line = next(x for x in out.splitlines() if x.startswith("xci-cn:"))
    assert "app.yaml:6:1: document 2: Deployment/legacy: apiVersion extensions/v1beta1 of Deployment " \
           "was removed from Kubernetes; use apps/v1" in line
    assert summary == {}
    assert namespace not in kubectl(sandbox, "get", "namespaces", "-o", "name")


def test_invalid_virtualservice_rejected_by_istio_schema_nothing_applied(sandbox: dict, tmp_path: Path
                                                                         ) -> None:
    manifests, namespace = sdc_copy(tmp_path)
    path = manifests / "10-gateway.yaml"
    path.write_text(path.read_text().replace("  gateways: [sdc-gateway]", "  gateways: sdc-gateway"))
    code, summary, out = run_on_cluster(tmp_path, sandbox, deploy_scenario(manifests, namespace))
    assert code == 2, out
    error = summary["stages"][0]["error"]
    assert "10-gateway.yaml" in error
    assert "document 2: VirtualService/sdc: rejected by the API server" in error
    assert "spec.gateways" in error and "Traceback" not in out
    assert namespace not in kubectl(sandbox, "get", "namespaces", "-o", "name")


def test_unknown_kind_names_the_document(sandbox: dict, tmp_path: Path) -> None:
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "x.yaml").write_text("apiVersion: example.org/v1\nkind: Widget\nmetadata: {name: w}\n")
    code, summary, out = run_on_cluster(tmp_path, sandbox, deploy_scenario(manifests, "default"))
    assert code == 2, out
    assert "x.yaml:1:1: document 1: Widget/w: kind Widget is not served by the cluster in apiVersion " \
           "example.org/v1" in summary["stages"][0]["error"]


@pytest.mark.parametrize("options,message", [
    ({"strategy": "canary"}, "strategy canary needs service, stable, canary"),
    ({"strategy": "canary", "service": "s", "stable": "v1", "canary": "v2", "steps": [50, 25, 100]},
     "must increase"),
])
def test_bad_deploy_options_are_scenario_errors(tmp_path: Path, options: dict, message: str) -> None:
    manifests, namespace = sdc_copy(tmp_path)
    write_scenario(tmp_path, deploy_scenario(manifests, namespace, **options), "s.yaml")
    proc = cli("validate", "s.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.startswith("xci-cn: s.yaml:6:")


@pytest.mark.parametrize("strategy", ["canary", "bluegreen"])
@pytest.mark.parametrize("breakage,message", [
    ("no-subset", "DestinationRule {ns}/http-lb has no subset v2 (subsets: v1)"),
    ("no-rule", "DestinationRule {ns}/http-lb is neither in the manifests nor in the cluster"),
    ("no-route", "VirtualService {ns}/http-lb has no http route to http-lb.{ns}.svc.cluster.local"),
])
def test_missing_routing_objects_are_found_before_anything_is_applied(sandbox: dict, tmp_path: Path, strategy: str,
                                                                      breakage: str, message: str) -> None:
    manifests, namespace = sdc_copy(tmp_path)
    path = manifests / "40-http-lb.yaml"
    text = path.read_text()
    if breakage == "no-subset":
        text, removed = re.subn(r"\n( *)- name: v2\n\1  labels: \{version: v2\}", "", text)
        assert removed == 1
    elif breakage == "no-rule":
        documents = text.split("\n---\n")
        text = "\n---\n".join(d for d in documents if "kind: DestinationRule" not in d)
    else:
        text = text.replace(f"destination: {{host: http-lb.{namespace}.svc.cluster.local",
                            f"destination: {{host: elsewhere.{namespace}.svc.cluster.local")
    path.write_text(text)
    code, summary, out = run_on_cluster(tmp_path, sandbox, deploy_scenario(
        manifests, namespace, strategy=strategy, service="http-lb", stable="v1", canary="v2"))
    assert code == 2, out
    assert message.format(ns=namespace) in summary["stages"][0]["error"], summary["stages"][0]["error"]
    assert namespace not in kubectl(sandbox, "get", "namespaces", "-o", "name")  # nothing applied


def test_a_namespace_neither_in_the_cluster_nor_the_manifests_is_found_before_anything_is_applied(
        sandbox: dict, tmp_path: Path) -> None:
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "a.yaml").write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: declared-ns-1}\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok, namespace: declared-ns-1}\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lost, namespace: nowhere-ns}\n")
    code, summary, out = run_on_cluster(tmp_path, sandbox, deploy_scenario(manifests, "stage-ns-1"))
    assert code == 2, out
    assert "a.yaml:9:1: document 3: ConfigMap/lost: namespace nowhere-ns exists neither in the cluster nor in the " \
           "manifests" in summary["stages"][0]["error"]
    names = kubectl(sandbox, "get", "namespaces", "-o", "name")
    assert "declared-ns-1" not in names and "stage-ns-1" not in names and summary["stages"][0]["outputs"] == {}


def test_a_missing_stage_namespace_is_created_and_an_existing_one_left_alone(sandbox: dict, tmp_path: Path) -> None:
    manifests = tmp_path / "m"
    manifests.mkdir()
    namespace = f"made-{uuid.uuid4().hex[:6]}"
    (manifests / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {k: v}\n")
    code, summary, out = run_on_cluster(tmp_path, sandbox, deploy_scenario(manifests, namespace))
    assert code == 0, out
    applied = {(a["kind"], a["name"]): a["action"] for a in summary["stages"][0]["outputs"]["applied"]}
    assert applied == {("Namespace", namespace): "created", ("ConfigMap", "c"): "created"}
    kubectl(sandbox, "label", "namespace", namespace, "team=kept")
    code, summary, out = run_on_cluster(tmp_path, sandbox, deploy_scenario(manifests, namespace), results="R2")
    assert code == 0, out
    applied = {(a["kind"], a["name"]): a["action"] for a in summary["stages"][0]["outputs"]["applied"]}
    assert applied == {("ConfigMap", "c"): "unchanged"}  # the existing namespace is not touched
    labels = json.loads(kubectl(sandbox, "get", "namespace", namespace, "-o", "json"))["metadata"]["labels"]
    assert labels["team"] == "kept"
