"""The DAG engine: runs a scenario's stages in dependency order.

``graphlib.TopologicalSorter`` hands out the stages whose needs are done;
independent ones run concurrently (bounded by ``jobs``). Each attempt runs in
a thread of its own with a hard timeout and a cancel event of its own, set by
its timeout or by the run's abort and never cleared. Only a ``TemporaryError``
(or a timeout the attempt obeyed) is retried, and never while the previous
attempt still runs: an attempt that ignores its cancel for the grace period
fails the stage for good, and no stage starts until that thread has ended.
``always`` stages run after failures and aborts. Every transition is
persisted to ``state.json``. The runner never prints: it calls
``on_transition`` and returns a ``RunResult``; the CLI talks to people.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

from xci_cn.config.model import Scenario, StageSpec
from xci_cn.config.stage_types import StageRegistry, stage_types
from xci_cn.errors import Cancelled, EnvironmentProblem, InvalidInput, TemporaryError, XciCnError
from xci_cn.pipeline.plan import levels
from xci_cn.pipeline.stage import RunInputs, StageContext, StageType
from xci_cn.pipeline.state import (
    AttemptRecord,
    Outcome,
    RunResult,
    RunStatus,
    StageRecord,
    StateDocument,
    Status,
    fingerprint,
    load_state,
    state_document,
    write_state,
)

# After a timeout or abort, how long a cancelled attempt gets to stop before
# the stage is failed for good.
CANCEL_GRACE_SECONDS = 10.0
# How long the run waits for an attempt that did not stop before it gives up
# on the stages still to run (they are not started beside it).
LEFTOVER_WAIT_SECONDS = 300.0
MAX_BACKOFF_SECONDS = 30.0

__all__ = ["CANCEL_GRACE_SECONDS", "Runner", "RunResult"]

Transition = Callable[[StageRecord, str], None]


@dataclass
class AttemptResult:
    """How one attempt ended: ``retry_after`` is None when another attempt
    cannot help, else the seconds to wait (0: the run's backoff)."""

    outcome: Outcome
    error: str | None = None
    outputs: dict[str, Any] | None = None
    retry_after: float | None = None


class _StageLogs:
    """One log file per stage, ``logs/<stage>.log``."""

    def __init__(self, results_dir: Path, redact: Callable[[str], str] | None):
        self.dir = results_dir / "logs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.redact = redact

    def logger(self, run_id: str, stage: str) -> tuple[logging.Logger, Path]:
        path = self.dir / f"{stage}.log"
        log = logging.getLogger(f"xci_cn.run.{run_id}.{stage}")
        log.setLevel(logging.DEBUG)
        log.propagate = False
        if not log.handlers:
            handler = logging.FileHandler(path)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [stage: " + stage
                                                   + "] %(message)s", "%Y-%m-%dT%H:%M:%S"))
            if self.redact is not None:
                redact = self.redact

                class _Redact(logging.Filter):
                    def filter(self, record: logging.LogRecord) -> bool:
                        record.msg = redact(record.getMessage())
                        record.args = ()
                        return True

                handler.addFilter(_Redact())
            log.addHandler(handler)
        return log, path

    def close(self, run_id: str, stage: str) -> None:
        log = logging.getLogger(f"xci_cn.run.{run_id}.{stage}")
        for handler in list(log.handlers):
            handler.close()
            log.removeHandler(handler)


class Runner:
    """Runs one scenario once. Thread-safe ``abort`` may be called from a
    signal handler."""

    def __init__(
        self,
        scenario: Scenario,
        inputs: RunInputs,
        results_dir: Path,
        *,
        selected: list[str] | None = None,
        resume: bool = False,
        jobs: int = 4,
        retry_backoff: float = 1.0,
        registry: StageRegistry | None = None,
        on_transition: Transition | None = None,
        progress: Callable[[str, str], None] | None = None,
        redact: Callable[[str], str] | None = None,
    ):
        self.scenario = scenario
        self.inputs = inputs
        self.results_dir = results_dir.resolve()
        self.jobs = max(1, jobs)
        self.retry_backoff = retry_backoff
        self.registry = registry or stage_types()
        self.on_transition = on_transition or (lambda record, event: None)
        self.progress = progress
        self.redact = redact
        self.run_id = uuid.uuid4().hex[:12]
        self.cancel_grace = CANCEL_GRACE_SECONDS
        self.leftover_wait = LEFTOVER_WAIT_SECONDS
        self._lock = threading.RLock()
        self._abort = threading.Event()
        self._second_abort = threading.Event()
        self.interrupted_by: int | None = None
        self._cancels: dict[str, threading.Event] = {}  # the current attempt's, per stage
        self._leftovers: dict[str, threading.Thread] = {}  # attempts that did not stop
        self._leftover_deadline: float | None = None
        self._gave_up: str | None = None
        self._events: queue.Queue[str] = queue.Queue()  # wakes the scheduler
        self.specs = {s.name: s for s in scenario.stages}
        self.inputs_fingerprint = fingerprint(scenario.name, inputs.flavor, inputs.installer,
                                              inputs.distro)
        self.records = [self._new_record(spec) for spec in scenario.stages]
        self.by_name = {r.name: r for r in self.records}
        if selected:
            for record in self.records:
                if record.name not in selected:
                    record.end(Status.NOT_SELECTED, Outcome.NOT_SELECTED)
        self.resumed_from: str | None = None
        if resume:
            self._restore()
        elif selected:
            self._carry_outputs_of_unselected()

    # -- set-up ---------------------------------------------------------------------
    def _new_record(self, spec: StageSpec) -> StageRecord:
        return StageRecord(
            name=spec.name, type=spec.type, always=spec.always, needs=list(spec.needs),
            max_attempts=1 + spec.retries,
            fingerprint=fingerprint(self.inputs_fingerprint, spec.model_dump(by_alias=True)),
        )

    @property
    def state_path(self) -> Path:
        return self.results_dir / "state.json"

    def _previous(self) -> tuple[StateDocument | None, dict[str, StageRecord]]:
        previous = load_state(self.state_path)
        return previous, {s.name: s for s in previous.stages} if previous else {}

    def _restore(self) -> None:
        """Carry over stages that passed with the same definition and inputs."""
        previous, old = self._previous()
        if previous is None:
            return
        self.resumed_from = previous.run_id
        for name in [n for level in levels(self.scenario) for n in level]:  # needs before dependents
            record = self.by_name[name]
            before = old.get(name)
            # ``always`` stages (logs, teardown) describe this run: run them again.
            if record.always or not before or before.status != Status.PASSED \
                    or before.fingerprint != record.fingerprint or record.status == Status.NOT_SELECTED:
                continue
            # A stage type may say its earlier result no longer holds (the
            # sandbox it brought up is gone): then it runs again.
            still_valid = getattr(self.registry.get(record.type), "still_valid", None)
            if still_valid is not None and not still_valid(before.outputs):
                continue
            # A stage whose needs run again runs again too: its result was
            # made on what they produced (a deploy onto a sandbox that was
            # torn down and is brought up anew).
            if any(not self.by_name[n].resumed for n in record.needs):
                continue
            before.resumed = True
            before.outcome = Outcome.PASSED
            self.by_name[name] = before
        self.records = [self.by_name[r.name] for r in self.records]

    def _carry_outputs_of_unselected(self) -> None:
        """A run of some stages (a daily loop's phase) sees the outputs of the
        other stages from the previous run in the same results dir — e.g. the
        kubeconfig that provision wrote — when their definition is the same."""
        _, old = self._previous()
        for record in self.records:
            before = old.get(record.name)
            if record.status == Status.NOT_SELECTED and before and before.status == Status.PASSED \
                    and before.fingerprint == record.fingerprint:
                record.outputs = before.outputs

    # -- control ----------------------------------------------------------------------
    def abort(self, signum: int) -> None:
        """Cancel what runs (except ``always`` stages), skip what waits; the
        always stages still run. A second abort cancels those too, and stops
        waiting for attempts that did not stop."""
        with self._lock:
            second = self._abort.is_set()
            self.interrupted_by = self.interrupted_by or signum
            self._abort.set()
            if second:
                self._second_abort.set()
            for name, event in self._cancels.items():
                if second or not self.specs[name].always:
                    event.set()
        self._events.put("abort")

    def _new_cancel(self, name: str) -> threading.Event:
        """A fresh cancel event for the next attempt of ``name``, already set
        when the run was aborted in the meantime."""
        with self._lock:
            event = threading.Event()
            if self._second_abort.is_set() or (self._abort.is_set() and not self.specs[name].always):
                event.set()
            self._cancels[name] = event
            return event

    # -- persistence -----------------------------------------------------------------
    def persist(self, status: RunStatus = RunStatus.RUNNING) -> None:
        with self._lock:
            doc = state_document(self.run_id, self.inputs_fingerprint, self.inputs.as_dict(),
                                 self.scenario.name, self.records, status)
            if self.redact is not None:  # state.json is archived with the results
                import json

                doc = json.loads(self.redact(json.dumps(doc)))
            write_state(self.state_path, doc)

    def _transition(self, record: StageRecord, event: str) -> None:
        self.persist()
        try:
            self.on_transition(record, event)
        except Exception:  # a broken listener must not break the run
            logging.getLogger(__name__).exception("transition listener failed")

    # -- scheduling -------------------------------------------------------------------
    def _decide(self, record: StageRecord) -> tuple[Status, Outcome, str] | None:
        """None to run a ready stage (its needs are done), else how it ends
        without running."""
        if record.always:
            return None
        if self._abort.is_set():
            return Status.CANCELLED, Outcome.CANCELLED, "run was interrupted"
        blocked = [n for n in record.needs
                   if self.by_name[n].status not in (Status.PASSED, Status.NOT_SELECTED)]
        if blocked:
            return Status.SKIPPED, Outcome.SKIPPED, f"not run: needs {', '.join(blocked)}"
        return None

    def _wait_for_leftovers(self) -> str | None:
        """Block while an attempt that did not stop still runs: nothing may
        start beside its writes. None when they all ended, else why the run
        gave up waiting (then nothing else starts)."""
        while self._gave_up is None:
            with self._lock:
                alive = {n: t for n, t in self._leftovers.items() if t.is_alive()}
                self._leftovers = alive
            if not alive:
                return None
            if self._leftover_deadline is None:
                self._leftover_deadline = time.monotonic() + self.leftover_wait
            if self._second_abort.is_set() or time.monotonic() >= self._leftover_deadline:
                self._gave_up = (f"not run: stage {', '.join(alive)} did not stop and may still be "
                                 "changing the cluster")
                break
            for thread in alive.values():
                thread.join(min(1.0, max(0.0, self._leftover_deadline - time.monotonic())))
        return self._gave_up

    def run(self) -> RunResult:
        started = time.time()
        self.results_dir.mkdir(parents=True, exist_ok=True)
        logs = _StageLogs(self.results_dir, self.redact)
        self.persist()
        sorter: TopologicalSorter[str] = TopologicalSorter({r.name: r.needs for r in self.records})
        sorter.prepare()  # cycles were refused when the scenario was loaded
        running = 0
        ready: deque[str] = deque()  # needs done, waiting for a free slot (``jobs``)
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="stage") as pool:
            while sorter.is_active():
                ready.extend(sorter.get_ready())
                ended_at_once = False
                while ready and running < self.jobs:
                    name = ready.popleft()
                    record = self.by_name[name]
                    if record.status != Status.PENDING:  # resumed, or not selected
                        ending = None
                    else:
                        ending = self._decide(record)
                        if ending is None:
                            leftover = self._wait_for_leftovers()
                            if leftover is not None:
                                ending = (Status.SKIPPED, Outcome.SKIPPED, leftover)
                        if ending is None:
                            record.status = Status.RUNNING
                            running += 1
                            future = pool.submit(self._execute, record, logs)
                            future.add_done_callback(functools.partial(self._stage_done, name))
                            continue
                        record.end(*ending)
                        self._transition(record, record.status)
                    sorter.done(name)
                    ended_at_once = True
                if ended_at_once:
                    continue  # their dependents may be ready now
                if running == 0:
                    break  # unreachable with an acyclic graph; never wait for nothing
                event = self._events.get()
                if event in self.by_name:
                    running -= 1
                    sorter.done(event)
            self._wait_for_leftovers()
        duration = time.time() - started
        result = RunResult(self.run_id, self.scenario, self.inputs, self.records, started,
                           duration, self.interrupted_by)
        self.persist(result.status)
        return result

    def _stage_done(self, name: str, _future: Future[None]) -> None:
        self._events.put(name)

    # -- one stage ----------------------------------------------------------------------
    def _execute(self, record: StageRecord, logs: _StageLogs) -> None:
        spec = self.specs[record.name]
        log, log_path = logs.logger(self.run_id, record.name)
        record.started = time.time()
        record.error = None
        record.attempts = 0
        record.history = []
        try:
            stage_type = self.registry.get(spec.type)
            assert stage_type is not None, "validated at load time"
            options = stage_type.options_model.model_validate(spec.with_)
            cancel = self._new_cancel(record.name)
            while True:
                record.attempts += 1
                attempt = AttemptRecord(record.attempts, time.time())
                record.history.append(attempt)
                self._transition(record, "started" if record.attempts == 1 else "retrying")
                log.info("attempt %d/%d", record.attempts, record.max_attempts)
                ctx = StageContext(
                    stage=record.name, attempt=record.attempts, inputs=self.inputs,
                    scenario=self.scenario, results_dir=self.results_dir, log=log,
                    log_path=log_path, cancel=cancel,
                    needs_outputs={n: self.by_name[n].outputs for n in spec.needs},
                    all_outputs={r.name: r.outputs for r in self.records},
                    progress=(lambda text, name=record.name: self.progress(name, text))
                    if self.progress else None,
                )
                result = self._attempt(stage_type, ctx, options, spec, log)
                attempt.duration = time.time() - attempt.started
                record.checks = [
                    {"name": c.name, "passed": c.passed, "message": c.message, "details": c.details,
                     "blocking": c.blocking, "skipped": c.skipped}
                    for c in ctx.checks
                ]
                record.outputs = result.outputs or {}  # on failure: what the stage did before it
                if result.outcome == Outcome.PASSED:
                    record.end(Status.PASSED, Outcome.PASSED)
                    break
                attempt.error = result.error
                record.error = result.error
                log.error("attempt %d failed: %s", record.attempts, result.error)
                if cancel.is_set() and self._abort.is_set():
                    record.end(Status.CANCELLED, Outcome.CANCELLED)
                    break
                if result.outcome == Outcome.CANCELLED:  # raised without an abort
                    result.outcome = Outcome.FAILED
                if result.retry_after is None or record.attempts >= record.max_attempts \
                        or (self._abort.is_set() and not spec.always):
                    record.end(Status.FAILED, result.outcome)
                    break
                delay = result.retry_after or min(self.retry_backoff * 2 ** (record.attempts - 1),
                                                  MAX_BACKOFF_SECONDS)
                log.info("retrying in %.1fs", delay)
                cancel = self._new_cancel(record.name)  # set by an abort during the wait
                if cancel.wait(delay):
                    record.end(Status.CANCELLED, Outcome.CANCELLED)
                    break
        except Exception as exc:  # noqa: BLE001 - a runner bug: record it, keep going
            record.end(Status.FAILED, Outcome.INTERNAL_ERROR, f"internal error: {exc}")
            log.error("internal error\n%s", traceback.format_exc())
        finally:
            record.duration = time.time() - (record.started or time.time())
            with self._lock:
                self._cancels.pop(record.name, None)
            self._transition(record, record.status)
            logs.close(self.run_id, record.name)

    def _attempt(self, stage_type: StageType, ctx: StageContext, options: Any, spec: StageSpec,
                 log: logging.Logger) -> AttemptResult:
        """One attempt in its own thread, so that its timeout is enforced from
        outside."""
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["outputs"] = stage_type.run(ctx, options) or {}
            except BaseException as exc:  # noqa: BLE001 - reported, never lost
                box["exc"] = exc
            finally:
                self._events.put("attempt-ended")

        worker = threading.Thread(target=target, name=f"stage-{spec.name}-{ctx.attempt}", daemon=True)
        worker.start()
        worker.join(spec.timeout)
        if worker.is_alive():
            ctx.cancel.set()
            worker.join(self.cancel_grace)
            timed_out = f"timed out after {_seconds(spec.timeout)}"
            if worker.is_alive():
                with self._lock:
                    self._leftovers[spec.name] = worker
                log.error("attempt %d did not stop within %gs of being cancelled", ctx.attempt,
                          self.cancel_grace)
                return AttemptResult(Outcome.DID_NOT_STOP,
                                     f"{timed_out}, and did not stop within {self.cancel_grace:g}s of being "
                                     "cancelled: not retried; later stages wait until it ends")
            if self._abort.is_set() and not spec.always:
                return AttemptResult(Outcome.CANCELLED, "cancelled: the run was interrupted")
            return AttemptResult(Outcome.TIMED_OUT, timed_out, retry_after=0)
        return outcome_of(box.get("exc"), ctx, box.get("outputs") or {}, log)


def outcome_of(exc: BaseException | None, ctx: StageContext, outputs: dict[str, Any],
               log: logging.Logger) -> AttemptResult:
    """What an attempt's exception (or its failed checks) means. Only a
    ``TemporaryError`` is worth another attempt; a bug is not."""
    if exc is None:
        failed = [c for c in ctx.checks if not c.passed and c.blocking]
        if failed:
            names = ", ".join(c.name for c in failed)
            return AttemptResult(Outcome.FAILED, f"{len(failed)} check(s) failed: {names}", outputs)
        return AttemptResult(Outcome.PASSED, None, outputs)
    if isinstance(exc, Cancelled):
        return AttemptResult(Outcome.CANCELLED, "cancelled: the run was interrupted")
    if isinstance(exc, InvalidInput):
        return AttemptResult(Outcome.INVALID_INPUT, "; ".join(exc.lines()),
                             getattr(exc, "outputs", None))
    outcome = Outcome.ENVIRONMENT if isinstance(exc, EnvironmentProblem) else Outcome.FAILED
    if isinstance(exc, TemporaryError):
        return AttemptResult(outcome, str(exc), exc.outputs, retry_after=exc.delay or 0)
    if isinstance(exc, XciCnError):
        return AttemptResult(outcome, str(exc), getattr(exc, "outputs", None))
    log.error("unexpected error\n%s", "".join(traceback.format_exception(exc)))
    return AttemptResult(Outcome.INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}")


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:g}s"
