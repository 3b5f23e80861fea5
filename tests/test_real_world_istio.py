"""Real-world Istio configuration nobody here wrote: Istio's own bookinfo
sample (``samples/bookinfo`` of the ``istio.io/istio`` Go module, fetched by
``go mod download`` at a pinned version into the Go module cache, never
committed), deployed on a sandbox with kwok-simulated pods (its images come
from docker.io, which cannot be reached here), checked, canaried and rolled
back.

Bookinfo names hosts the short way (``host: reviews``): Istio resolves them
relative to the rule's namespace, and so must every check, router and
read-back of xci-cn."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.helpers import cli, write_scenario
from xci_cn.k8s.hosts import same_service, service_of

ISTIO_MODULE = "istio.io/istio@v0.0.0-20260827124520-eed52ebb66ad"
BOOKINFO_FILES = ("platform/kube/bookinfo.yaml", "networking/bookinfo-gateway.yaml",
                  "networking/destination-rule-all.yaml", "networking/virtual-service-all-v1.yaml")


@pytest.fixture(scope="module")
def bookinfo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample's own files, unmodified, copied out of the module cache."""
    work = tmp_path_factory.mktemp("istio-module")
    proc = subprocess.run(["go", "mod", "download", "-json", ISTIO_MODULE], cwd=work, capture_output=True,
                          text=True, timeout=900)
    info = json.loads(proc.stdout)
    assert proc.returncode == 0 and "Error" not in info, proc.stdout + proc.stderr
    target = tmp_path_factory.mktemp("bookinfo")
    for name in BOOKINFO_FILES:
        shutil.copyfile(Path(info["Dir"]) / "samples" / "bookinfo" / name, target / Path(name).name)
    return target


@pytest.mark.parametrize("host,namespace,expected", [
    ("reviews", "bookinfo", "bookinfo/reviews"),
    ("reviews.bookinfo", "other", "bookinfo/reviews"),
    ("reviews.bookinfo.svc", "other", "bookinfo/reviews"),
    ("reviews.bookinfo.svc.cluster.local", "other", "bookinfo/reviews"),
    ("reviews.bookinfo.svc.cluster.local.", "other", "bookinfo/reviews"),
    ("example.com.au", "bookinfo", None), ("*", "bookinfo", None), ("*.bookinfo.svc", "bookinfo", None),
])
def test_every_spelling_of_a_host_names_one_service(host: str, namespace: str, expected: str | None) -> None:
    assert service_of(host, namespace) == expected


def test_hosts_compare_as_services_not_as_text() -> None:
    spellings = ["reviews", "reviews.bookinfo", "reviews.bookinfo.svc", "reviews.bookinfo.svc.cluster.local"]
    assert all(same_service(a, "bookinfo", b, "bookinfo") for a in spellings for b in spellings)
    assert not same_service("reviews", "other", "reviews.bookinfo.svc.cluster.local", "bookinfo")
    assert same_service("example.com", "a", "example.com", "b") and not same_service("a.com", "x", "b.com", "x")


def _scenario(manifests: Path, namespace: str, strategy: str, host: str | None = None) -> str:
    host_option = f", host: {host}" if host else ""
    return f"""name: bookinfo
installer: existing
stages:
  - name: deploy
    type: deploy
    with: {{manifests: ["{manifests}"], namespace: {namespace}, strategy: {strategy}, service: reviews,
           stable: v1, canary: v3{host_option}}}
  - name: verify
    type: verify
    needs: [deploy]
    with: {{namespace: {namespace}, checks: [{{type: mesh}}]}}
"""


@pytest.mark.parametrize("strategy,host", [("canary", None), ("bluegreen", "reviews"),
                                           ("canary", "reviews.{ns}.svc")])
def test_bookinfo_deploys_passes_the_mesh_checks_and_canaries_reviews(simulated_sandbox: dict, bookinfo: Path,
                                                                       tmp_path: Path, strategy: str,
                                                                       host: str | None) -> None:
    sandbox = simulated_sandbox  # bookinfo's images come from docker.io: kwok runs its pods
    namespace = f"bookinfo-{uuid.uuid4().hex[:6]}"  # does not exist: the deploy stage creates it
    write_scenario(tmp_path, _scenario(bookinfo, namespace, strategy, host and host.format(ns=namespace)), "s.yaml")
    kubeconfig = str(sandbox["kubeconfig"])
    proc = cli("run", "--scenario", "s.yaml", "--kubeconfig", kubeconfig, "--results-dir", "R", cwd=tmp_path,
               timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "R" / "summary.json").read_text())
    deploy, verify = summary["stages"]
    created = [a for a in deploy["outputs"]["applied"] if a["kind"] == "Namespace"]
    assert created == [{"kind": "Namespace", "name": namespace, "namespace": None, "action": "created",
                        "resource_version": created[0]["resource_version"], "generation": None}]
    final = {"v1": 0, "v3": 100}
    assert deploy["outputs"]["steps"][-1]["weights"] == final
    mesh = {c["name"]: c["passed"] for c in verify["checks"]}
    assert mesh == {f"mesh VirtualService {namespace}/{name}": True
                    for name in ("bookinfo", "productpage", "reviews", "ratings", "details")}
    stored = json.loads(cli("rollout", "status", "-n", namespace, "--service", "reviews",
                            "--kubeconfig", kubeconfig).stdout)
    assert stored["weights"] == final
    rolled = cli("rollout", "rollback", "-n", namespace, "--service", "reviews", "--kubeconfig", kubeconfig)
    assert rolled.returncode == 0, rolled.stderr
    assert json.loads(rolled.stdout)["read_back"]["weights"] == {"v1": 100}
    routes = _stored_routes(kubeconfig, namespace)
    assert routes == [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 100}]  # host as written


def _stored_routes(kubeconfig: str, namespace: str) -> list[dict]:
    from xci_cn.sandbox.binaries import find_kubectl

    text = subprocess.run([str(find_kubectl()), "--kubeconfig", kubeconfig, "get", "virtualservice", "reviews",
                           "-n", namespace, "-o", "json"], capture_output=True, text=True, check=True).stdout
    return json.loads(text)["spec"]["http"][0]["route"]
