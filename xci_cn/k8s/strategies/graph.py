"""A canary of several services of a graph as one unit: their weights step in
lockstep (each VirtualService to the same canary share), one hook judges
every service at each step, and a failure of any rolls all of them back in
reverse dependency order — the services that call others first, so no new
caller is left talking to an old callee — each with the read-back of its
stored routing. Promotion goes the other way round (dependencies first)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import Any

from xci_cn.errors import InvalidInput, PermanentError, RolloutPaused
from xci_cn.k8s.istio import RolloutState, RolloutTarget, Router, now_iso
from xci_cn.k8s.strategies.base import DeployPlan, DeployRecord, Engine, StepHook


@dataclass
class Member:
    """One service of the graph that moves to its new version."""

    target: RolloutTarget
    stable: str
    canary: str
    depends_on: list[str] = field(default_factory=list)  # services this one calls

    @property
    def service(self) -> str:
        return self.target.service


def dependency_order(members: list[Member]) -> list[Member]:
    """Dependencies before the services that depend on them (the order in
    which they shift and are promoted); ties keep the order given."""
    by_name = {m.service: m for m in members}
    unknown = sorted({d for m in members for d in m.depends_on if d not in by_name})
    if unknown:
        raise InvalidInput(f"graph: depends_on names {', '.join(unknown)}, not a service of the graph")
    sorter: TopologicalSorter[str] = TopologicalSorter()
    for member in members:
        sorter.add(member.service, *member.depends_on)
    try:
        sorter.prepare()
    except CycleError as exc:
        raise InvalidInput(f"graph: depends_on forms a cycle: {' -> '.join(exc.args[1])}") from None
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=[m.service for m in members].index)
        order += ready
        sorter.done(*ready)
    return [by_name[name] for name in order]


def rollback_graph(routers: list[Router], reason: str) -> dict[str, Any]:
    """Roll back every service of ``routers`` (given dependencies first), so
    callers first; read each one back. Every service is rolled back even
    when another's read-back fails: the problems are returned."""
    from xci_cn.k8s.strategies.lifecycle import rollback

    services: dict[str, Any] = {}
    problems: list[str] = []
    for router in reversed(routers):
        name = router.target.service
        try:
            result = rollback(router, reason=reason)
        except PermanentError as exc:
            problems.append(f"{name}: {exc}")
            services[name] = {"read_back": {"ok": False, "problem": str(exc)}}
            continue
        services[name] = {"weights": result["step"]["weights"], "read_back": result["read_back"],
                          "scaled_down": result["scaled_down"]}
    return {"order": [r.target.service for r in reversed(routers)], "services": services, "problems": problems}


def run(engine: Engine, plan: DeployPlan, members: list[Member], hook: StepHook | None = None) -> DeployRecord:
    record = DeployRecord()
    engine.apply_and_wait(plan.manifests, plan.timeout, record)
    order = dependency_order(members)
    routers = {m.service: Router(engine.resources, m.target) for m in order}
    for member in order:
        routers[member.service].require_subsets(member.stable, member.canary)
    states = {m.service: RolloutState("canary", m.stable, m.canary, "progressing") for m in order}
    names = ", ".join(m.service for m in order)

    def graph_rollout(phase: str) -> dict[str, Any]:
        return {"strategy": "canary", "phase": phase, "order": [m.service for m in order],
                "graph": {m.service: {"depends_on": m.depends_on, **states[m.service].as_dict()} for m in order}}

    for index, weight in enumerate(plan.steps, start=1):
        engine.cancel_check()
        services: dict[str, Any] = {}
        at = now_iso()
        for member in order:
            weights = {member.stable: 100 - weight, member.canary: weight}
            state = states[member.service]
            state.steps.append({"step": index, "weights": weights, "at": at, "action": "shift"})
            state.phase = "completed" if weight == 100 else "progressing"
            routers[member.service].set_weights(weights, state)
            services[member.service] = {"weights": weights}
        step = {"step": index, "weights": services[order[0].service]["weights"], "at": at, "action": "shift",
                "order": [m.service for m in order], "services": services}
        record.steps.append(step)
        engine.say(f"graph canary step {index}/{len(plan.steps)}: {names} at {weight}%")
        if hook is None:
            continue
        try:
            hook(step)
        except PermanentError as exc:
            rolled = rollback_graph([routers[m.service] for m in order], str(exc))
            for member in order:
                states[member.service] = routers[member.service].state() or states[member.service]
            record.steps.append({"step": index, "weights": {order[0].stable: 100}, "at": now_iso(),
                                 "action": "rollback", "reason": str(exc), "order": rolled["order"],
                                 "services": rolled["services"]})
            record.rollout = graph_rollout("rolled-back")
            where = f"graph canary {names} rolled back at step {index} ({weight}%), in the order " \
                    f"{', '.join(rolled['order'])}"
            if rolled["problems"]:
                raise PermanentError(f"{where}: {exc}; read-back failed: {'; '.join(rolled['problems'])}",
                                     record.as_outputs()) from None
            raise PermanentError(f"{where}: {exc}; read-back: every stable version has 100%",
                                 record.as_outputs()) from None
        except RolloutPaused as exc:
            for member in order:
                states[member.service].phase = "paused"
                routers[member.service].set_weights(services[member.service]["weights"], states[member.service])
            record.rollout = graph_rollout("paused")
            raise RolloutPaused(f"graph canary {names} paused at step {index} ({weight}%): {exc}; decide with "
                                "'xci-cn rollout promote|rollback' per service", record.as_outputs()) from None
    record.rollout = graph_rollout("completed")
    return record


def promote_graph(routers: list[Router]) -> dict[str, Any]:
    """Promote several services, given dependencies first, each read back;
    stops at the first that cannot be promoted (the ones before it stay
    promoted: each is complete on its own)."""
    from xci_cn.k8s.strategies.lifecycle import promote

    return {"order": [r.target.service for r in routers],
            "services": {router.target.service: promote(router) for router in routers}}


def run_graph(kubeconfig: str, action: str, namespace: str, services: list[str], reason: str = "",
              cancel: threading.Event | None = None) -> dict[str, Any]:
    """``promote``, ``rollback`` or ``status`` of several services' rollouts,
    ``services`` given dependencies first (the rollout stage)."""
    from xci_cn.k8s.client import connect
    from xci_cn.k8s.resources import Resources
    from xci_cn.k8s.strategies.lifecycle import status

    cluster = connect(kubeconfig)
    try:
        routers = [Router(Resources(cluster, cancel), RolloutTarget.of(namespace, s)) for s in services]
        if action == "promote":
            return promote_graph(routers)
        if action == "rollback":
            return rollback_graph(routers, reason or "requested")
        return {"services": {r.target.service: status(r) for r in routers}}
    finally:
        cluster.close()
