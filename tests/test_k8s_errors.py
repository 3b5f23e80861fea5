"""Errors of the Kubernetes client become xci-cn's at the one place requests
are made, and a request's retries end when its attempt is cancelled."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from tests.helpers import unreachable_kubeconfig
from xci_cn.errors import (
    Cancelled,
    Conflict,
    EnvironmentProblem,
    Forbidden,
    InvalidInput,
    NotFound,
    Overloaded,
    PermanentError,
    Rejected,
    RequestFailed,
    TemporaryError,
    Unauthorized,
    Unavailable,
)
from xci_cn.k8s.client import api_error, connect
from xci_cn.k8s.resources import Resources


def answered(status: int, message: str = "", causes: list[dict[str, str]] | None = None) -> ApiException:
    exc = ApiException(status=status, reason="Reason")
    exc.body = json.dumps({"kind": "Status", "message": message, "details": {"causes": causes or []}})
    return exc


DENIED = ('deployments.apps "web" is forbidden: User "system:serviceaccount:ci:deployer" cannot patch '
          'resource "deployments" in API group "apps" in the namespace "sdc"')


@pytest.mark.parametrize(("exc", "kind", "base", "message"), [
    (answered(404, 'deployments.apps "web" not found'), NotFound, PermanentError,
     'reading Deployment sdc/web: not found (404): deployments.apps "web" not found'),
    (answered(409, "the object has been modified"), Conflict, PermanentError,
     "reading Deployment sdc/web: conflict (409): the object has been modified"),
    (answered(403, DENIED), Forbidden, PermanentError, f"reading Deployment sdc/web: forbidden (403): {DENIED}"),
    (answered(422, "Deployment.apps \"web\" is invalid: spec.replicas: Invalid value: -1",
              [{"field": "spec.replicas", "message": "Invalid value: -1"}]), Rejected, InvalidInput,
     'reading Deployment sdc/web: rejected (422): Deployment.apps "web" is invalid: spec.replicas: Invalid value: -1'),
    (answered(500, "failed to create typed patch object: .spec.replicas: expected numeric"), Rejected,
     InvalidInput, "reading Deployment sdc/web: rejected (422): failed to create typed patch object: "
                   ".spec.replicas: expected numeric"),
    (answered(401), Unauthorized, InvalidInput,
     "reading Deployment sdc/web: unauthorized (401): check the kubeconfig's credentials"),
    (answered(503, "etcd is restarting"), Overloaded, TemporaryError,
     "reading Deployment sdc/web: API server answered 503: etcd is restarting"),
    (answered(405, "method not allowed"), RequestFailed, PermanentError,
     "reading Deployment sdc/web: 405 method not allowed"),
    (urllib3.exceptions.NewConnectionError(None, "Connection refused"), Unavailable, EnvironmentProblem,
     "reading Deployment sdc/web: unreachable (NewConnectionError: None: Connection refused)"),
])
def test_api_error(exc: BaseException, kind: type, base: type, message: str) -> None:
    error = api_error(exc, "reading Deployment sdc/web")
    assert type(error) is kind and isinstance(error, base)
    assert str(error) == message
    assert error.what == "reading Deployment sdc/web"  # type: ignore[attr-defined]


def test_a_rejection_names_its_fields() -> None:
    error = api_error(answered(422, "invalid", [{"field": "spec.replicas", "message": "must be >= 0"}]), "x")
    assert error.causes == ({"field": "spec.replicas", "message": "must be >= 0"},)  # type: ignore[attr-defined]


def test_retries_of_an_unreachable_api_server_stop_when_cancelled(tmp_path: Path) -> None:
    cluster = connect(unreachable_kubeconfig(tmp_path))
    cancel = threading.Event()
    resources = Resources(cluster, cancel)
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    try:
        with pytest.raises(Cancelled):
            resources.request("GET", "/api/v1/namespaces")
    finally:
        cluster.close()
    assert time.monotonic() - started < 5  # the retries would go on for 30 s
