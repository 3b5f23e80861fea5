"""``deploy``: put a CN-VNF service graph onto the run's cluster with a
rollout strategy (rolling, bluegreen, canary). Manifests are checked offline
by the stage type's pre-flight step, once per run before any stage starts
(files, YAML, shapes, removed APIs), and against the real API server
(dry-run) before anything is applied."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from xci_cn.config.model import Duration
from xci_cn.errors import ScenarioError, StageFailed
from xci_cn.pipeline.stage import StageContext, StageOptions, require_kubeconfig
from xci_cn.stages.common import (
    RoutingOptions,
    StepTraffic,
    for_router,
    provisioned_url,
    resolve_manifest_path,
    rollout_target,
)
from xci_cn.verify.analysis import AnalysisSpec
from xci_cn.verify.load import TrafficSpec

if TYPE_CHECKING:
    from xci_cn.k8s.manifests import ManifestSet


def _key(options: DeployOptions) -> tuple[tuple[str, ...], str | None]:
    return (tuple(options.manifests), options.namespace)


class DeployOptions(RoutingOptions):
    manifests: list[str] = Field(min_length=1, description="Files or directories of multi-document YAML.")
    namespace: str | None = Field(default=None, description="Namespace for objects that name none; created "
                                                            "(and recorded as created) when it does not exist.")
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
        return self


class DeployStage:
    name: ClassVar[str] = "deploy"
    options_model: ClassVar[type[StageOptions]] = DeployOptions

    def __init__(self) -> None:
        # What preflight read, by (files, namespace): run uses it instead of
        # reading the manifests again.
        self._checked: dict[tuple[tuple[str, ...], str | None], ManifestSet] = {}

    def preflight(self, options: DeployOptions) -> None:
        """The offline check, once per run before any stage starts: the files,
        their YAML and shapes, APIs Kubernetes removed. No cluster is needed
        and no Kubernetes client is imported."""
        from xci_cn.k8s.manifests import load_manifests, removed_api_problem

        manifests = load_manifests([resolve_manifest_path(m) for m in options.manifests], options.namespace)
        problems = [p for p in (removed_api_problem(m) for m in manifests.manifests) if p]
        if problems:
            raise ScenarioError(problems)
        self._checked[_key(options)] = manifests

    def _manifests(self, options: DeployOptions) -> ManifestSet:
        from xci_cn.k8s.manifests import load_manifests

        checked = self._checked.get(_key(options))
        if checked is not None:  # a copy: the cluster's pre-flight edits bodies, a retry starts afresh
            return copy.deepcopy(checked)
        return load_manifests([resolve_manifest_path(m) for m in options.manifests], options.namespace)

    def run(self, ctx: StageContext, options: DeployOptions) -> dict[str, Any]:
        from xci_cn.k8s.client import connect
        from xci_cn.k8s.resources import Resources
        from xci_cn.k8s.strategies import bluegreen, canary, rolling
        from xci_cn.k8s.strategies.base import DeployPlan, Engine

        kubeconfig = require_kubeconfig(ctx)
        manifests = self._manifests(options)
        target = None
        if options.strategy != "rolling":
            assert options.namespace and options.service
            target = rollout_target(options.router, options.namespace, options.service, options.host,
                                    options.app, options.route, options.backends)
        plan = DeployPlan(manifests, options.strategy, target, options.stable, options.canary,
                          list(options.steps), options.mirror, options.timeout, options.namespace)
        cluster = connect(kubeconfig)
        traffic = StepTraffic(ctx, options)
        try:
            engine = Engine(Resources(cluster, ctx.cancel), ctx.log, ctx.cancel, ctx.report_progress)
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
        from xci_cn.verify.steps import AnalysisFailed, AnalysisPaused, judge_step

        spec = for_router(options.analysis, options.router, options.backends)
        prometheus = provisioned_url(ctx, "prometheus_url")
        assert options.service and options.namespace and options.canary

        def analyse(step: dict[str, Any]) -> None:
            try:
                step["analysis"] = judge_step(spec, service=options.service or "",
                                              namespace=options.namespace or "", canary=options.canary or "",
                                              baseline=options.stable, sleep=ctx.sleep, log=ctx.log,
                                              progress=ctx.report_progress, prometheus=prometheus)
            except (AnalysisFailed, AnalysisPaused) as exc:
                step["analysis"] = exc.record
                raise

        return analyse
