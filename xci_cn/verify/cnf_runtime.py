"""Runtime rules of the ``cnf`` check, on the real pods of the deployed graph
(the CNTi "essential" tests that need a running workload).

Each rule acts on every chosen Deployment at once (one thread each), is
bounded by the check's ``timeout`` and puts back what it changed (replicas,
pod template) before it returns, also when it fails:

* graceful-termination: delete one pod; its containers must exit by
  themselves (not 137, SIGKILL) before the grace period ends (measured);
* recovery: SIGKILL the main process of one container; the kubelet restarts
  it and the pod is Ready again within ``recovery_within`` (measured). The
  process is found on this host through its cgroup: the sandbox's real node
  runs here; on other nodes the rule is skipped;
* scale: to 3 replicas, held there for ``scale_hold`` once all are Ready,
  and back, with real requests to the Services that select the pods during
  the change: failures are counted (by phase and cause) and may be at most
  ``scale_failure_ratio``;
* rolling-update: a new image (``update_image``) or, by default, a pod
  template annotation, then the old template back: the old ReplicaSet must
  own the pods again; failed requests within ``request_budget``;
* logs-stdout: the kubelet serves log output of every container.

Pods on kwok's simulated nodes have no processes: the rules skip them.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xci_cn.errors import EnvironmentProblem
from xci_cn.k8s.resources import ResourceInfo, Resources
from xci_cn.verify.cnf import CnfCheck, Finding, Rule, Subject

KWOK_NODE = ("kwok.x-k8s.io/node", "fake")
SIGKILL_EXIT = 137
POLL_SECONDS = 0.25
UPDATE_ANNOTATION = "cnf.xci-cn.opnfv.org/update"
Sleep = Callable[[float], None]


@dataclass
class Outcome:
    passed: bool
    message: str
    container: str | None = None
    skipped: bool = False
    measured: dict[str, Any] | None = None


class _Skip(Exception):
    """The rule cannot judge this workload here (simulated node, no pods)."""


class Runtime:
    """The runtime rules on one cluster; ``sleep`` is the stage's cancellable sleep."""

    def __init__(self, resources: Resources, spec: CnfCheck, sleep: Sleep):
        self.resources = resources
        self.spec = spec
        self.sleep = sleep
        self.pods = self._served("v1", "Pod")
        self.nodes = self._served("v1", "Node")
        self.deployments = self._served("apps/v1", "Deployment")
        self.replica_sets = self._served("apps/v1", "ReplicaSet")
        self._simulated: dict[str, bool] = {}

    def _served(self, api_version: str, kind: str) -> ResourceInfo:
        info = self.resources.lookup(api_version, kind)
        if info is None:
            raise EnvironmentProblem(f"the cluster does not serve {kind} ({api_version})")
        return info

    def check(self, rule: Rule, workloads: list[Subject], services: list[Subject]) -> list[Finding]:
        judge = {"graceful-termination": self.graceful_termination, "recovery": self.recovery,
                 "scale": self.scale, "rolling-update": self.rolling_update, "logs-stdout": self.logs_stdout}
        act = judge[rule.name]

        def one(subject: Subject) -> Finding:
            started = time.monotonic()
            try:
                if subject.kind != "Deployment" and rule.name != "logs-stdout":
                    raise _Skip(f"{rule.name} acts on Deployments; this is a {subject.kind}")
                outcome = act(subject, services)
            except _Skip as exc:
                outcome = Outcome(True, str(exc), skipped=True)
            measured = {"seconds": round(time.monotonic() - started, 2), **(outcome.measured or {})}
            return Finding(rule.name, subject.ref, outcome.passed, outcome.message, container=outcome.container,
                           where=subject.where, source="xci-cn runtime", skipped=outcome.skipped,
                           fix="" if outcome.passed else FIXES[rule.name], measured=measured)

        with ThreadPoolExecutor(max_workers=max(len(workloads), 1), thread_name_prefix=f"cnf-{rule.name}") as pool:
            return list(pool.map(one, workloads))

    # -- the rules --------------------------------------------------------------------
    def graceful_termination(self, subject: Subject, services: list[Subject]) -> Outcome:
        pod = self._ready_pod(subject)
        name, namespace = pod["metadata"]["name"], subject.namespace
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        # The containers' processes on this host tell when they exited; the
        # pod object goes later (the kubelet reports, then deletes).
        pids = {s["name"]: main_process(s.get("containerID", "").rpartition("//")[2])
                for s in pod["status"].get("containerStatuses") or []}
        watched = {c: pid for c, pid in pids.items() if pid is not None}
        started = time.monotonic()
        self.resources.delete(self.pods, name, namespace)
        exits: dict[str, int] = {}
        exited: dict[str, float] = {}
        deadline = started + grace + 15
        while time.monotonic() < deadline:
            for container, pid in watched.items():
                if container not in exited and not Path(f"/proc/{pid}").exists():
                    exited[container] = round(time.monotonic() - started, 2)
            current = self.resources.get(self.pods, name, namespace)
            gone = current is None or current["metadata"]["uid"] != pod["metadata"]["uid"]
            statuses = [] if current is None or gone else (current.get("status") or {}).get("containerStatuses") or []
            for status in statuses:
                terminated = (status.get("state") or {}).get("terminated")
                if terminated and status["name"] not in exits:
                    exits[status["name"]] = terminated.get("exitCode", -1)
            if gone or (watched and len(exited) == len(watched) and len(exits) == len(watched)):
                break
            self.sleep(POLL_SECONDS / 2)
        gone_seconds = round(time.monotonic() - started, 2)
        seconds = max(exited.values()) if watched and len(exited) == len(watched) else gone_seconds
        self._wait_available(subject, self.spec.timeout)
        killed = sorted(c for c, code in exits.items() if code == SIGKILL_EXIT)
        measured = {"exit_seconds": seconds, "grace_seconds": grace, "exit_codes": exits,
                    "measured_by": "process" if watched else "pod object"}
        if killed or seconds >= grace:
            why = f"container {', '.join(killed)} exited 137 (SIGKILL)" if killed else "it was still running"
            return Outcome(False, f"pod {name}: {why} {seconds}s after deletion; grace period {grace}s",
                           container=killed[0] if killed else None, measured=measured)
        codes = ", ".join(f"{c} exit {code}" for c, code in sorted(exits.items())) or "gone"
        return Outcome(True, f"pod {name} exited on SIGTERM in {seconds}s of its {grace}s grace period ({codes})",
                       measured=measured)

    def recovery(self, subject: Subject, services: list[Subject]) -> Outcome:
        pod = self._ready_pod(subject)
        name, namespace = pod["metadata"]["name"], subject.namespace
        status = pod["status"]["containerStatuses"][0]
        container, restarts = status["name"], status.get("restartCount", 0)
        pid = main_process(status.get("containerID", "").rpartition("//")[2])
        if pid is None:
            raise _Skip(f"the process of container {container} of pod {name} is not on this host")
        started = time.monotonic()
        os.kill(pid, signal.SIGKILL)

        def recovered() -> bool:
            current = self.resources.get(self.pods, name, namespace) or {}
            mine = [s for s in current.get("status", {}).get("containerStatuses") or [] if s["name"] == container]
            return bool(mine) and mine[0].get("restartCount", 0) > restarts and _ready(current)

        within = self.spec.recovery_within
        ok = self._until(recovered, within)
        seconds = round(time.monotonic() - started, 2)
        if not ok:
            self._wait_available(subject, self.spec.timeout)
        measured = {"recovery_seconds": seconds, "pid": pid}
        if ok:
            return Outcome(True, f"killed pid {pid}; restarted and Ready in {seconds}s (limit {within:g}s)",
                           container=container, measured=measured)
        return Outcome(False, f"killed pid {pid}; not restarted and Ready within {within:g}s", container=container,
                       measured=measured)

    def scale(self, subject: Subject, services: list[Subject]) -> Outcome:
        self._ready_pod(subject)
        original = self._deployment(subject)["spec"].get("replicas", 1)
        targets = self._targets(subject, services)
        if (silent := self._answering(targets)) is not None:
            return Outcome(False, silent)
        with Traffic(targets) as traffic:
            try:
                traffic.phase = "out"
                self._scale_to(subject, 3)
                out = self._wait_available(subject, self.spec.timeout, replicas=3)
                if out is not None:
                    # Ready is not serving: requests go on at 3 replicas for a
                    # while, or a pod that is Ready but refuses is hardly seen.
                    traffic.phase = "held"
                    self.sleep(self.spec.scale_hold)
            finally:
                traffic.phase = "in"
                self._scale_to(subject, original)
            back = self._wait_available(subject, self.spec.timeout, replicas=original)
            self._wait_pods_gone(subject, self.spec.timeout)  # scaled in once the extra pods are gone
        measured = {"out_seconds": out, "in_seconds": back, **traffic.counts()}
        problems = [f"not 3 Ready replicas within {self.spec.timeout:g}s" if out is None else "",
                    f"not back to {original} within {self.spec.timeout:g}s" if back is None else "",
                    traffic.verdict(int(self.spec.scale_failure_ratio * traffic.counts()["requests"]))]
        problems = [p for p in problems if p]
        held = f", held {self.spec.scale_hold:g}s" if out is not None else ""
        text = f"1->3->{original}: out {out}s{held}, in {back}s; {traffic.summary()}"
        return Outcome(not problems, "; ".join(problems) + f" ({text})" if problems else text, measured=measured)

    def rolling_update(self, subject: Subject, services: list[Subject]) -> Outcome:
        self._ready_pod(subject)
        before = self._deployment(subject)
        old_rs = self._current_replica_set(subject, before)
        template = before["spec"]["template"]
        containers = template["spec"]["containers"]
        patch: list[dict[str, Any]] = [{"op": "replace", "path": f"/spec/template/spec/containers/{i}/image",
                  "value": self.spec.update_image[c["name"]]}
                 for i, c in enumerate(containers) if c["name"] in self.spec.update_image]
        change = "image " + ", ".join(p["value"] for p in patch) if patch else "a pod template annotation"
        if not patch:
            patch = [{"op": "add", "path": "/spec/template/metadata/annotations",
                      "value": {**(template["metadata"].get("annotations") or {}),
                                UPDATE_ANNOTATION: str(time.time())}}]
        targets = self._targets(subject, services)
        if (silent := self._answering(targets)) is not None:
            return Outcome(False, silent)
        with Traffic(targets) as traffic:
            try:
                traffic.phase = "update"
                self._patch_deployment(subject, patch, "application/json-patch+json")
                updated = self._wait_available(subject, self.spec.timeout)
                self._wait_pods_gone(subject, self.spec.timeout)
            finally:  # the undo: the old template back, whose ReplicaSet still exists
                traffic.phase = "undo"
                self._patch_deployment(subject, [{"op": "replace", "path": "/spec/template", "value": template}],
                                       "application/json-patch+json")
            undone = self._wait_available(subject, self.spec.timeout)
            self._wait_pods_gone(subject, self.spec.timeout)
        now_rs = self._current_replica_set(subject, self._deployment(subject))
        measured = {"update_seconds": updated, "undo_seconds": undone, "old_replica_set": old_rs,
                    "replica_set_after_undo": now_rs, **traffic.counts()}
        problems = [f"update with {change} not complete within {self.spec.timeout:g}s" if updated is None else "",
                    f"undo not complete within {self.spec.timeout:g}s" if undone is None else "",
                    f"after the undo ReplicaSet {now_rs} owns the pods, not the old {old_rs}"
                    if now_rs != old_rs else "", traffic.verdict(self.spec.request_budget)]
        problems = [p for p in problems if p]
        text = f"update ({change}) {updated}s, undo {undone}s, ReplicaSet {old_rs} back; {traffic.summary()}"
        return Outcome(not problems, "; ".join(problems) if problems else text, measured=measured)

    def logs_stdout(self, subject: Subject, services: list[Subject]) -> Outcome:
        pod = self._ready_pod(subject)
        name = pod["metadata"]["name"]
        silent = []
        sizes = {}
        for container in pod["spec"]["containers"]:
            text = self.resources.request("GET", self.pods.path(subject.namespace, name) + "/log",
                                          query=[("container", container["name"]), ("limitBytes", 4096)])
            sizes[container["name"]] = len(text or "")
            if not text:
                silent.append(container["name"])
        if silent:
            return Outcome(False, f"pod {name}: no log output through the kubelet from {', '.join(silent)}",
                           container=silent[0], measured={"log_bytes": sizes})
        return Outcome(True, f"pod {name}: log output from every container "
                             f"({', '.join(f'{c} {n} bytes' for c, n in sizes.items())})",
                       measured={"log_bytes": sizes})

    # -- helpers ----------------------------------------------------------------------
    def _deployment(self, subject: Subject) -> dict[str, Any]:
        body = self.resources.get(self.deployments, subject.name, subject.namespace)
        if body is None:
            raise _Skip(f"{subject.ref} no longer exists")
        return body

    def _pods(self, subject: Subject) -> list[dict[str, Any]]:
        labels = (subject.body.get("spec", {}).get("selector") or {}).get("matchLabels") or \
            (subject.body.get("metadata", {}).get("labels") if subject.kind == "Pod" else None) or {}
        if subject.kind == "Pod":
            pod = self.resources.get(self.pods, subject.name, subject.namespace)
            return [pod] if pod else []
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        return self.resources.list(self.pods, subject.namespace, label_selector=selector).get("items", [])

    def _ready_pod(self, subject: Subject) -> dict[str, Any]:
        """A Ready pod of the workload on a real node, or _Skip."""
        pods = [p for p in self._pods(subject) if not p["metadata"].get("deletionTimestamp")]
        if not pods:
            raise _Skip(f"{subject.ref} has no pods")
        real = [p for p in pods if not self._is_simulated(p["spec"].get("nodeName"))]
        if not real:
            raise _Skip(f"the pods of {subject.ref} run on simulated (kwok) nodes: no processes to judge")
        ready = [p for p in real if _ready(p)]
        if not ready:
            raise _Skip(f"no pod of {subject.ref} is Ready")
        return sorted(ready, key=lambda p: p["metadata"]["name"])[0]

    def _is_simulated(self, node: str | None) -> bool:
        if not node:
            return False
        if node not in self._simulated:
            body = self.resources.get(self.nodes, node, None) or {}
            annotations = body.get("metadata", {}).get("annotations") or {}
            self._simulated[node] = annotations.get(KWOK_NODE[0]) == KWOK_NODE[1]
        return self._simulated[node]

    def _answering(self, targets: list[tuple[str, int, bool]], in_a_row: int = 3) -> str | None:
        """Wait until every target answers ``in_a_row`` times running, so that
        a rule counts what its own change does: a pod Ready again after the
        previous rule reaches kube-proxy's rules a moment later (until then
        its Service refuses). None when they answer, else why not."""
        answered, last = 0, ""

        def settled() -> bool:
            nonlocal answered, last
            errors = [f"{ip}:{port} {error}" for ip, port, http in targets
                      if (error := request(ip, port, http)) is not None]
            answered, last = (0, errors[0]) if errors else (answered + 1, last)
            return answered >= in_a_row

        if not targets or self._until(settled, self.spec.timeout):
            return None
        return f"its Services did not answer within {self.spec.timeout:g}s before the change (last: {last})"

    def _until(self, predicate: Callable[[], bool], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            self.sleep(POLL_SECONDS)

    def _wait_available(self, subject: Subject, seconds: float, replicas: int | None = None) -> float | None:
        """Seconds until the Deployment's rollout is complete (None: not in time)."""
        started = time.monotonic()

        def complete() -> bool:
            body = self._deployment(subject)
            spec, status = body["spec"], body.get("status") or {}
            want = spec.get("replicas", 1) if replicas is None else replicas
            return status.get("observedGeneration", 0) >= body["metadata"].get("generation", 0) and \
                spec.get("replicas", 1) == want and all(status.get(k, 0) == want for k in (
                    "replicas", "updatedReplicas", "readyReplicas", "availableReplicas"))

        return round(time.monotonic() - started, 2) if self._until(complete, seconds) else None

    def _wait_pods_gone(self, subject: Subject, seconds: float) -> None:
        """Until no pod of the workload is terminating (their requests drain)."""
        self._until(lambda: not any(p["metadata"].get("deletionTimestamp") for p in self._pods(subject)), seconds)

    def _scale_to(self, subject: Subject, replicas: int) -> None:
        self.resources.request("PATCH", self.deployments.path(subject.namespace, subject.name) + "/scale",
                               body={"spec": {"replicas": replicas}},
                               content_type="application/merge-patch+json")

    def _patch_deployment(self, subject: Subject, patch: list[dict[str, Any]], content_type: str) -> None:
        self.resources.request("PATCH", self.deployments.path(subject.namespace, subject.name), body=patch,
                               content_type=content_type)

    def _current_replica_set(self, subject: Subject, deployment: dict[str, Any]) -> str | None:
        revision = (deployment["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision")
        uid = deployment["metadata"]["uid"]
        for rs in self.resources.list(self.replica_sets, subject.namespace).get("items", []):
            owners = {o.get("uid") for o in rs["metadata"].get("ownerReferences") or []}
            if uid in owners and (rs["metadata"].get("annotations") or {}).get(
                    "deployment.kubernetes.io/revision") == revision:
                return rs["metadata"]["name"]
        return None

    def _targets(self, subject: Subject, services: list[Subject]) -> list[tuple[str, int, bool]]:
        """(ClusterIP, port, speaks HTTP) of every Service selecting the workload's pods."""
        labels = (((subject.body.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
        info = self._served("v1", "Service")
        targets = []
        for service in services:
            if service.namespace != subject.namespace:
                continue
            live = self.resources.get(info, service.name, service.namespace) or {}
            spec = live.get("spec") or {}
            selector = spec.get("selector") or {}
            ip = spec.get("clusterIP")
            if not selector or not ip or ip == "None" or any(labels.get(k) != v for k, v in selector.items()):
                continue
            for port in spec.get("ports") or []:
                http = (port.get("name") or "").startswith("http") or port.get("appProtocol") == "http"
                targets.append((ip, port["port"], http))
        return targets


FIXES = {
    "graceful-termination": "handle SIGTERM: stop accepting work, finish in-flight requests and exit before "
                            "terminationGracePeriodSeconds",
    "recovery": "let the container's main process be PID 1 of the container and restart cleanly; check the "
                "readiness probe and start-up time",
    "scale": "make replicas stateless or share state; give a readiness probe so new pods get traffic only "
             "when ready",
    "rolling-update": "readiness probe, maxUnavailable 0 and a SIGTERM handler that drains connections",
    "logs-stdout": "write logs to stdout/stderr, not files inside the container",
}


def _ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions") or [])


def main_process(container_id: str, proc: Path = Path("/proc")) -> int | None:
    """Host PID of a container's first process: the one in the container's
    cgroup whose parent is not (the runtime's shim is its parent)."""
    if len(container_id) < 12:
        return None
    members: dict[int, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if container_id not in (entry / "cgroup").read_text():
                continue
            stat = (entry / "stat").read_text()
            members[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we read
    roots = [pid for pid, parent in members.items() if parent not in members]
    return min(roots) if roots else None


class Traffic:
    """Real requests to Services while a rule changes the workload: a TCP
    connect (and for HTTP ports a GET answered below 500) every 50 ms."""

    def __init__(self, targets: list[tuple[str, int, bool]]):
        self.targets = targets
        self.ok = self.failed = 0
        self.errors: dict[str, int] = {}
        self.phase = "before"  # errors are counted per phase of the change (out, held, in, update, undo)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cnf-traffic")

    def __enter__(self) -> Traffic:
        if self.targets:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for ip, port, http in self.targets:
                error = request(ip, port, http)
                if error is None:
                    self.ok += 1
                else:
                    self.failed += 1
                    key = f"{self.phase}: {error}"
                    self.errors[key] = self.errors.get(key, 0) + 1

    def counts(self) -> dict[str, Any]:
        return {"requests": self.ok + self.failed, "failed_requests": self.failed, "errors": dict(self.errors)}

    def summary(self) -> str:
        if not self.targets:
            return "no Service selects the pods: no requests sent"
        return f"{self.failed} of {self.ok + self.failed} requests failed"

    def verdict(self, budget: int) -> str:
        if not self.targets or self.failed <= budget:
            return ""
        top = ", ".join(f"{e} x{n}" for e, n in sorted(self.errors.items(), key=lambda i: -i[1])[:3])
        return f"{self.failed} failed requests, budget {budget} ({top})"


def request(ip: str, port: int, http: bool, timeout: float = 2.0) -> str | None:
    """None when the Service answered, else why not."""
    try:
        with socket.create_connection((ip, port), timeout=timeout) as conn:
            if not http:
                return None
            conn.sendall(f"GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode())
            line = conn.makefile("rb").readline(200).decode("latin-1").split()
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return type(exc).__name__
    if len(line) < 2 or not line[1].isdigit():
        return "no HTTP status"
    return None if int(line[1]) < 500 else f"HTTP {line[1]}"
