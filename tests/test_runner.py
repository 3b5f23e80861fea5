"""The DAG engine with real shell stages: order, concurrency, retries,
timeouts (children killed), always-stages and skips."""

from __future__ import annotations

import time
from pathlib import Path

from tests.helpers import alive, run_scenario


def stages_by_name(result):
    return {r.name: r for r in result.records}


def test_dag_order_is_respected(tmp_path: Path) -> None:
    log = tmp_path / "order.txt"
    result = run_scenario(tmp_path, f"""
name: order
stages:
  - {{name: c, type: shell, needs: [b], with: {{command: "echo c >> {log}"}}}}
  - {{name: a, type: shell, with: {{command: "sleep 0.2; echo a >> {log}"}}}}
  - {{name: b, type: shell, needs: [a], with: {{command: "echo b >> {log}"}}}}
""")
    assert result.status == "passed"
    assert log.read_text().split() == ["a", "b", "c"]


def test_independent_stages_run_concurrently_within_the_bound(tmp_path: Path) -> None:
    stamp = 'python3 -c "import time;print(time.time())" >> {}; sleep 1; ' \
            'python3 -c "import time;print(time.time())" >> {}'
    names = ["p1", "p2", "p3"]
    body = "\n".join(
        f'  - {{name: {n}, type: shell, with: {{command: \'{stamp.format(tmp_path / n, tmp_path / n)}\'}}}}'
        for n in names)
    result = run_scenario(tmp_path, f"name: par\nstages:\n{body}\n", jobs=2)
    assert result.status == "passed"
    spans = [tuple(map(float, (tmp_path / n).read_text().split())) for n in names]
    spans.sort()
    # Two ran together (overlap), the third waited for a free slot (bound = 2).
    assert spans[1][0] < spans[0][1]
    assert spans[2][0] >= min(spans[0][1], spans[1][1]) - 0.05


def test_retries_then_pass(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    result = run_scenario(tmp_path, f"""
name: flaky
stages:
  - name: flaky
    type: shell
    retries: 2
    with: {{command: "echo x >> {counter}; test $(wc -l < {counter}) -ge 2"}}
""")
    record = stages_by_name(result)["flaky"]
    assert record.status == "passed"
    assert record.attempts == 2
    assert [a.error is None for a in record.history] == [False, True]


def test_failure_after_all_attempts_skips_dependents_runs_always(tmp_path: Path) -> None:
    result = run_scenario(tmp_path, """
name: fail
stages:
  - {name: build, type: shell, retries: 1, with: {command: "exit 3"}}
  - {name: test, type: shell, needs: [build], with: {command: "true"}}
  - {name: logs, type: shell, needs: [test], always: true, with: {command: "true"}}
""")
    records = stages_by_name(result)
    assert result.status == "failed"
    assert records["build"].status == "failed" and records["build"].attempts == 2
    assert "status 3" in records["build"].error
    assert records["test"].status == "skipped" and "needs build" in records["test"].error
    assert records["logs"].status == "passed"


def test_timeout_kills_the_stage_and_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    result = run_scenario(tmp_path, f"""
name: hang
stages:
  - name: hang
    type: shell
    timeout: 1s
    with: {{command: "sleep 300 & echo $! > {pidfile}; wait"}}
""")
    elapsed = time.monotonic() - started
    record = stages_by_name(result)["hang"]
    assert record.status == "failed"
    assert record.error == "timed out after 1s"
    assert elapsed < 10
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and alive(child):
        time.sleep(0.05)
    assert not alive(child), "the stage's child process outlived its timeout"


def test_timeout_applies_per_attempt_and_is_retried(tmp_path: Path) -> None:
    result = run_scenario(tmp_path, """
name: slow
stages:
  - {name: slow, type: shell, timeout: 0.5s, retries: 1, with: {command: "sleep 5"}}
""")
    record = stages_by_name(result)["slow"]
    assert record.status == "failed" and record.attempts == 2


def test_stage_log_is_written(tmp_path: Path) -> None:
    result = run_scenario(tmp_path, """
name: log
stages:
  - {name: hello, type: shell, with: {command: "echo hello-from-stage"}}
""")
    assert result.status == "passed"
    text = (tmp_path / "results" / "logs" / "hello.log").read_text()
    assert "hello-from-stage" in text and "[stage: hello]" in text
