"""The ``cnf`` check: static rules by the real kube-score binary (built from
its Go module by ``xci-cn sandbox build``) and by xci-cn's host-access
rules; scoring, allow-list, severities; JUnit cases, summary and report."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers import cli, run_scenario
from xci_cn.errors import EXIT_INVALID_INPUT
from xci_cn.paths import REPO_ROOT
from xci_cn.pipeline.state import Outcome, Status
from xci_cn.verify import cnf, kubescore

BAD = REPO_ROOT / "tests" / "corpus" / "cnf" / "bad"
STATIC_DEFAULTS = {r.name for r in cnf.RULES.values() if r.default and not r.runtime}


def kube_score():
    from xci_cn.sandbox.binaries import ensure_tools

    binary = ensure_tools()["kube-score"]
    return lambda bodies: kubescore.score(binary, bodies)


def lint(paths: list[Path], **spec) -> list[cnf.Finding]:
    from xci_cn.k8s.manifests import load_manifests

    subjects = [cnf.Subject.of(m) for m in load_manifests(paths).manifests]
    return cnf.lint(subjects, cnf.CnfCheck(type="cnf", **spec), kube_score())


def failed_rules(findings: list[cnf.Finding]) -> dict[str, set[str]]:
    """Workload name -> the rules it failed."""
    failed: dict[str, set[str]] = {}
    for finding in findings:
        failed.setdefault(finding.kind_name.split("/", 1)[1], set())
        if not finding.passed:
            failed[finding.kind_name.split("/", 1)[1]].add(finding.rule)
    return failed


def test_the_bad_set_fails_the_matching_rules_and_no_others() -> None:
    findings = lint([BAD])
    assert failed_rules(findings) == {"privileged": {"privileged"}, "no-probes": {"probes"},
                                      "latest-tag": {"image-tag"}, "ignores-sigterm": set()}
    by_case = {f.case: f for f in findings if not f.passed}
    privileged = by_case["cnf privileged: Deployment privileged container app"]
    assert privileged.where == f"{BAD / 'bad.yaml'}:5: document 1"
    assert privileged.source == "kube-score container-security-context-privileged"
    assert "Set securityContext.privileged to false" in privileged.fix
    assert by_case["cnf image-tag: Deployment latest-tag container app"].message == "Image with latest tag"
    assert by_case["cnf probes: Deployment no-probes"].message == "Container is missing a readinessProbe"
    # Every default static rule judged every workload.
    assert {(f.rule, f.kind_name) for f in findings} == {
        (rule, f"Deployment/{name}") for rule in STATIC_DEFAULTS
        for name in ("privileged", "no-probes", "latest-tag", "ignores-sigterm")}


def test_read_only_root_fs_runs_only_when_asked() -> None:
    assert not [f for f in lint([BAD]) if f.rule == "read-only-root-fs"]
    asked = lint([BAD], checks=["read-only-root-fs"], objects=["Deployment/privileged"])
    assert [(f.rule, f.passed, f.message) for f in asked] == [
        ("read-only-root-fs", False, "The pod has a container with a writable root filesystem")]


def pod(spec: dict) -> cnf.Subject:
    base = {"containers": [{"name": "app", "image": "app:1"}]}
    return cnf.Subject({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"},
                        "spec": {**base, **spec}}, "pods.yaml:1: document 1")


HOST_CASES = [
    ({"hostNetwork": True}, {"host-network": [(None, "the pod sets hostNetwork: true")]}),
    ({"hostPID": True, "hostIPC": True}, {"host-network": [(None, "the pod sets hostPID: true; "
                                                                  "the pod sets hostIPC: true")]}),
    ({"containers": [{"name": "app", "ports": [{"containerPort": 80, "hostPort": 8080}]}]},
     {"host-ports": [("app", "port 80 is bound to hostPort 8080")]}),
    ({"volumes": [{"name": "logs", "hostPath": {"path": "/var/log/"}}],
      "containers": [{"name": "app", "volumeMounts": [{"name": "logs", "mountPath": "/l"}]}]},
     {"host-path": [("app", "mounts hostPath /var/log (volume logs)")]}),
    ({"volumes": [{"name": "sock", "hostPath": {"path": "/run/containerd/containerd.sock"}}],
      "containers": [{"name": "app", "volumeMounts": [{"name": "sock", "mountPath": "/s"}]}]},
     {"host-path": [("app", "mounts hostPath /run/containerd/containerd.sock (volume sock)")],
      "runtime-socket": [("app", "mounts the container runtime's socket /run/containerd/containerd.sock "
                                 "(volume sock)")]}),
    ({"volumes": [{"name": "unused", "hostPath": {"path": "/etc"}}]},
     {"host-path": [(None, "declares hostPath volume unused (/etc)")]}),
    ({"volumes": [{"name": "scratch", "emptyDir": {}}]}, {}),
]


@pytest.mark.parametrize(("spec", "expected"), HOST_CASES)
def test_host_access_rules(spec: dict, expected: dict) -> None:
    rules = [cnf.RULES[n] for n in cnf.HAND_WRITTEN]
    subject = pod(spec)
    findings = cnf.check_static([subject], [subject], rules, kube_score=lambda bodies: [])
    failed = {}
    for finding in findings:
        assert finding.where == "pods.yaml:1: document 1" and finding.subject == "Pod ns/p"
        if not finding.passed:
            assert finding.fix and finding.source == "xci-cn"
            failed.setdefault(finding.rule, []).append((finding.container, finding.message))
    assert failed == expected
    assert {f.rule for f in findings} == set(cnf.HAND_WRITTEN)


def test_allow_list_and_severity_and_score() -> None:
    spec = cnf.CnfCheck(type="cnf", severity={"image-tag": "normal"},
                        allow=[{"check": "privileged", "object": "Deployment/priv*", "reason": "NET_ADMIN sidecar"}])
    findings = lint([BAD], severity=dict(spec.severity), allow=[a.model_dump() for a in spec.allow])
    allowed = next(f for f in findings if f.rule == "privileged" and f.skipped)
    assert allowed.passed and allowed.message.startswith("allowed: NET_ADMIN sidecar (was: The container is")
    summary = cnf.summarise(findings, spec)
    by_rule = {r["rule"]: r for r in summary["rules"]}
    assert by_rule["image-tag"] == {**by_rule["image-tag"], "category": "normal", "status": "failed"}
    assert by_rule["probes"]["status"] == "failed" and by_rule["privileged"]["status"] == "passed"
    assert by_rule["graceful-termination"]["status"] == "skipped"  # runtime: not run on files
    essential = summary["categories"]["essential"]
    assert (essential["passed"], essential["failed"]) == (7, 1)
    assert summary["categories"]["normal"]["failed"] == 1
    assert summary["score"] == round(100 * 7 / 9, 1)
    assert not spec.blocking(cnf.RULES["image-tag"]) and spec.blocking(cnf.RULES["probes"])


def test_cli_checks_files_without_a_cluster() -> None:
    result = cli("cnf", str(BAD))
    assert result.returncode == 1, result.stderr
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED ")]
    assert len(failed) == 3
    assert f"FAILED cnf image-tag: Deployment latest-tag container app: {BAD / 'bad.yaml'}:55: document 3: " \
           "kube-score container-image-tag: Image with latest tag - fix: Using a fixed tag" in result.stdout
    assert result.stdout.splitlines()[-1] == ("cnf: score 66.7%: 6 rules passed, 3 failed, 5 skipped "
                                              "(3 essential failed)")
    passing = cli("cnf", "--object", "ignores-sigterm", str(BAD))
    assert passing.returncode == 0 and "FAILED" not in passing.stdout


@pytest.mark.parametrize(("args", "line"), [
    (["--check", "no-such-rule"], "xci-cn: unknown check no-such-rule (known: probes, resources, privileged, "),
    (["--object", "Deployment/nothing*"], "xci-cn: cnf: objects Deployment/nothing* match no workload (there are: "
                                          "Deployment/privileged, Deployment/no-probes, "),
])
def test_cli_bad_input_is_one_line_exit_2(args: list[str], line: str) -> None:
    result = cli("cnf", *args, str(BAD))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(line), result.stderr


def test_missing_linter_is_exit_3_with_how_to_get_it(tmp_path: Path) -> None:
    result = cli("cnf", str(BAD), env={"XCI_CN_CACHE": str(tmp_path)})
    assert result.returncode == 3
    assert result.stderr == (f"xci-cn: kube-score v1.20.0 is not built: run 'xci-cn sandbox build' (it builds "
                             f"kube-score from the Go module github.com/zegl/kube-score into {tmp_path}/tools/bin)\n")


def test_unknown_check_in_a_scenario_points_at_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.format(bad=BAD, extra=", checks: [probes, bogus]"))
    result = cli("validate", str(path))
    assert result.returncode == 2
    assert "unknown check bogus (known: probes," in result.stderr and str(path) in result.stderr


SCENARIO = """
name: cnf-files
installer: existing
flavors: [mini]
stages:
  - name: verify
    type: verify
    with:
      checks:
        - {{type: cnf, manifests: ["{bad}"]{extra}}}
"""


def run_and_report(tmp_path: Path, text: str):
    from xci_cn.report import write_results

    result = run_scenario(tmp_path, text)
    write_results(result, tmp_path / "results")
    return result


def test_verify_stage_reports_each_finding_and_fails_on_essential(tmp_path: Path) -> None:
    result = run_and_report(tmp_path, SCENARIO.format(bad=BAD, extra=""))
    record = result.records[0]
    assert record.status == "failed"
    assert record.error.startswith("3 check(s) failed: cnf privileged: Deployment privileged container app, ")
    outputs = record.outputs["cnf"][0]
    assert (outputs["categories"]["essential"]["failed"], outputs["score"]) == (3, 66.7)
    suite = ET.parse(tmp_path / "results" / "junit.xml").getroot()
    cases = {c.get("name"): c for c in suite.iter("testcase") if c.get("name", "").startswith("cnf ")}
    failure = cases["cnf probes: Deployment no-probes"].find("failure")
    assert failure is not None and failure.get("message").startswith(
        f"{BAD / 'bad.yaml'}:30: document 2: kube-score pod-probes: Container is missing a readinessProbe - fix: ")
    assert cases["cnf scale: runtime"].find("skipped") is not None
    assert cases["cnf resources: Deployment no-probes"].find("failure") is None
    html = (tmp_path / "results" / "report.html").read_text()
    assert 'class="cnf"' in html and "66.7%" in html


def test_a_failed_normal_rule_is_reported_without_failing_the_stage(tmp_path: Path) -> None:
    extra = (", objects: [latest-tag], severity: {image-tag: normal}, checks: [image-tag, probes]")
    result = run_and_report(tmp_path, SCENARIO.format(bad=BAD, extra=extra))
    record = result.records[0]
    assert record.status == "passed", record.error
    failed = [c for c in record.checks if not c["passed"]]
    assert [(c["name"], c["blocking"], c["details"]["category"]) for c in failed] == [
        ("cnf image-tag: Deployment latest-tag container app", False, "normal")]
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert summary["stages"][0]["outputs"]["cnf"][0]["categories"]["normal"]["failed"] == 1
    suite = ET.parse(tmp_path / "results" / "junit.xml").getroot()
    assert [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None] == [
        "cnf image-tag: Deployment latest-tag container app"]


@pytest.fixture
def bad_set_images(sandbox: dict, tmp_path: Path) -> dict:
    """The sandbox's real node holds the bad set's images: agnhost, and
    agnhost once more tagged latest (the latest-tag Deployment's)."""
    from xci_cn.sandbox import cluster
    from xci_cn.sandbox.binaries import ensure_binaries
    from xci_cn.sandbox.images import ImageSpec, write_oci_tarball

    tarball = write_oci_tarball(ImageSpec("xci-cn.local/agnhost:latest", "agnhost", ("/agnhost",)),
                                ensure_binaries().path("agnhost"), tmp_path / "agnhost-latest.tar")
    cluster.load_image(sandbox["name"], tarball)
    return sandbox


def test_deployed_objects_are_judged_live_and_named_by_their_file(bad_set_images: dict, tmp_path: Path) -> None:
    """The deploy stage applies the bad set to the real API server; the cnf
    check reads the live objects back (defaults filled in by the server) and
    names each finding with the file and document it was applied from."""
    import uuid

    from tests.helpers import run_on_cluster

    sandbox = bad_set_images
    namespace = f"cnf-{uuid.uuid4().hex[:6]}"
    text = f"""name: cnf-live
installer: existing
stages:
  - name: deploy
    type: deploy
    with: {{manifests: ["{BAD}"], namespace: {namespace}}}
  - name: verify
    type: verify
    needs: [deploy]
    with:
      namespace: {namespace}
      checks:
        - {{type: cnf, checks: [probes, privileged, image-tag, resources, non-root, host-path]}}
"""
    (tmp_path / "ns.yaml").write_text(f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n")
    from tests.helpers import kubectl

    kubectl(sandbox, "apply", "-f", str(tmp_path / "ns.yaml"))
    try:
        code, summary, out = run_on_cluster(tmp_path, sandbox, text)
        assert code == 1, out
        verify = summary["stages"][1]
        failed = sorted((c["details"]["object"], c["details"]["rule"], c["details"]["where"])
                        for c in verify["checks"] if not c["passed"])
        assert failed == [(f"Deployment {namespace}/latest-tag", "image-tag", f"{BAD / 'bad.yaml'}:55: document 3"),
                          (f"Deployment {namespace}/no-probes", "probes", f"{BAD / 'bad.yaml'}:30: document 2"),
                          (f"Deployment {namespace}/privileged", "privileged", f"{BAD / 'bad.yaml'}:5: document 1")]
        assert len(verify["checks"]) == 6 * 4
    finally:
        kubectl(sandbox, "delete", "namespace", namespace, "--wait=false")


def test_traffic_counts_real_failures_of_a_real_server() -> None:
    """The requests the scale and rolling-update rules send: answered while
    the server runs, counted as failed (by cause) once it is gone."""
    import http.server
    import threading
    import time

    from xci_cn.verify.cnf_runtime import Traffic, request

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503 if self.path == "/down" else 200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with Traffic([("127.0.0.1", port, True), ("127.0.0.1", port, False)]) as traffic:
        time.sleep(0.5)
        server.shutdown()
        server.server_close()
        time.sleep(0.5)
    counts = traffic.counts()
    assert counts["requests"] > 10 and 0 < counts["failed_requests"] < counts["requests"]
    # Refused once it is gone (a request cut by the shutdown itself is reset).
    assert "before: ConnectionRefusedError" in counts["errors"]
    assert set(counts["errors"]) <= {"before: ConnectionRefusedError", "before: ConnectionResetError"}
    assert traffic.verdict(budget=counts["failed_requests"]) == ""
    assert traffic.verdict(budget=0).startswith(f"{counts['failed_requests']} failed requests, budget 0 "
                                                "(before: ConnectionRe")
    assert request("127.0.0.1", port, True) == "ConnectionRefusedError"


def test_a_selector_matching_nothing_fails_the_stage_as_invalid_input(tmp_path: Path) -> None:
    result = run_scenario(tmp_path, SCENARIO.format(bad=BAD, extra=", objects: [StatefulSet/*]"))
    record = result.records[0]
    assert (record.status, record.outcome) == (Status.FAILED, Outcome.INVALID_INPUT)
    assert result.exit_code == EXIT_INVALID_INPUT
    assert record.error == ("cnf: objects StatefulSet/* match no workload (there are: Deployment/privileged, "
                            "Deployment/no-probes, Deployment/latest-tag, Deployment/ignores-sigterm)")
    assert record.checks == []


RUNTIME_RULES = [r.name for r in cnf.RULES.values() if r.runtime]


def test_runtime_rules_on_the_real_node(bad_set_images: dict, tmp_path: Path) -> None:
    """The bad set on the sandbox's real node: the process that answers
    SIGTERM after an hour fails graceful termination (killed at the end of its
    grace period); the one without probes, which listens 8 s after it starts,
    fails scale and the rolling update on refused requests; nothing else
    fails; recovery and logs measured; what the rules changed is put back."""
    import uuid

    from tests.helpers import kubectl, run_on_cluster

    sandbox = bad_set_images
    namespace = f"cnf-{uuid.uuid4().hex[:6]}"
    (tmp_path / "ns.yaml").write_text(f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n")
    kubectl(sandbox, "apply", "-f", str(tmp_path / "ns.yaml"))
    text = f"""name: cnf-runtime
installer: existing
stages:
  - name: deploy
    type: deploy
    with: {{manifests: ["{BAD}"], namespace: {namespace}, timeout: 2m}}
  - name: verify
    type: verify
    needs: [deploy]
    with:
      namespace: {namespace}
      checks:
        - {{type: cnf, checks: {json.dumps(RUNTIME_RULES)}, severity: {{rolling-update: essential}}}}
"""
    try:
        code, summary, out = run_on_cluster(tmp_path, sandbox, text)
        verify = summary["stages"][1]
        checks = {(c["details"]["object"].split("/")[-1], c["details"]["rule"]): c for c in verify["checks"]}
        failed = sorted(k for k, c in checks.items() if not c["passed"])
        skipped = sorted(k for k, c in checks.items() if c.get("skipped"))
        # no-probes listens 8 s after it starts, Ready all along: scale (held
        # at 3 replicas) and the rolling update see the refused requests.
        assert (failed, skipped) == ([("ignores-sigterm", "graceful-termination"), ("no-probes", "rolling-update"),
                                      ("no-probes", "scale")], []), \
            "\n".join(c["message"] for c in checks.values() if not c["passed"]) + "\n" + out
        assert code == 1
        scaled = checks[("no-probes", "scale")]["details"]
        assert scaled["failed_requests"] > 0.05 * scaled["requests"], scaled
        assert scaled["errors"].get("held: ConnectionRefusedError", 0) > 0, scaled
        assert "held 2s" in checks[("no-probes", "scale")]["message"]
        rolled = checks[("no-probes", "rolling-update")]["details"]
        assert {phase for phase in ("update", "undo")
                if rolled["errors"].get(f"{phase}: ConnectionRefusedError", 0) > 0} == {"update", "undo"}, rolled
        killed = checks[("ignores-sigterm", "graceful-termination")]
        assert killed["details"]["exit_codes"] == {"app": 137}, killed
        assert killed["details"]["exit_seconds"] >= 5 and killed["details"]["measured_by"] == "process"
        assert "exited 137 (SIGKILL)" in killed["message"] and "grace period 5s" in killed["message"]
        for name in ("privileged", "no-probes", "latest-tag"):
            graceful = checks[(name, "graceful-termination")]["details"]
            assert 2 <= graceful["exit_seconds"] < graceful["grace_seconds"] == 30  # after the 2 s preStop
            assert graceful["exit_codes"] == {"app": 0}
            assert checks[(name, "recovery")]["details"]["recovery_seconds"] < 30
            assert checks[(name, "logs-stdout")]["details"]["log_bytes"]["app"] > 0
        for name in ("privileged", "no-probes", "latest-tag", "ignores-sigterm"):
            assert checks[(name, "scale")]["details"]["requests"] > 0
            if name != "no-probes":
                assert checks[(name, "scale")]["details"]["failed_requests"] <= 0.05 * \
                    checks[(name, "scale")]["details"]["requests"]
            update = checks[(name, "rolling-update")]["details"]
            assert update["requests"] > 0
            assert update["replica_set_after_undo"] == update["old_replica_set"], update
        rules = {r["rule"]: r for r in verify["outputs"]["cnf"][0]["rules"]}
        assert all(rules[r]["seconds"] is not None for r in RUNTIME_RULES)
        # Put back: one replica each, the applied template, nothing left terminating.
        deployments = json.loads(kubectl(sandbox, "get", "deploy", "-n", namespace, "-o", "json"))["items"]
        assert {d["metadata"]["name"]: d["spec"]["replicas"] for d in deployments} == {
            "privileged": 1, "no-probes": 1, "latest-tag": 1, "ignores-sigterm": 1}
        assert not any("cnf.xci-cn.opnfv.org/update" in (d["spec"]["template"]["metadata"].get("annotations") or {})
                       for d in deployments)
    finally:
        kubectl(sandbox, "delete", "namespace", namespace, "--wait=false")


def test_a_corrupt_kube_score_is_refused_then_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kube-score is cached with its SHA-256 like the sandbox's binaries: a
    damaged copy is not run, and ``ensure_tools`` (``xci-cn sandbox build``)
    builds it again from the Go module."""
    import shutil

    from xci_cn.errors import EnvironmentProblem
    from xci_cn.sandbox import binaries

    real = binaries.ensure_tools()["kube-score"]
    monkeypatch.setenv("XCI_CN_CACHE", str(tmp_path))
    shutil.copytree(real.parent, binaries.tools_dir())
    assert binaries.find_tool("kube-score") == tmp_path / "tools" / "bin" / "kube-score"
    with open(binaries.tools_dir() / "kube-score", "r+b") as handle:  # same size, flipped bytes
        handle.seek(4096)
        handle.write(b"\0garbage\0")
    with pytest.raises(EnvironmentProblem, match="kube-score v1.20.0 is not built: run 'xci-cn sandbox build'"):
        binaries.find_tool("kube-score")
    said: list[str] = []
    assert binaries.ensure_tools(progress=said.append)["kube-score"] == binaries.find_tool("kube-score")
    assert "building kube-score v1.20.0" in said
