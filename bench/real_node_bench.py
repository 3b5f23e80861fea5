"""The sandbox with its real node, binaries cached.

Targets (issue "Real pods in the sandbox"): `xci-cn sandbox up` (flavor mini,
warm) until the real node is Ready <= 20 s median; the SDC sample until every
Deployment is Available on real pods <= 20 s median; peak memory of the whole
sandbox with the sample running <= 2 GiB; idle CPU of kubelet + containerd
with the sample running: reported (CPU-seconds per minute). Beside them, the
same `up` with `--pods simulated` (the kwok-only baseline) in the same round.

Runs the real CLI and kubectl as a user would, N rounds, in a private home.
Usage: .venv/bin/python bench/real_node_bench.py [--runs 3] [--idle 60]
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

from bench.sandbox_bench import rss_mib, xci_cn
from tests.leaks import processes_mentioning

TARGET_UP_S, TARGET_AVAILABLE_S, TARGET_PEAK_MIB = 20.0, 20.0, 2048.0
SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "sdc"


def sandbox_pids(home: Path, name: str) -> list[int]:
    """Every process of the sandbox: those naming its directories (control
    plane, node components, shims) and the containers in its cgroup."""
    from xci_cn.sandbox.node import NodeLayout

    layout = NodeLayout(name, home / name)
    pids = {pid for pid, _ in processes_mentioning(str(home / name))}
    pids |= {pid for pid, _ in processes_mentioning(str(layout.run_dir) + "/")}
    for procs in Path(f"/sys/fs/cgroup/pids/{layout.cgroup_name}").rglob("cgroup.procs"):
        pids |= {int(p) for p in procs.read_text().split()}
    return sorted(pids)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle", type=float, default=60, help="seconds of idle CPU measurement")
    args = parser.parse_args()
    from xci_cn.sandbox.binaries import ensure_binaries, find_kubectl
    from xci_cn.sandbox.node import NodeLayout, recorded_pid

    ensure_binaries()
    home = Path(tempfile.mkdtemp(prefix="xci-cn-bench-"))
    env = dict(os.environ, XCI_CN_SANDBOX_HOME=str(home))
    kubeconfig = home / "bench" / "kubeconfig.yaml"
    kubectl = [str(find_kubectl()), "--kubeconfig", str(kubeconfig)]
    ups, simulated, available, peaks, idle = [], [], [], [], []
    for run in range(args.runs):
        simulated.append(xci_cn("sandbox", "up", "--name", "bench", "--pods", "simulated", "-q", env=env))
        xci_cn("sandbox", "down", "--name", "bench", env=env)
        ups.append(xci_cn("sandbox", "up", "--name", "bench", "-q", env=env))
        started = time.perf_counter()
        subprocess.run([*kubectl, "apply", "-f", str(SAMPLE)], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([*kubectl, "wait", "--for", "condition=Available", "deployment", "--all", "-n", "sdc",
                        "--timeout", "120s"], check=True, stdout=subprocess.DEVNULL)
        available.append(time.perf_counter() - started)
        layout = NodeLayout("bench", home / "bench")
        node = [recorded_pid(layout, c) for c in ("kubelet", "containerd")]
        before = sum(cpu_seconds(p) for p in node if p)
        peak, deadline = 0.0, time.monotonic() + args.idle
        while time.monotonic() < deadline:
            peak = max(peak, rss_mib(sandbox_pids(home, "bench")))
            time.sleep(1)
        idle.append((sum(cpu_seconds(p) for p in node if p) - before) * 60 / args.idle)
        peaks.append(peak)
        pods = json.loads(subprocess.run([*kubectl, "get", "pods", "-n", "sdc", "-o", "json"], check=True,
                                         capture_output=True, text=True).stdout)["items"]
        xci_cn("sandbox", "down", "--name", "bench", env=env)
        print(f"run {run + 1}/{args.runs}: up {ups[-1]:.2f}s (simulated {simulated[-1]:.2f}s) "
              f"SDC Available {available[-1]:.2f}s ({len(pods)} pods) peak {peak:.0f} MiB "
              f"idle kubelet+containerd {idle[-1]:.2f} CPU-s/min", flush=True)
    up, sim, avail = statistics.median(ups), statistics.median(simulated), statistics.median(available)
    peak = max(peaks)
    print(f"sandbox up, real node Ready (mini) median {up:.2f}s  target {TARGET_UP_S:.0f}s  "
          f"ratio {up / TARGET_UP_S:.2f}  (simulated pods: {sim:.2f}s, real/simulated {up / sim:.2f})")
    print(f"SDC sample Available on real pods median {avail:.2f}s  target {TARGET_AVAILABLE_S:.0f}s  "
          f"ratio {avail / TARGET_AVAILABLE_S:.2f}")
    print(f"peak memory (whole sandbox, sample running) {peak:.0f} MiB  target {TARGET_PEAK_MIB:.0f} MiB  "
          f"ratio {peak / TARGET_PEAK_MIB:.2f}")
    print(f"idle CPU of kubelet + containerd, sample running: median {statistics.median(idle):.2f} CPU-s/min")
    ok = up <= TARGET_UP_S and avail <= TARGET_AVAILABLE_S and peak <= TARGET_PEAK_MIB
    print("RESULT", "within targets" if ok else "OUTSIDE targets")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
