"""``rollout``: promote or roll back the rollout a deploy stage started
(also ``xci-cn rollout promote|rollback|status``)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from xci_cn.pipeline.stage import StageContext, StageOptions, require_kubeconfig

RouterKind = Literal["istio", "gateway-api"]


class RoutingOptions(StageOptions):
    """How traffic moves between versions: the same options on deploy,
    verify and rollout stages."""

    router: RouterKind = Field(default="istio", description=(
        "istio: VirtualService weights over DestinationRule subsets; gateway-api: HTTPRoute backendRefs "
        "weights, one Service per version."))
    route: str | None = Field(default=None, description="HTTPRoute name for router gateway-api "
                                                        "(default: service).")
    backends: dict[str, str] | None = Field(
        default=None, description="Version -> Service for router gateway-api (default <service>-<version>).")


def rollout_target(router: str, namespace: str, service: str, host: str | None = None,
                   app: str | None = None, route: str | None = None,
                   backends: dict[str, str] | None = None) -> Any:
    """The RolloutTarget (istio) or GatewayTarget (gateway-api) of a service."""
    from xci_cn.k8s.gateway import GatewayTarget
    from xci_cn.k8s.istio import RolloutTarget

    if router == "gateway-api":
        return GatewayTarget.of_route(namespace, service, route, backends, app)
    return RolloutTarget.of(namespace, service, host, app)


class RolloutOptions(RoutingOptions):
    action: Literal["promote", "rollback", "status"] = Field(description="What to do.")
    namespace: str = Field(description="Namespace of the VirtualService or HTTPRoute.")
    service: str = Field(description="VirtualService/DestinationRule name (istio); the versions' "
                                     "Services are <service>-<version> (gateway-api).")
    host: str | None = Field(default=None,
                             description="Route host (default <service>.<ns>.svc.cluster.local).")
    app: str | None = Field(default=None, description="`app` label of the versions (default: service).")


def run_rollout(kubeconfig: str, action: str, namespace: str, service: str, host: str | None = None,
                app: str | None = None, reason: str = "", router: str = "istio", route: str | None = None,
                backends: dict[str, str] | None = None) -> dict[str, Any]:
    from xci_cn.k8s.client import connect
    from xci_cn.k8s.gateway import open_router
    from xci_cn.k8s.resources import Resources
    from xci_cn.k8s.strategies import lifecycle

    cluster = connect(kubeconfig)
    try:
        router_ = open_router(Resources(cluster),
                              rollout_target(router, namespace, service, host, app, route, backends))
        if action == "promote":
            return lifecycle.promote(router_)
        if action == "rollback":
            return lifecycle.rollback(router_, reason or "requested")
        return lifecycle.status(router_)
    finally:
        cluster.close()


class RolloutStage:
    name: ClassVar[str] = "rollout"
    options_model: ClassVar[type[StageOptions]] = RolloutOptions

    def run(self, ctx: StageContext, options: RolloutOptions) -> dict[str, Any]:
        kubeconfig = require_kubeconfig(ctx)
        result = run_rollout(kubeconfig, options.action, options.namespace, options.service, options.host,
                             options.app, reason=f"stage {ctx.stage}", router=options.router,
                             route=options.route, backends=options.backends)
        if options.action == "rollback":
            ctx.check(f"read-back {options.service}: stable has 100%", True,
                      f"stored weights {result['read_back']['weights']}")
        return result
