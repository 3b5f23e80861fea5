"""``deploy``: put a CN-VNF service graph onto the run's cluster with a
rollout strategy (rolling, bluegreen, canary). Manifests are checked offline
when the scenario loads (files, YAML, removed APIs) and against the real API
server (dry-run) before anything is applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from xci_cn.config.model import Duration
from xci_cn.errors import InvalidInput, ScenarioError, StageFailed
from xci_cn.paths import REPO_ROOT
from xci_cn.pipeline.stage import StageContext, StageOptions, require_kubeconfig
from xci_cn.stages.rollout import RoutingOptions, rollout_target
from xci_cn.verify.analysis import AnalysisSpec
from xci_cn.verify.load import TrafficSpec


def resolve_manifest_path(raw: str) -> Path:
    """Relative paths: the working directory first, then the checkout
    (so bundled samples such as samples/sdc work from anywhere)."""
    path = Path(raw)
    if path.is_absolute() or path.exists():
        return path
    return REPO_ROOT / raw


class DeployOptions(RoutingOptions):
    manifests: list[str] = Field(min_length=1, description="Files or directories of multi-document YAML.")
    namespace: str | None = Field(default=None, description="Namespace for objects that name none.")
    strategy: Literal["rolling", "bluegreen", "canary"] = Field(
        default="rolling", description="rolling: apply and wait; bluegreen: switch all traffic at once; "
                                       "canary: step the weights.")
    service: str | None = Field(default=None, description="VirtualService/DestinationRule name whose "
                                                          "traffic moves (bluegreen, canary).")
    host: str | None = Field(default=None,
                             description="Route host (default <service>.<ns>.svc.cluster.local).")
    app: str | None = Field(default=None, description="`app` label of the versions' Deployments "
                                                      "(default: service).")
    stable: str | None = Field(default=None, description="Subset/version label that has the traffic now.")
    canary: str | None = Field(default=None, description="Subset/version label of the new version.")
    steps: list[int] = Field(default_factory=lambda: [10, 25, 50, 100],
                             description="Canary weights in percent, increasing, ending at 100.")
    mirror: float | None = Field(default=None, ge=0, le=100,
                                 description="Percent of traffic mirrored to the canary during its steps.")
    step_pause: Duration = Field(default=0.001, description="Pause between canary steps when no "
                                                            "analysis is configured.")
    timeout: Duration = Field(default=300.0, description="Deadline for the graph to become healthy.")
    analysis: AnalysisSpec | None = Field(default=None, description="Metric analysis between canary "
                                                                    "steps (and after a blue/green switch).")
    traffic: TrafficSpec | None = Field(default=None, description="Load sent through the Gateway from "
                                                                  "the first step on, while the rollout is "
                                                                  "analysed (recorded in the outputs).")

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[int]) -> list[int]:
        if not steps or steps[-1] != 100 or any(not 0 < s <= 100 for s in steps) or \
                any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"{steps} must increase, each in 1..100, and end at 100")
        return steps

    @model_validator(mode="after")
    def _strategy_needs(self) -> DeployOptions:
        if self.strategy != "rolling":
            missing = [k for k in ("service", "stable", "canary") if not getattr(self, k)]
            if missing:
                raise ValueError(f"strategy {self.strategy} needs {', '.join(missing)}")
            if self.stable == self.canary:
                raise ValueError("stable and canary must differ")
        if not self.namespace and self.strategy != "rolling":
            raise ValueError(f"strategy {self.strategy} needs namespace")
        self._offline_check()
        return self

    def _offline_check(self) -> None:
        """What can be known without a cluster: the files, their YAML, removed APIs."""
        from xci_cn.k8s.apply import removed_api_problem
        from xci_cn.k8s.manifests import load_manifests

        try:
            manifests = load_manifests([resolve_manifest_path(m) for m in self.manifests], self.namespace)
        except (ScenarioError, InvalidInput) as exc:
            raise ValueError("; ".join(exc.lines())) from None
        problems = [p for p in (removed_api_problem(m) for m in manifests.manifests) if p]
        if problems:
            raise ValueError("; ".join(problems))


class DeployStage:
    name: ClassVar[str] = "deploy"
    options_model: ClassVar[type[StageOptions]] = DeployOptions

    def run(self, ctx: StageContext, options: DeployOptions) -> dict[str, Any]:
        from xci_cn.k8s.client import connect
        from xci_cn.k8s.manifests import load_manifests
        from xci_cn.k8s.resources import Resources
        from xci_cn.k8s.strategies import bluegreen, canary, rolling
        from xci_cn.k8s.strategies.base import DeployPlan, Engine

        kubeconfig = require_kubeconfig(ctx)
        manifests = load_manifests([resolve_manifest_path(m) for m in options.manifests], options.namespace)
        target = None
        if options.strategy != "rolling":
            assert options.namespace and options.service
            target = rollout_target(options.router, options.namespace, options.service, options.host,
                                    options.app, options.route, options.backends)
        plan = DeployPlan(manifests, options.strategy, target, options.stable, options.canary,
                          list(options.steps), options.mirror, options.timeout)
        cluster = connect(kubeconfig)
        traffic = StepTraffic(ctx, options)
        try:
            engine = Engine(Resources(cluster), ctx.log, ctx.cancel, ctx.report_progress)
            strategy = {"rolling": rolling, "bluegreen": bluegreen, "canary": canary}[options.strategy]
            hook = traffic.around(self.step_hook(ctx, options))
            record = strategy.run(engine, plan, hook)
        except StageFailed as exc:
            traffic.stop_into(exc.outputs)
            raise
        finally:
            cluster.close()
            traffic.stop_into(None)
        outputs = record.as_outputs()
        traffic.stop_into(outputs)
        outputs.update({"strategy": options.strategy, "namespace": options.namespace,
                        "service": options.service, "kubeconfig_used": kubeconfig})
        return outputs

    def step_hook(self, ctx: StageContext, options: DeployOptions) -> Any:
        """Between canary steps: metric analysis when configured (Failed or
        Error rolls back, Inconclusive follows its policy), else a pause."""
        if options.strategy == "rolling":
            return None
        if options.analysis is None:
            def pause(step: dict[str, Any]) -> None:
                ctx.sleep(options.step_pause)

            return pause
        from xci_cn.stages.verify import for_router, run_step_analysis

        spec = for_router(options.analysis, options.router, options.backends)
        assert options.service and options.namespace and options.canary

        def analyse(step: dict[str, Any]) -> None:
            try:
                step["analysis"] = run_step_analysis(ctx, spec, service=options.service or "",
                                                     namespace=options.namespace or "",
                                                     canary=options.canary or "", baseline=options.stable)
            except Exception as exc:
                step["analysis"] = getattr(exc, "record", None)
                raise

        return analyse


class StepTraffic:
    """Around each rollout step: start the load at the first step, wait
    until the proxy serves the step's weights (sandbox: Traefik's API), and
    mark where in the load each step began and ended, so that the report
    shows per step what was sent and which version answered."""

    def __init__(self, ctx: StageContext, options: DeployOptions):
        from xci_cn.stages.verify import provisioned_url

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
    from xci_cn.verify.load import share_between

    counts = share_between(traffic["per_second"], float(start), float(end))
    total = sum(n for v, n in counts.items() if v not in ("-", "?")) or 0
    return {v: round(100 * n / total, 1) for v, n in sorted(counts.items()) if v not in ("-", "?")} \
        if total else {}


def start_load(ctx: StageContext, spec: TrafficSpec) -> Any:
    """A running vegeta attack for ``spec`` (URL default: the sandbox's Gateway)."""
    from xci_cn.sandbox.binaries import cached_tool
    from xci_cn.stages.verify import provisioned_url
    from xci_cn.verify.load import Load

    load = Load(cached_tool("vegeta"), spec, provisioned_url(ctx, "gateway_url"),
                ctx.results_dir / "traffic" / ctx.stage).start()
    ctx.report_progress(f"traffic: {spec.rate}/s to {load.url}"
                        f"{f' for {spec.duration:g}s' if spec.duration else ' while the stage runs'}")
    return load
