"""Generic access to any served resource (core, apps, Istio's CRDs …).

Discovery is per group-version and lazy (``/apis/<group>/<version>``), so a
deploy touches only the groups it uses. Requests go through the official
client's ApiClient (auth, TLS) with server-side apply as the write verb.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kubernetes.watch.watch import iter_resp_lines
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from xci_cn.k8s.client import ApiException, Cluster, is_transient

FIELD_MANAGER = "xci-cn"
# How long one call rides out an API server or etcd that is restarting.
RETRY_SECONDS = 30.0


@dataclass(frozen=True)
class ResourceInfo:
    group_version: str
    kind: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


class Resources:
    """Discovery cache plus the verbs xci-cn uses. Thread-safe."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.api = cluster.api
        self._lock = threading.Lock()
        self._groups: dict[str, dict[str, ResourceInfo] | None] = {}

    # -- discovery -----------------------------------------------------------------------
    def lookup(self, api_version: str, kind: str) -> ResourceInfo | None:
        """The resource for apiVersion/kind, or None when the cluster does not serve it."""
        with self._lock:
            cached = self._groups.get(api_version, ...)
        if cached is ...:
            cached = self._discover(api_version)
            with self._lock:
                self._groups[api_version] = cached
        return (cached or {}).get(kind)

    def forget(self, api_version: str) -> None:
        """Drop a cached group-version (after a CRD for it was installed)."""
        with self._lock:
            self._groups.pop(api_version, None)

    def _discover(self, api_version: str) -> dict[str, ResourceInfo] | None:
        path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if api_version != "v1" and "/" not in api_version:
            return None
        try:
            body = self.request("GET", path)
        except ApiException as exc:
            if exc.status in (404, 503):
                return None
            raise
        kinds = {}
        for item in body.get("resources", []):
            if "/" in item["name"]:  # subresources such as deployments/scale
                continue
            kinds[item["kind"]] = ResourceInfo(api_version, item["kind"], item["name"], item["namespaced"])
        return kinds

    # -- verbs ----------------------------------------------------------------------------
    def request(self, method: str, path: str, *, query: list[tuple[str, Any]] | None = None,
                body: Any = None, content_type: str | None = None, timeout: float = 30) -> Any:
        """One API call; transient failures (API server or etcd restarting,
        connection refused, 503) are retried for up to ``RETRY_SECONDS``.
        Every verb here is idempotent (GET, server-side apply, DELETE)."""
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        for attempt in Retrying(stop=stop_after_delay(RETRY_SECONDS), reraise=True,
                                wait=wait_exponential(multiplier=0.2, max=2),
                                retry=retry_if_exception(is_transient)):
            with attempt:
                return self.api.call_api(
                    path, method, query_params=query or [], header_params=headers, body=body,
                    auth_settings=["BearerToken"], response_type="object", _return_http_data_only=True,
                    _preload_content=True, _request_timeout=timeout)
        raise AssertionError("unreachable")  # Retrying either returns or re-raises

    def pod_log(self, namespace: str, pod: str, container: str, *, previous: bool = False,
                tail_lines: int = 5) -> str:
        """The last lines a container wrote (its previous instance's with ``previous``)."""
        query = [("container", container), ("tailLines", tail_lines), ("previous", str(previous).lower())]
        return self.api.call_api(
            f"/api/v1/namespaces/{namespace}/pods/{pod}/log", "GET", query_params=query,
            header_params={"Accept": "application/json"}, auth_settings=["BearerToken"], response_type="str",
            _return_http_data_only=True, _preload_content=True, _request_timeout=10)

    def get(self, info: ResourceInfo, name: str, namespace: str | None) -> dict[str, Any] | None:
        try:
            return self.request("GET", info.path(namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def apply(self, info: ResourceInfo, body: dict[str, Any], *, dry_run: bool = False,
              field_manager: str = FIELD_MANAGER, force: bool = True) -> dict[str, Any]:
        """Server-side apply of ``body`` (the whole intended object)."""
        meta = body["metadata"]
        query: list[tuple[str, Any]] = [("fieldManager", field_manager)]
        if force:
            query.append(("force", "true"))
        if dry_run:
            query.append(("dryRun", "All"))
        return self.request("PATCH", info.path(meta.get("namespace"), meta["name"]), query=query,
                            body=body, content_type="application/apply-patch+yaml")

    def delete(self, info: ResourceInfo, name: str, namespace: str | None) -> bool:
        try:
            self.request("DELETE", info.path(namespace, name),
                         body={"propagationPolicy": "Background"})
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def list(self, info: ResourceInfo, namespace: str | None, *, label_selector: str | None = None,
             field_selector: str | None = None) -> dict[str, Any]:
        query: list[tuple[str, Any]] = []
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        return self.request("GET", info.path(namespace), query=query)

    def watch(self, info: ResourceInfo, namespace: str | None, resource_version: str,
              timeout_seconds: int) -> Iterator[tuple[str, dict[str, Any]]]:
        """Events after ``resource_version`` until the server ends the watch."""
        query = [("watch", "true"), ("resourceVersion", resource_version),
                 ("timeoutSeconds", max(1, int(timeout_seconds))), ("allowWatchBookmarks", "true")]
        response = self.api.call_api(
            info.path(namespace), "GET", query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"], _return_http_data_only=True, _preload_content=False,
            _request_timeout=timeout_seconds + 10)
        try:
            for line in iter_resp_lines(response):
                if not line:
                    continue
                event = json.loads(line)
                yield event["type"], event["object"]
        finally:
            response.release_conn()
            response.close()
