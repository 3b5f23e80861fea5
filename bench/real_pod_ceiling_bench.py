"""The proxy's ceiling to a real pod.

Target (issue "Real traffic"): the proxy's throughput on loopback to one
real pod, as a ceiling for the load generator, beside the same load sent to
the pod directly. bench/traffic_bench.py measures it to a server of its own
on simulated pods; here the backend is the SDC sample's http-lb v1 on the
sandbox's real node (a Go server, which calls a clover-server for every
request: both paths carry that hop).

Brings up a sandbox with the real node in a private home, applies the SDC
sample and its HTTPRoute (all traffic to http-lb v1), then sends each rate
for a few seconds through the Gateway and to the pod's IP.
Usage: .venv/bin/python bench/real_pod_ceiling_bench.py [--rates 200,500,1000,2000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.traffic_bench import attack
from xci_cn.paths import SAMPLES_DIR
from xci_cn.sandbox import cluster
from xci_cn.sandbox.binaries import find_kubectl


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="200,500,1000,2000")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="real-pod-ceiling-"))
    os.environ["XCI_CN_SANDBOX_HOME"] = str(work / "home")
    name = "ceiling"
    try:
        up = cluster.up(name, "aio", pods="real")
        kubectl = [str(find_kubectl()), "--kubeconfig", str(up.sandbox.kubeconfig)]
        for directory in ("sdc", "sdc-gateway"):
            subprocess.run([*kubectl, "apply", "-f", str(SAMPLES_DIR / directory)], check=True,
                           capture_output=True)
        subprocess.run([*kubectl, "wait", "--for", "condition=Available", "deploy", "--all", "-n", "sdc",
                        "--timeout", "120s"], check=True, capture_output=True)
        pods = json.loads(subprocess.run([*kubectl, "get", "pods", "-n", "sdc", "-l", "app=http-lb,version=v1",
                                          "-o", "json"], check=True, capture_output=True, text=True).stdout)
        pod_ip = pods["items"][0]["status"]["podIP"]
        gateway = f"http://127.0.0.1:{up.sandbox.info()['gateway_port']}/"
        deadline = time.monotonic() + 60
        while attack(gateway, 20, 1, work / "warm")["ok"] < 1 and time.monotonic() < deadline:
            time.sleep(1)  # until the proxy serves the route
        print(f"# rate asked -> sent (success, p99 ms): through the Gateway | to the pod {pod_ip} directly; "
              f"{args.seconds:g} s each, http-lb v1 ({len(pods['items'])} pods, one answers directly)")
        for rate in [int(r) for r in args.rates.split(",")]:
            through = attack(gateway, rate, args.seconds, work / f"gw-{rate}")
            direct = attack(f"http://{pod_ip}:9180/", rate, args.seconds, work / f"pod-{rate}")
            print(f"rate {rate}/s: gateway sent {through['sent']:.0f}/s ({through['ok']:.1%} ok, p99 "
                  f"{through['p99']:.1f} ms) | pod sent {direct['sent']:.0f}/s ({direct['ok']:.1%} ok, p99 "
                  f"{direct['p99']:.1f} ms)", flush=True)
    finally:
        cluster.down(name, missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
