"""The warm main job, stage by stage.

Target (issue "Real traffic"): the README's main job — the default scenario
(k8-nosdn-istio, flavor mini) on real pods: provision, deploy and canary
http-lb on real requests, promote, verify, collect logs, teardown — in
<= 60 s median on 2 cores with the binary cache warm.

Runs `xci-cn run` as tools/main-job.sh does, N times, each in a private
sandbox home and results directory, and prints the median of the whole run
and of each stage (from summary.json), and the ratio to the target.
Usage: .venv/bin/python bench/main_job_bench.py [--runs 3] [--scenario k8-nosdn-istio]
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

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 60.0


def one_run(scenario: str, flavor: str, work: Path) -> tuple[float, int, dict[str, float]]:
    env = {**os.environ, "XCI_CN_SANDBOX_HOME": str(work / "sandboxes")}
    started = time.monotonic()
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "xci-cn"), "run", "--scenario", scenario,
                           "--flavor", flavor, "--results-dir", str(work / "results"), "-q"],
                          env=env, cwd=work, capture_output=True, text=True)
    seconds = time.monotonic() - started
    summary = json.loads((work / "results" / "summary.json").read_text())
    stages = {s["name"]: float(s.get("duration") or 0.0) for s in summary["stages"]}
    if proc.returncode != 0:
        print(proc.stdout[-2000:] + proc.stderr[-2000:], file=sys.stderr)
    return seconds, proc.returncode, stages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenario", default="k8-nosdn-istio")
    parser.add_argument("--flavor", default="mini")
    args = parser.parse_args()
    totals: list[float] = []
    per_stage: dict[str, list[float]] = {}
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="xci-cn-main-job-") as tmp:
            seconds, code, stages = one_run(args.scenario, args.flavor, Path(tmp))
        totals.append(seconds)
        for name, duration in stages.items():
            per_stage.setdefault(name, []).append(duration)
        print(f"run {run + 1}: {seconds:.1f} s, exit {code}: "
              + ", ".join(f"{n} {d:.1f}" for n, d in stages.items()), flush=True)
        if code != 0:
            print("the main job failed: its figures do not count", file=sys.stderr)
            return 1
    median = statistics.median(totals)
    print(f"main job median {median:.1f} s over {len(totals)} runs (min {min(totals):.1f}, "
          f"max {max(totals):.1f}); target {TARGET_S:.0f} s, ratio {median / TARGET_S:.2f}")
    for name, durations in per_stage.items():
        print(f"  {name:14} median {statistics.median(durations):6.1f} s "
              f"({100 * statistics.median(durations) / median:4.1f} % of the run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
