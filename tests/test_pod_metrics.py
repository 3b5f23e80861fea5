"""Pods' own metrics: the SDC app's /metrics, the pod discovery (pod-sd)
that stands in for the Kubernetes service discovery Debian's Prometheus
lacks, and the sandbox's Prometheus scraping the real pods that ask for it
by annotation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import cli, deploy_scenario, kubectl, run_on_cluster, sdc_copy, until
from tests.meshmetrics import free_port
from xci_cn.sandbox.binaries import POD_SD_SOURCES, ensure_binaries


def _get(url: str, settle: float = 10) -> tuple[int, str]:
    """GET without the environment's proxy, retried while nothing answers
    yet (a new Service's rules, a process still starting)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + settle
    while True:
        try:
            with opener.open(url, timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, parsed by prometheus_client's
    own parser (a format error fails here)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@contextmanager
def _sdc_app(*args: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([str(ensure_binaries().path("sdc-app")), "http", f"--port={port}", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        _get(base + "/healthz")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_sdc_app_counts_its_requests_by_code_and_their_latency() -> None:
    with _sdc_app("--name=t", "--version=v7", "--latency=30ms") as base:
        for _ in range(5):
            assert _get(base + "/some/path")[0] == 200
        for probe in ("/healthz", "/readyz", "/metrics"):  # probes and scrapes are not requests
            assert _get(base + probe)[0] == 200
        code, text = _get(base + "/metrics")
    assert code == 200
    found = _samples(text)
    v7 = (("version", "v7"),)
    assert found[("sdc_app_requests_total", (("code", "200"), *v7))] == 5
    assert found[("sdc_app_requests_total", (("code", "500"), *v7))] == 0
    assert found[("sdc_app_request_duration_seconds_count", v7)] == 5
    assert 5 * 0.03 <= found[("sdc_app_request_duration_seconds_sum", v7)] < 5 * 1.0
    buckets = {dict(labels)["le"]: value for (name, labels), value in found.items()
               if name == "sdc_app_request_duration_seconds_bucket"}
    assert buckets["0.025"] == 0 and buckets["+Inf"] == 5
    assert list(buckets.values()) == sorted(buckets.values())  # cumulative
    with _sdc_app("--version=v3", "--error-ratio=1") as base:
        assert [_get(base + "/")[0] for _ in range(3)] == [500] * 3
        found = _samples(_get(base + "/metrics")[1])
    assert found[("sdc_app_requests_total", (("code", "500"), ("version", "v3")))] == 3
    assert found[("sdc_app_requests_total", (("code", "200"), ("version", "v3")))] == 0


def test_pod_discovery_rules_and_api_client_pass_their_go_tests() -> None:
    """pod-sd's own tests: which pods become which targets, the atomic
    write, the client certificate against a TLS server of the test's."""
    go = shutil.which("go")
    assert go, "Go is needed (the sandbox's binaries are built with it)"
    env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    proc = subprocess.run([go, "test", "-count=1", "."], cwd=POD_SD_SOURCES, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _query(prometheus: str, query: str) -> list[dict[str, Any]]:
    body = requests.get(prometheus + "/api/v1/query", params={"query": query}, timeout=5).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_sandbox_prometheus_scrapes_the_pods_that_ask_by_annotation(sandbox: dict, tmp_path: Path) -> None:
    manifests, namespace = sdc_copy(tmp_path)
    code, _, out = run_on_cluster(tmp_path, sandbox, deploy_scenario(manifests, namespace))
    assert code == 0, out
    deployed = time.monotonic()
    status = json.loads(cli("sandbox", "status", "--name", sandbox["name"], "--json").stdout)
    assert status["components"]["pod-sd"]["running"], status["components"]
    prometheus = status["prometheus_url"]
    pods = json.loads(kubectl(sandbox, "get", "pods", "-n", namespace, "-o", "json"))["items"]
    lbs = {p["metadata"]["name"]: p for p in pods if p["metadata"]["labels"]["app"] == "http-lb"}
    assert len(lbs) == 4

    def lbs_up() -> list[dict[str, Any]]:
        series = _query(prometheus, f'up{{job="pods",namespace="{namespace}",app="http-lb"}} == 1')
        return series if {s["metric"]["pod"] for s in series} == set(lbs) else []

    series = until("the four http-lb pods up in Prometheus", lbs_up)
    started = max(datetime.fromisoformat(p["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
                  for p in lbs.values())
    print(f"http-lb pods up in Prometheus {time.monotonic() - deployed:.1f}s after the deploy stage ended, "
          f"{(datetime.now(UTC) - started).total_seconds():.0f}s after the last one started")
    for one in series:
        pod = lbs[one["metric"]["pod"]]
        assert one["metric"]["instance"] == f"{pod['status']['podIP']}:9180", one
        assert one["metric"]["version"] == pod["metadata"]["labels"]["version"], one
        assert one["metric"]["namespace"] == namespace and one["metric"]["app"] == "http-lb", one
    # Every pod that asks is a target, at the path it names; redis does not ask.
    # Prometheus applies what discovery finds at most every 5 s, so pods that
    # started seconds apart may arrive in two updates: wait for the whole set.
    # (A loop of its own rather than until(): a timeout names the set it had.)
    asking = {p["metadata"]["name"] for p in pods if p["metadata"]["labels"]["app"] != "redis"}
    deadline = time.monotonic() + 30
    while True:
        targets = requests.get(prometheus + "/api/v1/targets", params={"state": "active"}, timeout=5).json()
        ours = {t["labels"]["pod"]: t for t in targets["data"]["activeTargets"]
                if t["labels"]["job"] == "pods" and t["labels"].get("namespace") == namespace}
        if set(ours) == asking or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(ours) == asking and len(asking) == 10, sorted(ours)
    assert all(t["scrapeUrl"].endswith("/metrics") for t in ours.values())

    # Requests through http-lb's ClusterIP (kube-proxy): the app's own counter
    # in Prometheus counts them exactly; each went on to one clover server.
    service = json.loads(kubectl(sandbox, "get", "svc", "http-lb", "-n", namespace, "-o", "json"))
    base = f"http://{service['spec']['clusterIP']}:9180"
    assert [_get(f"{base}/metrics-test/{i}")[0] for i in range(20)] == [200] * 20

    def counted(app: str) -> float:
        result = _query(prometheus, f'sum(sdc_app_requests_total{{job="pods",namespace="{namespace}",'
                                    f'app="{app}",code="200"}})')
        return float(result[0]["value"][1]) if result else -1

    def clovers() -> float:
        return sum(max(counted(f"clover-server{i}"), 0) for i in (1, 2, 3))

    until("20 requests counted by http-lb", lambda: counted("http-lb") >= 20, timeout=30)
    until("20 requests counted by the clover servers", lambda: clovers() >= 20, timeout=30)
    assert (counted("http-lb"), clovers()) == (20, 20)
    # The pod's version label is the target's; the one the app reports is kept
    # as exported_version (Prometheus' rule for a scraped label a target overrides).
    answered = _query(prometheus, f'sdc_app_requests_total{{job="pods",namespace="{namespace}",app="http-lb",'
                                  'code="200"}')
    assert sorted((s["metric"]["version"], s["metric"]["exported_version"]) for s in answered) == [
        ("v1", "v1"), ("v1", "v1"), ("v2", "v2"), ("v2", "v2")], answered
    latency = _query(prometheus, f'sum(sdc_app_request_duration_seconds_count{{job="pods",'
                                 f'namespace="{namespace}",app="http-lb"}})')
    assert float(latency[0]["value"][1]) == 20

    # Pods that go are dropped from the targets (pod-sd leaves out pods being deleted).
    kubectl(sandbox, "delete", "namespace", namespace, "--wait=false")

    def gone() -> bool:
        active = requests.get(prometheus + "/api/v1/targets", params={"state": "active"}, timeout=5).json()
        return not [t for t in active["data"]["activeTargets"] if t["labels"].get("namespace") == namespace]

    until(f"the targets of namespace {namespace} removed", gone, timeout=30)
