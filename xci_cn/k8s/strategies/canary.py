"""Canary: DestinationRule subsets by version label, VirtualService weights
stepped (default 10 -> 25 -> 50 -> 100), optionally mirroring a share of the
traffic to the canary; the hook between steps decides whether to go on."""

from __future__ import annotations

from xci_cn.k8s.istio import RolloutState, now_iso
from xci_cn.k8s.strategies.base import (
    DeployPlan,
    DeployRecord,
    Engine,
    StepHook,
    run_step_hook,
    start_traffic_rollout,
)


def run(engine: Engine, plan: DeployPlan, hook: StepHook | None = None) -> DeployRecord:
    record, router = start_traffic_rollout(engine, plan)
    assert plan.target and plan.stable and plan.canary
    state = RolloutState("canary", plan.stable, plan.canary, "progressing")
    for index, weight in enumerate(plan.steps, start=1):
        engine.cancel_check()
        weights = {plan.stable: 100 - weight, plan.canary: weight}
        mirror = (plan.canary, plan.mirror) if plan.mirror and weight < 100 else None
        step = {"step": index, "weights": weights, "at": now_iso(), "action": "shift"}
        if mirror:
            step["mirror"] = {"subset": plan.canary, "percent": plan.mirror}
        state.steps.append(step)
        state.phase = "completed" if weight == 100 else "progressing"
        router.set_weights(weights, state, mirror)
        record.steps.append(step)
        engine.say(f"canary step {index}/{len(plan.steps)}: {plan.stable} {100 - weight}% / "
                   f"{plan.canary} {weight}%")
        def where(action: str, index: int = index, weight: int = weight) -> str:
            return f"canary {plan.canary} {action} at step {index} ({weight}%)"

        run_step_hook(hook, step, router, state, record, where, mirror)
    record.rollout = state.as_dict()
    return record
