"""What several stage types share and no adapter owns: the routing options
of deploy, verify and rollout, the service URLs a provision stage reported,
and the load sent while a rollout is analysed. Stage modules import this
module, never each other."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from xci_cn import settings
from xci_cn.errors import InvalidInput
from xci_cn.paths import REPO_ROOT
from xci_cn.pipeline.stage import StageContext, StageOptions
from xci_cn.verify.analysis import AnalysisSpec
from xci_cn.verify.load import TrafficSpec


def resolve_manifest_path(raw: str) -> Path:
    """Relative paths: the working directory first, then the checkout
    (so bundled samples such as samples/sdc work from anywhere). A path
    found in neither stays as written, so messages name what the user wrote."""
    path = Path(raw)
    if path.is_absolute() or os.path.lexists(path):
        return path
    bundled = REPO_ROOT / raw
    return bundled if os.path.lexists(bundled) else path


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
    """The RolloutTarget (istio) or GatewayTarget (gateway-api) of a service
    (the Kubernetes adapter imported only when a stage runs)."""
    from xci_cn.k8s.gateway import rollout_target as target_of

    return target_of(router, namespace, service, host, app, route, backends)


def provisioned_url(ctx: StageContext, key: str) -> str | None:
    """A service URL a provision stage reported (the sandbox's Prometheus,
    Gateway, proxy API), else ``$XCI_CN_<KEY>`` (``XCI_CN_GATEWAY_URL`` …: a
    cluster xci-cn did not bring up), else None."""
    for outputs in ctx.all_outputs.values():
        if outputs.get(key):
            return str(outputs[key])
    value = getattr(settings.current(), key, None)
    return str(value) if value else None


def on_gateway(ctx: StageContext, check: Any) -> Any:
    """A probe whose url is a path ("/") goes through the provisioned Gateway."""
    url = getattr(check, "url", None)
    if not (isinstance(url, str) and url.startswith("/")):
        return check
    gateway = provisioned_url(ctx, "gateway_url")
    if not gateway:
        raise InvalidInput(f"{check.type} check: url {url!r} is a path, but no provision stage brought up a "
                           "Gateway; give a full URL")
    return check.model_copy(update={"url": gateway.rstrip("/") + url})


def for_router(spec: AnalysisSpec, router: str, backends: dict[str, str] | None) -> AnalysisSpec:
    """The metric profile follows the router unless the spec sets one."""
    if spec.profile is not None:
        return spec
    profile = "gateway" if router == "gateway-api" else "istio"
    return spec.model_copy(update={"profile": profile, "backends": spec.backends or backends})


class StepTraffic:
    """Around each rollout step: start the load at the first step, wait
    until the proxy serves the step's weights (sandbox: Traefik's API), and
    mark where in the load each step began and ended, so that the report
    shows per step what was sent and which version answered."""

    def __init__(self, ctx: StageContext, options: Any):
        self.ctx = ctx
        self.options = options
        self.proxy_api = provisioned_url(ctx, "traefik_api_url") if options.router == "gateway-api" else None
        self.load: Any = None
        self.record: dict[str, Any] | None = None

    def around(self, hook: Any) -> Any:
        if hook is None:
            return None

        def step(record: dict[str, Any]) -> None:
            if self.proxy_api:
                from xci_cn.verify.dataplane import wait_served

                target = rollout_target(self.options.router, self.options.namespace or "",
                                        self.options.service or "", route=self.options.route,
                                        backends=self.options.backends)
                backends = {v: target.backend(v) for v in record["weights"]}
                record["served_after_s"] = round(wait_served(
                    self.proxy_api, target.namespace, target.route, backends, record["weights"],
                    sleep=self.ctx.sleep), 3)
            if self.options.traffic is not None and self.load is None:
                self.load = start_load(self.ctx, self.options.traffic)  # once the route is served: no 404s
            if self.load is not None:
                record["load_from_s"] = round(self.load.elapsed(), 3)
                if self.options.analysis is not None:
                    # The first measurement needs this step's own requests in Prometheus.
                    self.ctx.sleep(self.options.analysis.interval)
            try:
                hook(record)
            finally:
                if self.load is not None:
                    record["load_until_s"] = round(self.load.elapsed(), 3)

        return step

    def stop_into(self, outputs: dict[str, Any] | None) -> None:
        """Stop the load once; put its record into ``outputs``."""
        if self.load is not None and self.record is None:
            load_record = self.load.stop()
            self.record = load_record.as_dict()
            self.ctx.report_progress(f"traffic: {load_record.requests} requests at {load_record.rate_sent:.1f}/s "
                                     f"(asked {load_record.rate_asked}/s), codes {load_record.codes}")
            if load_record.shortfall:
                self.ctx.check("traffic rate", False, load_record.shortfall)
        if outputs is not None and self.record is not None:
            outputs["traffic"] = self.record
            for step in outputs.get("steps") or []:
                measured = measured_shares(self.record, step)
                if measured:
                    step["measured"] = measured


def measured_shares(traffic: dict[str, Any], step: dict[str, Any]) -> dict[str, float]:
    """Percent of the answers per version while ``step`` was analysed."""
    start, end = step.get("load_from_s"), step.get("load_until_s")
    if start is None or end is None:
        return {}
    from xci_cn.verify.load import versions_between

    counts = versions_between(traffic["per_second"], float(start), float(end))
    total = sum(counts.values())
    return {v: round(100 * n / total, 1) for v, n in sorted(counts.items())} if total else {}


def start_load(ctx: StageContext, spec: TrafficSpec) -> Any:
    """A running vegeta attack for ``spec`` (URL default: the sandbox's Gateway)."""
    from xci_cn.sandbox.binaries import cached_tool
    from xci_cn.verify.load import ANSWER_WITHIN_S, ANSWERED_IN_A_ROW, Load

    load = Load(cached_tool("vegeta"), spec, provisioned_url(ctx, "gateway_url"),
                ctx.results_dir / "traffic" / ctx.stage)
    answered = load.wait_answering(ctx.sleep)
    running = f"{ANSWERED_IN_A_ROW} times running"
    ctx.report_progress(f"traffic: {load.url} answered {running} after {answered:.1f}s" if answered is not None
                        else f"traffic: {load.url} did not answer {running} within {ANSWER_WITHIN_S:g}s "
                        "(gateway errors); the load starts all the same")
    load.start()
    ctx.report_progress(f"traffic: {spec.rate}/s to {load.url}"
                        f"{f' for {spec.duration:g}s' if spec.duration else ' while the stage runs'}")
    return load
