"""What every strategy shares: apply a manifest set, wait until it is
healthy, and record what happened."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xci_cn.errors import PermanentError, RolloutPaused, ScenarioError, StageFailed, TemporaryError, raise_if_set
from xci_cn.k8s.apply import Applied, Applier
from xci_cn.k8s.gateway import GatewayRouter, open_router
from xci_cn.k8s.health import Target, explain, needs_waiting, wait_healthy
from xci_cn.k8s.istio import RolloutTarget, Router
from xci_cn.k8s.manifests import ManifestSet
from xci_cn.k8s.resources import Resources
from xci_cn.k8s.strategies.lifecycle import rollback

# Called between canary steps (and after a blue/green switch) with the step
# record; raising PermanentError there rolls the rollout back.
StepHook = Callable[[dict[str, Any]], None]


@dataclass
class DeployPlan:
    manifests: ManifestSet
    strategy: str
    target: RolloutTarget | None = None
    stable: str | None = None
    canary: str | None = None
    steps: list[int] = field(default_factory=lambda: [10, 25, 50, 100])
    mirror: float | None = None
    timeout: float = 300.0
    namespace: str | None = None  # the stage's: created when missing


@dataclass
class DeployRecord:
    """What a deploy did, for summary.json and the report."""

    applied: list[Applied] = field(default_factory=list)
    ready_seconds: float = 0.0
    revisions: dict[str, str] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    rollout: dict[str, Any] | None = None

    def as_outputs(self) -> dict[str, Any]:
        counts: dict[str, int] = {"created": 0, "configured": 0, "unchanged": 0}
        for item in self.applied:
            counts[item.action] = counts.get(item.action, 0) + 1
        return {"applied": [a.as_dict() for a in self.applied], "counts": counts,
                "ready_seconds": round(self.ready_seconds, 3), "revisions": self.revisions,
                "steps": self.steps, "rollout": self.rollout}


def start_traffic_rollout(engine: Engine, plan: DeployPlan) -> tuple[DeployRecord, Any]:
    """Apply and wait, then check the routing objects bluegreen and canary move
    traffic through: (record, router) — Istio's or the Gateway API's."""
    assert plan.target and plan.stable and plan.canary
    record = DeployRecord()
    router = open_router(engine.resources, plan.target)
    if isinstance(router, Router):
        problems = router.plan_problems(plan.manifests, plan.stable, plan.canary)
        if problems:  # found before anything is applied, not after the graph was waited healthy
            raise ScenarioError(problems)
    engine.apply_and_wait(plan.manifests, plan.timeout, record, plan.namespace)
    if isinstance(router, GatewayRouter):
        router.require_subsets(plan.stable, plan.canary, mirror=bool(plan.mirror))
    else:
        router.require_subsets(plan.stable, plan.canary)
    return record, router


def run_step_hook(hook: StepHook | None, step: dict[str, Any], router: Any, state: Any, record: DeployRecord,
                  where: Callable[[str], str], mirror: tuple[str, float] | None = None) -> None:
    """Run the hook after a traffic change. PermanentError (a Failed
    analysis): roll back, read back, raise with what was done so far.
    RolloutPaused (Inconclusive, policy pause): record the phase, weights stay.
    ``where(action)`` names the step and what happened to it."""
    if hook is None:
        return
    try:
        hook(step)
    except PermanentError as exc:
        result = rollback(router, reason=str(exc))
        record.steps.append(result["step"])
        record.rollout = {**state.as_dict(), "phase": "rolled-back", "read_back": result["read_back"]}
        raise PermanentError(f"{where('rolled back')}: {exc}; read-back: {state.stable} has 100%",
                             record.as_outputs()) from None
    except RolloutPaused as exc:
        state.phase = "paused"
        router.set_weights(step["weights"], state, mirror)  # records the phase; weights stay
        record.rollout = state.as_dict()
        target = router.target
        via = " --router gateway-api" if isinstance(router, GatewayRouter) else ""
        raise RolloutPaused(f"{where('paused')}: {exc}; decide with 'xci-cn rollout "
                            f"promote|rollback -n {target.namespace} --service {target.service}{via}'",
                            record.as_outputs()) from None


class Engine:
    """Applies and waits; strategies call it."""

    def __init__(self, resources: Resources, log: logging.Logger, cancel: threading.Event,
                 progress: Callable[[str], None] | None = None):
        self.resources = resources
        self.log = log
        self.cancel = cancel
        self.say = progress or (lambda text: log.info("%s", text))
        self.applier = Applier(resources)

    def apply_and_wait(self, manifests: ManifestSet, timeout: float, record: DeployRecord,
                       namespace: str | None = None) -> None:
        """Pre-flight, then apply while already watching: the cluster's
        controllers start on the first Deployment while later objects are
        still being written. The stage's ``namespace`` is created when missing."""
        started = time.monotonic()
        infos = self.applier.preflight(manifests, namespace)
        self.say(f"pre-flight passed: {len(manifests.manifests)} objects")
        targets = {id(m): Target(infos[id(m)], m.namespace, m.name) for m in manifests.manifests  # type: ignore[arg-type]
                   if needs_waiting(m.api_version, m.kind) and infos.get(id(m)) is not None}
        stop_waiting = _EitherEvent(self.cancel)
        waiter: dict[str, Any] = {}

        def wait() -> None:
            try:
                waiter["result"] = wait_healthy(self.resources, list(targets.values()), started + timeout,
                                                stop_waiting)  # type: ignore[arg-type]
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                waiter["error"] = exc

        watcher = threading.Thread(target=wait, name="deploy-wait", daemon=True)
        watcher.start()

        def on_applied(manifest: Any, applied: Any) -> None:
            target = targets.get(id(manifest))
            if target is not None:
                target.mark_applied(applied.generation)

        try:
            record.applied = self.applier.apply(manifests, infos, self.cancel, on_applied=on_applied)
        except BaseException:
            stop_waiting.own.set()
            watcher.join()
            raise
        counts = DeployRecord(applied=record.applied).as_outputs()["counts"]
        self.say("applied: " + ", ".join(f"{n} {a}" for a, n in counts.items() if n))
        for item in record.applied:
            self.log.info("%s %s/%s %s", item.kind, item.namespace or "-", item.name, item.action)
        watcher.join()
        if "error" in waiter:
            raise waiter["error"]
        result = waiter["result"]
        self.cancel_check()
        if result.degraded:
            raise StageFailed("degraded: " + " | ".join(explain(self.resources, t) for t in result.degraded))
        if result.not_healthy:
            reasons = " | ".join(explain(self.resources, t) for t in result.not_healthy[:10])
            more = len(result.not_healthy) - 10
            raise TemporaryError(f"{len(result.not_healthy)} object(s) not ready after {timeout:g}s: "
                                 f"{reasons}{f' (+{more} more)' if more > 0 else ''}")
        record.ready_seconds = time.monotonic() - started
        record.revisions = {t.name: (t.last or {}).get("metadata", {}).get("annotations", {}).get(
            "deployment.kubernetes.io/revision", "") for t in targets.values() if t.info.kind == "Deployment"}
        self.say(f"{len(targets)} workload(s) healthy in {record.ready_seconds:.1f}s")

    def cancel_check(self) -> None:
        raise_if_set(self.cancel)


class _EitherEvent:
    """Set when the stage is cancelled or the apply failed (stop waiting)."""

    def __init__(self, outer: threading.Event):
        self.outer = outer
        self.own = threading.Event()

    def is_set(self) -> bool:
        return self.own.is_set() or self.outer.is_set()
