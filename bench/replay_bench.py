"""Analysis tape replay and the statistical judge, with a real Prometheus
(Debian package) scraping simulated Istio metrics every second.

Targets (issue "Analysis you can trust and replay"):
* replay of a tape with 10 steps x 3 metrics <= 1 s: the replay itself
  (read, check and re-judge the tape with changed rules), and ``xci-cn
  analysis replay`` as a person runs it (a fresh process, imports included:
  wall and CPU time), for a tape of 3 threshold metrics and one with a
  mann-whitney metric (which imports scipy.stats);
* the statistical judge adds <= 50 ms per measurement: a measurement of two
  threshold metrics, and the same plus one mann-whitney metric (two range
  queries and the test), timed alternately; the judging alone beside it.

The tapes are recorded by this script from the real Prometheus: 10 steps,
each one measurement of success rate and p99 latency (threshold) and either
a request rate (threshold) or p99 latency (mann-whitney over 30 s at 1 s).
Both versions answer in 20 to 30 ms, across a histogram bucket boundary, so
the p99 samples vary and the test really runs.

Usage: .venv/bin/python bench/replay_bench.py [--rounds 30] [--replays 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.meshmetrics import MeshTraffic, Profile, PrometheusServer
from xci_cn.verify.analysis import AnalysisSpec, analyse, judge, measure, observe
from xci_cn.verify.prometheus import Prometheus
from xci_cn.verify.replay import load_rules, replay
from xci_cn.verify.tape import analysis_entry, encode, read_tape

STEPS = 10
THRESHOLDS = [{"name": "success", "type": "success-rate", "threshold": 0.99},
              {"name": "p99", "type": "latency-p99", "threshold": 500}]
RATE = {"name": "rps", "type": "query", "op": ">=", "threshold": 1,
        "query": 'sum(rate(istio_requests_total{destination_service_name="$service",'
                 'destination_version="$version"}[$window]))'}
STATISTICAL = {"name": "p99-vs-baseline", "type": "latency-p99", "judge": "mann-whitney", "lookback": "30s",
               "resolution": "1s"}


def record_tape(prom: Prometheus, results: Path, third: dict) -> None:
    spec = AnalysisSpec.model_validate({"count": 1, "window": "30s", "metrics": [*THRESHOLDS, third]})
    entries = []
    for step in range(1, STEPS + 1):
        result = analyse(prom, spec, service="bench", namespace="sdc", canary="v2", baseline="v1")
        weights = {"v1": 100 - step * 10, "v2": step * 10}
        entries.append(analysis_entry("deploy", 1, {"kind": "canary-step", "step": step, "steps": STEPS,
                                                    "weights": weights},
                                      service="bench", namespace="sdc", canary="v2", baseline="v1", spec=spec,
                                      result=result, decision="pass"))
    results.mkdir(parents=True, exist_ok=True)
    (results / "analysis.json").write_text(encode(entries, lambda text: text))


def judge_overhead(prom: Prometheus, rounds: int) -> tuple[list[float], list[float], list[float]]:
    plain = AnalysisSpec.model_validate({"window": "30s", "metrics": THRESHOLDS})
    with_stat = AnalysisSpec.model_validate({"window": "30s", "metrics": [*THRESHOLDS, STATISTICAL]})
    without, with_, judging = [], [], []
    for _ in range(rounds):
        for spec, into in ((plain, without), (with_stat, with_)):
            started = time.perf_counter()
            measurement = measure(prom, spec, "bench", "sdc", "v2", "v1")
            into.append(time.perf_counter() - started)
            assert measurement.metrics[-1].classification != "Nodata" or spec is plain, measurement
        now, observations = observe(prom, with_stat, "bench", "sdc", "v2", "v1")
        started = time.perf_counter()
        judge(with_stat, "t", observations)
        judging.append(time.perf_counter() - started)
    return without, with_, judging


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--replays", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xci-cn-replay-bench-"))
    traffic = MeshTraffic()
    traffic.add("bench", v1=Profile(latency_ms=25), v2=Profile(latency_ms=25))
    traffic.start()
    prometheus = PrometheusServer(work, [f"127.0.0.1:{traffic.port}"])
    try:
        prometheus.wait_ready()
        prometheus.wait_for_series('istio_requests_total{destination_service_name="bench"}')
        time.sleep(32)  # a full 30 s window of samples for the statistical judge
        prom = Prometheus(prometheus.url)
        without, with_, judging = judge_overhead(prom, args.rounds)
        tapes = {"3 threshold metrics": work / "threshold", "2 threshold + 1 mann-whitney": work / "statistical"}
        record_tape(prom, tapes["3 threshold metrics"], RATE)
        record_tape(prom, tapes["2 threshold + 1 mann-whitney"], STATISTICAL)
        prom.close()
    finally:
        prometheus.stop()
        traffic.stop()

    added = statistics.median(with_) - statistics.median(without)
    print(f"measurement, 2 threshold metrics: median {statistics.median(without) * 1000:.1f} ms; with a "
          f"mann-whitney metric: {statistics.median(with_) * 1000:.1f} ms over {args.rounds} rounds")
    print(f"statistical judge adds {added * 1000:.1f} ms per measurement (target 50 ms, ratio {added / 0.05:.2f});"
          f" judging alone {statistics.median(judging) * 1000:.2f} ms")
    ok = added <= 0.05
    for name, results in tapes.items():
        rules = work / f"{results.name}.yaml"
        metrics = json.loads((results / "analysis.json").read_text())["analyses"][0]["spec"]["metrics"]
        rules.write_text(json.dumps([{**m, "threshold": m["threshold"] * 0.9} if m.get("threshold") else
                                     {**m, "confidence": 0.99} for m in metrics]))
        tape, _ = read_tape(results / "analysis.json")
        in_process = []
        for _ in range(args.replays):
            started = time.perf_counter()
            replay(read_tape(results / "analysis.json")[0], load_rules(rules))
            in_process.append(time.perf_counter() - started)
        wall, cpu = [], []
        for _ in range(args.replays):
            before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            proc = subprocess.run([str(Path(sys.executable).parent / "xci-cn"), "analysis", "replay",
                                   str(results), "--metrics", str(rules)], capture_output=True, text=True)
            wall.append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            assert proc.returncode in (0, 1) and "replayed outcome" in proc.stdout, proc.stdout + proc.stderr
        replayed = statistics.median(in_process)
        print(f"tape of {name}: {len(tape.analyses)} steps, {(results / 'analysis.json').stat().st_size // 1024} "
              f"KiB; replay median {replayed * 1000:.0f} ms (target 1 s, ratio {replayed:.2f}); "
              f"xci-cn analysis replay in a fresh process: wall median {statistics.median(wall) * 1000:.0f} ms, "
              f"CPU median {statistics.median(cpu) * 1000:.0f} ms (ratio {statistics.median(wall):.2f})")
        ok = ok and replayed <= 1.0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "import scipy.stats"], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"for comparison: python -c 'import scipy.stats' takes "
          f"{(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000:.0f} ms CPU")
    print("RESULT", "within targets" if ok else "OUTSIDE targets")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
