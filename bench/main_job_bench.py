"""The warm main job, stage by stage.

Target (issue "Real traffic"): the README's main job — the default scenario
(k8-nosdn-istio, flavor mini) on real pods: provision, deploy and canary
http-lb on real requests, promote, verify, collect logs, teardown — in
<= 60 s median on 2 cores with the binary cache warm.

Runs `xci-cn run` as tools/main-job.sh does, N times, each in a private
sandbox home and results directory, and prints the median of the whole run
and of each stage (from summary.json), and the ratio to the target.

The default scenario's verify stage also runs the CNF issue's `cnf` check,
whose runtime rules restart, scale and roll every SDC Deployment on the real
node (about 35 s on their own). With --side-by-side the same scenario without
that check (the story the traffic issue lists: platform, mesh, HTTP and
split probes) runs alternately with it, so both figures come from the same
conditions.
Usage: .venv/bin/python bench/main_job_bench.py [--runs 3] [--scenario k8-nosdn-istio] [--side-by-side]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

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


def without_cnf(scenario: str, work: Path) -> str:
    """A copy of the bundled scenario whose verify stage runs every check but ``cnf``."""
    data = yaml.safe_load((REPO / "scenarios" / f"{scenario}.yaml").read_text())
    for stage in data["stages"]:
        checks = (stage.get("with") or {}).get("checks")
        if stage["type"] == "verify" and checks:
            stage["with"]["checks"] = [c for c in checks if c.get("type") != "cnf"]
    path = work / f"{scenario}-without-cnf.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenario", default="k8-nosdn-istio")
    parser.add_argument("--flavor", default="mini")
    parser.add_argument("--side-by-side", action="store_true",
                        help="also run the scenario without its cnf check, alternately")
    args = parser.parse_args()
    variants = {"main job": args.scenario}
    scratch = Path(tempfile.mkdtemp(prefix="xci-cn-main-job-scenarios-"))
    try:
        return measure(args, variants, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def measure(args: argparse.Namespace, variants: dict[str, str], scratch: Path) -> int:
    if args.side_by_side:
        variants["main job without the cnf check"] = without_cnf(args.scenario, scratch)
    totals: dict[str, list[float]] = {v: [] for v in variants}
    per_stage: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
    for run in range(args.runs):
        for variant, scenario in variants.items():
            with tempfile.TemporaryDirectory(prefix="xci-cn-main-job-") as tmp:
                seconds, code, stages = one_run(scenario, args.flavor, Path(tmp))
            totals[variant].append(seconds)
            for name, duration in stages.items():
                per_stage[variant].setdefault(name, []).append(duration)
            print(f"{variant}, run {run + 1}: {seconds:.1f} s, exit {code}: "
                  + ", ".join(f"{n} {d:.1f}" for n, d in stages.items()), flush=True)
            if code != 0:
                print("the main job failed: its figures do not count", file=sys.stderr)
                return 1
    for variant in variants:
        median = statistics.median(totals[variant])
        print(f"{variant} median {median:.1f} s over {len(totals[variant])} runs (min "
              f"{min(totals[variant]):.1f}, max {max(totals[variant]):.1f}); target {TARGET_S:.0f} s, "
              f"ratio {median / TARGET_S:.2f}")
        for name, durations in per_stage[variant].items():
            print(f"  {name:14} median {statistics.median(durations):6.1f} s "
                  f"({100 * statistics.median(durations) / median:4.1f} % of the run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
