"""Start-up of the CLI: `xci-cn --help` <= 0.3 s (issue "Foundation"), side
by side with a bare interpreter start (the floor no CLI can go below) and
with importing the kubernetes client (what --help must not pay for).

Usage: .venv/bin/python bench/startup_bench.py [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

TARGET_SECONDS = 0.3


def median_time(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    python = sys.executable
    bare = median_time([python, "-c", "pass"], args.runs)
    kubernetes = median_time([python, "-c", "import kubernetes.client"], args.runs)
    cli = median_time([python, "-m", "xci_cn.cli", "--help"], args.runs)
    print(f"python -c pass:              median {bare * 1000:.0f} ms")
    print(f"import kubernetes.client:    median {kubernetes * 1000:.0f} ms")
    print(f"xci-cn --help:               median {cli * 1000:.0f} ms  target {TARGET_SECONDS * 1000:.0f} ms  "
          f"ratio {cli / TARGET_SECONDS:.2f}")
    ok = cli <= TARGET_SECONDS
    print("RESULT", "within target" if ok else "OUTSIDE target")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
