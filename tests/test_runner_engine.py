"""The engine's promises about time: an attempt that outlives its timeout
stops before anything else starts, retries never overlap, and teardown never
overlaps a stage attempt. Uses stage types of its own (registered like a
plugin) whose ``run`` blocks, as a stuck API call or a stuck read would."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.helpers import make_runner
from xci_cn.config.stage_types import stage_types
from xci_cn.errors import Cancelled, InvalidInput
from xci_cn.pipeline.stage import StageContext, StageOptions
from xci_cn.pipeline.state import Outcome, RunStatus, Status, load_state


class SpanOptions(StageOptions):
    seconds: float = 0.0
    obey_cancel: bool = False
    cleanup: float = 0.0  # after noticing the cancel, before stopping


SPANS: list[dict[str, Any]] = []  # every attempt of every test's span stages
_SPANS_LOCK = threading.Lock()


class SpanStage:
    """Runs ``seconds``; with ``obey_cancel`` it stops (after ``cleanup``) when
    cancelled, without it it ignores the cancel event like a blocked call."""

    name: ClassVar[str] = "test-span"
    options_model: ClassVar[type[StageOptions]] = SpanOptions

    def run(self, ctx: StageContext, options: SpanOptions) -> dict[str, Any]:
        span = {"stage": ctx.stage, "attempt": ctx.attempt, "start": time.monotonic(), "end": None,
                "cancel": ctx.cancel, "thread": threading.current_thread()}
        with _SPANS_LOCK:
            SPANS.append(span)
        try:
            if options.obey_cancel:
                if ctx.cancel.wait(options.seconds):
                    time.sleep(options.cleanup)
                    raise Cancelled("cancelled")
            else:
                time.sleep(options.seconds)
        finally:
            span["end"] = time.monotonic()
        return {}


@pytest.fixture(autouse=True)
def span_stage_type() -> None:
    if stage_types().get(SpanStage.name) is None:
        stage_types().register(SpanStage())
    SPANS.clear()


def spans(stage: str) -> list[dict[str, Any]]:
    return [s for s in SPANS if s["stage"] == stage]


def test_an_attempt_that_ignores_its_cancel_fails_for_good_and_teardown_waits(tmp_path: Path) -> None:
    runner = make_runner(tmp_path, """
name: stuck
stages:
  - {name: stuck, type: test-span, timeout: 1s, retries: 1, with: {seconds: 2.5}}
  - {name: teardown, type: test-span, needs: [stuck], always: true, with: {seconds: 0}}
""")
    runner.cancel_grace = 0.3
    result = runner.run()
    returned = time.monotonic()
    records = {r.name: r for r in result.records}
    stuck = records["stuck"]
    assert (stuck.status, stuck.outcome, stuck.attempts) == (Status.FAILED, Outcome.DID_NOT_STOP, 1)
    assert stuck.error == ("timed out after 1s, and did not stop within 0.3s of being cancelled: not retried; "
                           "later stages wait until it ends")
    assert len(spans("stuck")) == 1, "a retry started while the first attempt was alive"
    first = spans("stuck")[0]
    assert first["cancel"].is_set()
    (teardown,) = spans("teardown")
    assert first["end"] is not None and teardown["start"] >= first["end"], "teardown overlapped the attempt"
    assert records["teardown"].status == Status.PASSED
    # Nothing runs after run() returned: every attempt's thread has ended.
    assert all(s["end"] <= returned and not s["thread"].is_alive() for s in SPANS)
    assert result.exit_code == 1


def test_a_retry_starts_only_after_the_cancelled_attempt_ended(tmp_path: Path) -> None:
    runner = make_runner(tmp_path, """
name: slow-stop
stages:
  - name: slow
    type: test-span
    timeout: 0.5s
    retries: 1
    with: {seconds: 30, obey_cancel: true, cleanup: 0.4}
""")
    runner.cancel_grace = 5
    result = runner.run()
    record = result.records[0]
    assert (record.status, record.outcome, record.attempts) == (Status.FAILED, Outcome.TIMED_OUT, 2)
    first, second = spans("slow")
    assert second["start"] >= first["end"], "attempt 2 started while attempt 1 was still running"
    # Each attempt had its own cancel event; the first one stays set.
    assert first["cancel"] is not second["cancel"]
    assert first["cancel"].is_set() and second["cancel"].is_set()


def test_no_stage_starts_beside_an_attempt_that_did_not_stop(tmp_path: Path) -> None:
    runner = make_runner(tmp_path, """
name: independent
stages:
  - {name: stuck, type: test-span, timeout: 0.3s, with: {seconds: 1.5}}
  - {name: other, type: test-span, with: {seconds: 0}}
""", jobs=1)
    runner.cancel_grace = 0.1
    result = runner.run()
    assert {r.name: r.status for r in result.records} == {"stuck": Status.FAILED, "other": Status.PASSED}
    (stuck,), (other,) = spans("stuck"), spans("other")
    assert other["start"] >= stuck["end"]


def test_the_run_gives_up_on_an_attempt_that_never_stops(tmp_path: Path) -> None:
    runner = make_runner(tmp_path, """
name: forever
stages:
  - {name: stuck, type: test-span, timeout: 0.2s, with: {seconds: 3}}
  - {name: teardown, type: test-span, needs: [stuck], always: true, with: {seconds: 0}}
""")
    runner.cancel_grace = 0.1
    runner.leftover_wait = 0.5
    started = time.monotonic()
    result = runner.run()
    assert time.monotonic() - started < 2.5
    teardown = result.records[1]
    assert (teardown.status, teardown.outcome) == (Status.SKIPPED, Outcome.SKIPPED)
    assert teardown.error == "not run: stage stuck did not stop and may still be changing the cluster"
    assert spans("teardown") == []
    spans("stuck")[0]["thread"].join(5)


def test_abort_cancels_the_running_attempt_and_skips_what_waits(tmp_path: Path) -> None:
    runner = make_runner(tmp_path, """
name: abort
stages:
  - {name: long, type: test-span, with: {seconds: 30, obey_cancel: true}}
  - {name: next, type: test-span, needs: [long], with: {seconds: 0}}
  - {name: teardown, type: test-span, needs: [next], always: true, with: {seconds: 0}}
""")
    threading.Timer(0.3, runner.abort, args=(2,)).start()
    result = runner.run()
    statuses = {r.name: (r.status, r.outcome) for r in result.records}
    assert statuses == {"long": (Status.CANCELLED, Outcome.CANCELLED),
                        "next": (Status.CANCELLED, Outcome.CANCELLED),
                        "teardown": (Status.PASSED, Outcome.PASSED)}
    assert result.exit_code == 130


def test_resume_validates_state_json_through_the_model(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "state.json").write_text(json.dumps({
        "version": 1, "run_id": "x", "fingerprint": "f", "scenario": "s", "inputs": {}, "status": "failed",
        "stages": [{"name": "a", "type": "shell", "status": "passed", "history": 7}]}))
    with pytest.raises(InvalidInput) as caught:
        make_runner(tmp_path, "name: s\nstages:\n  - {name: a, type: shell, with: {command: 'true'}}\n",
                    resume=True)
    assert str(caught.value) == f"{results / 'state.json'}: stages[0].history: input should be a valid list"


def test_state_json_reads_back_what_it_wrote(tmp_path: Path) -> None:
    runner = make_runner(tmp_path, """
name: s
stages:
  - {name: a, type: test-span, with: {seconds: 0}}
  - {name: b, type: test-span, needs: [a], timeout: 0.2s, with: {seconds: 5, obey_cancel: true}}
""")
    result = runner.run()
    previous = load_state(runner.state_path)
    assert previous is not None
    assert previous.status == RunStatus.FAILED
    assert [(s.name, s.status, s.outcome, len(s.history)) for s in previous.stages] == [
        ("a", Status.PASSED, Outcome.PASSED, 1), ("b", Status.FAILED, Outcome.TIMED_OUT, 1)]
    assert [r.outcome for r in result.records] == [s.outcome for s in previous.stages]
