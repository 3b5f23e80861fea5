"""``verify``: decide pass or fail for a deployment.

Checks (each a JUnit testcase): ``platform``, ``mesh``, ``http``, ``split``,
``analysis`` and ``cnf``. A Failed analysis of a canary rolls it back (with the
read-back of the stored routing); Inconclusive follows the spec's policy.
``cnf`` checks the objects the deploy stage applied (or manifest files): one
case per finding; a failed essential rule fails the stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from xci_cn.errors import InvalidInput, StageFailed
from xci_cn.pipeline.stage import StageContext, StageOptions, require_kubeconfig
from xci_cn.stages.common import RoutingOptions, for_router, on_gateway, provisioned_url, rollout_target, start_load
from xci_cn.verify.analysis import INCONCLUSIVE, AnalysisSpec
from xci_cn.verify.cnf import CnfCheck
from xci_cn.verify.load import TrafficSpec
from xci_cn.verify.platform import PlatformCheck
from xci_cn.verify.probes import HttpCheck, ProbeResult, SplitCheck
from xci_cn.verify.steps import AnalysisFailed, AnalysisPaused, judge_step
from xci_cn.verify.tape import TapeWriter


class MeshCheck(StageOptions):
    type: Literal["mesh"] = Field(description="Mesh configuration checks.")
    namespace: str | None = Field(default=None, description="Namespace to check (default: the stage's).")


class AnalysisCheck(AnalysisSpec):
    type: Literal["analysis"] = Field(description="Metric analysis of a canary.")
    rollback: bool = Field(default=True, description="Roll the canary back when the verdict is Failed.")


CheckSpec = Annotated[PlatformCheck | MeshCheck | HttpCheck | SplitCheck | AnalysisCheck | CnfCheck,
                      Field(discriminator="type")]


class VerifyOptions(RoutingOptions):
    namespace: str | None = Field(default=None, description="Namespace of the service graph.")
    service: str | None = Field(default=None, description="VirtualService of the rollout (split weights, "
                                                          "analysis versions).")
    checks: list[CheckSpec] = Field(min_length=1, description="Checks, run in order.")
    traffic: TrafficSpec | None = Field(default=None, description="Load sent through the Gateway while "
                                                                  "the checks run (recorded in the outputs).")


@dataclass
class _SplitBesideLoad:
    check: SplitCheck
    expected: dict[str, float]
    probe: ProbeResult
    start: float  # seconds into the stage's load
    end: float


class VerifyStage:
    name: ClassVar[str] = "verify"
    options_model: ClassVar[type[StageOptions]] = VerifyOptions

    def preflight(self, options: VerifyOptions) -> None:
        """Learn the credentials in check URLs before anything is printed: the
        userinfo is redacted by rule, the bare password wherever it appears."""
        from urllib.parse import urlsplit

        from xci_cn.secrets import redactor

        for check in options.checks:
            url = getattr(check, "url", None) or getattr(check, "prometheus", None)
            if not url:
                continue
            parts = urlsplit(url)
            redactor().add(parts.password)

    def run(self, ctx: StageContext, options: VerifyOptions) -> dict[str, Any]:
        self.preflight(options)  # also when run without the CLI's pre-flight step
        outputs: dict[str, Any] = {"analysis": []}
        opened: list[Any] = []
        tape = TapeWriter(ctx.results_dir, ctx.stage, ctx.attempt)

        def resources() -> Any:
            """The cluster, connected on first need (probes need none)."""
            from xci_cn.k8s.resources import Resources

            if not opened:
                opened.append(Resources(self._connect(ctx), ctx.cancel))
            return opened[0]

        load = None
        # Split probes sent beside the stage's own load to the same URL: judged
        # with that load's answers over the same seconds, once it has stopped.
        splits_beside_load: list[_SplitBesideLoad] = []
        try:
            if options.traffic is not None:
                if options.router == "gateway-api" and options.service:
                    # Load before the proxy serves the route would meet 404s.
                    router = self._router(options, resources(), options.service)
                    self._wait_served(ctx, options, router, router.weights())
                load = start_load(ctx, options.traffic)
            for index, check in enumerate(options.checks):
                ctx.raise_if_cancelled()
                check = on_gateway(ctx, check)
                if isinstance(check, HttpCheck):
                    from xci_cn.verify.probes import run_http

                    probe = run_http(self._through_cluster_ip(check, resources))
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
                    beside = load if load is not None and _same_url(load.url, check.url) else None
                    split = self._split(ctx, options, check, resources, beside)
                    if split is not None:
                        splits_beside_load.append(split)
                elif isinstance(check, AnalysisCheck):
                    outputs["analysis"].append(self._analysis(ctx, options, check, resources, tape, index))
                elif isinstance(check, CnfCheck):
                    outputs.setdefault("cnf", []).append(self._cnf(ctx, options, check, resources))
        finally:
            for handle in opened:
                handle.cluster.close()
            if load is not None:
                record = load.stop()
                outputs["traffic"] = record.as_dict()
                if record.shortfall:
                    ctx.check("traffic rate", False, record.shortfall)
                self._judge_splits_beside(ctx, record, splits_beside_load)
        return outputs

    @staticmethod
    def _through_cluster_ip(check: HttpCheck, resources: Any) -> HttpCheck:
        """A URL naming a Service (``http://name.ns.svc:port/``) is sent to its
        ClusterIP: reachable from the host on the sandbox's real node."""
        from xci_cn.verify.probes import service_host, with_cluster_ip

        named = service_host(check.url)
        if named is None:
            return check
        info = resources().lookup("v1", "Service")
        service = resources().get(info, named[0], named[1])
        cluster_ip = ((service or {}).get("spec") or {}).get("clusterIP")
        if not cluster_ip or cluster_ip == "None":
            raise StageFailed(f"http check {check.url}: Service {named[1]}/{named[0]} has no ClusterIP")
        return check.model_copy(update={"url": with_cluster_ip(check.url, cluster_ip),
                                        "name": check.name or f"http {check.method} {check.url}"})

    def _connect(self, ctx: StageContext) -> Any:
        from xci_cn.k8s.client import connect

        return connect(require_kubeconfig(ctx))

    def _router(self, options: VerifyOptions, resources: Any, service: str | None) -> Any:
        from xci_cn.k8s.gateway import open_router

        if not (service and options.namespace):
            raise InvalidInput("this check needs the stage's `namespace` and `service`")
        return open_router(resources, rollout_target(options.router, options.namespace, service,
                                                     route=options.route, backends=options.backends))

    @staticmethod
    def _judge_splits_beside(ctx: StageContext, record: Any, splits: list[_SplitBesideLoad]) -> None:
        from xci_cn.verify.load import versions_between
        from xci_cn.verify.probes import judge_split

        for split in splits:
            also = versions_between(record.per_second, split.start, split.end)
            verdict = judge_split(split.check, split.expected, split.probe.details["counts"],
                                  split.probe.details["errors"], also)
            ctx.check(verdict.name, verdict.passed, verdict.message, **verdict.details)

    def _split(self, ctx: StageContext, options: VerifyOptions, check: SplitCheck, resources: Any,
               beside: Any = None) -> _SplitBesideLoad | None:
        """Run one split probe; with ``beside`` (the stage's load to the same
        URL) return it, to be judged once the load's answers are known."""
        from xci_cn.verify.probes import run_split

        expected = check.weights
        router = None
        if expected is None:
            router = self._router(options, resources(), check.service or options.service)
            expected = {k: float(v) for k, v in router.weights().items()}
        if router is not None:
            # Measure what is stored only once the proxy serves it.
            self._wait_served(ctx, options, router, {v: int(w) for v, w in expected.items()})
        start = beside.elapsed() if beside is not None else 0.0
        probe = run_split(check, expected)
        if beside is not None:
            return _SplitBesideLoad(check, expected, probe, start, beside.elapsed())
        ctx.check(probe.name, probe.passed, probe.message, **probe.details)
        return None

    def _wait_served(self, ctx: StageContext, options: VerifyOptions, router: Any, weights: dict[str, int]
                     ) -> None:
        """On the sandbox (whose proxy has an API): wait until it serves ``weights``."""
        proxy_api = provisioned_url(ctx, "traefik_api_url")
        if options.router != "gateway-api" or not proxy_api:
            return
        from xci_cn.verify.dataplane import wait_served

        wait_served(proxy_api, router.target.namespace, router.target.route,
                    {v: router.target.backend(v) for v in weights}, weights, sleep=ctx.sleep)

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
            record = judge_step(for_router(check, options.router, options.backends), service=service,
                                namespace=namespace, canary=canary, baseline=baseline, sleep=ctx.sleep,
                                log=ctx.log, progress=ctx.report_progress, tape=tape,
                                source={"kind": "verify-check", "index": index},
                                prometheus=provisioned_url(ctx, "prometheus_url"))
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

    def _cnf(self, ctx: StageContext, options: VerifyOptions, check: CnfCheck, resources: Any) -> dict[str, Any]:
        from xci_cn.sandbox.binaries import find_tool
        from xci_cn.verify import cnf, kubescore

        namespace = check.namespace or options.namespace
        if check.manifests:
            subjects = [cnf.Subject.of(m) for m in _manifests(check.manifests, namespace).manifests]
        else:
            subjects = _deployed_subjects(ctx, resources(), namespace)
        binary = find_tool("kube-score") if any(r.linter for r in check.rules()) else None
        ctx.report_progress(f"cnf: {len(check.rules())} rules on {len(subjects)} objects")
        findings = cnf.lint(subjects, check, lambda bodies: kubescore.score(binary, bodies) if binary else [],
                            runtime_reason="a runtime rule needs the deployed pods; `manifests` were given"
                            if check.manifests else None)
        seconds = {}
        runtime_rules = [r for r in check.rules() if r.runtime]
        if runtime_rules and not check.manifests:
            from xci_cn.verify.cnf_runtime import Runtime

            runtime = Runtime(resources(), check, ctx.sleep)
            chosen = cnf.select(subjects, check.objects)
            services = [s for s in subjects if s.kind == "Service"]
            for rule in runtime_rules:
                ctx.report_progress(f"cnf {rule.name}: {len(chosen)} workloads")
                started = time.monotonic()
                findings += cnf.apply_allow_list(runtime.check(rule, chosen, services), check.allow)
                seconds[rule.name] = round(time.monotonic() - started, 2)
        for finding in findings:
            rule = cnf.RULES[finding.rule]
            ctx.check(finding.case, finding.passed, finding.text(), blocking=check.blocking(rule),
                      skipped=finding.skipped, **finding.details(check.category(rule)))
        summary = cnf.summarise(findings, check, seconds)
        ctx.report_progress(f"cnf: score {summary['score']}%, {summary['passed']} passed, "
                            f"{summary['failed']} failed, {summary['skipped']} skipped")
        return summary


def _manifests(paths: list[str], namespace: str | None) -> Any:
    from xci_cn.k8s.manifests import load_manifests
    from xci_cn.stages.common import resolve_manifest_path

    return load_manifests([resolve_manifest_path(p) for p in paths], namespace)


def _deployed_subjects(ctx: StageContext, resources: Any, namespace: str | None) -> list[Any]:
    """The live bodies of what the run's deploy stages applied, each with the
    file:document it came from (read from the deploy stage's own options)."""
    from xci_cn.verify.cnf import Subject

    subjects = []
    deploys = [spec for spec in ctx.scenario.stages if spec.type == "deploy"
               and (ctx.all_outputs.get(spec.name) or {}).get("applied")]
    if not deploys:
        raise InvalidInput("cnf: no deploy stage applied objects before this check; give `manifests` to check "
                           "files instead")
    for spec in deploys:
        applied = {(a["kind"], a["namespace"], a["name"]) for a in ctx.all_outputs[spec.name]["applied"]}
        for manifest in _manifests(spec.with_["manifests"], spec.with_.get("namespace")).manifests:
            key = (manifest.kind, manifest.namespace, manifest.name)
            if key not in applied or (namespace and manifest.namespace not in (None, namespace)):
                continue
            info = resources.lookup(manifest.api_version, manifest.kind)
            if info is None:
                continue
            body = resources.get(info, manifest.name, manifest.namespace if info.namespaced else None)
            if body is None:
                continue
            body = {**body, "apiVersion": manifest.api_version, "kind": manifest.kind}
            body.pop("status", None)
            body["metadata"] = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
            subjects.append(Subject.of(manifest, body))
    return subjects


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")
