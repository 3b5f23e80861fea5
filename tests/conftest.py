"""Shared fixtures. The ``sandbox`` fixture brings up ONE real sandbox (real
kube-apiserver, etcd, controller-manager, scheduler; a real node running
real pods, kwok nodes; Istio CRDs) for the whole session and tears it down
at the end. Tests that need a cluster use it; none are skipped.

Real nodes run in network namespaces of their own, so tests bring up real
sandboxes of their own beside the session's. A test that compares the whole
host before and after asks for ``session_sandbox_down``, which takes the
session sandbox down; the next test that needs ``sandbox`` brings it back
(same name, same kubeconfig path)."""

from __future__ import annotations

import os
import subprocess
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


@pytest.fixture(autouse=True)
def delete_sdc_namespaces(isolated_sandbox_home: Path) -> Iterator[None]:
    """The namespaces a test made with ``sdc_copy`` go when it ends, from
    whichever running sandbox holds them (without waiting: the real node
    stops their pods while the next test runs)."""
    from tests.helpers import SDC_NAMESPACES, kubectl

    SDC_NAMESPACES.clear()
    yield
    if not SDC_NAMESPACES:
        return
    from xci_cn.sandbox import cluster

    for name in cluster.list_sandboxes():
        running = cluster.Sandbox(name)
        if not running.is_up():
            continue
        try:
            kubectl({"kubeconfig": running.kubeconfig}, "delete", "namespace", "--ignore-not-found",
                    "--wait=false", *SDC_NAMESPACES)
        except subprocess.CalledProcessError:
            pass  # a sandbox whose API server a fault test stopped: it goes down with its namespaces
    SDC_NAMESPACES.clear()


@pytest.fixture(scope="session")
def session_sandbox(isolated_sandbox_home: Path) -> Iterator[None]:
    """Removes the session sandbox at the end of the session."""
    from xci_cn.sandbox import cluster

    yield
    cluster.down(SESSION_SANDBOX, missing_ok=True)


@pytest.fixture
def sandbox(session_sandbox: None) -> dict:
    """A running sandbox (flavor mini, real pods) shared by the integration
    tests: ``{"name", "kubeconfig", "api_url"}``."""
    from xci_cn.sandbox import cluster

    if not cluster.Sandbox(SESSION_SANDBOX).is_up():
        cluster.up(SESSION_SANDBOX, "mini", istio=True)
    running = cluster.Sandbox(SESSION_SANDBOX)
    return {"name": SESSION_SANDBOX, "kubeconfig": running.kubeconfig, "api_url": running.api_url()}


@pytest.fixture(scope="session")
def simulated_sandbox(isolated_sandbox_home: Path) -> Iterator[dict]:
    """A sandbox with kwok-simulated pods, for the tests that need no real
    node: data-plane tests whose backends are servers of the
    tests (the proxy, Prometheus and the Gateway API run without it), and
    real-world samples whose images cannot be had here (Istio's bookinfo
    pulls from docker.io). ``{"name", "kubeconfig", "api_url"}``."""
    from xci_cn.sandbox import cluster

    name = "xci-cn-gateway"
    result = cluster.up(name, "aio", istio=True, pods="simulated")
    try:
        yield {"name": name, "kubeconfig": result.sandbox.kubeconfig, "api_url": result.api_url}
    finally:
        cluster.down(name, missing_ok=True)


@pytest.fixture
def session_sandbox_down(session_sandbox: None) -> None:
    """The session sandbox down: its node changes nothing on the host while
    it idles, but a test comparing the whole host wants it quiet."""
    from xci_cn.sandbox import cluster

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
