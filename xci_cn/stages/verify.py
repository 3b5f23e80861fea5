"""``verify``: decide pass or fail for a deployment.

Checks (each a JUnit testcase): ``platform``, ``mesh``, ``http``, ``split``
and ``analysis``. A Failed analysis of a canary rolls it back (with the
read-back of the stored routing); Inconclusive follows the spec's policy.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from xci_cn.errors import InvalidInput
from xci_cn.pipeline.stage import StageContext, StageOptions, require_kubeconfig
from xci_cn.verify.analysis import INCONCLUSIVE, AnalysisSpec
from xci_cn.verify.platform import PlatformCheck
from xci_cn.verify.probes import HttpCheck, SplitCheck
from xci_cn.verify.steps import AnalysisFailed, AnalysisPaused, judge_step
from xci_cn.verify.tape import TapeWriter


class MeshCheck(StageOptions):
    type: Literal["mesh"] = Field(description="Mesh configuration checks.")
    namespace: str | None = Field(default=None, description="Namespace to check (default: the stage's).")


class AnalysisCheck(AnalysisSpec):
    type: Literal["analysis"] = Field(description="Metric analysis of a canary.")
    rollback: bool = Field(default=True, description="Roll the canary back when the verdict is Failed.")


CheckSpec = Annotated[PlatformCheck | MeshCheck | HttpCheck | SplitCheck | AnalysisCheck,
                      Field(discriminator="type")]


class VerifyOptions(StageOptions):
    namespace: str | None = Field(default=None, description="Namespace of the service graph.")
    service: str | None = Field(default=None, description="VirtualService of the rollout (split weights, "
                                                          "analysis versions).")
    checks: list[CheckSpec] = Field(min_length=1, description="Checks, run in order.")


class VerifyStage:
    name: ClassVar[str] = "verify"
    options_model: ClassVar[type[StageOptions]] = VerifyOptions

    def run(self, ctx: StageContext, options: VerifyOptions) -> dict[str, Any]:
        outputs: dict[str, Any] = {"analysis": []}
        opened: list[Any] = []
        tape = TapeWriter(ctx.results_dir, ctx.stage, ctx.attempt)

        def resources() -> Any:
            """The cluster, connected on first need (probes need none)."""
            from xci_cn.k8s.resources import Resources

            if not opened:
                opened.append(Resources(self._connect(ctx), ctx.cancel))
            return opened[0]

        try:
            for index, check in enumerate(options.checks):
                ctx.raise_if_cancelled()
                if isinstance(check, HttpCheck):
                    from xci_cn.verify.probes import run_http

                    probe = run_http(check)
                    ctx.check(probe.name, probe.passed, probe.message, **probe.details)
                elif isinstance(check, PlatformCheck):
                    from xci_cn.verify.platform import check_platform

                    for finding in check_platform(resources(), check):
                        ctx.check(finding.check, finding.passed, finding.message)
                elif isinstance(check, MeshCheck):
                    from xci_cn.verify.mesh import check_mesh, snapshot

                    namespace = check.namespace or options.namespace
                    if not namespace:
                        raise InvalidInput("mesh check needs a namespace")
                    findings = check_mesh(snapshot(resources(), namespace))
                    if not findings:
                        ctx.check(f"mesh {namespace}", False, f"no VirtualService in namespace {namespace}")
                    for finding in findings:
                        ctx.check(finding.check, finding.passed, finding.message)
                elif isinstance(check, SplitCheck):
                    self._split(ctx, options, check, resources)
                elif isinstance(check, AnalysisCheck):
                    outputs["analysis"].append(self._analysis(ctx, options, check, resources, tape, index))
        finally:
            for handle in opened:
                handle.cluster.close()
        return outputs

    def _connect(self, ctx: StageContext) -> Any:
        from xci_cn.k8s.client import connect

        return connect(require_kubeconfig(ctx))

    def _router(self, options: VerifyOptions, resources: Any, service: str | None) -> Any:
        from xci_cn.k8s.istio import RolloutTarget, Router

        if not (service and options.namespace):
            raise InvalidInput("this check needs the stage's `namespace` and `service`")
        return Router(resources, RolloutTarget.of(options.namespace, service))

    def _split(self, ctx: StageContext, options: VerifyOptions, check: SplitCheck, resources: Any) -> None:
        from xci_cn.verify.probes import run_split

        expected = check.weights
        if expected is None:
            router = self._router(options, resources(), check.service or options.service)
            expected = {k: float(v) for k, v in router.weights().items()}
        probe = run_split(check, expected)
        ctx.check(probe.name, probe.passed, probe.message, **probe.details)

    def _analysis(self, ctx: StageContext, options: VerifyOptions, check: AnalysisCheck, resources: Any,
                  tape: TapeWriter, index: int) -> dict[str, Any]:
        from xci_cn.k8s.strategies.lifecycle import rollback

        service = check.service or options.service
        namespace = check.namespace or options.namespace
        canary, baseline, router = check.canary, check.baseline, None
        if options.service or not canary:
            # The rollout of the stage's VirtualService: who is canary, and
            # where a failed verdict rolls back.
            router = self._router(options, resources(), options.service)
        if not canary:
            state = router.state() if router else None
            if state is None or not state.canary:
                raise InvalidInput(f"analysis: no canary to judge for {service} (give `canary`)")
            canary, baseline = state.canary, baseline or state.stable
        assert service and namespace
        name = f"analysis {service} {canary}"
        try:
            record = judge_step(check, service=service, namespace=namespace, canary=canary, baseline=baseline,
                                sleep=ctx.sleep, log=ctx.log, progress=ctx.report_progress, tape=tape,
                                source={"kind": "verify-check", "index": index})
        except AnalysisFailed as exc:
            ctx.check(name, False, str(exc), verdict=exc.record["verdict"])
            if check.rollback and router is not None:
                result = rollback(router, reason=str(exc))
                ctx.check(f"read-back {service}: stable has 100%", True,
                          f"stored weights {result['read_back']['weights']}")
                return {**exc.record, "rolled_back": True, "read_back": result["read_back"]}
            return {**exc.record, "rolled_back": False}
        except AnalysisPaused as exc:
            ctx.check(name, False, str(exc), verdict=INCONCLUSIVE)
            return {**exc.record, "paused": True}
        ctx.check(name, True, record["reason"], verdict=record["verdict"])
        return record
