"""The bundled scenarios end to end through `xci-cn run`, as the Jenkins verify
job runs them: real Ansible, real control plane, real teardown."""

from __future__ import annotations

import json
import time
from pathlib import Path

from junitparser import JUnitXml

from tests.helpers import cli
from tests.leaks import processes_mentioning


def test_default_verify_pipeline_on_its_own_sandbox(tmp_path: Path, isolated_sandbox_home: Path,
                                                    real_node_free: None) -> None:
    from xci_cn.sandbox import node

    for _ in range(180):  # a host shared with other test sessions: wait for their real node
        owner = node.host_owner()
        if not owner or not node.running(node.NodeLayout(owner["name"], Path(owner["dir"]))):
            break
        time.sleep(10)
    proc = cli("run", "--results-dir", "R", "--sandbox-name", "e2e", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = tmp_path / "R"
    summary = json.loads((results / "summary.json").read_text())
    assert summary["scenario"] == "k8-nosdn-istio" and summary["flavor"] == "mini"
    stages = {s["name"]: s for s in summary["stages"]}
    names = ("provision", "deploy", "verify", "collect-logs", "teardown")
    assert [stages[n]["status"] for n in names] == ["passed"] * 5
    assert stages["deploy"]["outputs"]["counts"]["created"] == 20
    verify_checks = {c["name"]: c["passed"] for c in stages["verify"]["checks"]}
    assert verify_checks["mesh VirtualService sdc/http-lb"] and verify_checks["platform Istio CRDs Established"]
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


def test_existing_installer_uses_the_given_cluster_and_leaves_it(sandbox: dict, tmp_path: Path) -> None:
    proc = cli("run", "--installer", "existing", "--kubeconfig", str(sandbox["kubeconfig"]),
               "--results-dir", "R", cwd=tmp_path, timeout=300)
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
