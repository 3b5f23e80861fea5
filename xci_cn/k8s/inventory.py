"""What a cluster holds, read through ``Resources`` as plain JSON: its nodes
(roles, Ready) and Istio's CRDs (Established). The provision stage, the
platform checks and ``xci-cn sandbox status`` share these, so "Istio CRDs
Established" means the same everywhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xci_cn.k8s.health import HEALTHY, assess
from xci_cn.k8s.resources import Resources

ISTIO_NAMESPACE = "istio-system"


def _items(resources: Resources, api_version: str, kind: str) -> list[dict[str, Any]]:
    info = resources.lookup(api_version, kind)
    assert info is not None, f"{kind} is a built-in kind"
    return [{**item, "apiVersion": api_version, "kind": kind}
            for item in resources.list(info, None).get("items", [])]


def _condition(obj: dict[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


def nodes(resources: Resources) -> list[dict[str, Any]]:
    """``[{"name", "roles", "type", "ready"}]`` for every node (type: the
    sandbox's ``type`` label, ``kwok`` for simulated nodes)."""
    out = []
    for node in _items(resources, "v1", "Node"):
        labels = node["metadata"].get("labels") or {}
        roles = sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))
        out.append({"name": node["metadata"]["name"], "roles": roles, "type": labels.get("type", ""),
                    "ready": _condition(node, "Ready")})
    return out


def istio_crds(resources: Resources) -> list[dict[str, Any]]:
    """``[{"name", "established"}]`` for every CRD of an ``*.istio.io`` group."""
    return _crds(resources, lambda group: group.endswith("istio.io"))


def gateway_api_crds(resources: Resources) -> list[dict[str, Any]]:
    """``[{"name", "established"}]`` for every CRD of the Gateway API."""
    return _crds(resources, lambda group: group == "gateway.networking.k8s.io")


def _crds(resources: Resources, wanted: Callable[[str], bool]) -> list[dict[str, Any]]:
    return [{"name": crd["metadata"]["name"], "established": assess(crd).status == HEALTHY}
            for crd in _items(resources, "apiextensions.k8s.io/v1", "CustomResourceDefinition")
            if wanted((crd.get("spec") or {}).get("group", ""))]


def istio_crds_verdict(crds: list[dict[str, Any]]) -> tuple[bool, str]:
    """The "Istio CRDs Established" check: there are some, and all are."""
    established = sum(c["established"] for c in crds)
    return bool(crds) and established == len(crds), f"{established}/{len(crds)} Istio CRDs Established"


def has_namespace(resources: Resources, name: str) -> bool:
    info = resources.lookup("v1", "Namespace")
    assert info is not None
    return resources.get(info, name, None) is not None
