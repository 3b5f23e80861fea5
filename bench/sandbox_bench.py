"""Sandbox bring-up and teardown, with binaries cached.

Targets (issue "Local XCI sandbox"): `xci-cn sandbox up` (flavor mini) to an
API with every node Ready and Istio's CRDs Established <= 15 s median;
`down` <= 5 s; peak memory of the whole sandbox <= 1.5 GiB; no process or
port left after `down`.

Runs the real CLI as a user would, N times, in a private sandbox home.
Usage: .venv/bin/python bench/sandbox_bench.py [--runs 5] [--flavor mini]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.leaks import port_listening, processes_mentioning

TARGET_UP_S, TARGET_DOWN_S, TARGET_PEAK_MIB = 15.0, 5.0, 1536.0


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


class MemorySampler(threading.Thread):
    """Peak summed RSS of every live process whose command line names the
    sandbox directory (etcd, apiserver, controller-manager, scheduler, kwok)."""

    def __init__(self, marker: str):
        super().__init__(daemon=True)
        self.marker = marker
        self.peak = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            pids = [pid for pid, _ in processes_mentioning(self.marker)]
            self.peak = max(self.peak, rss_mib(pids))


def xci_cn(*args: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "xci_cn.cli", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--flavor", default="mini")
    parser.add_argument("--pods", default="simulated", choices=["real", "simulated"],
                        help="simulated: the kwok-only sandbox these targets are for (real: see real_node_bench.py)")
    args = parser.parse_args()
    from xci_cn.sandbox.binaries import ensure_binaries

    started = time.perf_counter()
    ensure_binaries()
    warm_check = time.perf_counter() - started
    home = Path(tempfile.mkdtemp(prefix="xci-cn-bench-"))
    env = dict(os.environ, XCI_CN_SANDBOX_HOME=str(home))
    ups, downs, peaks, leaks = [], [], [], 0
    for run in range(args.runs):
        sampler = MemorySampler(str(home / "bench"))
        sampler.start()
        ups.append(xci_cn("sandbox", "up", "--name", "bench", "--flavor", args.flavor, "--pods", args.pods,
                          "-q", env=env))
        time.sleep(3)  # let the controllers settle: the peak includes steady state
        url = subprocess.run([sys.executable, "-m", "xci_cn.cli", "sandbox", "status", "--name", "bench",
                              "--json"], env=env, capture_output=True, text=True, check=True).stdout
        port = urlparse(__import__("json").loads(url)["api_url"]).port
        sampler.stop.set()
        sampler.join()
        peaks.append(sampler.peak)
        downs.append(xci_cn("sandbox", "down", "--name", "bench", env=env))
        left = processes_mentioning(str(home / "bench"))
        if left or port_listening(port):
            leaks += 1
            print(f"run {run}: LEAK processes={left} port {port} listening={port_listening(port)}")
        print(f"run {run + 1}/{args.runs}: up {ups[-1]:.2f}s down {downs[-1]:.2f}s "
              f"peak {sampler.peak:.0f} MiB", flush=True)
    up_median, down_median, peak = statistics.median(ups), statistics.median(downs), max(peaks)
    print(f"binaries cache check (warm): {warm_check:.2f}s")
    print(f"sandbox up   ({args.flavor}) median {up_median:.2f}s  target {TARGET_UP_S:.0f}s  "
          f"ratio {up_median / TARGET_UP_S:.2f}")
    print(f"sandbox down          median {down_median:.2f}s  target {TARGET_DOWN_S:.0f}s  "
          f"ratio {down_median / TARGET_DOWN_S:.2f}")
    print(f"peak memory (whole sandbox) {peak:.0f} MiB  target {TARGET_PEAK_MIB:.0f} MiB  "
          f"ratio {peak / TARGET_PEAK_MIB:.2f}")
    print(f"leaks after down: {leaks} of {args.runs} runs")
    ok = up_median <= TARGET_UP_S and down_median <= TARGET_DOWN_S and peak <= TARGET_PEAK_MIB \
        and leaks == 0
    print("RESULT", "within targets" if ok else "OUTSIDE targets")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
