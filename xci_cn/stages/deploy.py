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
from xci_cn.errors import InvalidInput, ScenarioError, StageFailed
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

if TYPE_CHECKING:
    from xci_cn.verify.tape import TapeWriter


def _key(options: DeployOptions) -> tuple[tuple[str, ...], str | None]:
    return (tuple(options.manifests), options.namespace)


class GraphService(StageOptions):
    """A service of a graph canary (``graph``)."""

    service: str = Field(description="VirtualService/DestinationRule name whose traffic moves.")
    stable: str | None = Field(default=None, description="Version that has the traffic now (default: the "
                                                         "stage's stable).")
    canary: str | None = Field(default=None, description="New version (default: the stage's canary).")
    host: str | None = Field(default=None, description="Route host (default <service>.<ns>.svc.cluster.local).")
    app: str | None = Field(default=None, description="`app` label of the versions (default: service).")
    depends_on: list[str] = Field(default_factory=list, description="Services of the graph this one calls: "
                                  "they shift and promote first, and roll back after it.")


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
    graph: list[GraphService] | None = Field(
        default=None, min_length=2, description="Canary several services as one unit (instead of `service`): "
        "weights step in lockstep, the analysis judges each, a failure of any rolls all back in reverse "
        "dependency order.")

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[int]) -> list[int]:
        if not steps or steps[-1] != 100 or any(not 0 < s <= 100 for s in steps) or \
                any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"{steps} must increase, each in 1..100, and end at 100")
        return steps

    @model_validator(mode="after")
    def _strategy_needs(self) -> DeployOptions:
        if self.graph is not None:
            self._graph_needs()
        elif self.strategy != "rolling":
            missing = [k for k in ("service", "stable", "canary") if not getattr(self, k)]
            if missing:
                raise ValueError(f"strategy {self.strategy} needs {', '.join(missing)}")
            if self.stable == self.canary:
                raise ValueError("stable and canary must differ")
        if not self.namespace and self.strategy != "rolling":
            raise ValueError(f"strategy {self.strategy} needs namespace")
        return self

    def _graph_needs(self) -> None:
        if self.strategy != "canary":
            raise ValueError(f"graph needs strategy canary, not {self.strategy}")
        if self.service:
            raise ValueError("give either service or graph")
        names = [m.service for m in self.graph or []]
        if len(set(names)) != len(names):
            raise ValueError(f"graph names a service twice: {', '.join(names)}")
        for member in self.graph or []:
            stable, canary = member.stable or self.stable, member.canary or self.canary
            if not (stable and canary):
                raise ValueError(f"graph service {member.service} needs stable and canary (its own or the stage's)")
            if stable == canary:
                raise ValueError(f"graph service {member.service}: stable and canary must differ")
        if self.analysis is not None and self.analysis.service:
            raise ValueError("analysis.service cannot be set with graph: each service of the graph is analysed")
        from xci_cn.k8s.strategies.graph import dependency_order

        try:
            dependency_order(self.members())
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None

    def members(self) -> list[Any]:
        """The graph's services with every default filled in."""
        from xci_cn.k8s.istio import RolloutTarget
        from xci_cn.k8s.strategies.graph import Member

        return [Member(RolloutTarget.of(self.namespace or "", m.service, m.host, m.app),
                       m.stable or self.stable or "", m.canary or self.canary or "", list(m.depends_on))
                for m in self.graph or []]


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
        if options.strategy != "rolling" and not options.graph:
            assert options.namespace and options.service
            target = rollout_target(options.router, options.namespace, options.service, options.host,
                                    options.app, options.route, options.backends)
        plan = DeployPlan(manifests, options.strategy, target, options.stable, options.canary,
                          list(options.steps), options.mirror, options.timeout, options.namespace)
        cluster = connect(kubeconfig)
        traffic = StepTraffic(ctx, options)
        try:
            engine = Engine(Resources(cluster, ctx.cancel), ctx.log, ctx.cancel, ctx.report_progress)
            hook = traffic.around(self.step_hook(ctx, options))
            if options.graph:
                from xci_cn.k8s.strategies import graph

                record = graph.run(engine, plan, options.members(), hook)
            else:
                strategy = {"rolling": rolling, "bluegreen": bluegreen, "canary": canary}[options.strategy]
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
                        "service": options.service or ", ".join(m.service for m in options.graph or []),
                        "kubeconfig_used": kubeconfig})
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
        from xci_cn.verify.tape import TapeWriter

        spec = for_router(options.analysis, options.router, options.backends)
        prometheus = provisioned_url(ctx, "prometheus_url")
        tape = TapeWriter(ctx.results_dir, ctx.stage, ctx.attempt)
        assert options.namespace
        if options.graph:
            return self._graph_hook(ctx, options, spec, tape, prometheus)
        assert options.service and options.canary

        def analyse(step: dict[str, Any]) -> None:
            source = ({"kind": "canary-step", "step": step["step"], "steps": len(options.steps),
                       "weights": step["weights"]} if options.strategy == "canary"
                      else {"kind": "bluegreen-switch", "step": step["step"], "steps": 1,
                            "weights": step["weights"]})
            try:
                step["analysis"] = judge_step(spec, service=options.service or "",
                                              namespace=options.namespace or "", canary=options.canary or "",
                                              baseline=options.stable, sleep=ctx.sleep, log=ctx.log,
                                              progress=ctx.report_progress, tape=tape, source=source,
                                              prometheus=prometheus)
            except (AnalysisFailed, AnalysisPaused) as exc:
                step["analysis"] = exc.record
                raise

        return analyse

    def _graph_hook(self, ctx: StageContext, options: DeployOptions, spec: AnalysisSpec,
                    tape: TapeWriter, prometheus: str | None) -> Any:
        """Judge every service of the graph at each step, dependencies first;
        the first that fails (or pauses) decides for all."""
        from xci_cn.k8s.strategies.graph import dependency_order
        from xci_cn.verify.analysis import combine_records
        from xci_cn.verify.steps import AnalysisFailed, AnalysisPaused, judge_step

        order = dependency_order(options.members())

        def analyse(step: dict[str, Any]) -> None:
            records: dict[str, Any] = {}
            try:
                for member in order:
                    source = {"kind": "canary-step", "step": step["step"], "steps": len(options.steps),
                              "weights": step["services"][member.service]["weights"], "service": member.service}
                    try:
                        records[member.service] = judge_step(
                            spec, service=member.service, namespace=options.namespace or "",
                            canary=member.canary, baseline=member.stable, sleep=ctx.sleep, log=ctx.log,
                            progress=ctx.report_progress, tape=tape, source=source, prometheus=prometheus)
                    except (AnalysisFailed, AnalysisPaused) as exc:
                        records[member.service] = exc.record
                        raise
            finally:
                step["analysis"] = combine_records(records)
                for name, record in records.items():
                    step["services"][name]["analysis"] = record

        return analyse
