"""Mesh configuration checks: what Istio would accept but route wrongly.

Reads the namespace's VirtualServices, DestinationRules, Gateways, Services
and Pods once from the API server, then checks every route:
destination hosts resolve to a Service; every subset used exists in a
DestinationRule whose labels select pods; route weights sum to 100;
referenced gateways exist; no two VirtualServices claim the same host on the
same gateway; mirror targets exist. Each finding names object and field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xci_cn.errors import Forbidden
from xci_cn.k8s.hosts import service_of

if TYPE_CHECKING:  # Finding is used by `validate`, which imports no Kubernetes client
    from xci_cn.k8s.resources import Resources


@dataclass
class Finding:
    check: str  # the JUnit testcase name
    passed: bool
    message: str


@dataclass
class MeshSnapshot:
    namespace: str
    virtual_services: list[dict[str, Any]] = field(default_factory=list)
    destination_rules: list[dict[str, Any]] = field(default_factory=list)
    gateways: set[str] = field(default_factory=set)  # "namespace/name"
    services: set[str] = field(default_factory=set)  # "namespace/name"
    pods: list[dict[str, Any]] = field(default_factory=list)


def snapshot(resources: Resources, namespace: str) -> MeshSnapshot:
    """One read of everything the checks need."""
    snap = MeshSnapshot(namespace)

    def items(api_version: str, kind: str, ns: str | None) -> list[dict[str, Any]]:
        info = resources.lookup(api_version, kind)
        if info is None:
            return []
        try:
            return resources.list(info, ns).get("items", [])
        except Forbidden:
            if ns is not None:
                raise
            # A namespaced identity: what it can see is its own namespace.
            return items(api_version, kind, namespace)

    snap.virtual_services = items("networking.istio.io/v1", "VirtualService", namespace)
    snap.destination_rules = items("networking.istio.io/v1", "DestinationRule", namespace)
    snap.gateways = {f"{g['metadata']['namespace']}/{g['metadata']['name']}"
                     for g in items("networking.istio.io/v1", "Gateway", None)}
    snap.services = {f"{s['metadata']['namespace']}/{s['metadata']['name']}" for s in items("v1", "Service", None)}
    snap.pods = items("v1", "Pod", namespace)
    return snap


def _selects(labels: dict[str, str], pod: dict[str, Any]) -> bool:
    pod_labels = pod["metadata"].get("labels") or {}
    return all(pod_labels.get(k) == v for k, v in labels.items())


def check_mesh(snap: MeshSnapshot) -> list[Finding]:
    findings: list[Finding] = []
    # host -> DestinationRule
    rules: dict[str, dict[str, Any]] = {}
    for rule in snap.destination_rules:
        host = (rule.get("spec") or {}).get("host", "")
        service = service_of(host, snap.namespace)
        rules[service or host] = rule
    claims: dict[tuple[str, str], str] = {}
    for vs in snap.virtual_services:
        name = vs["metadata"]["name"]
        spec = vs.get("spec") or {}
        where = f"VirtualService {snap.namespace}/{name}"
        problems: list[str] = []
        gateways = spec.get("gateways") or ["mesh"]
        for index, gateway in enumerate(gateways):
            if gateway == "mesh":
                continue
            full = gateway if "/" in gateway else f"{snap.namespace}/{gateway}"
            if full not in snap.gateways:
                problems.append(f"spec.gateways[{index}]: gateway {full} does not exist")
        for host in spec.get("hosts") or []:
            for gateway in gateways:
                key = (service_of(host, snap.namespace) or host, gateway)  # 'reviews' is reviews.<ns>.svc…
                if key in claims and claims[key] != name:
                    problems.append(f"spec.hosts: host {host!r} on gateway {gateway} is also claimed by "
                                    f"VirtualService {snap.namespace}/{claims[key]}")
                claims.setdefault(key, name)
        for r_index, route in enumerate(spec.get("http") or []):
            label = f"spec.http[{r_index}]"
            destinations = route.get("route") or []
            if len(destinations) > 1 or any("weight" in d for d in destinations):
                total = sum(d.get("weight", 0) for d in destinations)
                if total != 100:
                    problems.append(f"{label}.route: weights sum to {total}, not 100")
            targets = [(f"{label}.route[{d_index}].destination", d.get("destination") or {},
                        d.get("weight", 100) > 0) for d_index, d in enumerate(destinations)]
            if route.get("mirror"):
                targets.append((f"{label}.mirror", route["mirror"], True))
            for field_path, destination, carries_traffic in targets:
                problems.extend(_destination_problems(snap, rules, field_path, destination, carries_traffic))
        findings.append(Finding(f"mesh {where}", not problems,
                                "; ".join(problems) if problems else "routes resolve, weights sum to 100"))
    return findings


def _destination_problems(snap: MeshSnapshot, rules: dict[str, dict[str, Any]], field_path: str,
                          destination: dict[str, Any], carries_traffic: bool) -> list[str]:
    host = destination.get("host", "")
    service = service_of(host, snap.namespace)
    if service is None:
        return []
    if service not in snap.services:
        return [f"{field_path}.host: {host!r} has no Service {service}"]
    subset = destination.get("subset")
    if not subset:
        return []
    rule = rules.get(service)
    if rule is None:
        return [f"{field_path}.subset: {subset!r} is used but no DestinationRule exists for {host}"]
    subsets = {s.get("name"): s for s in (rule.get("spec") or {}).get("subsets") or []}
    if subset not in subsets:
        return [f"{field_path}.subset: {subset!r} is not defined in DestinationRule "
                f"{snap.namespace}/{rule['metadata']['name']} (subsets: {', '.join(sorted(subsets)) or 'none'})"]
    labels = subsets[subset].get("labels") or {}
    # A subset at weight 0 (e.g. a version scaled down after a rollback) may
    # have no pods; one that receives traffic must.
    local = service.startswith(f"{snap.namespace}/")  # pods of other namespaces were not read
    if carries_traffic and labels and local and not any(_selects(labels, p) for p in snap.pods):
        return [f"{field_path}.subset: {subset!r} selects no pods (labels {labels}) in DestinationRule "
                f"{snap.namespace}/{rule['metadata']['name']}"]
    return []
