"""Promote and rollback, shared by the strategies, the ``rollout`` stage
type and ``xci-cn rollout``. A rollback always ends with a read-back of the
stored routing: the VirtualService and DestinationRule, or the HTTPRoute."""

from __future__ import annotations

import threading
from typing import Any

from xci_cn.errors import InvalidInput, PermanentError
from xci_cn.k8s.client import connect
from xci_cn.k8s.gateway import GatewayRouter, open_router, rollout_target
from xci_cn.k8s.istio import RolloutState, Router, now_iso
from xci_cn.k8s.resources import Resources


def _state(router: Router | GatewayRouter) -> RolloutState:
    state = router.state()
    if state is None:
        where = getattr(router, "name", f"VirtualService {router.target.namespace}/{router.target.service}")
        raise InvalidInput(f"{where} has no rollout recorded by xci-cn: nothing to promote or roll back")
    return state


def rollback(router: Router | GatewayRouter, reason: str = "") -> dict[str, Any]:
    """All traffic back to the stable version, canary scaled to 0, then read
    the stored objects back and fail if the stable version lacks any traffic."""
    state = _state(router)
    if state.phase == "promoted":
        raise InvalidInput(f"rollout of {router.target.service} was already promoted to {state.stable}; "
                           "deploy the previous version to go back")
    state.phase = "rolled-back"
    step = {"step": len(state.steps), "weights": {state.stable: 100}, "at": now_iso(),
            "action": "rollback", "reason": reason}
    state.steps.append(step)
    router.set_weights({state.stable: 100}, state)
    scaled = router.scale_version(state.canary, 0) if state.canary else []
    problems = router.read_back_problems(state.stable)
    if problems:
        raise PermanentError("rollback read-back failed: " + "; ".join(problems))
    return {"phase": state.phase, "stable": state.stable, "canary": state.canary,
            "read_back": {"weights": router.weights(), "ok": True}, "scaled_down": scaled, "step": step}


def promote(router: Router | GatewayRouter) -> dict[str, Any]:
    """The canary becomes the stable version with all traffic; the old
    version is scaled to 0 (kept for the record, not serving)."""
    state = _state(router)
    if state.phase == "promoted":
        return {"phase": state.phase, "stable": state.stable, "note": "already promoted"}
    if state.phase == "rolled-back" or state.canary is None:
        raise InvalidInput(f"rollout of {router.target.service} is {state.phase}: nothing to promote")
    old = state.stable
    state.stable, state.canary, state.phase = state.canary, None, "promoted"
    step = {"step": len(state.steps), "weights": {state.stable: 100}, "at": now_iso(), "action": "promote"}
    state.steps.append(step)
    router.set_weights({state.stable: 100}, state)
    scaled = router.scale_version(old, 0)
    problems = router.read_back_problems(state.stable)
    if problems:
        raise PermanentError("promotion read-back failed: " + "; ".join(problems))
    return {"phase": state.phase, "stable": state.stable, "previous": old, "scaled_down": scaled,
            "step": step}


def status(router: Router | GatewayRouter) -> dict[str, Any]:
    state = router.state()
    out = {"service": router.target.service, "namespace": router.target.namespace,
           "host": router.target.host, "weights": router.weights(),
           "rollout": state.as_dict() if state else None}
    if isinstance(router, GatewayRouter):
        out.update({"router": "gateway-api", "route": router.name})
    return out


def run(kubeconfig: str, action: str, namespace: str, service: str, host: str | None = None,
        app: str | None = None, reason: str = "", cancel: threading.Event | None = None,
        router: str = "istio", route: str | None = None,
        backends: dict[str, str] | None = None) -> dict[str, Any]:
    """``promote``, ``rollback`` or ``status`` of one service's rollout in the
    cluster of ``kubeconfig`` (the rollout stage and ``xci-cn rollout``),
    through Istio's VirtualService or the Gateway API's HTTPRoute."""
    cluster = connect(kubeconfig)
    try:
        opened = open_router(Resources(cluster, cancel),
                             rollout_target(router, namespace, service, host, app, route, backends))
        if action == "promote":
            return promote(opened)
        if action == "rollback":
            return rollback(opened, reason or "requested")
        return status(opened)
    finally:
        cluster.close()
