"""Real services for the verification tests: a Prometheus server (the Debian
package) on a loopback port, scraping every second an exporter the tests
control, which serves Istio's request metrics for two versions as a mesh
would; and small HTTP servers that answer as version v1 or v2."""

from __future__ import annotations

import http.server
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

LABELS = ("reporter", "destination_service_name", "destination_workload_namespace", "destination_version")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Profile:
    """What one version's traffic looks like right now."""

    rps: float = 40.0  # requests per second; 0 = no traffic, no metrics
    error_ratio: float = 0.0  # share answered 503
    latency_ms: float = 20.0


class MeshTraffic:
    """Simulates the destination-side Istio metrics of services' versions.
    Each test uses a service of its own, so one test's bad canary never
    lingers in another's rate() window."""

    def __init__(self, namespace: str = "sdc"):
        self.namespace = namespace
        self.registry = CollectorRegistry()
        self.requests = Counter("istio_requests_total", "requests", [*LABELS, "response_code"],
                                registry=self.registry)
        self.duration = Histogram("istio_request_duration_milliseconds", "latency", LABELS,
                                  buckets=(5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
                                  registry=self.registry)
        self.profiles: dict[tuple[str, str], Profile] = {}
        self._lock = threading.Lock()
        self.port = free_port()
        self._stop = threading.Event()
        self._server = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add(self, service: str, **versions: Profile) -> None:
        with self._lock:
            for version, profile in (versions or {"v1": Profile(), "v2": Profile()}).items():
                self.profiles[(service, version)] = profile

    def set(self, service: str, version: str, **changes: float) -> float:
        """Change a version's traffic; returns the moment it changed."""
        with self._lock:
            profile = self.profiles[(service, version)]
            for key, value in changes.items():
                setattr(profile, key, value)
        return time.monotonic()

    def _run(self) -> None:
        tick = 0.05
        rng = random.Random(7)
        while not self._stop.wait(tick):
            with self._lock:
                items = list(self.profiles.items())
            for (service, version), profile in items:
                count = profile.rps * tick
                whole = int(count) + (1 if rng.random() < count - int(count) else 0)
                labels = ("destination", service, self.namespace, version)
                for _ in range(whole):
                    failed = rng.random() < profile.error_ratio
                    self.requests.labels(*labels, "503" if failed else "200").inc()
                    self.duration.labels(*labels).observe(profile.latency_ms * rng.uniform(0.8, 1.2))

    def start(self) -> None:
        self._server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class PrometheusServer:
    """The real Prometheus, scraping ``targets`` every second."""

    def __init__(self, workdir: Path, targets: list[str]):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: mesh\n"
            f"    static_configs: [{{targets: [{', '.join(repr(t) for t in targets)}]}}]\n")
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed: run tools/bootstrap.sh --system "
                               "(Debian package 'prometheus')")
        self.log = open(workdir / "prometheus.log", "w")
        self.process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(self.workdir / 'prometheus.log').read_text()[-500:]}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("prometheus did not become ready")

    def wait_for_series(self, query: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = requests.get(f"{self.url}/api/v1/query", params={"query": query}, timeout=2).json()
            if body["data"]["result"]:
                return
            time.sleep(0.2)
        raise RuntimeError(f"no data for {query}")

    def stop(self) -> None:
        self.process.terminate()  # by PID: this Popen's process only
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@contextmanager
def version_servers(weights: dict[str, float] | None = None) -> Iterator[dict[str, str]]:
    """HTTP servers answering as v1 and v2 (header x-version and body), plus a
    'mesh' URL that splits requests by ``weights`` as a VirtualService would,
    and a 'flaky' URL that fails its first two requests."""
    weights = weights or {"v1": 50, "v2": 50}
    rng = random.Random(11)
    state = {"flaky": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path
            if path == "/mesh":
                version = rng.choices(list(weights), weights=list(weights.values()))[0]
            elif path == "/flaky":
                state["flaky"] += 1
                if state["flaky"] <= 2:
                    self.send_response(503)
                    self.end_headers()
                    return
                version = "v1"
            else:
                version = path.strip("/") or "v1"
            body = f"hello from http-lb {version}\n".encode()
            self.send_response(200)
            self.send_header("x-version", version)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield {"base": base, "mesh": f"{base}/mesh", "v1": f"{base}/v1", "v2": f"{base}/v2",
               "flaky": f"{base}/flaky"}
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
