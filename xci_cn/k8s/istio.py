"""Traffic routing through Istio objects: read and set the route weights of a
VirtualService for one host, scale a version, and read back what is stored.

The rollout state (strategy, stable and canary versions, phase, step history)
is kept in an annotation on the VirtualService, so ``xci-cn rollout status``
and a resumed run find it in the cluster, not in a local file.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from xci_cn.errors import InvalidInput, PermanentError
from xci_cn.k8s.hosts import same_service
from xci_cn.k8s.resources import ResourceInfo, Resources

ROLLOUT_MANAGER = "xci-cn-rollout"
STATE_ANNOTATION = "xci-cn.opnfv.org/rollout"
VS = ("networking.istio.io/v1", "VirtualService")
DR = ("networking.istio.io/v1", "DestinationRule")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class RolloutTarget:
    """The service whose traffic moves between versions."""

    namespace: str
    service: str  # name of the VirtualService and DestinationRule
    host: str
    app: str  # value of the `app` label of the version's Deployments

    @classmethod
    def of(cls, namespace: str, service: str, host: str | None = None, app: str | None = None
           ) -> RolloutTarget:
        return cls(namespace, service, host or f"{service}.{namespace}.svc.cluster.local", app or service)


@dataclass
class RolloutState:
    strategy: str
    stable: str
    canary: str | None
    phase: str  # progressing | paused | switched | completed | promoted | rolled-back
    steps: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "stable": self.stable, "canary": self.canary,
                "phase": self.phase, "steps": self.steps}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutState:
        return cls(data["strategy"], data["stable"], data.get("canary"), data["phase"],
                   list(data.get("steps", [])))


def route_weights(vs: dict[str, Any], host: str, namespace: str | None = None) -> dict[str, int]:
    """Subset -> weight over every http route of VirtualService ``vs`` to
    ``host`` (of a Service in ``namespace``; short names resolve relative to
    the rule's namespace, as Istio does); a lone destination without a
    weight carries 100."""
    rule_namespace = (vs.get("metadata") or {}).get("namespace") or namespace or ""
    target_namespace = namespace or rule_namespace
    out: dict[str, int] = {}
    for route in (vs.get("spec") or {}).get("http") or []:
        destinations = [d for d in route.get("route") or []
                        if same_service((d.get("destination") or {}).get("host") or "", rule_namespace,
                                        host, target_namespace)]
        for dest in destinations:
            subset = dest["destination"].get("subset", "")
            weight = dest.get("weight", 100 if len(destinations) == 1 else 0)
            out[subset] = out.get(subset, 0) + weight
    return out


class Router:
    """Reads and writes one target's VirtualService/DestinationRule."""

    def __init__(self, resources: Resources, target: RolloutTarget):
        self.resources = resources
        self.target = target
        self.vs_info = self._info(*VS)
        self.dr_info = self._info(*DR)

    def _info(self, api_version: str, kind: str) -> ResourceInfo:
        info = self.resources.lookup(api_version, kind)
        if info is None:
            raise InvalidInput(f"the cluster does not serve {kind} ({api_version}): install Istio's CRDs")
        return info

    def _get(self, info: ResourceInfo) -> dict[str, Any]:
        obj = self.resources.get(info, self.target.service, self.target.namespace)
        if obj is None:
            raise InvalidInput(f"{info.kind} {self.target.namespace}/{self.target.service} does not exist: "
                               "the service graph must define it")
        return obj

    def virtual_service(self) -> dict[str, Any]:
        return self._get(self.vs_info)

    def routes_to_target(self, host: str, vs: dict[str, Any]) -> bool:
        """Does ``host``, written in ``vs``, name the target's Service? A short
        ``reviews`` in namespace bookinfo is reviews.bookinfo.svc.cluster.local."""
        namespace = (vs.get("metadata") or {}).get("namespace") or self.target.namespace
        return same_service(host or "", namespace, self.target.host, self.target.namespace)

    def destination_rule(self) -> dict[str, Any]:
        return self._get(self.dr_info)

    def plan_problems(self, manifests: Any, *versions: str) -> list[str]:
        """Before anything is applied: the VirtualService and DestinationRule
        the rollout moves traffic through exist (in the manifests, or else in
        the cluster), the route reaches the target host, and the subsets of
        ``versions`` are defined."""
        def find(info: ResourceInfo) -> dict[str, Any] | None:
            for manifest in manifests.manifests:
                if manifest.kind == info.kind and manifest.name == self.target.service and \
                        (manifest.namespace or self.target.namespace) == self.target.namespace:
                    return {**manifest.body, "metadata": {**manifest.body["metadata"],
                                                          "namespace": self.target.namespace}}
            return self.resources.get(info, self.target.service, self.target.namespace)

        where = f"{self.target.namespace}/{self.target.service}"
        problems = []
        vs, dr = find(self.vs_info), find(self.dr_info)
        if vs is None:
            problems.append(f"VirtualService {where} is neither in the manifests nor in the cluster: the "
                            "service graph must define it")
        elif not any(self.routes_to_target((d.get("destination") or {}).get("host", ""), vs)
                     for route in (vs.get("spec") or {}).get("http") or [] for d in route.get("route") or []):
            problems.append(f"VirtualService {where} has no http route to {self.target.host}")
        if dr is None:
            problems.append(f"DestinationRule {where} is neither in the manifests nor in the cluster: the "
                            "service graph must define it")
        else:
            subsets = {s.get("name") for s in (dr.get("spec") or {}).get("subsets") or [] if isinstance(s, dict)}
            missing = [v for v in versions if v not in subsets]
            if missing:
                problems.append(f"DestinationRule {where} has no subset {', '.join(missing)} "
                                f"(subsets: {', '.join(sorted(str(s) for s in subsets)) or 'none'})")
        return problems

    def state(self) -> RolloutState | None:
        raw = (self.virtual_service()["metadata"].get("annotations") or {}).get(STATE_ANNOTATION)
        return RolloutState.from_dict(json.loads(raw)) if raw else None

    def weights(self, vs: dict[str, Any] | None = None) -> dict[str, int]:
        """Subset -> weight over every http route to the target host."""
        return route_weights(vs or self.virtual_service(), self.target.host, self.target.namespace)

    def subsets(self) -> set[str]:
        return {s.get("name") for s in (self.destination_rule().get("spec") or {}).get("subsets") or []}

    def require_subsets(self, *versions: str) -> None:
        missing = [v for v in versions if v not in self.subsets()]
        if missing:
            raise InvalidInput(f"DestinationRule {self.target.namespace}/{self.target.service} has no "
                               f"subset {', '.join(missing)} (subsets: {', '.join(sorted(self.subsets()))})")

    def set_weights(self, weights: dict[str, int], state: RolloutState,
                    mirror: tuple[str, float] | None = None) -> dict[str, Any]:
        """Route ``weights`` (subset -> percent) for the target host in every
        http route that sends traffic to it; store ``state``. One write."""
        if sum(weights.values()) != 100:
            raise PermanentError(f"route weights {weights} do not sum to 100")
        vs = self.virtual_service()
        spec = copy.deepcopy(vs.get("spec") or {})
        touched = 0
        for route in spec.get("http") or []:
            others = [d for d in route.get("route") or []
                      if not self.routes_to_target((d.get("destination") or {}).get("host", ""), vs)]
            if len(others) == len(route.get("route") or []):
                continue
            # The route keeps the host as its author wrote it (short or not).
            template = next(d["destination"] for d in route["route"]
                            if self.routes_to_target(d["destination"].get("host", ""), vs))
            ours = [{"destination": {**{k: v for k, v in template.items() if k != "subset"},
                                     "subset": subset}, "weight": weight}
                    for subset, weight in weights.items()]
            route["route"] = others + ours
            route.pop("mirror", None)
            route.pop("mirrorPercentage", None)
            if mirror is not None:
                route["mirror"] = {**{k: v for k, v in template.items() if k != "subset"},
                                   "subset": mirror[0]}
                route["mirrorPercentage"] = {"value": float(mirror[1])}
            touched += 1
        if not touched:
            raise InvalidInput(f"VirtualService {self.target.namespace}/{self.target.service} has no http "
                               f"route to {self.target.host}")
        annotations = dict(vs["metadata"].get("annotations") or {})
        annotations[STATE_ANNOTATION] = json.dumps(state.as_dict(), separators=(",", ":"))
        body = {"apiVersion": vs["apiVersion"], "kind": vs["kind"],
                "metadata": {"name": vs["metadata"]["name"], "namespace": vs["metadata"]["namespace"],
                             "annotations": annotations},
                "spec": spec}
        return self.resources.apply(self.vs_info, body, field_manager=ROLLOUT_MANAGER,
                                    what=f"routing {self.target.host}")

    def scale_version(self, version: str, replicas: int) -> list[str]:
        """Scale the Deployments of ``app``/``version`` (labels) to ``replicas``."""
        return scale_version(self.resources, self.target, version, replicas)

    def read_back_problems(self, stable: str) -> list[str]:
        """What is wrong with the STORED objects, if the stable version does
        not get all traffic. Tools often leave routing wrong after an abort;
        this checks what the API server actually holds."""
        vs = self.virtual_service()
        problems = []
        weights = self.weights(vs)
        if weights.get(stable, 0) != 100:
            problems.append(f"stable subset {stable} has weight {weights.get(stable, 0)}, not 100 "
                            f"(stored weights: {weights})")
        for subset, weight in weights.items():
            if subset != stable and weight:
                problems.append(f"subset {subset} still has weight {weight}")
        for route in (vs.get("spec") or {}).get("http") or []:
            mirror = route.get("mirror") or {}
            if mirror and self.routes_to_target(mirror.get("host", ""), vs) and mirror.get("subset") != stable:
                name = route.get('name', '?')
                problems.append(f"route {name} still mirrors to subset {mirror.get('subset')}")
        if stable not in self.subsets():
            problems.append(f"DestinationRule has no subset {stable}")
        return [f"VirtualService {self.target.namespace}/{self.target.service}: {p}" for p in problems]


def scale_version(resources: Resources, target: RolloutTarget, version: str, replicas: int) -> list[str]:
    """Scale the Deployments of ``target.app``/``version`` (labels) to
    ``replicas``; whichever router moves the traffic."""
    info = resources.lookup("apps/v1", "Deployment")
    assert info is not None
    selector = f"app={target.app},version={version}"
    listing = resources.list(info, target.namespace, label_selector=selector)
    names = []
    for item in listing.get("items", []):
        name = item["metadata"]["name"]
        resources.apply(info, {"apiVersion": "apps/v1", "kind": "Deployment",
                               "metadata": {"name": name, "namespace": target.namespace},
                               "spec": {"replicas": replicas}},
                        field_manager=ROLLOUT_MANAGER, what=f"scaling {selector}")
        names.append(name)
    return names
