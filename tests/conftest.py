"""Shared fixtures. The ``sandbox`` fixture brings up ONE real sandbox (real
kube-apiserver, etcd, controller-manager, scheduler; kwok nodes; Istio CRDs)
for the whole session and tears it down at the end. Tests that need a
cluster use it; none are skipped."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SESSION_SANDBOX = "xci-cn-tests"


@pytest.fixture(scope="session", autouse=True)
def isolated_sandbox_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Sandboxes made by the tests live in a temporary home, never the user's."""
    home = tmp_path_factory.mktemp("sandboxes")
    previous = os.environ.get("XCI_CN_SANDBOX_HOME")
    os.environ["XCI_CN_SANDBOX_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("XCI_CN_SANDBOX_HOME", None)
    else:
        os.environ["XCI_CN_SANDBOX_HOME"] = previous


@pytest.fixture(scope="session")
def sandbox(isolated_sandbox_home: Path) -> Iterator[dict]:
    """A running sandbox (flavor mini) shared by the integration tests:
    ``{"name", "kubeconfig", "api_url"}``."""
    from xci_cn.sandbox import cluster

    result = cluster.up(SESSION_SANDBOX, "mini", istio=True)
    try:
        yield {"name": SESSION_SANDBOX, "kubeconfig": result.sandbox.kubeconfig,
               "api_url": result.api_url}
    finally:
        cluster.down(SESSION_SANDBOX, missing_ok=True)


@pytest.fixture(scope="session")
def mesh_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """(MeshTraffic, PrometheusServer): simulated Istio metrics (namespace
    sdc), scraped every second by a real Prometheus on a loopback port."""
    from tests.meshmetrics import MeshTraffic, PrometheusServer

    traffic = MeshTraffic()
    traffic.add("warm-up")
    traffic.start()
    prometheus = PrometheusServer(tmp_path_factory.mktemp("prometheus"), [f"127.0.0.1:{traffic.port}"])
    try:
        prometheus.wait_ready()
        prometheus.wait_for_series('istio_requests_total{destination_service_name="warm-up"}')
        yield traffic, prometheus
    finally:
        prometheus.stop()
        traffic.stop()


@pytest.fixture
def mesh_service(mesh_metrics: tuple, request: pytest.FixtureRequest) -> tuple:
    """A service of this test's own with healthy v1 and v2 traffic, already
    in Prometheus with enough samples for rate() over 5 s:
    (service name, MeshTraffic, PrometheusServer)."""
    traffic, prometheus = mesh_metrics
    service = "svc-" + request.node.name.replace("_", "-").replace("[", "-").strip("]")[:40].lower()
    traffic.add(service)
    prometheus.wait_for_series(f'istio_requests_total{{destination_service_name="{service}",'
                               'destination_version="v2"}')
    time.sleep(3)  # enough scrapes for rate() over a 5 s window
    return service, traffic, prometheus
