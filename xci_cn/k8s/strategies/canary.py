"""Canary: DestinationRule subsets by version label, VirtualService weights
stepped (default 10 -> 25 -> 50 -> 100), optionally mirroring a share of the
traffic to the canary; the hook between steps decides whether to go on."""

from __future__ import annotations

from xci_cn.errors import PermanentError, RolloutPaused
from xci_cn.k8s.istio import RolloutState, now_iso
from xci_cn.k8s.strategies.base import DeployPlan, DeployRecord, Engine, StepHook, start_traffic_rollout
from xci_cn.k8s.strategies.lifecycle import rollback


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
        if hook is not None:
            try:
                hook(step)
            except PermanentError as exc:
                result = rollback(router, reason=str(exc))
                record.steps.append(result["step"])
                record.rollout = {**state.as_dict(), "phase": "rolled-back", "read_back": result["read_back"]}
                raise PermanentError(f"canary {plan.canary} rolled back at step {index} ({weight}%): {exc}; "
                                     f"read-back: {plan.stable} has 100%", record.as_outputs()) from None
            except RolloutPaused as exc:
                state.phase = "paused"
                router.set_weights(weights, state, mirror)  # records the phase; weights stay
                record.rollout = state.as_dict()
                raise RolloutPaused(f"canary {plan.canary} paused at step {index} ({weight}%): {exc}; "
                                    f"decide with 'xci-cn rollout promote|rollback -n {plan.target.namespace} "
                                    f"--service {plan.target.service}'", record.as_outputs()) from None
    record.rollout = state.as_dict()
    return record
