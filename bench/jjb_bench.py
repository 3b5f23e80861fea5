"""Rendering the whole JJB job tree (every stream x scenario x pod, >= 200
jobs) through JJB's API.

Target (issue "Jenkins and Gerrit: JJB job templates"): one render of the
whole tree <= 3 s. Prints the median of several in-process renders (imports
already done) and, for what a person waits for, the median wall time of the
`xci-cn jobs test` command in a fresh process (imports, render, checks).
Usage: .venv/bin/python bench/jjb_bench.py [--runs 7] [--cli-runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xci_cn.jenkins.jjb import check, render
from xci_cn.paths import JJB_DIR

TARGET_S = 3.0
MIN_JOBS = 200


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--cli-runs", type=int, default=3)
    args = parser.parse_args()

    times, count = [], 0
    for _ in range(args.runs):
        started = time.perf_counter()
        rendered = render([JJB_DIR])
        times.append(time.perf_counter() - started)
        count = len(rendered.jobs)
        if check(rendered):
            print("the tree has problems: run `xci-cn jobs test`", file=sys.stderr)
            return 1
    median = statistics.median(times)
    print(f"render whole tree: {count} jobs, median {median:.3f}s of {args.runs} "
          f"(min {min(times):.3f}s, max {max(times):.3f}s); target {TARGET_S:.1f}s, "
          f"ratio {median / TARGET_S:.2f}")

    cli_times = []
    xci_cn = Path(sys.executable).with_name("xci-cn")
    for _ in range(args.cli_runs):
        started = time.perf_counter()
        subprocess.run([str(xci_cn), "jobs", "test"], check=True, capture_output=True)
        cli_times.append(time.perf_counter() - started)
    if cli_times:
        cli_median = statistics.median(cli_times)
        print(f"`xci-cn jobs test` (fresh process): median {cli_median:.3f}s of {args.cli_runs}; "
              f"ratio {cli_median / TARGET_S:.2f}")
    ok = count >= MIN_JOBS and median <= TARGET_S
    if count < MIN_JOBS:
        print(f"the tree has {count} jobs, fewer than the {MIN_JOBS} the target is about", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
