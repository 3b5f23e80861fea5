"""Shared fixtures. The ``sandbox`` fixture brings up ONE real sandbox (real
kube-apiserver, etcd, controller-manager, scheduler; kwok nodes; Istio CRDs)
for the whole session and tears it down at the end. Tests that need a
cluster use it; none are skipped."""

from __future__ import annotations

import os
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
