"""The bundled scenarios end to end through `xci-cn run`, as the Jenkins verify
job runs them: real Ansible, real control plane, real teardown."""

from __future__ import annotations

import json
from pathlib import Path

from junitparser import JUnitXml

from tests.helpers import cli
from tests.leaks import processes_mentioning
from xci_cn.paths import SAMPLES_DIR


def test_default_verify_pipeline_on_its_own_sandbox(tmp_path: Path, isolated_sandbox_home: Path) -> None:
    proc = cli("run", "--results-dir", "R", "--sandbox-name", "e2e", cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = tmp_path / "R"
    summary = json.loads((results / "summary.json").read_text())
    assert summary["scenario"] == "k8-nosdn-istio" and summary["flavor"] == "mini"
    stages = {s["name"]: s for s in summary["stages"]}
    names = ("provision", "deploy", "promote", "verify", "collect-logs", "teardown")
    assert [stages[n]["status"] for n in names] == ["passed"] * 6
    deploy = stages["deploy"]["outputs"]
    assert deploy["counts"]["created"] == 23  # the SDC graph and its HTTPRoute with a Service per version
    # The canary through the Gateway API router, judged on real requests.
    assert [s["weights"] for s in deploy["steps"]] == [{"v1": 75, "v2": 25}, {"v1": 0, "v2": 100}]
    assert [s["analysis"]["verdict"] for s in deploy["steps"]] == ["Successful", "Successful"]
    assert deploy["steps"][0]["analysis"]["metrics"][0]["value"] >= 0.99
    assert abs(deploy["steps"][0]["measured"]["v2"] - 25) <= 10
    assert deploy["traffic"]["requests"] > 100 and set(deploy["traffic"]["codes"]) == {"200"}
    assert stages["promote"]["outputs"]["stable"] == "v2"
    verify_checks = {c["name"]: c for c in stages["verify"]["checks"]}
    assert verify_checks["mesh VirtualService sdc/http-lb"]["passed"]
    assert verify_checks["platform Istio CRDs Established"]["passed"]
    split = next(c for n, c in verify_checks.items() if n.startswith("split "))
    assert split["passed"] and split["details"]["observed"] == {"v2": 100.0}
    # The CNF checks after the canary: no essential rule failed on the real pods.
    cnf = stages["verify"]["outputs"]["cnf"][0]
    assert cnf["categories"]["essential"]["failed"] == 0, cnf
    assert "cnf graceful-termination: Deployment sdc/redis" in verify_checks
    assert 'class="cnf"' in (results / "report.html").read_text()
    provision = stages["provision"]
    assert provision["outputs"]["server_version"] == "v1.36.3"
    assert sorted(n["name"] for n in provision["outputs"]["nodes"]) == ["master1", "node1", "opnfv"]
    checks = {c["name"]: c["passed"] for c in provision["checks"]}
    assert checks["Istio CRDs Established"] and checks["node node1 Ready"]
    cases = {case.name for suite in JUnitXml.fromfile(str(results / "junit.xml")) for case in suite}
    assert {"provision", "node opnfv Ready", "Istio CRDs Established", "deploy", "verify",
            "mesh VirtualService sdc/sdc", "teardown"} <= cases
    # Logs were collected from the live cluster before teardown.
    nodes_txt = (results / "logs" / "cluster" / "nodes.txt").read_text()
    assert "master1" in nodes_txt and "Ready" in nodes_txt
    assert (results / "logs" / "cluster" / "kube-apiserver.log").stat().st_size > 0
    # ... and from the real node: its components' logs and every container's.
    assert (results / "logs" / "cluster" / "node" / "kubelet.log").stat().st_size > 0
    container_logs = list((results / "logs" / "cluster" / "containers").glob("sdc_redis-*/redis/*.log"))
    assert container_logs and "resp (sdc-app" in container_logs[0].read_text()
    assert "node1" in (results / "logs" / "cluster" / "pods.txt").read_text()
    # Teardown left nothing running and removed the run's kubeconfig copy.
    assert processes_mentioning(str(isolated_sandbox_home / "e2e")) == []
    assert not (results / "kubeconfig").exists()


def test_bad_canary_scenario_is_rolled_back_on_real_failures(tmp_path: Path, isolated_sandbox_home: Path) -> None:
    proc = cli("run", "--scenario", str(SAMPLES_DIR / "scenarios" / "k8-nosdn-istio-bad-canary.yaml"),
               "--results-dir", "R", "--sandbox-name", "bad",
               cwd=tmp_path, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "R" / "summary.json").read_text())
    stages = {s["name"]: s for s in summary["stages"]}
    deploy = stages["deploy"]
    assert deploy["status"] == "failed"
    assert deploy["error"].startswith("canary v3 rolled back at step 1 (25%): analysis Failed: ")
    assert "request-success-rate of v3 = " in deploy["error"]
    assert deploy["outputs"]["rollout"]["read_back"] == {"weights": {"v1": 100}, "ok": True}
    assert deploy["outputs"]["traffic"]["codes"].get("500", 0) > 0
    checks = {c["name"]: c for c in stages["verify"]["checks"]}
    split = next(c for n, c in checks.items() if n.startswith("split "))
    assert split["passed"] and split["details"]["observed"] == {"v1": 100.0}
    assert [stages[n]["status"] for n in ("verify", "collect-logs", "teardown")] == ["passed"] * 3
    assert processes_mentioning(str(isolated_sandbox_home / "bad")) == []


def test_existing_installer_uses_the_given_cluster_and_leaves_it(sandbox: dict, tmp_path: Path) -> None:
    status = json.loads(cli("sandbox", "status", "--name", sandbox["name"], "--json").stdout)
    # A cluster xci-cn did not bring up names its Gateway, Prometheus and proxy API itself.
    env = {f"XCI_CN_{key.upper()}": status[key] for key in ("gateway_url", "prometheus_url", "traefik_api_url")}
    proc = cli("run", "--installer", "existing", "--kubeconfig", str(sandbox["kubeconfig"]),
               "--results-dir", "R", cwd=tmp_path, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "R" / "summary.json").read_text())
    provision = summary["stages"][0]
    assert provision["outputs"]["installer"] == "existing"
    assert provision["outputs"]["api_url"] == sandbox["api_url"]
    status = json.loads(cli("sandbox", "status", "--name", sandbox["name"], "--json").stdout)
    assert status["up"], "the existing cluster must not be torn down"


def test_existing_installer_with_a_bad_kubeconfig_is_invalid_input(tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n")
    proc = cli("run", "--installer", "existing", "--kubeconfig", str(bad), "--results-dir", "R",
               cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = proc.stderr.strip()
    assert line.startswith(f"xci-cn: kubeconfig {bad}:") and "\n" not in line
    assert not (tmp_path / "R").exists()
    missing = cli("run", "--installer", "existing", "--results-dir", "R", cwd=tmp_path,
                  env={"KUBECONFIG": ""})
    assert missing.returncode == 2 and "needs a kubeconfig" in missing.stderr
