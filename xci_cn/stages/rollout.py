"""``rollout``: promote or roll back the rollout a deploy stage started
(also ``xci-cn rollout promote|rollback|status``), of one service or of the
services of a graph canary (``services``, dependencies first)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from xci_cn.errors import PermanentError
from xci_cn.pipeline.stage import StageContext, StageOptions, require_kubeconfig
from xci_cn.stages.common import RoutingOptions


class RolloutOptions(RoutingOptions):
    action: Literal["promote", "rollback", "status"] = Field(description="What to do.")
    namespace: str = Field(description="Namespace of the VirtualService or HTTPRoute.")
    service: str | None = Field(default=None, description="VirtualService/DestinationRule name (istio); the "
                                "versions' Services are <service>-<version> (gateway-api).")
    services: list[str] | None = Field(default=None, min_length=2, description="Instead of `service`: the "
                                       "services of a graph canary, dependencies first; promoted in this "
                                       "order, rolled back in the reverse order, each read back.")
    host: str | None = Field(default=None,
                             description="Route host (default <service>.<ns>.svc.cluster.local).")
    app: str | None = Field(default=None, description="`app` label of the versions (default: service).")

    @model_validator(mode="after")
    def _one_target(self) -> RolloutOptions:
        if bool(self.service) == bool(self.services):
            raise ValueError("give either service or services")
        if self.services and (self.host or self.app):
            raise ValueError("host and app name one service; with services each uses its defaults")
        return self


class RolloutStage:
    name: ClassVar[str] = "rollout"
    options_model: ClassVar[type[StageOptions]] = RolloutOptions

    def run(self, ctx: StageContext, options: RolloutOptions) -> dict[str, Any]:
        from xci_cn.k8s.strategies import lifecycle

        if options.services:
            return self._graph(ctx, options, options.services)
        assert options.service
        result = lifecycle.run(require_kubeconfig(ctx), options.action, options.namespace, options.service,
                               options.host, options.app, reason=f"stage {ctx.stage}", cancel=ctx.cancel,
                               router=options.router, route=options.route, backends=options.backends)
        if options.action == "rollback":
            ctx.check(f"read-back {options.service}: stable has 100%", True,
                      f"stored weights {result['read_back']['weights']}")
        return result

    def _graph(self, ctx: StageContext, options: RolloutOptions, services: list[str]) -> dict[str, Any]:
        from xci_cn.k8s.strategies.graph import run_graph

        result = run_graph(require_kubeconfig(ctx), options.action, options.namespace, services,
                           reason=f"stage {ctx.stage}", cancel=ctx.cancel)
        if options.action == "rollback":
            for name, item in result["services"].items():
                ctx.check(f"read-back {name}: stable has 100%", item["read_back"]["ok"],
                          item["read_back"].get("problem") or f"stored weights {item['read_back']['weights']}")
            if result["problems"]:
                raise PermanentError("rollback read-back failed: " + "; ".join(result["problems"]), result)
        return result
