"""Health of stored objects, in the style of Argo CD's rules.

``assess(obj)`` is a pure function of one object as the API server returns
it: Healthy, Progressing or Degraded, with a reason a person can act on.
``wait_healthy`` watches (never sleep-polls) many objects at once until all
are Healthy, one is Degraded, or the one overall deadline passes. It also
watches the pods of the workloads it waits for: a container in a terminal
state (``pod_failure``) makes its Deployment, StatefulSet or DaemonSet
Degraded at once instead of Progressing until the deadline.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from xci_cn.k8s.client import is_transient
from xci_cn.k8s.resources import ResourceInfo, Resources

HEALTHY, PROGRESSING, DEGRADED = "Healthy", "Progressing", "Degraded"


@dataclass
class Health:
    status: str
    message: str = ""


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}


def _generation_observed(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return status.get("observedGeneration", 0) >= obj["metadata"].get("generation", 0)


def _deployment(obj: dict[str, Any]) -> Health:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if spec.get("paused"):
        return Health(PROGRESSING, "rollout is paused")
    conditions = _conditions(obj)
    progressing = conditions.get("Progressing", {})
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return Health(DEGRADED, f"ProgressDeadlineExceeded: {progressing.get('message', '')}".strip())
    if not _generation_observed(obj):
        return Health(PROGRESSING, "waiting for the controller to observe the new generation")
    desired = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    total = status.get("replicas", 0)
    available = status.get("availableReplicas", 0)
    if updated < desired:
        return Health(PROGRESSING, f"{updated} of {desired} replicas updated")
    if total > updated:
        return Health(PROGRESSING, f"{total - updated} old replicas pending termination")
    if available < updated:
        return Health(PROGRESSING, f"{available} of {updated} updated replicas available")
    return Health(HEALTHY, f"{available}/{desired} available")


def _statefulset(obj: dict[str, Any]) -> Health:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if not _generation_observed(obj):
        return Health(PROGRESSING, "waiting for the controller to observe the new generation")
    desired = spec.get("replicas", 1)
    ready = status.get("readyReplicas", 0)
    if ready < desired:
        return Health(PROGRESSING, f"{ready} of {desired} replicas ready")
    strategy = (spec.get("updateStrategy") or {}).get("type", "RollingUpdate")
    if strategy == "RollingUpdate" and status.get("updateRevision") != status.get("currentRevision"):
        return Health(PROGRESSING, f"{status.get('updatedReplicas', 0)} of {desired} replicas updated")
    return Health(HEALTHY, f"{ready}/{desired} ready")


def _daemonset(obj: dict[str, Any]) -> Health:
    status = obj.get("status") or {}
    if not _generation_observed(obj):
        return Health(PROGRESSING, "waiting for the controller to observe the new generation")
    desired = status.get("desiredNumberScheduled", 0)
    updated = status.get("updatedNumberScheduled", 0)
    available = status.get("numberAvailable", 0)
    if updated < desired:
        return Health(PROGRESSING, f"{updated} of {desired} pods updated")
    if available < desired:
        return Health(PROGRESSING, f"{available} of {desired} pods available")
    return Health(HEALTHY, f"{available}/{desired} available")


def _job(obj: dict[str, Any]) -> Health:
    conditions = _conditions(obj)
    if conditions.get("Failed", {}).get("status") == "True":
        return Health(DEGRADED, f"failed: {conditions['Failed'].get('message', '')}".strip())
    if conditions.get("Complete", {}).get("status") == "True":
        return Health(HEALTHY, "complete")
    return Health(PROGRESSING, "running")


def _service(obj: dict[str, Any]) -> Health:
    spec = obj.get("spec") or {}
    if spec.get("type") == "LoadBalancer":
        ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress")
        if not ingress:
            return Health(PROGRESSING, "waiting for a load-balancer address")
    return Health(HEALTHY)


# Waiting reasons a real kubelet reports that do not heal by waiting (as in
# Argo CD's pod health).
TERMINAL_WAITING = ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull",
                    "CreateContainerConfigError", "CreateContainerError", "InvalidImageName",
                    "RunContainerError")


def pod_failure(obj: dict[str, Any]) -> str | None:
    """One line naming the pod, the container and why it cannot become
    ready, or None. Crash loops are recognised by a restart and a nonzero
    exit code: kubelet 1.36 shows the CrashLoopBackOff reason only after
    about five restarts."""
    status = obj.get("status") or {}
    pod = obj.get("metadata", {}).get("name", "?")
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        name = container.get("name")
        state = container.get("state") or {}
        waiting = state.get("waiting") or {}
        terminated = state.get("terminated") or {}
        last = (container.get("lastState") or {}).get("terminated") or {}
        restarts = container.get("restartCount", 0)
        if waiting.get("reason") in TERMINAL_WAITING:
            detail = waiting.get("message", "")
            if waiting["reason"] == "CrashLoopBackOff" and last:
                detail = f"exit code {last.get('exitCode')} ({last.get('reason', '')}), {restarts} restarts"
            return f"pod {pod} container {name}: {waiting['reason']}: {detail}".rstrip(": ")
        ended = terminated or (last if not state.get("running") else {})
        if ended.get("reason") == "OOMKilled" and (restarts or terminated):
            return (f"pod {pod} container {name}: OOMKilled: exceeded its memory limit "
                    f"(exit code {ended.get('exitCode')}, {restarts} restarts)")
        if restarts >= 1 and not state.get("running") and ended.get("exitCode", 0) != 0:
            return (f"pod {pod} container {name}: CrashLoop: exited with code {ended.get('exitCode')} "
                    f"({ended.get('reason', 'Error')}), {restarts} restarts")
    return None


def _pod(obj: dict[str, Any]) -> Health:
    status = obj.get("status") or {}
    phase = status.get("phase")
    if phase == "Failed":
        return Health(DEGRADED, status.get("message") or "pod failed")
    if phase == "Succeeded":
        return Health(HEALTHY, "succeeded")
    failure = pod_failure(obj)
    if failure:
        return Health(DEGRADED, failure)
    if _conditions(obj).get("Ready", {}).get("status") == "True":
        return Health(HEALTHY, "ready")
    return Health(PROGRESSING, f"phase {phase or 'Pending'}")


def _crd(obj: dict[str, Any]) -> Health:
    if _conditions(obj).get("Established", {}).get("status") == "True":
        return Health(HEALTHY, "established")
    return Health(PROGRESSING, "not established yet")


RULES = {
    ("apps", "Deployment"): _deployment,
    ("apps", "StatefulSet"): _statefulset,
    ("apps", "DaemonSet"): _daemonset,
    ("batch", "Job"): _job,
    ("", "Service"): _service,
    ("", "Pod"): _pod,
    ("apiextensions.k8s.io", "CustomResourceDefinition"): _crd,
}


def needs_waiting(api_version: str, kind: str) -> bool:
    group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
    return (group, kind) in RULES


def assess(obj: dict[str, Any]) -> Health:
    """Health of one object; kinds without a rule (ConfigMap, Istio's
    VirtualService, Gateway …) are Healthy once the API server stored them."""
    api_version = obj.get("apiVersion", "")
    group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
    rule = RULES.get((group, obj.get("kind", "")))
    return rule(obj) if rule else Health(HEALTHY, "stored")


@dataclass
class Target:
    """One object to wait for. ``applied`` is set by whoever writes it, with
    the generation the write produced: until then (or while the stored
    object is older) the target cannot count as Healthy, so waiting may start
    before the writes end without trusting a stale, healthy-looking object."""

    info: ResourceInfo
    namespace: str | None
    name: str
    health: Health = field(default_factory=lambda: Health(PROGRESSING, "not seen yet"))
    last: dict[str, Any] | None = None
    applied: threading.Event = field(default_factory=threading.Event)
    applied_generation: int = 0
    pod_failures: dict[str, str] = field(default_factory=dict)  # pod name -> pod_failure()

    def ref(self) -> str:
        namespace = f"{self.namespace}/" if self.namespace else ""
        return f"{self.info.kind} {namespace}{self.name}"

    def mark_applied(self, generation: int | None) -> None:
        self.applied_generation = generation or 0
        self.applied.set()

    def observe(self, obj: dict[str, Any] | None) -> None:
        self.last = obj
        if obj is None:
            self.health = Health(PROGRESSING, "deleted")
        elif not self.applied.is_set():
            self.health = Health(PROGRESSING, "not applied yet")
        elif obj["metadata"].get("generation", 0) < self.applied_generation:
            self.health = Health(PROGRESSING, "waiting for the applied generation")
        else:
            self.health = assess(obj)
            if self.health.status != HEALTHY and self.pod_failures:
                self.health = Health(DEGRADED, next(iter(self.pod_failures.values())))

    def selects(self, pod: dict[str, Any]) -> bool:
        """The pod belongs to this workload (its selector's matchLabels)."""
        selector = ((self.last or {}).get("spec") or {}).get("selector") or {}
        wanted = selector.get("matchLabels") or {}
        labels = pod["metadata"].get("labels") or {}
        return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


@dataclass
class WaitResult:
    targets: list[Target]
    elapsed: float

    @property
    def not_healthy(self) -> list[Target]:
        return [t for t in self.targets if t.health.status != HEALTHY]

    @property
    def degraded(self) -> list[Target]:
        return [t for t in self.targets if t.health.status == DEGRADED]


WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")

# A watch is re-opened at least this often, to notice cancellation, the
# deadline, and targets marked applied after their object was last seen.
WATCH_WINDOW_SECONDS = 1


def wait_healthy(resources: Resources, targets: list[Target], deadline: float,
                 cancel: threading.Event | None = None) -> WaitResult:
    """Watch every target's kind/namespace until all are Healthy, one is
    Degraded, or ``deadline`` (time.monotonic) passes. One thread per watched
    collection: list once, then watch from that resourceVersion; re-list only
    when the watch expired (410 Gone), never on a timer."""
    started = time.monotonic()
    groups: dict[tuple[ResourceInfo, str | None], dict[str, Target]] = defaultdict(dict)
    for target in targets:
        groups[(target.info, target.namespace)][target.name] = target
    stop = threading.Event()
    errors: list[BaseException] = []

    def done() -> bool:
        return stop.is_set() or (cancel is not None and cancel.is_set()) or time.monotonic() >= deadline

    def _follow_once(info: ResourceInfo, namespace: str | None, wanted: dict[str, Target]) -> None:
        """List, then watch from that version; returns when settled or done."""
        def seen(kind: str, obj: dict[str, Any]) -> None:
            target = wanted.get(obj["metadata"].get("name"))
            if target is not None:
                obj.setdefault("apiVersion", info.group_version)
                obj.setdefault("kind", info.kind)
                target.observe(None if kind == "DELETED" else obj)

        def settled() -> bool:
            for target in wanted.values():  # applied since last seen?
                if target.last is not None and target.health.status != HEALTHY:
                    target.observe(target.last)
            return _settled(wanted.values())

        _list_watch(resources, info, namespace, seen, settled, done)

    def pods_of(namespace: str, workloads: list[Target]) -> None:
        """Feed terminal container states into the workloads' health."""
        info = resources.lookup("v1", "Pod")

        def seen(kind: str, pod: dict[str, Any]) -> None:
            name = pod["metadata"].get("name", "")
            failure = None if kind == "DELETED" else pod_failure(pod)
            for target in workloads:
                if failure and target.selects(pod):
                    target.pod_failures[name] = failure
                else:
                    target.pod_failures.pop(name, None)
                if target.last is not None:
                    target.observe(target.last)

        if info is not None:
            _list_watch(resources, info, namespace, seen, lambda: _settled(workloads), done)

    def guarded(body: Any, *args: Any) -> None:
        try:
            while not done():
                try:
                    body(*args)
                    return
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    time.sleep(0.5)  # the API server went away mid-watch: list again once it is back
        except BaseException as exc:  # noqa: BLE001 - reported by the caller's thread
            errors.append(exc)
        finally:
            if any(t.health.status == DEGRADED for t in targets):
                stop.set()

    by_namespace: dict[str, list[Target]] = defaultdict(list)
    for target in targets:
        if target.info.kind in WORKLOADS and target.namespace:
            by_namespace[target.namespace].append(target)
    threads = [threading.Thread(target=guarded, args=(_follow_once, info, ns, wanted), daemon=True,
                                name=f"watch-{info.kind}-{ns}")
               for (info, ns), wanted in groups.items()]
    threads += [threading.Thread(target=guarded, args=(pods_of, ns, workloads), daemon=True,
                                 name=f"watch-pods-{ns}")
                for ns, workloads in by_namespace.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return WaitResult(targets, time.monotonic() - started)


def _list_watch(resources: Resources, info: ResourceInfo, namespace: str | None,
                seen: Any, settled: Any, done: Any) -> None:
    """List, then watch from that resourceVersion, passing every object to
    ``seen(kind, obj)``; re-list only when the watch expired (410 Gone).
    Returns once ``settled()`` or ``done()``."""
    while not done():
        listing = resources.list(info, namespace)
        for item in listing.get("items", []):
            seen("ADDED", item)
        version = listing["metadata"]["resourceVersion"]
        expired = False
        while not done() and not expired:
            if settled():
                return
            for kind, obj in resources.watch(info, namespace, version, WATCH_WINDOW_SECONDS):
                if kind == "ERROR":
                    expired = True  # 410 Gone: list again
                    break
                version = obj["metadata"].get("resourceVersion", version)
                if kind != "BOOKMARK":
                    seen(kind, obj)
                if settled() or done():
                    return


def _settled(targets: Any) -> bool:
    return all(t.health.status == HEALTHY for t in targets) or any(
        t.health.status == DEGRADED for t in targets)


def explain(resources: Resources, target: Target, events: int = 3) -> str:
    """Why a target is not ready: its health, conditions and recent events;
    for a workload, also its first pod that is not ready: that pod's last
    warning (a failing probe) and, after a crash, its container's last output."""
    parts = [f"{target.ref()}: {target.health.status}: {target.health.message}"]
    conditions = (target.last or {}).get("status", {}) or {}
    for condition in conditions.get("conditions") or []:
        if condition.get("status") != "True" or condition.get("type") in ("Progressing",):
            parts.append(f"condition {condition.get('type')}={condition.get('status')} "
                         f"{condition.get('reason', '')}: {condition.get('message', '')}".rstrip(": "))
    if target.namespace:
        try:
            parts += [f"event {e.get('reason')}: {e.get('message')}"
                      for e in _events(resources, target.namespace, target.name)[-events:]]
            if target.info.kind in WORKLOADS:
                parts += _unready_pod(resources, target)
        except Exception:  # noqa: BLE001 - the explanation must not hide the timeout
            pass
    return "; ".join(parts)


def _events(resources: Resources, namespace: str, name: str) -> list[dict[str, Any]]:
    info = resources.lookup("v1", "Event")
    if info is None:
        return []
    listing = resources.list(info, namespace, field_selector=f"involvedObject.name={name}")
    return sorted(listing.get("items", []), key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


def _unready_pod(resources: Resources, target: Target) -> list[str]:
    info = resources.lookup("v1", "Pod")
    if info is None or target.namespace is None:
        return []
    for pod in resources.list(info, target.namespace).get("items", []):
        if not target.selects(pod) or _conditions(pod).get("Ready", {}).get("status") == "True":
            continue
        name = pod["metadata"]["name"]
        out = []
        warnings = [e for e in _events(resources, target.namespace, name) if e.get("type") == "Warning"]
        if warnings:
            out.append(f"pod {name} event {warnings[-1].get('reason')}: {warnings[-1].get('message')}")
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            if container.get("restartCount", 0) > 0:
                lines = _last_output(resources, target.namespace, name, container)
                if lines:
                    out.append(f"pod {name} container {container['name']} last output: {lines[:400]}")
        return out
    return []


def _last_output(resources: Resources, namespace: str, pod: str, container: dict[str, Any]) -> str:
    """The crashed instance's last lines: the current one while it is not
    running (the kubelet may have removed older instances' logs), else the
    previous one."""
    running = bool((container.get("state") or {}).get("running"))
    for previous in ((True,) if running else (False, True)):
        try:
            text = resources.pod_log(namespace, pod, container["name"], previous=previous, tail_lines=3)
        except Exception:  # noqa: BLE001 - no log is no explanation, not an error
            continue
        if text and not text.startswith("unable to retrieve container logs"):
            return " / ".join(line for line in text.splitlines() if line.strip())
    return ""
