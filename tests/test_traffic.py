"""The load generator (vegeta sends at the asked rate and records what came
back) and the stopping of the sandbox's proxy, Prometheus and pod discovery.
That Traefik serves the Gateway and Prometheus scrapes it is the first test
of test_gateway_router.py; that Prometheus scrapes annotated pods is in
test_pod_metrics.py."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.helpers import cli, write_scenario
from tests.meshmetrics import version_servers
from xci_cn.sandbox.binaries import cached_tool
from xci_cn.verify.load import MAX_RATE, Load, TrafficSpec


def test_load_generator_sends_the_asked_rate_and_records_the_answers(tmp_path: Path) -> None:
    with version_servers({"v1": 80, "v2": 20}) as urls:
        spec = TrafficSpec(url=urls["base"], path="/mesh", rate=100, duration=3)
        load = Load(cached_tool("vegeta"), spec, None, tmp_path).start()
        load.process.wait(timeout=30)
        record = load.stop()
    assert 290 <= record.requests <= 301, record.as_dict()
    assert abs(record.rate_sent - 100) <= 5 and record.shortfall is None
    assert record.codes == {"200": record.requests}
    assert set(record.versions) == {"v1", "v2"} and sum(record.versions.values()) == record.requests
    assert 0.7 <= record.versions["v1"] / record.requests <= 0.9
    assert 0 < record.latency_ms["p50"] <= record.latency_ms["p99"] <= record.latency_ms["max"]
    assert [b["t"] for b in record.per_second] == [0, 1, 2]
    assert sum(b["requests"] for b in record.per_second) == record.requests


@contextmanager
def _server(delay: float = 0, codes: list[int] | None = None) -> Iterator[str]:
    """A server on loopback that answers after ``delay`` with ``codes`` in
    turn, then 200."""
    left = list(codes or [])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(delay)
            self.send_response(left.pop(0) if left else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_load_waits_until_its_url_answers_without_gateway_errors(tmp_path: Path) -> None:
    """A gateway error (an upstream not routed yet) starts the count again;
    the application's own answers, 500 included, count."""
    with _server(codes=[200, 502, 500, 503, 200, 504]) as url:
        load = Load(cached_tool("vegeta"), TrafficSpec(url=url), None, tmp_path)
        slept: list[float] = []
        assert load.wait_answering(slept.append, in_a_row=10) is not None
        # answered, reset (502), answered (500), reset (503), answered, reset (504), then 10 answers
        assert len(slept) == 6 + 9
    with _server(codes=[502] * 10_000) as url:
        load = Load(cached_tool("vegeta"), TrafficSpec(url=url), None, tmp_path)
        started = time.monotonic()
        assert load.wait_answering(time.sleep, within=0.5) is None
        assert time.monotonic() - started < 2


def test_a_rate_that_cannot_be_sent_is_reported_not_hidden(tmp_path: Path) -> None:
    # Two requests in flight at 200 ms each: at most 10/s of the 50/s asked.
    with _server(delay=0.2) as url:
        spec = TrafficSpec(url=url, rate=50, duration=3, max_in_flight=2)
        load = Load(cached_tool("vegeta"), spec, None, tmp_path).start()
        load.process.wait(timeout=30)
        record = load.stop()
    assert record.rate_sent < 15, record.as_dict()
    assert record.shortfall == (f"traffic: asked 50/s, the load generator sent {record.rate_sent:.0f}/s on "
                                "this machine; lower `rate`")


def test_a_rate_above_the_ceiling_is_refused_when_the_scenario_loads(tmp_path: Path) -> None:
    write_scenario(tmp_path, f"""name: t
installer: existing
stages:
  - name: verify
    type: verify
    with:
      checks: [{{type: http, url: "http://127.0.0.1:1/"}}]
      traffic: {{rate: {MAX_RATE * 10}}}
""", "s.yaml")
    proc = cli("validate", "s.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"xci-cn: s.yaml:8:17: stages[0].with.traffic.rate: input should be less than or equal to "
                     f"{MAX_RATE} (got {MAX_RATE * 10})",
                     f"          traffic: {{rate: {MAX_RATE * 10}}}",
                     "                    ^"], proc.stderr


def test_down_stops_the_proxy_prometheus_and_the_pod_discovery_by_their_pids(simulated_sandbox: dict) -> None:
    """The proxy names its sandbox only in its environment, not its arguments:
    down must stop it by the PID (and binary) it recorded."""
    from xci_cn.sandbox import cluster

    cluster.up("leaks", "aio", pods="simulated")
    leaks = cluster.Sandbox("leaks")
    started = {c: p for c, p in leaks.running_components().items() if c in ("traefik", "prometheus", "pod-sd")}
    assert set(started) == {"traefik", "prometheus", "pod-sd"}
    # The pod discovery lists pods with kwok's client certificate (none asks here).
    health = f"http://127.0.0.1:{leaks.info()['pod_sd_port']}/healthz"
    deadline = time.monotonic() + 10
    while (answer := requests.get(health, timeout=5)).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (answer.status_code, answer.text.split(",")[0]) == (200, "ok: 0 targets"), answer.text
    cluster.down("leaks")
    assert [c for c, p in started.items() if cluster.pid_alive(p)] == []
