"""Traffic routing through the Kubernetes Gateway API: the weights of an
HTTPRoute's ``backendRefs``, one Service per version (``http-lb-v1``,
``http-lb-v2``), read back from what the API server stores.

The same interface as the Istio router (``xci_cn.k8s.istio.Router``), so the
strategies, promote/rollback and ``xci-cn rollout`` drive either. The rollout
state lives in an annotation on the HTTPRoute. Mirroring uses the standard
``RequestMirror`` filter; implementations that do not serve it (Traefik
answers such a rule with 500) are refused at pre-flight, by their
GatewayClass's controller name.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from xci_cn.errors import InvalidInput, PermanentError
from xci_cn.k8s.istio import ROLLOUT_MANAGER, STATE_ANNOTATION, RolloutState, RolloutTarget, Router, scale_version
from xci_cn.k8s.resources import ResourceInfo, Resources

GROUP = "gateway.networking.k8s.io"
API_VERSION = f"{GROUP}/v1"
# Controllers known not to implement HTTPRoute's RequestMirror filter.
NO_MIRROR = {"traefik.io/gateway-controller": "Traefik"}


@dataclass
class GatewayTarget(RolloutTarget):
    """A rollout target routed by an HTTPRoute instead of a VirtualService."""

    route: str = ""  # HTTPRoute name (default: service)
    backends: dict[str, str] = field(default_factory=dict)  # version -> Service

    @classmethod
    def of_route(cls, namespace: str, service: str, route: str | None = None,
                 backends: dict[str, str] | None = None, app: str | None = None) -> GatewayTarget:
        return cls(namespace, service, f"{service}.{namespace}.svc.cluster.local", app or service,
                   route or service, dict(backends or {}))

    def backend(self, version: str) -> str:
        """The Service that serves ``version`` (default ``<service>-<version>``)."""
        return self.backends.get(version) or f"{self.service}-{version}"


def _is_service(ref: dict[str, Any]) -> bool:
    return ref.get("group", "") in ("", "core") and ref.get("kind", "Service") == "Service"


class GatewayRouter:
    """Reads and writes one target's HTTPRoute."""

    kind = "HTTPRoute"

    def __init__(self, resources: Resources, target: GatewayTarget):
        self.resources = resources
        self.target = target
        self.route_info = self._info("HTTPRoute")
        self.name = f"HTTPRoute {target.namespace}/{target.route}"

    def _info(self, kind: str, api_version: str = API_VERSION) -> ResourceInfo:
        info = self.resources.lookup(api_version, kind)
        if info is not None:
            return info
        served = [v for v in ("v1beta1", "v1alpha2") if self.resources.lookup(f"{GROUP}/{v}", kind)]
        also = f" (it serves only {', '.join(served)})" if served else ""
        raise InvalidInput(f"the cluster does not serve {kind} ({api_version}){also}: install the Gateway "
                           "API CRDs, standard channel, v1.0 or newer")

    # -- reading --------------------------------------------------------------
    def route(self) -> dict[str, Any]:
        obj = self.resources.get(self.route_info, self.target.route, self.target.namespace)
        if obj is None:
            raise InvalidInput(f"{self.name} does not exist: the service graph must define it "
                               f"(router gateway-api routes {self.target.service} through it)")
        return obj

    def state(self) -> RolloutState | None:
        raw = (self.route()["metadata"].get("annotations") or {}).get(STATE_ANNOTATION)
        return RolloutState.from_dict(json.loads(raw)) if raw else None

    def version_of(self, backend: str) -> str | None:
        """The version a backend Service serves: named in ``backends``, else
        ``<service>-<version>``."""
        for version, name in self.target.backends.items():
            if name == backend:
                return version
        prefix = f"{self.target.service}-"
        return backend[len(prefix):] if backend.startswith(prefix) and len(backend) > len(prefix) else None

    def our_rules(self, route: dict[str, Any], versions: set[str] | None = None
                  ) -> list[tuple[int, dict[str, Any]]]:
        """(index, rule) of the rules that send traffic to a version's Service
        (of ``versions`` when given). A rule that also sends traffic elsewhere
        is refused: its weights could not add up to the shares asked for."""
        wanted = {self.target.backend(v) for v in versions} if versions else None
        out = []
        for index, rule in enumerate((route.get("spec") or {}).get("rules") or []):
            refs = rule.get("backendRefs") or []
            # Another version of the service without traffic (weight 0) is dropped
            # from the rule; one with traffic is not the rollout's to take away.
            ours = [r for r in refs if _is_service(r) and (
                self.version_of(r.get("name", "")) if wanted is None
                else r.get("name") in wanted or (self.version_of(r.get("name", "")) and r.get("weight") == 0))]
            if not ours:
                continue
            others = [r.get("name", "?") for r in refs if r not in ours]
            if others:
                names = ", ".join(sorted(wanted)) if wanted else f"{self.target.service}-<version>"
                raise InvalidInput(
                    f"{self.name} rule {index} also sends traffic to {', '.join(others)}, which is not "
                    f"a version of {self.target.service} ({names}): the rollout sets the weights of "
                    "whole rules; give those backends a rule of their own")
            out.append((index, rule))
        return out

    def rule_weights(self, rule: dict[str, Any]) -> dict[str, int]:
        """Version -> percent of a rule's traffic (weights default to 1 and
        count relative to their sum, as the Gateway API says)."""
        refs = rule.get("backendRefs") or []
        total = sum(int(r.get("weight", 1)) for r in refs)
        out: dict[str, int] = {}
        for ref in refs:
            version = self.version_of(ref["name"]) or ref["name"]
            share = round(100 * int(ref.get("weight", 1)) / total) if total else 0
            out[version] = out.get(version, 0) + share
        return out

    def weights(self, route: dict[str, Any] | None = None) -> dict[str, int]:
        """Version -> percent in the first rule that routes to the versions
        (every rule the rollout touches holds the same weights)."""
        rules = self.our_rules(route or self.route())
        return self.rule_weights(rules[0][1]) if rules else {}

    # -- pre-flight -----------------------------------------------------------
    def require_subsets(self, *versions: str, mirror: bool = False) -> None:
        """Pre-flight: the route, its parent Gateways and every backend
        Service exist; the versions' Services are routed by at least one rule."""
        route = self.route()
        problems = []
        gateway_info = self._info("Gateway")
        controllers = []
        for parent in (route.get("spec") or {}).get("parentRefs") or []:
            if parent.get("kind", "Gateway") != "Gateway":
                continue
            namespace = parent.get("namespace") or self.target.namespace
            gateway = self.resources.get(gateway_info, parent["name"], namespace)
            if gateway is None:
                problems.append(f"its parent Gateway {namespace}/{parent['name']} does not exist")
                continue
            controllers.append(self._controller(gateway))
        service_info = self.resources.lookup("v1", "Service")
        assert service_info is not None
        wanted = {self.target.backend(v): v for v in versions}
        named = set(wanted)
        for rule in (route.get("spec") or {}).get("rules") or []:
            named |= {r["name"] for r in rule.get("backendRefs") or [] if _is_service(r) and r.get("name")}
        for name in sorted(named):
            if self.resources.get(service_info, name, self.target.namespace) is None:
                which = f" (version {wanted[name]})" if name in wanted else ""
                problems.append(f"backendRef Service {self.target.namespace}/{name}{which} does not exist")
        if problems:
            raise InvalidInput(f"{self.name}: " + "; ".join(problems))
        if not self.our_rules(route, set(versions)):
            raise InvalidInput(f"{self.name} has no rule with a backendRef to "
                               f"{' or '.join(sorted(wanted))}")
        unsupported = sorted({NO_MIRROR[c] for c in controllers if c in NO_MIRROR})
        if mirror and unsupported:
            raise InvalidInput(f"{self.name}: mirror is not available: {', '.join(unsupported)} does not "
                               "implement the Gateway API RequestMirror filter (it answers such a rule "
                               "with 500); drop `mirror` or use an implementation that has it (Istio)")

    def _controller(self, gateway: dict[str, Any]) -> str:
        class_name = (gateway.get("spec") or {}).get("gatewayClassName", "")
        info = self._info("GatewayClass")
        gateway_class = self.resources.get(info, class_name, None) if class_name else None
        return ((gateway_class or {}).get("spec") or {}).get("controllerName", "")

    # -- writing --------------------------------------------------------------
    def set_weights(self, weights: dict[str, int], state: RolloutState,
                    mirror: tuple[str, float] | None = None) -> dict[str, Any]:
        """Set ``weights`` (version -> percent) in every rule that routes to
        the versions; store ``state``. One server-side apply."""
        if sum(weights.values()) != 100:
            raise PermanentError(f"route weights {weights} do not sum to 100")
        route = self.route()
        # Every version this rollout has routed to (a promotion drops the old stable).
        versions = {v for v in (*weights, state.stable, state.canary) if v}
        versions |= {v for step in state.steps for v in step.get("weights") or {}}
        spec = copy.deepcopy(route.get("spec") or {})
        rules = spec.get("rules") or []
        touched = self.our_rules({"spec": spec}, versions)
        if not touched:
            raise InvalidInput(f"{self.name} has no rule with a backendRef to "
                               f"{' or '.join(sorted(self.target.backend(v) for v in versions))}")
        for index, rule in touched:
            template = {k: v for k, v in rule["backendRefs"][0].items() if k not in ("name", "weight")}
            rule["backendRefs"] = [{**template, "name": self.target.backend(version), "weight": weight}
                                   for version, weight in weights.items()]
            filters = [f for f in rule.get("filters") or [] if f.get("type") != "RequestMirror"]
            if mirror is not None:
                filters.append({"type": "RequestMirror", "requestMirror": {
                    "backendRef": {**template, "name": self.target.backend(mirror[0])},
                    "percent": int(round(mirror[1]))}})
            if filters:
                rule["filters"] = filters
            else:
                rule.pop("filters", None)
            rules[index] = rule
        annotations = dict(route["metadata"].get("annotations") or {})
        annotations[STATE_ANNOTATION] = json.dumps(state.as_dict(), separators=(",", ":"))
        body = {"apiVersion": route["apiVersion"], "kind": route["kind"],
                "metadata": {"name": route["metadata"]["name"], "namespace": route["metadata"]["namespace"],
                             "annotations": annotations},
                "spec": spec}
        return self.resources.apply(self.route_info, body, field_manager=ROLLOUT_MANAGER, what=f"routing {self.name}")

    def scale_version(self, version: str, replicas: int) -> list[str]:
        """Scale the Deployments of ``app``/``version``: the same as for Istio."""
        return scale_version(self.resources, self.target, version, replicas)

    def read_back_problems(self, stable: str) -> list[str]:
        """What is wrong with the STORED HTTPRoute if the stable version does
        not get all traffic, in every rule the rollout touches. Tools often
        leave routing wrong after an abort; this reads what the server holds."""
        route = self.route()
        stable_backend = self.target.backend(stable)
        problems = []
        rules = self.our_rules(route)
        if not rules:
            problems.append(f"no rule routes to {stable_backend}")
        for index, rule in rules:
            shares = self.rule_weights(rule)
            if shares.get(stable, 0) != 100:
                problems.append(f"rule {index}: stable {stable_backend} has {shares.get(stable, 0)}%, not 100 "
                                f"(stored shares: {shares})")
            for mirror in rule.get("filters") or []:
                if mirror.get("type") == "RequestMirror":
                    target = ((mirror.get("requestMirror") or {}).get("backendRef") or {}).get("name")
                    if target != stable_backend:
                        problems.append(f"rule {index} still mirrors to {target}")
        return [f"{self.name}: {p}" for p in problems]


def open_router(resources: Resources, target: RolloutTarget) -> Router | GatewayRouter:
    """The router for ``target``: an HTTPRoute for a GatewayTarget, else Istio's."""
    if isinstance(target, GatewayTarget):
        return GatewayRouter(resources, target)
    return Router(resources, target)


def rollout_target(router: str, namespace: str, service: str, host: str | None = None,
                   app: str | None = None, route: str | None = None,
                   backends: dict[str, str] | None = None) -> RolloutTarget:
    """The RolloutTarget (istio) or GatewayTarget (gateway-api) of a service."""
    if router == "gateway-api":
        return GatewayTarget.of_route(namespace, service, route, backends, app)
    return RolloutTarget.of(namespace, service, host, app)
