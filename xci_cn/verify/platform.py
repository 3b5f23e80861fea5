"""Platform checks, in the spirit of Clover's validators: what the scenario
needs must exist and be healthy — Istio's CRDs Established and istio-system
present; on real clusters also istiod, the ingress gateway, Prometheus
targets up and Jaeger listing the mesh's services, when asked for."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import requests
from pydantic import BaseModel, Field

from xci_cn.config.model import STRICT
from xci_cn.verify.mesh import Finding

if TYPE_CHECKING:  # the check's model is read by `validate`, which imports no Kubernetes client
    from xci_cn.k8s.resources import Resources


class PlatformCheck(BaseModel):
    model_config = STRICT

    type: Literal["platform"] = Field(description="Platform checks.")
    istio: bool = Field(default=True, description="Istio's CRDs Established and istio-system present.")
    istiod: bool = Field(default=False, description="Deployment istio-system/istiod healthy (real clusters).")
    ingress_gateway: bool = Field(default=False, description="Deployment istio-system/istio-ingressgateway "
                                                             "healthy (real clusters).")
    prometheus: str | None = Field(default=None, description="Prometheus URL: every active target up.")
    jaeger: str | None = Field(default=None, description="Jaeger query URL: lists the `services`.")
    services: list[str] = Field(default_factory=list, description="Services Jaeger must list.")


def check_platform(resources: Resources, check: PlatformCheck) -> list[Finding]:
    from xci_cn.k8s.inventory import ISTIO_NAMESPACE, has_namespace, istio_crds, istio_crds_verdict

    findings: list[Finding] = []
    if check.istio:
        passed, message = istio_crds_verdict(istio_crds(resources))
        findings.append(Finding("platform Istio CRDs Established", passed, message))
        present = has_namespace(resources, ISTIO_NAMESPACE)
        findings.append(Finding(f"platform namespace {ISTIO_NAMESPACE}", present,
                                "present" if present else f"namespace {ISTIO_NAMESPACE} is missing"))
    for wanted, name in ((check.istiod, "istiod"), (check.ingress_gateway, "istio-ingressgateway")):
        if wanted:
            findings.append(_deployment_finding(resources, "istio-system", name))
    if check.prometheus:
        findings.append(_prometheus_targets(check.prometheus))
    if check.jaeger:
        findings.append(_jaeger_services(check.jaeger, check.services))
    return findings


def _deployment_finding(resources: Resources, namespace: str, name: str) -> Finding:
    from xci_cn.k8s.health import HEALTHY, assess

    info = resources.lookup("apps/v1", "Deployment")
    assert info is not None
    obj = resources.get(info, name, namespace)
    if obj is None:
        return Finding(f"platform {name}", False, f"Deployment {namespace}/{name} does not exist")
    health = assess({**obj, "apiVersion": "apps/v1", "kind": "Deployment"})
    return Finding(f"platform {name}", health.status == HEALTHY,
                   f"Deployment {namespace}/{name}: {health.status} {health.message}".strip())


def _prometheus_targets(url: str) -> Finding:
    try:
        body = requests.get(f"{url.rstrip('/')}/api/v1/targets", timeout=5).json()
    except (requests.RequestException, ValueError) as exc:
        return Finding("platform Prometheus targets up", False, f"Prometheus {url}: {type(exc).__name__}")
    targets = body.get("data", {}).get("activeTargets", [])
    down = [f"{t.get('scrapePool')} {t.get('scrapeUrl')}: {t.get('lastError') or t.get('health')}"
            for t in targets if t.get("health") != "up"]
    if not targets:
        return Finding("platform Prometheus targets up", False, f"Prometheus {url} has no active targets")
    return Finding("platform Prometheus targets up", not down,
                   f"{len(targets) - len(down)}/{len(targets)} targets up" + (f"; down: {'; '.join(down)}"
                                                                             if down else ""))


def _jaeger_services(url: str, services: list[str]) -> Finding:
    try:
        listed = set(requests.get(f"{url.rstrip('/')}/api/services", timeout=5).json().get("data") or [])
    except (requests.RequestException, ValueError) as exc:
        return Finding("platform Jaeger services", False, f"Jaeger {url}: {type(exc).__name__}")
    missing = [s for s in services if s not in listed]
    return Finding("platform Jaeger services", not missing,
                   f"missing from Jaeger: {', '.join(missing)}" if missing else f"{len(listed)} services traced")
