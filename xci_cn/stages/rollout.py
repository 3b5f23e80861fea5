"""``rollout``: promote or roll back the rollout a deploy stage started
(also ``xci-cn rollout promote|rollback|status``)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from xci_cn.pipeline.stage import StageContext, StageOptions, require_kubeconfig
from xci_cn.stages.common import RoutingOptions


class RolloutOptions(RoutingOptions):
    action: Literal["promote", "rollback", "status"] = Field(description="What to do.")
    namespace: str = Field(description="Namespace of the VirtualService or HTTPRoute.")
    service: str = Field(description="VirtualService/DestinationRule name (istio); the versions' "
                                     "Services are <service>-<version> (gateway-api).")
    host: str | None = Field(default=None,
                             description="Route host (default <service>.<ns>.svc.cluster.local).")
    app: str | None = Field(default=None, description="`app` label of the versions (default: service).")


class RolloutStage:
    name: ClassVar[str] = "rollout"
    options_model: ClassVar[type[StageOptions]] = RolloutOptions

    def run(self, ctx: StageContext, options: RolloutOptions) -> dict[str, Any]:
        from xci_cn.k8s.strategies import lifecycle

        result = lifecycle.run(require_kubeconfig(ctx), options.action, options.namespace, options.service,
                               options.host, options.app, reason=f"stage {ctx.stage}", cancel=ctx.cancel,
                               router=options.router, route=options.route, backends=options.backends)
        if options.action == "rollback":
            ctx.check(f"read-back {options.service}: stable has 100%", True,
                      f"stored weights {result['read_back']['weights']}")
        return result
