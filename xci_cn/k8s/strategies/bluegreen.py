"""Blue/green: the new version runs beside the old; all traffic switches at
once; the old version stays (scaled up) until promotion, for rollback."""

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
    state = RolloutState("bluegreen", plan.stable, plan.canary, "switched")
    weights = {plan.stable: 0, plan.canary: 100}
    step = {"step": 1, "weights": weights, "at": now_iso(), "action": "switch"}
    state.steps.append(step)
    router.set_weights(weights, state)
    record.steps.append(step)
    engine.say(f"blue/green: switched all traffic from {plan.stable} to {plan.canary}")
    run_step_hook(hook, step, router, state, record, lambda action: f"blue/green switch to {plan.canary} {action}")
    record.rollout = state.as_dict()
    return record
