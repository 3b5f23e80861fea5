"""Real traffic through the sandbox's Gateway (Traefik) and Prometheus.

Targets (issue "Real traffic"):
* one analysis round (the gateway profile's queries) against the real
  Prometheus <= 200 ms median;
* the proxy's throughput on loopback to one backend, as the ceiling for the
  load generator, beside the same load sent to the backend directly;
* the load generator's measured rate against the rate asked;
* a bad canary: from its first failing request to the rollback read back
  <= 2 analysis intervals + 5 s.

The backends are HTTP servers of this script on a bridge address of its own
(the API server refuses loopback endpoints); the sandbox has simulated pods,
so the script needs no real node (nor the CPU one costs).

Usage: .venv/bin/python bench/traffic_bench.py [--rounds 50] [--rates 200,500,1000,2000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_gateway_traffic import VersionServer, canary_stages, graph
from xci_cn.sandbox import cluster
from xci_cn.sandbox.binaries import cached_tool, find_kubectl
from xci_cn.verify.analysis import AnalysisSpec, default_metrics, measure
from xci_cn.verify.load import MAX_RATE, SHORTFALL, Load, TrafficSpec
from xci_cn.verify.prometheus import Prometheus

INTERVAL = 3.0  # as ANALYSIS (the tests' and the bundled scenarios' canary analysis)


def attack(url: str, rate: int, seconds: float, work: Path) -> dict:
    # Past the ceiling a scenario may ask for, to find where the proxy stops keeping up.
    spec = TrafficSpec.model_construct(**{**TrafficSpec(url=url).model_dump(), "rate": rate, "duration": seconds,
                                          "timeout": 2.0})
    load = Load(cached_tool("vegeta"), spec, None, work)
    load.start()
    assert load.process is not None
    load.process.wait(timeout=seconds + 30)
    record = load.stop()
    ok = sum(n for code, n in record.codes.items() if code.startswith("2"))
    return {"sent": record.rate_sent, "ok": ok / max(record.requests, 1), "p99": record.latency_ms.get("p99", 0)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--rates", default="200,500,1000,2000")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="traffic-bench-"))
    os.environ["XCI_CN_SANDBOX_HOME"] = str(work / "home")
    bridge, address = f"xcib{os.getpid() % 100000}", f"10.214.{os.getpid() % 250}.1"
    name = "traffic-bench"
    servers: dict[str, VersionServer] = {}
    within: list[bool] = []
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", bridge], check=True)
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
        servers = {v: VersionServer(address, v) for v in ("v1", "v2")}
        up = cluster.up(name, "aio", pods="simulated")
        info = up.sandbox.info()
        gateway = f"http://127.0.0.1:{info['gateway_port']}"
        prometheus = f"http://127.0.0.1:{info['prometheus_port']}"
        manifests, namespace = graph(work, servers, (50, 50))
        subprocess.run([str(find_kubectl()), "--kubeconfig", str(up.sandbox.kubeconfig), "apply", "-f",
                        str(manifests)], check=True, capture_output=True)
        route = f"{gateway}/{namespace}/"
        deadline = time.monotonic() + 60
        while attack(route, 20, 1, work / "warm")["ok"] < 1 and time.monotonic() < deadline:
            time.sleep(1)

        print("# proxy ceiling and load generator: rate asked -> sent (success, p99 ms); direct to the backend")
        for rate in [int(r) for r in args.rates.split(",")]:
            through = attack(route, rate, 3, work / f"gw-{rate}")
            direct = attack(f"http://{address}:{servers['v1'].port}/", rate, 3, work / f"direct-{rate}")
            if rate <= MAX_RATE:  # what a scenario may ask for must be sent
                within.append(through["sent"] >= SHORTFALL * rate)
            print(f"rate {rate}/s: gateway sent {through['sent']:.0f}/s ({through['sent'] / rate:.2f} of asked, "
                  f"{through['ok']:.1%} ok, p99 {through['p99']:.1f} ms) | direct sent {direct['sent']:.0f}/s "
                  f"({direct['ok']:.1%} ok, p99 {direct['p99']:.1f} ms)")

        load = Load(cached_tool("vegeta"), TrafficSpec(url=gateway, path=f"/{namespace}/", rate=50), None,
                    work / "analysis").start()
        time.sleep(8)
        spec = AnalysisSpec(window=6, profile="gateway", metrics=default_metrics())
        prom = Prometheus(prometheus)
        times = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            result = measure(prom, spec, "http-lb", namespace, "v2", "v1")
            times.append(time.perf_counter() - started)
            assert result.verdict == "Successful", result
        prom.close()
        load.stop()
        within.append(statistics.median(times) <= 0.2)
        print(f"analysis round (gateway profile, {len(spec.metrics)} queries): median "
              f"{statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms over {args.rounds} "
              f"(target <= 200 ms)")

        servers["v2"].fail_every = 2
        (work / "bad").mkdir()
        bad, bad_ns = graph(work / "bad", servers)
        scenario = work / "bad.yaml"
        scenario.write_text("""name: bad-canary-bench
installer: sandbox
stages:
  - name: provision
    type: provision
    with: {reuse: true, pods: simulated}
""" + canary_stages(bad, bad_ns))
        failures_before = servers["v2"].count
        subprocess.run([sys.executable, "-m", "xci_cn.cli", "run", "--scenario", str(scenario), "--flavor", "aio",
                        "--sandbox-name", name, "--results-dir", str(work / "R")], capture_output=True)
        summary = json.loads((work / "R" / "summary.json").read_text())
        deploy = next(s for s in summary["stages"] if s["name"] == "deploy")
        steps = deploy["outputs"]["steps"]
        first_request = steps[0].get("load_from_s", 0.0)
        ended = deploy["outputs"]["traffic"]["duration_s"]
        assert servers["v2"].count > failures_before and deploy["outputs"]["rollout"]["read_back"]["ok"]
        detection = ended - first_request
        within.append(detection <= 2 * INTERVAL + 5)
        print(f"bad canary: first failing request -> rollback read back {detection:.1f} s "
              f"(target <= 2 x {INTERVAL:g} s + 5 s = {2 * INTERVAL + 5:g} s); verdict: {deploy['error'][:120]}")
    finally:
        for server in servers.values():
            server.stop()
        cluster.down(name, missing_ok=True)
        subprocess.run(["ip", "link", "del", bridge], check=False)
    print("RESULT within targets" if all(within) else "RESULT OUTSIDE targets")
    return 0 if all(within) else 1


if __name__ == "__main__":
    raise SystemExit(main())
