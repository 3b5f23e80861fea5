"""Reliability against the real sandbox: faults injected into running
pipelines, least privilege enforced by real RBAC, secrets planted and
searched for in everything a run wrote, two runs at once."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults import restart_component
from tests.helpers import XCI_CN, cli, deploy_scenario, junit_cases, kubectl, sdc_copy, vs_weights, write_scenario
from tests.leaks import processes_mentioning
from xci_cn.paths import REPO_ROOT

# Runs that bring up sandboxes of their own, about signals and concurrency, not
# pods: kwok's come up sooner and cost no CPU.
SIMULATED_PODS = {**os.environ, "XCI_CN_SANDBOX_PODS": "simulated"}
# The default scenario's traffic checks need real pods; this one is the
# whole pipeline (provision, logs, teardown) without them.
NO_FEATURE = REPO_ROOT / "scenarios" / "k8-nosdn-nofeature.yaml"


@pytest.fixture(scope="module")
def fault_sandbox(isolated_sandbox_home: Path) -> dict:
    """A sandbox of its own for tests that kill its components."""
    from xci_cn.sandbox import cluster

    result = cluster.up("faults", "aio", istio=True, pods="simulated")
    try:
        yield {"name": "faults", "kubeconfig": result.sandbox.kubeconfig}
    finally:
        cluster.down("faults", missing_ok=True)


def slow_canary(tmp_path: Path, namespace_manifests: tuple[Path, str], pause: str = "2s") -> str:
    manifests, namespace = namespace_manifests
    return deploy_scenario(manifests, namespace, strategy="canary", service="http-lb", stable="v1",
                           canary="v2", steps=[10, 50, 100], step_pause=pause)


def start_run(tmp_path: Path, kubeconfig: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*XCI_CN, "run", "--scenario", "s.yaml", "--kubeconfig", str(kubeconfig),
                             "--results-dir", "R", *extra], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_until(predicate, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except subprocess.CalledProcessError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def objects_in(sandbox: dict, namespace: str) -> dict[str, list[str]]:
    out = {}
    for kind in ("deployments", "replicasets", "services", "virtualservices", "destinationrules", "gateways",
                 "pods"):
        names = kubectl(sandbox, "get", kind, "-n", namespace, "-o", "jsonpath={.items[*].metadata.name}")
        out[kind] = sorted(names.split())
    return out


def test_sigkill_during_deploy_then_resume_completes_without_duplicates(sandbox: dict, tmp_path: Path) -> None:
    copy = sdc_copy(tmp_path)
    write_scenario(tmp_path, slow_canary(tmp_path, copy), "s.yaml")
    proc = start_run(tmp_path, sandbox["kubeconfig"])
    # Any step before the last: the 10 % one lasts 2-3 s, which a poll slowed by load can miss.
    wait_until(lambda: vs_weights(sandbox, copy[1]).get("v2") in (10, 50), timeout=120, what="a mid-way step")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    state = json.loads((tmp_path / "R" / "state.json").read_text())
    assert state["stages"][0]["status"] == "running"  # what the killed run last persisted
    done = cli("run", "--scenario", "s.yaml", "--kubeconfig", str(sandbox["kubeconfig"]), "--results-dir", "R",
               "--resume", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert vs_weights(sandbox, copy[1]) == {"v1": 0, "v2": 100}
    objects = objects_in(sandbox, copy[1])
    assert objects["deployments"] == sorted(["clover-server1", "clover-server2", "clover-server3", "http-lb-v1",
                                             "http-lb-v2", "proxy-access-control", "redis", "snort-ids"])
    assert len(objects["replicasets"]) == 8, "a re-applied Deployment must not get a second ReplicaSet"
    assert len(objects["pods"]) == 11  # 2+2+2 replicas for proxy and http-lb v1/v2, 1 for the other five
    assert objects["virtualservices"] == ["http-lb", "sdc"] and objects["destinationrules"] == ["http-lb"]


def test_sigterm_mid_deploy_runs_always_stages_and_tears_down(tmp_path: Path,
                                                              isolated_sandbox_home: Path) -> None:
    copy = sdc_copy(tmp_path)
    text = f"""name: abort
installer: sandbox
flavors: [aio]
stages:
  - {{name: provision, type: provision}}
  - name: deploy
    type: deploy
    needs: [provision]
    with: {{manifests: ["{copy[0]}"], namespace: {copy[1]}, strategy: canary, service: http-lb,
            stable: v1, canary: v2, steps: [10, 100], step_pause: 60s}}
  - {{name: collect-logs, type: ansible, needs: [deploy], always: true, with: {{playbook: collect-logs.yml}}}}
  - {{name: teardown, type: provision, needs: [collect-logs], always: true, with: {{action: down}}}}
"""
    write_scenario(tmp_path, text, "s.yaml")
    proc = subprocess.Popen([*XCI_CN, "run", "--scenario", "s.yaml", "--flavor", "aio", "--sandbox-name",
                             "aborted", "--results-dir", "R"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=SIMULATED_PODS)
    wait_until(lambda: "canary step 1/2" in (tmp_path / "R" / "logs" / "deploy.log").read_text()
               if (tmp_path / "R" / "logs" / "deploy.log").exists() else False, timeout=120, what="step 1")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out + err
    summary = json.loads((tmp_path / "R" / "summary.json").read_text())
    statuses = {s["name"]: s["status"] for s in summary["stages"]}
    assert statuses == {"provision": "passed", "deploy": "cancelled", "collect-logs": "passed",
                        "teardown": "passed"}
    assert summary["result"] == "INTERRUPTED"
    assert junit_cases(tmp_path / "R" / "junit.xml")["deploy"] == ["Skipped"]
    assert (tmp_path / "R" / "logs" / "cluster" / "objects.txt").exists()
    assert processes_mentioning(str(isolated_sandbox_home / "aborted")) == []


@pytest.mark.parametrize("component,down_seconds", [("kube-apiserver", 5), ("etcd", 2)])
def test_control_plane_component_restarted_mid_deploy_run_completes(fault_sandbox: dict, tmp_path: Path,
                                                                    component: str, down_seconds: float) -> None:
    """kube-apiserver killed and down ~5 s; etcd killed and restarted after 2 s."""
    copy = sdc_copy(tmp_path)
    write_scenario(tmp_path, slow_canary(tmp_path, copy, pause="3s"), "s.yaml")
    proc = start_run(tmp_path, fault_sandbox["kubeconfig"])
    wait_until(lambda: vs_weights(fault_sandbox, copy[1]).get("v2") in (10, 50), timeout=120,
               what="a mid-way step")
    restart_component("faults", component, down_seconds=down_seconds)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert vs_weights(fault_sandbox, copy[1]) == {"v1": 0, "v2": 100}


# -- least privilege ---------------------------------------------------------------------------
def service_account_kubeconfig(sandbox: dict, tmp_path: Path, namespace: str, role_file: Path) -> Path:
    """A namespaced ServiceAccount bound to ``role_file``'s Role, and a
    kubeconfig that authenticates as it with a real token."""
    kubectl(sandbox, "create", "namespace", namespace)
    kubectl(sandbox, "-n", namespace, "create", "serviceaccount", "xci-cn")
    kubectl(sandbox, "-n", namespace, "apply", "-f", str(role_file))
    kubectl(sandbox, "-n", namespace, "create", "rolebinding", "xci-cn", "--role", "xci-cn-deployer",
            "--serviceaccount", f"{namespace}:xci-cn")
    token = kubectl(sandbox, "-n", namespace, "create", "token", "xci-cn", "--duration", "1h").strip()
    admin = json.loads(kubectl(sandbox, "config", "view", "--raw", "-o", "json"))
    cluster = admin["clusters"][0]["cluster"]
    ca = Path(cluster["certificate-authority"]).read_bytes()
    ca_data = base64.b64encode(ca).decode()
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "sa",
              "clusters": [{"name": "sandbox", "cluster": {"server": cluster["server"],
                                                           "certificate-authority-data": ca_data}}],
              "users": [{"name": "sa", "user": {"token": token}}],
              "contexts": [{"name": "sa", "context": {"cluster": "sandbox", "user": "sa", "namespace": namespace}}]}
    path = tmp_path / f"{namespace}.kubeconfig"
    path.write_text(json.dumps(config))
    return path


def namespaced_graph(tmp_path: Path) -> tuple[Path, str]:
    """The SDC graph without its Namespace object (a Role cannot create one)."""
    manifests, namespace = sdc_copy(tmp_path)
    (manifests / "00-namespace.yaml").unlink()
    return manifests, namespace


def least_privilege_scenario(manifests: Path, namespace: str) -> str:
    return deploy_scenario(manifests, namespace, strategy="canary", service="http-lb", stable="v1",
                           canary="v2", steps=[50, 100]) + f"""  - name: verify
    type: verify
    needs: [deploy]
    with: {{namespace: {namespace}, service: http-lb, checks: [{{type: mesh}}]}}
  - name: rollback
    type: rollout
    needs: [verify]
    with: {{action: rollback, namespace: {namespace}, service: http-lb}}
"""


def test_deploy_verify_rollout_work_with_the_shipped_role(sandbox: dict, tmp_path: Path) -> None:
    manifests, namespace = namespaced_graph(tmp_path)
    kubeconfig = service_account_kubeconfig(sandbox, tmp_path, namespace, REPO_ROOT / "rbac" / "xci-cn-deployer.yaml")
    # The ServiceAccount really is limited: it may not read another namespace.
    denied = subprocess.run([sys.executable, "-m", "xci_cn.cli", "rollout", "status", "-n", "default", "--service",
                             "x", "--kubeconfig", str(kubeconfig)], capture_output=True, text=True)
    assert denied.returncode != 0 and "forbidden" in denied.stderr
    write_scenario(tmp_path, least_privilege_scenario(manifests, namespace), "s.yaml")
    proc = cli("run", "--scenario", "s.yaml", "--kubeconfig", str(kubeconfig), "--results-dir", "R", cwd=tmp_path,
               timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert vs_weights(sandbox, namespace) == {"v1": 100}


def test_a_missing_permission_is_named(sandbox: dict, tmp_path: Path) -> None:
    manifests, namespace = namespaced_graph(tmp_path)
    routing = "resources: [virtualservices, destinationrules, gateways, serviceentries]\n    verbs: "
    role = (REPO_ROOT / "rbac" / "xci-cn-deployer.yaml").read_text().replace(
        routing + "[get, list, watch, create, patch, update, delete]", routing + "[get, list, watch]")
    assert "verbs: [get, list, watch]\n  # Reading health" in role
    role_file = tmp_path / "role.yaml"
    role_file.write_text(role)
    kubeconfig = service_account_kubeconfig(sandbox, tmp_path, namespace, role_file)
    write_scenario(tmp_path, least_privilege_scenario(manifests, namespace), "s.yaml")
    proc = cli("run", "--scenario", "s.yaml", "--kubeconfig", str(kubeconfig), "--results-dir", "R", cwd=tmp_path,
               timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    error = json.loads((tmp_path / "R" / "summary.json").read_text())["stages"][0]["error"]
    assert "forbidden (403)" in error
    assert f'User "system:serviceaccount:{namespace}:xci-cn" cannot patch resource' in error
    assert 'in API group "networking.istio.io"' in error


# -- secrets -----------------------------------------------------------------------------------
def test_planted_secrets_never_reach_anything_the_run_wrote(sandbox: dict, tmp_path: Path) -> None:
    manifests, namespace = namespaced_graph(tmp_path)
    kubeconfig = service_account_kubeconfig(sandbox, tmp_path, namespace, REPO_ROOT / "rbac" / "xci-cn-deployer.yaml")
    token = json.loads(kubeconfig.read_text())["users"][0]["user"]["token"]
    planted = {"JENKINS_API_TOKEN": "jenkins-token-5f2c9a1e77", "GERRIT_PASSWORD": "gerrit-pass-0c41d9be"}
    text = least_privilege_scenario(manifests, namespace) + f"""  - name: chatty
    type: shell
    needs: [rollback]
    with: {{command: "echo token=$JENKINS_API_TOKEN pw=$GERRIT_PASSWORD; cat {kubeconfig}"}}
  - name: chatty-ansible
    type: ansible
    needs: [chatty]
    with: {{playbook: {tmp_path / 'play.yml'}}}
  - {{name: collect-logs, type: ansible, needs: [chatty-ansible], always: true, with: {{playbook: collect-logs.yml}}}}
"""
    (tmp_path / "play.yml").write_text("""- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.command: "printenv GERRIT_PASSWORD"
""")
    write_scenario(tmp_path, text, "s.yaml")
    proc = cli("run", "--scenario", "s.yaml", "--kubeconfig", str(kubeconfig), "--results-dir", "R", cwd=tmp_path,
               env=planted, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    secrets = [token, *planted.values()]
    written = [p for p in (tmp_path / "R").rglob("*") if p.is_file()]
    assert len(written) > 20 and any(p.suffix == ".json" and "job_events" in str(p) for p in written)
    leaks = [(str(p), s[:8]) for p in written for s in secrets if s in p.read_text(errors="replace")]
    leaks += [("console", s[:8]) for s in secrets if s in proc.stdout + proc.stderr]
    assert leaks == []
    chatty = (tmp_path / "R" / "logs" / "chatty.log").read_text()
    assert "token=<redacted> pw=<redacted>" in chatty  # the command ran and printed; the log was redacted


# -- isolation ---------------------------------------------------------------------------------
def test_two_runs_at_once_do_not_interfere(tmp_path: Path, isolated_sandbox_home: Path) -> None:
    procs = []
    for name in ("exec-a", "exec-b"):
        workdir = tmp_path / name
        workdir.mkdir()
        procs.append((name, workdir, subprocess.Popen(
            [*XCI_CN, "run", "--scenario", str(NO_FEATURE), "--flavor", "aio", "--sandbox-name", name,
             "--results-dir", "R"], cwd=workdir,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=SIMULATED_PODS)))
    for name, workdir, proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}: {out}{err}"
        summary = json.loads((workdir / "R" / "summary.json").read_text())
        provision = summary["stages"][0]["outputs"]
        assert provision["sandbox"] == name
        assert summary["inputs"]["sandbox_name"] == name
        assert processes_mentioning(str(isolated_sandbox_home / name)) == []
    urls = {json.loads((w / "R" / "summary.json").read_text())["stages"][0]["outputs"]["api_url"]
            for _, w, _ in procs}
    assert len(urls) == 2, "each run had its own API server"
