"""Deploy speed on the sandbox, side by side with the way OPNFV's scripts did it.

Targets (issue "Cloud-native deploy"):
* the SDC sample deployed until all Ready <= 10 s median;
* N copies of a service (Deployment, Service, DestinationRule, VirtualService),
  N = 50, 100, 200: time grows at most linearly, t(200)/t(100) <= 2.2;
* baseline in the same run: `kubectl apply -f DIR`, then `kubectl get pods`
  every 2 s until all are Running (Clover's daily job): xci-cn >= 3x faster
  at N = 100.

Needs a running sandbox: .venv/bin/xci-cn sandbox up --name bench-deploy
Usage: .venv/bin/python bench/deploy_bench.py [--name bench-deploy] [--runs 3]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_deploy import sdc_copy
from xci_cn.k8s.client import connect
from xci_cn.k8s.manifests import load_manifests
from xci_cn.k8s.resources import Resources
from xci_cn.k8s.strategies.base import DeployRecord, Engine
from xci_cn.sandbox.binaries import find_kubectl
from xci_cn.sandbox.cluster import Sandbox

SERVICE = """apiVersion: apps/v1
kind: Deployment
metadata: {{name: svc{i}, namespace: {ns}, labels: {{app: svc{i}, version: v1}}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: svc{i}, version: v1}}}}
  template:
    metadata: {{labels: {{app: svc{i}, version: v1}}}}
    spec:
      containers: [{{name: app, image: "nginx:1.27", ports: [{{containerPort: 80}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: svc{i}, namespace: {ns}}}
spec:
  selector: {{app: svc{i}}}
  ports: [{{name: http, port: 80}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc{i}, namespace: {ns}}}
spec:
  host: svc{i}.{ns}.svc.cluster.local
  subsets: [{{name: v1, labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc{i}, namespace: {ns}}}
spec:
  hosts: [svc{i}.{ns}.svc.cluster.local]
  http:
    - route: [{{destination: {{host: svc{i}.{ns}.svc.cluster.local, subset: v1}}, weight: 100}}]
"""


def write_copies(directory: Path, namespace: str, count: int) -> Path:
    directory.mkdir(parents=True)
    namespace_doc = f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n"
    (directory / "00-namespace.yaml").write_text(namespace_doc)
    (directory / "10-services.yaml").write_text("---\n".join(SERVICE.format(i=i, ns=namespace)
                                                             for i in range(count)))
    return directory


def xci_cn_deploy(kubeconfig: Path, directory: Path) -> float:
    """xci-cn's own path: pre-flight, server-side apply, watch until healthy."""
    log = logging.getLogger("bench")
    started = time.perf_counter()
    cluster = connect(kubeconfig)
    try:
        engine = Engine(Resources(cluster), log, threading.Event(), lambda text: None)
        engine.apply_and_wait(load_manifests([directory]), 600, DeployRecord())
    finally:
        cluster.close()
    return time.perf_counter() - started


def kubectl_baseline(kubeconfig: Path, directory: Path, namespace: str, expected_pods: int) -> float:
    """kubectl apply, then `kubectl get pods` every 2 s until all are Running."""
    kubectl = [str(find_kubectl()), "--kubeconfig", str(kubeconfig)]
    started = time.perf_counter()
    subprocess.run([*kubectl, "apply", "-f", str(directory)], check=True, capture_output=True)
    while True:
        out = subprocess.run([*kubectl, "get", "pods", "-n", namespace, "--no-headers"], check=True,
                             capture_output=True, text=True).stdout.splitlines()
        if len(out) >= expected_pods and all(line.split()[2] == "Running" for line in out):
            return time.perf_counter() - started
        time.sleep(2)


def delete_namespace(kubeconfig: Path, namespace: str) -> None:
    """Delete and wait until it is gone (not timed): the namespace controller's
    clean-up must not eat the CPU of the next measurement."""
    subprocess.run([str(find_kubectl()), "--kubeconfig", str(kubeconfig), "delete", "namespace", namespace,
                    "--wait=true", "--timeout=300s"], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="bench-deploy", help="running sandbox to use")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sandbox = Sandbox(args.name)
    if not sandbox.is_up():
        print(f"sandbox {args.name!r} is not up: .venv/bin/xci-cn sandbox up --name {args.name}")
        return 2
    kubeconfig = sandbox.kubeconfig
    work = Path(tempfile.mkdtemp(prefix="xci-cn-deploy-bench-"))
    try:
        sdc_times = []
        for _ in range(max(args.runs, 5)):
            target, namespace = sdc_copy(work / uuid.uuid4().hex[:6])
            sdc_times.append(xci_cn_deploy(kubeconfig, target))
            delete_namespace(kubeconfig, namespace)
        sdc = statistics.median(sdc_times)
        print(f"SDC sample until all Ready: median {sdc:.2f}s over {len(sdc_times)} runs "
              f"(target 10s, ratio {sdc / 10:.2f})", flush=True)
        ours: dict[int, float] = {}
        for count in (50, 100, 200):
            times = []
            for _ in range(args.runs):
                namespace = f"n{count}-{uuid.uuid4().hex[:6]}"
                times.append(xci_cn_deploy(kubeconfig, write_copies(work / namespace, namespace, count)))
                delete_namespace(kubeconfig, namespace)
            ours[count] = statistics.median(times)
            print(f"xci-cn   N={count:3}: median {ours[count]:.2f}s ({args.runs} runs)", flush=True)
        base = []
        for _ in range(args.runs):
            namespace = f"k100-{uuid.uuid4().hex[:6]}"
            base.append(kubectl_baseline(kubeconfig, write_copies(work / namespace, namespace, 100),
                                         namespace, 100))
            delete_namespace(kubeconfig, namespace)
        baseline = statistics.median(base)
        print(f"kubectl  N=100: median {baseline:.2f}s (apply, then get pods every 2s)")
        growth = ours[200] / ours[100]
        speedup = baseline / ours[100]
        print(f"growth t(200)/t(100) = {growth:.2f} (target <= 2.2)")
        print(f"speed-up over kubectl at N=100 = {speedup:.2f}x (target >= 3)")
        ok = sdc <= 10 and growth <= 2.2 and speedup >= 3
        print("RESULT", "within targets" if ok else "OUTSIDE targets")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
