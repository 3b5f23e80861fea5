"""The analysis tape, its offline replay, and the statistical judge.

The judge is a pure function, so its decisions are table tests on known
samples. The tape is recorded by a real run (``xci-cn run``) against the real
Prometheus of tests/meshmetrics.py and replayed by the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import cli
from tests.meshmetrics import Profile
from xci_cn.verify.analysis import AnalysisSpec, Measurement, MetricSpec, decide, judge
from xci_cn.verify.judge import (
    FAILED,
    HIGH,
    INCONCLUSIVE,
    LOW,
    NODATA,
    NODATA_FAIL,
    PASS,
    SUCCESSFUL,
    Observation,
    mann_whitney,
    too_few_samples,
)
from xci_cn.verify.series import Series

# Ten p99 latencies (ms) of a healthy baseline, and a canary 50 % slower.
BASELINE = [20.0, 21.0, 22.0, 23.0, 24.0, 20.0, 21.0, 22.0, 23.0, 24.0]
SLOWER = [v * 1.5 for v in BASELINE]


def compare(canary: list[float], baseline: list[float], direction: str = "either", **limits: float):
    return mann_whitney(canary, baseline, confidence=0.95, direction=direction,
                        allowed_increase=limits.get("allowed_increase", 1.0),
                        allowed_decrease=limits.get("allowed_decrease", 1.0))


@pytest.mark.parametrize("canary,baseline,direction,limits,expected,why", [
    (SLOWER, BASELINE, "either", {}, HIGH, "p = 0.000173 < 0.05, shift +11, mean ratio 1.5 >= 1"),
    (SLOWER, BASELINE, "decrease", {}, PASS, "Pass: p = 0.000173"),  # only a decrease is bad
    (SLOWER, BASELINE, "increase", {"allowed_increase": 1.6}, PASS,
     "Pass: p = 0.000173 < 0.05, shift +11, mean ratio 1.5"),
    ([v / 2 for v in BASELINE], BASELINE, "either", {}, LOW, "shift -11"),
    ([v / 2 for v in BASELINE], BASELINE, "decrease", {"allowed_decrease": 0.4}, PASS, "mean ratio 0.5"),
    (BASELINE[1:] + BASELINE[:1], BASELINE, "either", {}, PASS, "identical"),
    ([5.0] * 6, [5.0] * 8, "either", {}, PASS, "same value"),
    # Ties everywhere, still different: ranks decide (tie-corrected), no noise added.
    ([5.0] * 6, [3.0] * 6, "either", {}, HIGH, "p = 0.00126"),
    ([1.0, 1.0, 2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0, 2.0, 2.0], "either", {}, PASS, "Pass: p = 0.311"),
    # A baseline mean of 0 gives a mean ratio of 1 (Kayenta): only the test itself can fail it.
    ([1.0, 2.0, 3.0, 4.0], [0.0] * 4, "increase", {}, HIGH, "p = 0.0211 < 0.05, shift +2.5, mean ratio 1 >= 1"),
    ([1.0, 2.0, 3.0, 4.0], [0.0] * 4, "increase", {"allowed_increase": 1.2}, PASS, "mean ratio 1"),
])
def test_mann_whitney_decisions(canary, baseline, direction, limits, expected, why) -> None:
    result = compare(canary, baseline, direction, **limits)
    assert result.classification == expected, result.reason
    assert why in result.reason


@pytest.mark.parametrize("canary,baseline,too_few", [
    (3, 3, True), (3, 4, True), (3, 5, False), (4, 4, False), (2, 7, True), (2, 8, False), (1, 38, True),
    (1, 39, False)])
def test_too_few_samples_is_when_no_outcome_could_be_significant(canary, baseline, too_few) -> None:
    assert too_few_samples(canary, baseline, 0.95) is too_few


def _range(metric: str, role: str, version: str, values: list[float]) -> Observation:
    return Observation(metric, role, version, f"q-{metric}-{version}", "range", 0.0, 10.0, 1.0,
                       [Series({}, [(float(i), repr(v)) for i, v in enumerate(values)])] if values else [])


def _measure(spec: AnalysisSpec, data: dict[str, tuple[list[float], list[float]]]) -> Measurement:
    observations = []
    for name, (canary, baseline) in data.items():
        observations += [_range(name, "canary", "v2", canary), _range(name, "baseline", "v1", baseline)]
    return judge(spec, "2026-12-01T00:00:00.000Z", observations)


def _stat(name: str, **extra) -> MetricSpec:
    return MetricSpec(name=name, type="query", query="q", judge="mann-whitney", **extra)


def test_too_few_samples_warns_in_the_verdict_and_must_have_data_fails() -> None:
    spec = AnalysisSpec(metrics=[_stat("latency")], count=1)
    measurement = _measure(spec, {"latency": (SLOWER[:3], BASELINE[:3])})
    only = measurement.metrics[0]
    assert only.classification == NODATA and only.warning and "too few samples to judge (3 canary, 3 " \
        "baseline)" in only.warning
    sure, result = decide(spec, [measurement])
    assert result.verdict == INCONCLUSIVE and "no statistical metric had data" in result.reason
    assert "warning: latency of v2 vs v1: too few samples" in result.reason and result.warnings
    strict = AnalysisSpec(metrics=[_stat("latency", must_have_data=True)], count=1)
    measurement = _measure(strict, {"latency": (SLOWER[:3], BASELINE[:3])})
    assert measurement.metrics[0].classification == NODATA_FAIL and measurement.verdict == FAILED


def test_the_worked_example_of_the_docs_gives_what_the_docs_say() -> None:
    """docs/analysis.rst: latency (weight 60) with two metrics, errors (40)
    with one; p99 is High -> 50 x 0.6 + 100 x 0.4 = 70, marginal."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "analysis.rst").read_text()
    example = text.split(".. _analysis-worked-example:")[1].split(".. code-block:: yaml\n")[1]
    block = "\n".join(line[3:] for line in example.split("\n\n")[0].splitlines())
    spec = AnalysisSpec.model_validate(yaml.safe_load(block))
    measurement = _measure(spec, {"p99": (SLOWER, BASELINE), "p50": (BASELINE, BASELINE),
                                  "5xx": ([0.0] * 10, [0.0] * 10)})
    assert [m.classification for m in measurement.metrics] == [HIGH, PASS, PASS]
    rule = "p99 of v2 vs v1: High: p = 0.000173 < 0.05, shift +11, mean ratio 1.5 >= 1"
    assert measurement.metrics[0].rule == rule and f"``{rule}``" in text
    reason = "score 70 is marginal (pass 90, marginal 60; groups: errors 100, latency 50)"
    assert measurement.score == {"score": 70.0, "verdict": INCONCLUSIVE, "groups": {"latency": 50.0, "errors": 100.0},
                                 "reason": reason}
    assert measurement.verdict == INCONCLUSIVE
    assert "``score 70 is marginal (pass 90, marginal 60;\n  groups: errors 100, latency 50)``" in text


def test_a_critical_metric_fails_the_whole_analysis_at_once() -> None:
    spec = AnalysisSpec(metrics=[_stat("p99", critical=True), _stat("p50")], count=5, failure_limit=3)
    measurement = _measure(spec, {"p99": (SLOWER, BASELINE), "p50": (BASELINE, BASELINE)})
    assert measurement.score and measurement.score["score"] == 0.0
    sure, result = decide(spec, [measurement])
    assert sure and result.verdict == FAILED
    assert result.reason.startswith("critical metric failed: p99 of v2 vs v1: High: p = 0.000173")


# -- a real run's tape, replayed --------------------------------------------------------------
SECRET = "tok-s3cr3t-9f8e7d"


def _record_run(tmp_path: Path, mesh_service: tuple) -> tuple[Path, str]:
    """Three analysis checks of a verify stage against the real Prometheus:
    service -a healthy, -b 5 % errors, -c 30 % errors and 3x slower."""
    base, traffic, prometheus = mesh_service
    traffic.add(f"{base}-a", v1=Profile(), v2=Profile())
    traffic.add(f"{base}-b", v1=Profile(), v2=Profile(error_ratio=0.05))
    traffic.add(f"{base}-c", v1=Profile(), v2=Profile(error_ratio=0.3, latency_ms=60))
    prometheus.wait_for_series(f'istio_requests_total{{destination_service_name="{base}-c"}}')
    time.sleep(8)  # more than the 6 s the statistical judge looks back
    rps = ('sum(rate(istio_requests_total{destination_service_name="$service",destination_version="$version",'
           f'auth!="{SECRET}"}}[$window]))')
    metrics = [{"name": "success", "type": "success-rate", "threshold": 0.99},
               {"name": "p99", "type": "latency-p99", "judge": "mann-whitney", "lookback": "6s",
                "resolution": "0.5s"},
               {"name": "rps", "type": "query", "query": rps, "op": ">=", "threshold": 1}]
    checks = "\n".join(
        f"        - {json.dumps({'type': 'analysis', 'prometheus': prometheus.url, 'service': f'{base}-{x}', 'namespace': 'sdc', 'canary': 'v2', 'baseline': 'v1', 'count': 1, 'window': '5s', 'metrics': metrics})}"  # noqa: E501
        for x in "abc")
    scenario = tmp_path / "s.yaml"
    scenario.write_text("name: tape\nstages:\n  - name: verify\n    type: verify\n    with:\n"
                        f"      checks:\n{checks}\n")
    results = tmp_path / "R"
    proc = cli("run", "--scenario", str(scenario), "--results-dir", str(results), "-q",
               env={"MESH_API_TOKEN": SECRET})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return results, base


def test_a_real_runs_tape_replays_and_a_changed_threshold_flips_exactly_one(mesh_service: tuple,
                                                                          tmp_path: Path) -> None:
    results, base = _record_run(tmp_path, mesh_service)
    text = (results / "analysis.json").read_text()
    assert SECRET not in text and "<redacted>" in text
    tape = json.loads(text)
    assert [a["verdict"] for a in tape["analyses"]] == [SUCCESSFUL, FAILED, FAILED]
    first = tape["analyses"][0]["measurements"][0]
    assert first["traffic"]["v2"] > 10 and first["traffic"]["unit"] == "requests/s"
    ranged = [o for o in first["observations"] if o["kind"] == "range"]
    assert len(ranged) == 2 and len(ranged[0]["series"][0]["samples"]) >= 12
    assert 'destination_service_name="' + base + '-a"' in first["observations"][0]["query"]
    assert "prometheus" not in tape["analyses"][0]["spec"]

    # The same rules give the recorded verdicts, byte for byte, twice.
    same = cli("analysis", "replay", str(results), "--json")
    assert same.returncode == 1, same.stderr
    again = cli("analysis", "replay", str(results), "--json")
    assert same.stdout == again.stdout
    replayed = json.loads(same.stdout)
    for step, recorded in zip(replayed["steps"], tape["analyses"], strict=True):
        assert step["replayed"] == recorded["verdict"]
        assert [m["metrics"] for m in step["analysis"]["measurements"]] == \
            [m["recorded"]["metrics"] for m in recorded["measurements"]]
    text_out = cli("analysis", "replay", str(results)).stdout.splitlines()
    assert text_out[0] == f"verify check 1 {base}-a v2: Successful (as recorded)"
    assert text_out[-2] == "0 of 3 analysed step(s) changed their verdict"
    assert text_out[-1].startswith("replayed outcome: FAIL (recorded: FAIL): verify check 2 ")

    # A looser success rate flips service -b only; -c still fails (errors and latency).
    rules = tmp_path / "rules.yaml"
    rules.write_text(json.dumps([{**m, "threshold": 0.8} if m["name"] == "success" else m
                                 for m in tape["analyses"][0]["spec"]["metrics"]]))
    changed = cli("analysis", "replay", str(results), "--metrics", str(rules))
    lines = changed.stdout.splitlines()
    assert changed.returncode == 1
    assert lines[0] == f"verify check 1 {base}-a v2: Successful (as recorded)"
    assert lines[1] == f"verify check 2 {base}-b v2: Failed -> Successful"
    assert lines[2] == "  success (v2): Failed -> Successful"
    assert lines[4] == f"verify check 3 {base}-c v2: Failed (as recorded)"
    assert "1 of 3 analysed step(s) changed their verdict" in lines
    assert "p99 of v2 vs v1: High" in changed.stdout
    # ... and passes once -c is held to nothing but the rate of requests.
    only_rps = tmp_path / "rps.yaml"
    only_rps.write_text(json.dumps({"metrics": [tape["analyses"][0]["spec"]["metrics"][2]]}))
    passing = cli("analysis", "replay", str(results), "--metrics", str(only_rps), "--report",
                  str(tmp_path / "RR"))
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert passing.stdout.splitlines()[-2:] == ["replayed outcome: PASS (recorded: FAIL)",
                                                str(tmp_path / "RR" / "report.html")]
    report = (tmp_path / "RR" / "report.html").read_text()
    assert "(analysis replay, rules " in report and SECRET not in report


def test_bad_tapes_and_rules_are_one_line_each(mesh_service: tuple, tmp_path: Path) -> None:
    results, _ = _record_run(tmp_path, mesh_service)
    tape_path = results / "analysis.json"
    good = tape_path.read_text()

    def replay_error(*extra: str) -> str:
        proc = cli("analysis", "replay", str(results), *extra)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
        return proc.stderr.strip()

    tape_path.write_text(good[: len(good) // 2])
    assert "not a complete analysis tape (truncated: the JSON ends early)" in replay_error()
    tape_path.write_text(good.replace('"verdict": "Failed"', '"verdict": "Successful"', 1))
    assert replay_error() == f"xci-cn: {tape_path}: digest mismatch: the tape was changed after it was " \
                             "written (hand-edited or damaged)"
    newer = json.loads(good)
    newer["version"], newer["xci_cn_version"] = 2, "9.0.0"
    tape_path.write_text(json.dumps(newer))
    assert "tape format version 2 written by xci-cn 9.0.0; this xci-cn" in replay_error()
    assert "reads tape format version 1" in replay_error()
    tape_path.write_text(good)
    rules = tmp_path / "rules.yaml"
    rules.write_text("- {name: cpu, type: query, query: 'sum(rate(cpu[1m]))', op: '<=', threshold: 2}\n")
    assert replay_error("--metrics", str(rules)) == (
        f"xci-cn: {rules}: metric 'cpu' is not on the tape (it has p99, rps, success)")
    rules.write_text("- {name: success, type: success-rate, judge: mann-whitney}\n")
    assert replay_error("--metrics", str(rules)) == (
        f"xci-cn: {rules}: metric 'success': judge mann-whitney needs samples over a window; the tape "
        "recorded an instant value")
    rules.write_text("- {name: success, type: success-rate, threshold: 2, op: '=='}\n")
    assert replay_error("--metrics", str(rules)) == f"xci-cn: {rules}:1: [0].op: Input should be '>=', '<=', " \
                                                    "'>' or '<'"


def test_a_stage_that_runs_again_replaces_only_its_own_analyses(tmp_path: Path) -> None:
    """A retry (or a resumed run) of a stage writes a new TapeWriter: its
    first analysis drops the stage's earlier ones; other stages' stay."""
    from xci_cn.verify.tape import TapeWriter, read_tape

    spec = AnalysisSpec(metrics=[_stat("p99")], count=1)

    def analyse(writer: TapeWriter, step: int, canary: list[float]) -> None:
        sure, result = decide(spec, [_measure(spec, {"p99": (canary, BASELINE)})])
        writer.record(spec, result, "pass" if result.verdict == SUCCESSFUL else "fail",
                      {"kind": "canary-step", "step": step, "steps": 2, "weights": {"v1": 50, "v2": 50}},
                      service="http-lb", namespace="sdc", canary="v2", baseline="v1")

    first = TapeWriter(tmp_path, "deploy", 1)
    analyse(first, 1, BASELINE)
    analyse(first, 2, SLOWER)
    analyse(TapeWriter(tmp_path, "verify", 1), 1, BASELINE)
    retry = TapeWriter(tmp_path, "deploy", 2)
    analyse(retry, 1, BASELINE)
    tape, notes = read_tape(tmp_path / "analysis.json")
    assert notes == []
    assert [(a.stage, a.attempt, a.id, a.verdict) for a in tape.analyses] == [
        ("verify", 1, "verify/canary-step-1", SUCCESSFUL), ("deploy", 2, "deploy/canary-step-1", SUCCESSFUL)]


def test_replay_loads_no_http_client_kubernetes_or_scipy_for_a_threshold_tape() -> None:
    """Re-judging offline needs none of them: each costs start-up time that
    the replay target (1 s in a fresh process) cannot spare."""
    code = ("import sys; import xci_cn.verify.replay; "
            "print(sorted(m for m in ('requests', 'kubernetes', 'scipy', 'urllib3') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
