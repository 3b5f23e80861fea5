"""Canary analysis speed, with a real Prometheus (Debian package) scraping
simulated Istio metrics every second, and the sandbox for the rollback.

Targets (issue "Verification"):
* one analysis round (all queries for one step) <= 200 ms on loopback;
* interval 5 s, failure limit 2: a bad canary detected, rolled back and the
  stable version read back at 100 % within 2 intervals + 5 s (15 s),
  measured from the moment bad metrics start.

Usage: .venv/bin/python bench/analysis_bench.py [--rounds 50] [--detections 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import sdc_copy
from tests.meshmetrics import MeshTraffic, PrometheusServer
from xci_cn.sandbox.binaries import find_kubectl
from xci_cn.verify.analysis import AnalysisSpec, MetricSpec, default_metrics, measure
from xci_cn.verify.prometheus import Prometheus

INTERVAL, FAILURE_LIMIT = 5.0, 2


def round_times(prometheus: PrometheusServer, rounds: int) -> list[float]:
    spec = AnalysisSpec(window=30, metrics=[*default_metrics(),
                        MetricSpec(name="p99-vs-baseline", type="latency-p99", threshold=500, max_vs_baseline=1.2)])
    prom = Prometheus(prometheus.url)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        measurement = measure(prom, spec, "bench", "sdc", "v2", "v1")
        times.append(time.perf_counter() - started)
        assert measurement.verdict == "Successful", measurement
    prom.close()
    return times


def vs_weights(kubeconfig: str, namespace: str) -> dict[str, int]:
    out = subprocess.run([str(find_kubectl()), "--kubeconfig", kubeconfig, "get", "virtualservice", "http-lb",
                          "-n", namespace, "-o", "json"], capture_output=True, text=True)
    if out.returncode:
        return {}
    vs = json.loads(out.stdout)
    return {d["destination"]["subset"]: d.get("weight", 100) for d in vs["spec"]["http"][0]["route"]}


def detection(traffic: MeshTraffic, prometheus: PrometheusServer, kubeconfig: str, work: Path, run: int) -> float:
    service = f"bench-detect-{run}"
    traffic.add(service)
    time.sleep(4)
    manifests, namespace = sdc_copy(work / f"run{run}")
    analysis = {"prometheus": prometheus.url, "service": service, "namespace": "sdc", "interval": f"{INTERVAL}s",
                "count": 100, "failure_limit": FAILURE_LIMIT, "window": "30s"}
    scenario = work / f"run{run}" / "s.yaml"
    scenario.write_text(f"""name: detect
installer: existing
stages:
  - name: deploy
    type: deploy
    with: {{manifests: ["{manifests}"], namespace: {namespace}, strategy: canary, service: http-lb,
            stable: v1, canary: v2, steps: [10, 100], analysis: {json.dumps(analysis)}}}
""")
    proc = subprocess.Popen([sys.executable, "-m", "xci_cn.cli", "run", "--scenario", str(scenario),
                             "--kubeconfig", kubeconfig, "--results-dir", str(work / f"run{run}" / "R"), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while vs_weights(kubeconfig, namespace).get("v2") != 10:  # the canary got its first 10 %
        time.sleep(0.1)
        if proc.poll() is not None:
            raise RuntimeError("the deploy ended before the canary step")
    time.sleep(random.uniform(1, INTERVAL))  # bad metrics start anywhere within an interval
    bad_started = traffic.set(service, "v2", error_ratio=0.4)
    while vs_weights(kubeconfig, namespace) != {"v1": 100}:
        time.sleep(0.05)
    rolled_back = time.monotonic()
    proc.wait(timeout=60)
    return rolled_back - bad_started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--detections", type=int, default=3)
    parser.add_argument("--sandbox", default="bench-analysis")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xci-cn-analysis-bench-"))
    traffic = MeshTraffic()
    traffic.add("bench")
    traffic.start()
    prometheus = PrometheusServer(work, [f"127.0.0.1:{traffic.port}"])
    env = dict(os.environ, XCI_CN_SANDBOX_HOME=str(work / "sandboxes"))
    os.environ.update(env)
    try:
        prometheus.wait_ready()
        prometheus.wait_for_series('istio_requests_total{destination_service_name="bench"}')
        time.sleep(4)
        times = round_times(prometheus, args.rounds)
        median = statistics.median(times)
        print(f"analysis round (3 queries + 1 baseline): median {median * 1000:.1f} ms, "
              f"max {max(times) * 1000:.1f} ms over {len(times)} (target 200 ms, ratio {median / 0.2:.2f})")
        subprocess.run([sys.executable, "-m", "xci_cn.cli", "sandbox", "up", "--name", args.sandbox, "-q"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        kubeconfig = str(work / "sandboxes" / args.sandbox / "kubeconfig.yaml")
        budget = 2 * INTERVAL + 5
        detections = [detection(traffic, prometheus, kubeconfig, work, run) for run in range(args.detections)]
        for run, seconds in enumerate(detections, 1):
            print(f"detection {run}: bad metrics -> rolled back and read back in {seconds:.1f}s")
        worst = max(detections)
        print(f"detection: median {statistics.median(detections):.1f}s, worst {worst:.1f}s "
              f"(budget {budget:.0f}s = 2 intervals + 5s, ratio {worst / budget:.2f})")
        ok = median <= 0.2 and worst <= budget
        print("RESULT", "within targets" if ok else "OUTSIDE targets")
        return 0 if ok else 1
    finally:
        subprocess.run([sys.executable, "-m", "xci_cn.cli", "sandbox", "down", "--name", args.sandbox],
                       env=env, capture_output=True)
        prometheus.stop()
        traffic.stop()


if __name__ == "__main__":
    sys.exit(main())
