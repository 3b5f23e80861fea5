"""Rolling: apply the graph; Kubernetes rolls each Deployment; wait."""

from __future__ import annotations

from xci_cn.k8s.strategies.base import DeployPlan, DeployRecord, Engine, StepHook


def run(engine: Engine, plan: DeployPlan, hook: StepHook | None = None) -> DeployRecord:
    record = DeployRecord()
    engine.apply_and_wait(plan.manifests, plan.timeout, record, plan.namespace)
    return record
