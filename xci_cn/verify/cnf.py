"""CNF checks: best practices of a CN-VNF service graph, scored like the CNCF
CNF Test Suite (CNTi) — each rule essential or normal, each finding a JUnit
case naming object, container and ``file:document``, with how to fix it.

Static rules run on object bodies (the deploy stage's live objects, or
manifest files without a cluster). Where kube-score has the rule
(``kubescore.py``) its verdict is used; the host-access rules kube-score
lacks (host namespaces, hostPort, hostPath, runtime sockets) are written
here. Runtime rules (``cnf_runtime.py``) need the real pods. The verify
stage calls ``check_static``/``check_runtime`` and ``summarise``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from xci_cn.config.model import Duration
from xci_cn.errors import InvalidInput

ESSENTIAL, NORMAL = "essential", "normal"
Category = Literal["essential", "normal"]


@dataclass(frozen=True)
class Rule:
    name: str
    category: str
    runtime: bool
    summary: str
    linter: tuple[str, ...] = ()  # kube-score test IDs behind the rule; () = written here
    default: bool = True


RULES = {rule.name: rule for rule in (
    Rule("probes", ESSENTIAL, False, "liveness and readiness probes present",
         ("pod-probes", "pod-probes-identical")),
    Rule("resources", ESSENTIAL, False, "CPU and memory requests and limits set", ("container-resources",)),
    Rule("privileged", ESSENTIAL, False, "no privileged container", ("container-security-context-privileged",)),
    Rule("non-root", ESSENTIAL, False, "runs as a non-root user and group (kube-score: UID and GID >= 10000)",
         ("container-security-context-user-group-id",)),
    Rule("image-tag", ESSENTIAL, False, "explicit image tag, not latest", ("container-image-tag",)),
    Rule("host-network", ESSENTIAL, False, "no hostNetwork, hostPID or hostIPC"),
    Rule("host-ports", ESSENTIAL, False, "no hostPort"),
    Rule("host-path", ESSENTIAL, False, "no hostPath volume"),
    Rule("runtime-socket", ESSENTIAL, False, "no container runtime socket mounted"),
    Rule("read-only-root-fs", NORMAL, False, "read-only root filesystem",
         ("container-security-context-readonlyrootfilesystem",), default=False),
    Rule("graceful-termination", ESSENTIAL, True, "a deleted pod exits on SIGTERM inside its grace period"),
    Rule("recovery", ESSENTIAL, True, "a killed main process is restarted and Ready again in time"),
    Rule("scale", ESSENTIAL, True, "scaled to 3 and back, the Service keeps answering"),
    Rule("rolling-update", NORMAL, True, "a rolling update and its undo bring the old ReplicaSet back"),
    Rule("logs-stdout", ESSENTIAL, True, "the container logs to stdout/stderr"),
)}

# Sockets through which a container would command the node's runtime, and
# the directories that hold them.
RUNTIME_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock", "/var/run/cri-dockerd.sock",
                   "/run/containerd/containerd.sock", "/var/run/containerd/containerd.sock",
                   "/run/crio/crio.sock", "/var/run/crio/crio.sock")
RUNTIME_SOCKET_DIRS = ("/run", "/var/run", "/run/containerd", "/var/run/containerd", "/run/crio",
                       "/var/run/crio", "/var/lib/docker")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")


class AllowEntry(BaseModel):
    """A known exception (a mesh sidecar that needs NET_ADMIN, …), reported as skipped."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    check: str = Field(description="Rule name.")
    object: str = Field(default="*", description="`Kind/name` pattern (fnmatch).")
    container: str = Field(default="*", description="Container name pattern (fnmatch).")
    reason: str = Field(min_length=1, description="Why the exception is accepted (shown in the report).")


class CnfCheck(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["cnf"] = Field(description="CNF best-practice and runtime checks.")
    checks: list[str] | None = Field(default=None, description="Rules to run (default: every default rule; "
                                                               "`read-only-root-fs` only when named).")
    objects: list[str] = Field(default_factory=lambda: ["*"], description="Workloads to check: `Kind/name` or "
                                                                          "`name` patterns (fnmatch).")
    namespace: str | None = Field(default=None, description="Namespace (default: the stage's).")
    manifests: list[str] | None = Field(default=None, description="Check these files instead of the deploy "
                                                                  "stage's objects (static rules only).")
    severity: dict[str, Category] = Field(default_factory=dict, description="Per-rule category override.")
    allow: list[AllowEntry] = Field(default_factory=list, description="Known exceptions.")
    fail_on_normal: bool = Field(default=False, description="A failed normal rule also fails the stage.")
    timeout: Duration = Field(default=60.0, description="Bound of each runtime rule per workload.")
    recovery_within: Duration = Field(default=30.0, description="Ready again after a kill within this.")
    request_budget: int = Field(default=0, ge=0, description="Failed requests allowed during the rolling "
                                                             "update and its undo.")
    scale_failure_ratio: float = Field(default=0.05, ge=0, le=1, description="Share of requests that may fail "
                                       "while scaling: the Service keeps answering (failures are counted).")
    scale_hold: Duration = Field(default=2.0, description="How long requests go on at 3 Ready replicas before "
                                                          "scaling back: a pod that is Ready but does not serve "
                                                          "is seen.")
    update_image: dict[str, str] = Field(default_factory=dict, description="Container -> image for the rolling "
                                                                           "update (default: a template change).")

    @field_validator("checks")
    @classmethod
    def _known_checks(cls, names: list[str] | None) -> list[str] | None:
        unknown = [n for n in names or [] if n not in RULES]
        if unknown:
            raise ValueError(f"unknown check {', '.join(unknown)} (known: {', '.join(RULES)})")
        return names

    @model_validator(mode="after")
    def _known_names(self) -> CnfCheck:
        named = [*self.severity, *(a.check for a in self.allow)]
        unknown = [n for n in named if n not in RULES]
        if unknown:
            raise ValueError(f"unknown check {', '.join(unknown)} in severity/allow (known: {', '.join(RULES)})")
        return self

    def rules(self) -> list[Rule]:
        names = self.checks or [r.name for r in RULES.values() if r.default]
        return [RULES[n] for n in names]

    def category(self, rule: Rule) -> str:
        return self.severity.get(rule.name, rule.category)

    def blocking(self, rule: Rule) -> bool:
        return self.category(rule) == ESSENTIAL or self.fail_on_normal


@dataclass
class Subject:
    """An object to check: its body and, for manifests, where it was written."""

    body: dict[str, Any]
    where: str | None = None  # file:line: document N

    @property
    def kind(self) -> str:
        return self.body.get("kind", "")

    @property
    def name(self) -> str:
        return self.body.get("metadata", {}).get("name", "")

    @property
    def namespace(self) -> str | None:
        return self.body.get("metadata", {}).get("namespace")

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace + '/' if self.namespace else ''}{self.name}"

    @classmethod
    def of(cls, manifest: Any, body: dict[str, Any] | None = None) -> Subject:
        """A manifest (``k8s.manifests.Manifest``), or the live ``body`` applied from it."""
        return cls(body or manifest.body, f"{manifest.file}:{manifest.line}: document {manifest.index}")

    def pod_spec(self) -> dict[str, Any]:
        spec = self.body.get("spec") or {}
        if self.kind == "Pod":
            return spec
        if self.kind == "CronJob":
            spec = (spec.get("jobTemplate") or {}).get("spec") or {}
        return ((spec.get("template") or {}).get("spec")) or {}


@dataclass
class Finding:
    rule: str
    subject: str  # Kind namespace/name
    passed: bool
    message: str
    container: str | None = None
    where: str | None = None
    fix: str = ""
    source: str = "xci-cn"
    skipped: bool = False
    measured: dict[str, Any] = field(default_factory=dict)

    @property
    def kind_name(self) -> str:
        """``Kind/name`` (``subject`` is ``Kind namespace/name``), as allow-list patterns see it."""
        kind, _, rest = self.subject.partition(" ")
        return f"{kind}/{rest.rsplit('/', 1)[-1]}"

    @property
    def case(self) -> str:
        """The JUnit testcase name."""
        return f"cnf {self.rule}: {self.subject}" + (f" container {self.container}" if self.container else "")

    def text(self) -> str:
        parts = [f"{self.where}: " if self.where else "", f"{self.source}: " if not self.passed else "",
                 self.message, f" - fix: {self.fix}" if self.fix and not self.passed else ""]
        return "".join(parts)

    def details(self, category: str) -> dict[str, Any]:
        found = {"rule": self.rule, "category": category, "object": self.subject, "container": self.container,
                 "where": self.where, "source": self.source, "fix": self.fix or None, **self.measured}
        return {k: v for k, v in found.items() if v is not None}


def select(subjects: list[Subject], patterns: list[str]) -> list[Subject]:
    """The workloads the patterns name; InvalidInput when they name none."""
    workloads = [s for s in subjects if s.kind in WORKLOAD_KINDS]
    chosen = [s for s in workloads if any(fnmatchcase(f"{s.kind}/{s.name}", p) or fnmatchcase(s.name, p)
                                          for p in patterns)]
    if not chosen:
        have = ", ".join(f"{s.kind}/{s.name}" for s in workloads) or "no workloads"
        raise InvalidInput(f"cnf: objects {', '.join(patterns)} match no workload (there are: {have})")
    return chosen


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def _host_network(spec: dict[str, Any]) -> Iterator[tuple[str | None, str, str]]:
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            yield None, f"the pod sets {key}: true", f"remove spec.{key}; share nothing with the node"


def _host_ports(spec: dict[str, Any]) -> Iterator[tuple[str | None, str, str]]:
    for container in _containers(spec):
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                yield (container.get("name"), f"port {port.get('containerPort')} is bound to hostPort "
                       f"{port['hostPort']}", "remove hostPort; expose the port through a Service")


def _host_volumes(spec: dict[str, Any]) -> dict[str, str]:
    return {v.get("name", ""): (v["hostPath"].get("path") or "").rstrip("/") or "/"
            for v in spec.get("volumes") or [] if isinstance(v.get("hostPath"), dict)}


def _mounts(spec: dict[str, Any], volumes: dict[str, str]) -> Iterator[tuple[str | None, str, str]]:
    for container in _containers(spec):
        for mount in container.get("volumeMounts") or []:
            if mount.get("name") in volumes:
                yield container.get("name"), mount["name"], volumes[mount["name"]]


def _host_path(spec: dict[str, Any]) -> Iterator[tuple[str | None, str, str]]:
    volumes = _host_volumes(spec)
    mounted = set()
    for container, volume, path in _mounts(spec, volumes):
        mounted.add(volume)
        yield container, f"mounts hostPath {path} (volume {volume})", "use a ConfigMap, Secret, emptyDir or PVC"
    for volume in sorted(set(volumes) - mounted):
        yield None, f"declares hostPath volume {volume} ({volumes[volume]})", "remove the hostPath volume"


def _runtime_socket(spec: dict[str, Any]) -> Iterator[tuple[str | None, str, str]]:
    for container, volume, path in _mounts(spec, _host_volumes(spec)):
        if path in RUNTIME_SOCKETS or path in RUNTIME_SOCKET_DIRS:
            yield (container, f"mounts the container runtime's socket {path} (volume {volume})",
                   "remove the mount: a container that talks to the runtime controls the node")


HAND_WRITTEN: dict[str, Callable[[dict[str, Any]], Iterator[tuple[str | None, str, str]]]] = {
    "host-network": _host_network, "host-ports": _host_ports, "host-path": _host_path,
    "runtime-socket": _runtime_socket}


def check_static(subjects: list[Subject], chosen: list[Subject], rules: list[Rule],
                 kube_score: Callable[[list[dict[str, Any]]], list[Any]]) -> list[Finding]:
    """Findings of the static ``rules`` for the ``chosen`` workloads.
    ``kube_score`` scores bodies (``kubescore.score`` bound to its binary);
    it sees every subject, so that probes are judged with their Services."""
    static = [r for r in rules if not r.runtime]
    scored: dict[tuple[str, str | None, str], list[Any]] = {}
    if any(r.linter for r in static):
        for item in kube_score([s.body for s in subjects]):
            scored.setdefault((item.kind, item.namespace, item.name), []).append(item)
    findings: list[Finding] = []
    for subject in chosen:
        for rule in static:
            if rule.linter:
                mine = [s for s in scored.get((subject.kind, subject.namespace, subject.name), [])
                        if s.test in rule.linter]
                findings.extend(_linter_findings(rule, subject, mine))
            else:
                problems = list(HAND_WRITTEN[rule.name](subject.pod_spec()))
                findings.extend(_grouped(rule, subject, problems, "xci-cn"))
    return findings


def _linter_findings(rule: Rule, subject: Subject, scored: list[Any]) -> list[Finding]:
    ran = [s for s in scored if not s.skipped]
    if not scored:
        return [Finding(rule.name, subject.ref, False, f"kube-score reported no {'/'.join(rule.linter)} "
                        f"for this {subject.kind}", where=subject.where, source="kube-score")]
    if not ran:
        reason = "; ".join(c.summary for s in scored for c in s.comments) or "skipped by kube-score"
        return [Finding(rule.name, subject.ref, True, reason, where=subject.where, source="kube-score",
                        skipped=True)]
    problems = [(c.container, c.summary, c.description) for s in ran if not s.passed for c in s.comments]
    if any(not s.passed for s in ran) and not problems:
        problems = [(None, f"{s.test} graded {s.grade}/10", "") for s in ran if not s.passed]
    tests = "/".join(sorted({s.test for s in ran if not s.passed}))
    return _grouped(rule, subject, problems, f"kube-score {tests}")


def _grouped(rule: Rule, subject: Subject, problems: list[tuple[str | None, str, str]],
             source: str) -> list[Finding]:
    """One finding per container with problems (messages joined), or one pass."""
    if not problems:
        return [Finding(rule.name, subject.ref, True, rule.summary, where=subject.where, source=source)]
    by_container: dict[str | None, list[tuple[str, str]]] = {}
    for container, message, fix in problems:
        by_container.setdefault(container, []).append((message, fix))
    return [Finding(rule.name, subject.ref, False, "; ".join(dict.fromkeys(m for m, _ in items)),
                    container=container, where=subject.where,
                    fix=" ".join(dict.fromkeys(f for _, f in items if f)), source=source)
            for container, items in by_container.items()]


def lint(subjects: list[Subject], spec: CnfCheck, kube_score: Callable[[list[dict[str, Any]]], list[Any]],
         *, runtime_reason: str | None = None) -> list[Finding]:
    """The static findings of ``spec`` on ``subjects``, allow-list applied;
    with ``runtime_reason`` its runtime rules are reported skipped for it."""
    chosen = select(subjects, spec.objects)
    findings = check_static(subjects, chosen, spec.rules(), kube_score)
    if runtime_reason:
        findings += [Finding(r.name, "runtime", True, runtime_reason, skipped=True) for r in spec.rules()
                     if r.runtime]
    return apply_allow_list(findings, spec.allow)


def apply_allow_list(findings: list[Finding], allow: list[AllowEntry]) -> list[Finding]:
    """Failed findings an entry matches become skipped, with its reason."""
    for finding in findings:
        if finding.passed and not finding.skipped:
            continue
        for entry in allow:
            if entry.check == finding.rule and fnmatchcase(finding.kind_name, entry.object) and \
                    fnmatchcase(finding.container or "", entry.container):
                if not finding.passed:
                    finding.message = f"allowed: {entry.reason} (was: {finding.message})"
                    finding.passed, finding.skipped = True, True
                break
    return findings


def summarise(findings: list[Finding], spec: CnfCheck, seconds: dict[str, float] | None = None) -> dict[str, Any]:
    """Per rule passed/failed/skipped (and the seconds a runtime rule took),
    per category counts and a score (the percentage of rules that ran and
    passed), for summary.json and report.html."""
    rules: list[dict[str, Any]] = []
    categories = {ESSENTIAL: {"passed": 0, "failed": 0, "skipped": 0},
                  NORMAL: {"passed": 0, "failed": 0, "skipped": 0}}
    for rule in spec.rules():
        mine = [f for f in findings if f.rule == rule.name]
        if any(not f.passed for f in mine):
            status = "failed"
        elif not mine or all(f.skipped for f in mine):
            status = "skipped"
        else:
            status = "passed"
        category = spec.category(rule)
        categories[category][status] += 1
        rules.append({"rule": rule.name, "category": category, "status": status, "summary": rule.summary,
                      "runtime": rule.runtime, "findings": sum(not f.passed for f in mine),
                      "objects": len({f.subject for f in mine}), "seconds": (seconds or {}).get(rule.name)})

    def score(counts: dict[str, int]) -> float | None:
        ran = counts["passed"] + counts["failed"]
        return round(100.0 * counts["passed"] / ran, 1) if ran else None

    total = {k: sum(c[k] for c in categories.values()) for k in ("passed", "failed", "skipped")}
    return {"rules": rules, "categories": {k: {**v, "score": score(v)} for k, v in categories.items()},
            "score": score(total), **total}
