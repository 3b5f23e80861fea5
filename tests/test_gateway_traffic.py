"""Real requests through the sandbox's Gateway: Traefik routes by the stored
HTTPRoute weights, Prometheus scrapes its per-backend metrics, vegeta loads
the canary while the analysis judges it, and a canary whose answers fail is
rolled back on those failures.

The backends are HTTP servers of the tests on an address of their own (a
bridge the tests create and delete), because the API server refuses
loopback addresses in EndpointSlices; the sandbox's real pods reach the
Gateway the same way, by routable pod IPs.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import cli, kubectl, write_scenario


class VersionServer:
    """Answers as one version (header x-version); fails every n-th request
    with 500 when ``fail_every`` is set."""

    def __init__(self, address: str, version: str):
        self.version = version
        self.fail_every = 0
        self.count = 0
        self.dead = False
        lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if owner.dead:  # a killed process: the connection drops, nothing answers
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                with lock:
                    owner.count += 1
                    failing = owner.fail_every and owner.count % owner.fail_every == 0
                body = f"hello from http-lb {owner.version}\n".encode()
                self.send_response(500 if failing else 200)
                self.send_header("x-version", owner.version)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # a client that gave up (the ceiling bench's timeouts): nothing to answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((address, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def kill(self) -> None:
        """Like a killed pod: no more answers, open connections dropped."""
        self.dead = True
        self.server.shutdown()
        self.server.server_close()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, VersionServer]]:
    """v1 and v2 servers on a bridge address of this test session's own."""
    name = f"xcit{os.getpid() % 100000}"
    address = f"10.213.{os.getpid() % 250}.1"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    servers: dict[str, VersionServer] = {}
    try:
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", name], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        servers = {v: VersionServer(address, v) for v in ("v1", "v2")}
        yield servers
    finally:
        for server in servers.values():
            server.stop()
        subprocess.run(["ip", "link", "del", name], check=True)


def graph(tmp_path: Path, backends: dict[str, VersionServer], weights: tuple[int, int] = (100, 0)
          ) -> tuple[Path, str]:
    """A namespace with the two versions' Services (their endpoints: the
    servers) and the HTTPRoute on the sandbox's Gateway."""
    namespace = f"gw-{uuid.uuid4().hex[:6]}"
    address = backends["v1"].server.server_address[0]
    docs = [f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n"]
    for version, server in backends.items():
        docs.append(f"""apiVersion: v1
kind: Service
metadata: {{name: http-lb-{version}, namespace: {namespace}}}
spec:
  ports: [{{name: http, port: 9180, targetPort: {server.port}}}]
""")
        docs.append(f"""apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: http-lb-{version}-test
  namespace: {namespace}
  labels: {{kubernetes.io/service-name: http-lb-{version}}}
addressType: IPv4
ports: [{{name: http, port: {server.port}, protocol: TCP}}]
endpoints: [{{addresses: ["{address}"], conditions: {{ready: true}}}}]
""")
    docs.append(f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: http-lb, namespace: {namespace}}}
spec:
  parentRefs: [{{name: edge, namespace: xci-gateway}}]
  rules:
    # A path of this test's own: the routes of all tests share the Gateway.
    - matches: [{{path: {{type: PathPrefix, value: /{namespace}}}}}]
      backendRefs:
        - {{name: http-lb-v1, port: 9180, weight: {weights[0]}}}
        - {{name: http-lb-v2, port: 9180, weight: {weights[1]}}}
""")
    directory = tmp_path / "graph"
    directory.mkdir()
    (directory / "graph.yaml").write_text("---\n".join(docs))
    return directory, namespace


def run_on_sandbox(tmp_path: Path, sandbox: dict, stages: str) -> tuple[int, dict, str]:
    write_scenario(tmp_path, f"""name: gateway-traffic
installer: sandbox
stages:
  - name: provision
    type: provision
    with: {{reuse: true, pods: simulated}}
{stages}""", "s.yaml")
    proc = cli("run", "--scenario", "s.yaml", "--flavor", "aio", "--sandbox-name", sandbox["name"],
               "--results-dir", "R", cwd=tmp_path, timeout=300)
    path = tmp_path / "R" / "summary.json"
    return proc.returncode, json.loads(path.read_text()) if path.exists() else {}, proc.stdout + proc.stderr


def stage(summary: dict, name: str) -> dict:
    return next(s for s in summary["stages"] if s["name"] == name)


ANALYSIS = """analysis:
        interval: 3s
        count: 2
        window: 6s
        inconclusive: fail
        metrics:
          - {name: success, type: success-rate, threshold: 0.95, no_data: fail}
          - {name: p99, type: latency-p99, threshold: 500, no_data: skip}"""


def canary_stages(manifests: Path, namespace: str, analysis: str = ANALYSIS, steps: str = "[25, 50, 100]"
                   ) -> str:
    return f"""  - name: deploy
    type: deploy
    needs: [provision]
    with:
      manifests: ["{manifests}"]
      namespace: {namespace}
      strategy: canary
      router: gateway-api
      service: http-lb
      stable: v1
      canary: v2
      steps: {steps}
      traffic: {{rate: 40, path: /{namespace}/, timeout: 2s}}
      {analysis}
"""


def test_split_probe_measures_the_route_weights_on_real_requests(simulated_sandbox: dict, tmp_path: Path,
                                                                 backends: dict) -> None:
    manifests, namespace = graph(tmp_path, backends, (80, 20))
    code, summary, out = run_on_sandbox(tmp_path, simulated_sandbox, f"""  - name: deploy
    type: deploy
    needs: [provision]
    with: {{manifests: ["{manifests}"], namespace: {namespace}}}
  - name: verify
    type: verify
    needs: [deploy]
    with:
      namespace: {namespace}
      service: http-lb
      router: gateway-api
      traffic: {{rate: 50, path: /{namespace}/}}
      checks:
        - {{type: split, url: /{namespace}/, requests: 500, tolerance: 5}}
""")
    assert code == 0, out
    verify = stage(summary, "verify")
    split = verify["checks"][0]
    assert split["passed"], split
    observed = split["details"]["observed"]
    assert abs(observed["v1"] - 80) <= 5 and abs(observed["v2"] - 20) <= 5, observed
    # Traefik balances by round robin over all clients: the stage's own load to the
    # same URL is counted with the probe (its 500 answers alone were once 85.6/14.4).
    assert sum(split["details"]["counts"].values()) == 500
    assert sum(split["details"]["traffic_counts"].values()) > 200, split["details"]
    traffic = verify["outputs"]["traffic"]
    assert traffic["requests"] > 0 and set(traffic["codes"]) == {"200"}
    assert set(traffic["versions"]) == {"v1", "v2"} and traffic["latency_ms"]["p99"] > 0


def test_canary_on_real_traffic_judged_by_the_proxy_metrics(simulated_sandbox: dict, tmp_path: Path,
                                                            backends: dict) -> None:
    manifests, namespace = graph(tmp_path, backends)
    code, summary, out = run_on_sandbox(tmp_path, simulated_sandbox,
                                        canary_stages(manifests, namespace, steps="[25, 100]"))
    assert code == 0, out
    outputs = stage(summary, "deploy")["outputs"]
    steps = outputs["steps"]
    assert [s["analysis"]["verdict"] for s in steps] == ["Successful", "Successful"]
    success = steps[0]["analysis"]["metrics"][0]
    assert success["name"] == "success" and success["value"] == 1.0
    assert "traefik_service_requests_total" in steps[0]["analysis"]["measurements"][0]["metrics"][0]["query"]
    # The tape has the requests each version got, as the proxy counted them, beside each measurement.
    tape = json.loads((tmp_path / "R" / "analysis.json").read_text())
    counted = tape["analyses"][0]["measurements"][-1]["traffic"]
    assert counted["unit"] == "requests/s" and counted["v2"] > 0, counted
    assert all(s["served_after_s"] >= 0 for s in steps)
    assert abs(steps[0]["measured"]["v2"] - 25) <= 10, steps[0]
    assert steps[1]["measured"] == {"v2": 100.0}
    traffic = outputs["traffic"]
    assert traffic["codes"] == {"200": traffic["requests"]} and traffic["rate_asked"] == 40
    # report.html draws the measured shares beside the weights, and the load sent.
    report = (tmp_path / "R" / "report.html").read_text()
    assert 'class="chart load"' in report and 'class="measured" data-version="v2"' in report
    assert f"{traffic['requests']} requests to " in report


def test_bad_canary_is_rolled_back_on_its_failing_requests(simulated_sandbox: dict, tmp_path: Path,
                                                           backends: dict) -> None:
    backends["v2"].fail_every = 2  # half of v2's answers are 500
    try:
        manifests, namespace = graph(tmp_path, backends)
        code, summary, out = run_on_sandbox(tmp_path, simulated_sandbox, canary_stages(manifests, namespace) + f"""\
  - name: after-rollback
    type: verify
    needs: [deploy]
    always: true
    with:
      namespace: {namespace}
      service: http-lb
      router: gateway-api
      checks:
        - {{type: split, url: /{namespace}/, requests: 500, tolerance: 5}}
""")
    finally:
        backends["v2"].fail_every = 0
    assert code == 1, out
    deploy = stage(summary, "deploy")
    assert "canary v2 rolled back at step 1 (25%): analysis Failed: 1 failed measurement(s) (limit 1): " \
           "success of v2 = " in deploy["error"]
    steps = deploy["outputs"]["steps"]
    assert [s["action"] for s in steps] == ["shift", "rollback"]
    assert deploy["outputs"]["rollout"]["read_back"] == {"weights": {"v1": 100}, "ok": True}
    assert deploy["outputs"]["traffic"]["codes"]["500"] > 0
    rule = json.loads(kubectl(simulated_sandbox, "get", "httproute", "http-lb", "-n", namespace, "-o", "json"))
    assert [(r["name"], r["weight"]) for r in rule["spec"]["rules"][0]["backendRefs"]] == [("http-lb-v1", 100)]
    split = stage(summary, "after-rollback")["checks"][0]
    assert split["passed"] and split["details"]["observed"] == {"v1": 100.0}, split


def _during_first_step(backends: dict, action) -> threading.Thread:
    """Run ``action`` once the canary gets the first step's real requests."""
    start = backends["v2"].count

    def watch() -> None:
        import time

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if backends["v2"].count >= start + 5:
                action()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _stored_backends(sandbox: dict, namespace: str) -> list:
    route = json.loads(kubectl(sandbox, "get", "httproute", "http-lb", "-n", namespace, "-o", "json"))
    return [(r["name"], r["weight"]) for r in route["spec"]["rules"][0]["backendRefs"]]


def _component_pid(sandbox: dict, component: str) -> int:
    from xci_cn.sandbox.cluster import Sandbox

    return Sandbox(sandbox["name"]).running_components()[component]


def test_a_killed_canary_backend_is_seen_by_the_analysis_and_rolled_back(simulated_sandbox: dict, tmp_path: Path,
                                                                        backends: dict) -> None:
    manifests, namespace = graph(tmp_path, backends)
    killed = {}

    def kill() -> None:  # the canary's server goes away: connections are refused
        killed["port"] = backends["v2"].port
        backends["v2"].kill()

    watcher = _during_first_step(backends, kill)
    try:
        code, summary, out = run_on_sandbox(tmp_path, simulated_sandbox, canary_stages(manifests, namespace))
    finally:
        watcher.join(timeout=5)
        if killed:  # a new v2 for the tests after this one
            backends["v2"] = VersionServer(backends["v1"].server.server_address[0], "v2")
    assert killed and code == 1, out
    deploy = stage(summary, "deploy")
    assert "canary v2 rolled back at step 1 (25%): analysis Failed:" in deploy["error"], deploy["error"]
    assert deploy["outputs"]["traffic"]["codes"].get("502", 0) > 0
    assert _stored_backends(simulated_sandbox, namespace) == [("http-lb-v1", 100)]


def test_prometheus_gone_ends_in_an_error_verdict_after_its_limit(simulated_sandbox: dict, tmp_path: Path,
                                                                  backends: dict) -> None:
    import signal

    manifests, namespace = graph(tmp_path, backends)
    pid = _component_pid(simulated_sandbox, "prometheus")
    analysis = ANALYSIS.replace("count: 2", "count: 4\n        error_limit: 2")
    watcher = _during_first_step(backends, lambda: os.kill(pid, signal.SIGSTOP))
    try:
        code, summary, out = run_on_sandbox(tmp_path, simulated_sandbox, canary_stages(manifests, namespace, analysis))
    finally:
        watcher.join(timeout=5)
        os.kill(pid, signal.SIGCONT)
    assert code == 1, out
    error = stage(summary, "deploy")["error"]
    assert "analysis Error: 2 measurements in a row could not be taken: success: Prometheus " in error, error
    assert "unreachable: ReadTimeout" in error and "read-back: v1 has 100%" in error
    assert _stored_backends(simulated_sandbox, namespace) == [("http-lb-v1", 100)]


def test_the_proxy_stopped_for_5s_leaves_no_data_and_the_policy_decides(simulated_sandbox: dict, tmp_path: Path,
                                                                       backends: dict) -> None:
    import signal
    import time

    manifests, namespace = graph(tmp_path, backends)
    pid = _component_pid(simulated_sandbox, "traefik")

    def pause_proxy() -> None:
        os.kill(pid, signal.SIGSTOP)
        time.sleep(5)
        os.kill(pid, signal.SIGCONT)

    analysis = ANALYSIS.replace("window: 6s", "window: 3s")
    watcher = _during_first_step(backends, pause_proxy)
    try:
        code, summary, out = run_on_sandbox(tmp_path, simulated_sandbox, canary_stages(manifests, namespace, analysis))
    finally:
        watcher.join(timeout=15)
        os.kill(pid, signal.SIGCONT)
    assert code == 1, out
    error = stage(summary, "deploy")["error"]
    assert "canary v2 rolled back at step 1 (25%): analysis Failed: " in error
    assert "success of v2: no data (policy: fail)" in error, error
    assert _stored_backends(simulated_sandbox, namespace) == [("http-lb-v1", 100)]
