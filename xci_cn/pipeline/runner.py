"""The DAG engine: runs a scenario's stages in dependency order.

Independent stages run concurrently (bounded by ``jobs``); each attempt has a
hard timeout after which the stage is cancelled; failed attempts are retried
with exponential backoff; ``always`` stages run after failures and aborts.
Every transition is persisted to ``state.json``. The runner never prints: it
calls ``on_transition`` and returns a ``RunResult``; the CLI talks to people.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xci_cn.config.model import Scenario, StageSpec
from xci_cn.errors import EnvironmentProblem, InvalidInput, StageFailed, XciCnError
from xci_cn.pipeline.plan import levels
from xci_cn.pipeline.registry import StageRegistry, stage_types
from xci_cn.pipeline.stage import Cancelled, RunInputs, StageContext
from xci_cn.pipeline.state import (
    CANCELLED,
    FAILED,
    NOT_SELECTED,
    PASSED,
    PENDING,
    RUNNING,
    SKIPPED,
    TERMINAL,
    AttemptRecord,
    StageRecord,
    fingerprint,
    load_state,
    state_document,
    write_json_atomic,
)

# After a timeout or abort, how long a cancelled stage gets to clean up
# before the runner stops waiting for it.
CANCEL_GRACE_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 30.0


@dataclass
class RunResult:
    run_id: str
    scenario: Scenario
    inputs: RunInputs
    records: list[StageRecord]
    started: float
    duration: float
    interrupted_by: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def invalid_input(self) -> bool:
        """A stage failed because of the user's input (a manifest the API
        server rejects, a bad kubeconfig): the run exits 2, not 1."""
        return any(r.status == FAILED and r.invalid_input for r in self.records)

    @property
    def environment_problem(self) -> bool:
        """A stage failed because something outside the input is missing or
        unreachable (an API server, Prometheus): the run exits 3."""
        return any(r.status == FAILED and r.environment_problem for r in self.records)

    @property
    def status(self) -> str:
        if self.interrupted_by:
            return "interrupted"
        if any(r.status == FAILED for r in self.records):
            return "failed"
        return "passed"


Transition = Callable[[StageRecord, str], None]


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
        self._lock = threading.RLock()
        self._abort = threading.Event()
        self.interrupted_by: int | None = None
        self._cancels: dict[str, threading.Event] = {}
        self.specs = {s.name: s for s in scenario.stages}
        self.inputs_fingerprint = fingerprint(scenario.name, inputs.flavor, inputs.installer,
                                              inputs.distro)
        self.records = [self._new_record(spec) for spec in scenario.stages]
        self.by_name = {r.name: r for r in self.records}
        if selected:
            for record in self.records:
                if record.name not in selected:
                    record.status = NOT_SELECTED
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

    def _restore(self) -> None:
        """Carry over stages that passed with the same definition and inputs."""
        previous = load_state(self.state_path)
        if not previous:
            return
        self.resumed_from = previous.get("run_id")
        old = {s["name"]: StageRecord.from_dict(s) for s in previous.get("stages", [])}
        position = {r.name: i for i, r in enumerate(self.records)}
        for name in [n for level in levels(self.scenario) for n in level]:  # needs before dependents
            index, record = position[name], self.records[position[name]]
            before = old.get(record.name)
            # ``always`` stages (logs, teardown) describe this run: run them again.
            if record.always or not before or before.status != PASSED \
                    or before.fingerprint != record.fingerprint:
                continue
            # A stage type may say its earlier result no longer holds (the
            # sandbox it brought up is gone): then it runs again.
            stage_type = self.registry.get(record.type)
            still_valid = getattr(stage_type, "still_valid", None)
            if still_valid is not None and not still_valid(before.outputs):
                continue
            if record.status == NOT_SELECTED:
                continue
            # A stage whose needs run again runs again too: its result was
            # made on what they produced (a deploy onto a sandbox that was
            # torn down and is brought up anew).
            if any(not getattr(self.by_name.get(n), "resumed", False) for n in record.needs):
                continue
            before.resumed = True
            self.records[index] = before
            self.by_name[record.name] = before
        self.by_name = {r.name: r for r in self.records}

    def _carry_outputs_of_unselected(self) -> None:
        """A run of some stages (a daily loop's phase) sees the outputs of the
        other stages from the previous run in the same results dir — e.g. the
        kubeconfig that provision wrote — when their definition is the same."""
        previous = load_state(self.state_path)
        if not previous:
            return
        old = {s["name"]: StageRecord.from_dict(s) for s in previous.get("stages", [])}
        for record in self.records:
            before = old.get(record.name)
            if record.status == NOT_SELECTED and before and before.status == PASSED \
                    and before.fingerprint == record.fingerprint:
                record.outputs = before.outputs

    # -- control ----------------------------------------------------------------------
    def abort(self, signum: int) -> None:
        """Cancel what runs (except ``always`` stages), skip what waits; the
        always stages still run. A second abort cancels those too."""
        with self._lock:
            second = self._abort.is_set()
            self.interrupted_by = self.interrupted_by or signum
            self._abort.set()
            for name, event in self._cancels.items():
                if second or not self.specs[name].always:
                    event.set()

    # -- persistence -----------------------------------------------------------------
    def persist(self, status: str = "running") -> None:
        with self._lock:
            doc = state_document(self.run_id, self.inputs_fingerprint, self.inputs.as_dict(),
                                 self.scenario.name, self.records, status)
            if self.redact is not None:  # state.json is archived with the results
                doc = json.loads(self.redact(json.dumps(doc, default=str)))
            write_json_atomic(self.state_path, doc)

    def _transition(self, record: StageRecord, event: str) -> None:
        self.persist()
        try:
            self.on_transition(record, event)
        except Exception:  # a broken listener must not break the run
            logging.getLogger(__name__).exception("transition listener failed")

    # -- scheduling -------------------------------------------------------------------
    def _satisfied(self, need: str) -> bool:
        return self.by_name[need].status in (PASSED, NOT_SELECTED)

    def _decide(self, record: StageRecord) -> str | None:
        """'run', a terminal status to set, or None (wait)."""
        needs = [self.by_name[n] for n in record.needs]
        if record.always:
            if all(n.status in TERMINAL for n in needs):
                return "run"
            return None
        if self._abort.is_set():
            return CANCELLED
        if all(self._satisfied(n.name) for n in needs):
            return "run"
        blocked = [n for n in needs if n.status in TERMINAL and not self._satisfied(n.name)]
        if blocked:
            return SKIPPED
        return None

    def run(self) -> RunResult:
        started = time.time()
        self.results_dir.mkdir(parents=True, exist_ok=True)
        logs = _StageLogs(self.results_dir, self.redact)
        self.persist()
        futures: dict[Future, StageRecord] = {}
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="stage") as pool:
            while True:
                with self._lock:
                    for record in self.records:
                        if record.status != PENDING:
                            continue
                        decision = self._decide(record)
                        if decision == "run":
                            record.status = RUNNING
                            self._cancels[record.name] = threading.Event()
                            futures[pool.submit(self._execute, record, logs)] = record
                        elif decision is not None:
                            record.status = decision
                            blocked = [n for n in record.needs if not self._satisfied(n)]
                            record.error = ("run was interrupted" if decision == CANCELLED
                                            else f"not run: needs {', '.join(blocked)}")
                            self._transition(record, decision)
                if not futures:
                    if all(r.status in TERMINAL for r in self.records):
                        break
                    # Nothing runs and nothing can start: only possible with
                    # needs on a stage that cannot finish; refuse to spin.
                    for record in self.records:
                        if record.status == PENDING:
                            record.status = SKIPPED
                            record.error = "not run: its needs never finished"
                            self._transition(record, SKIPPED)
                    break
                done, _ = wait(list(futures), timeout=0.2, return_when=FIRST_COMPLETED)
                for future in done:
                    futures.pop(future)
                    future.result()  # _execute never raises; surface bugs loudly if it does
        duration = time.time() - started
        result = RunResult(self.run_id, self.scenario, self.inputs, self.records, started,
                           duration, self.interrupted_by)
        self.persist(result.status)
        return result

    # -- one stage ----------------------------------------------------------------------
    def _execute(self, record: StageRecord, logs: _StageLogs) -> None:
        spec = self.specs[record.name]
        stage_type = self.registry.get(spec.type)
        assert stage_type is not None, "validated at load time"
        options = stage_type.options_model.model_validate(spec.with_)
        log, log_path = logs.logger(self.run_id, record.name)
        cancel = self._cancels[record.name]
        record.started = time.time()
        record.error = None
        record.attempts = 0
        record.history = []
        try:
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
                error, retryable, outputs = self._attempt(stage_type, ctx, options, spec, log)
                attempt.duration = time.time() - attempt.started
                record.invalid_input = ctx.invalid_input
                record.environment_problem = ctx.environment_problem
                record.checks = [
                    {"name": c.name, "passed": c.passed, "message": c.message, "details": c.details,
                     "blocking": c.blocking, "skipped": c.skipped}
                    for c in ctx.checks
                ]
                if error is None:
                    record.outputs = outputs
                    record.status = PASSED
                    break
                attempt.error = error
                record.error = error
                record.outputs = outputs  # what the stage did before it failed
                log.error("attempt %d failed: %s", record.attempts, error)
                if cancel.is_set() and self._abort.is_set():
                    record.status = CANCELLED
                    break
                if not retryable or record.attempts >= record.max_attempts or (
                        self._abort.is_set() and not spec.always):
                    record.status = FAILED
                    break
                delay = min(self.retry_backoff * 2 ** (record.attempts - 1), MAX_BACKOFF_SECONDS)
                log.info("retrying in %.1fs", delay)
                if cancel.wait(delay):
                    record.status = FAILED
                    break
        except Exception as exc:  # noqa: BLE001 - a runner bug: record it, keep going
            record.status = FAILED
            record.error = f"internal error: {exc}"
            log.error("internal error\n%s", traceback.format_exc())
        finally:
            record.duration = time.time() - (record.started or time.time())
            with self._lock:
                self._cancels.pop(record.name, None)
            self._transition(record, record.status)
            logs.close(self.run_id, record.name)

    def _attempt(self, stage_type: Any, ctx: StageContext, options: Any, spec: StageSpec,
                 log: logging.Logger) -> tuple[str | None, bool, dict[str, Any]]:
        """One attempt in its own thread, so that its timeout is enforced from
        outside: (error or None, retryable, outputs)."""
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["outputs"] = stage_type.run(ctx, options) or {}
            except BaseException as exc:  # noqa: BLE001 - reported, never lost
                box["exc"] = exc

        worker = threading.Thread(target=target, name=f"stage-{spec.name}", daemon=True)
        worker.start()
        worker.join(spec.timeout)
        if worker.is_alive():
            ctx.cancel.set()
            worker.join(CANCEL_GRACE_SECONDS)
            timed_out = f"timed out after {_seconds(spec.timeout)}"
            if worker.is_alive():
                log.error("stage did not stop within %ss of being cancelled", CANCEL_GRACE_SECONDS)
            # A timeout is a failed attempt: a retry gets a fresh cancel event.
            if not self._abort.is_set():
                ctx.cancel.clear()
            return timed_out, True, {}
        exc = box.get("exc")
        if exc is None:
            failed = [c for c in ctx.checks if not c.passed and c.blocking]
            if failed:
                names = ", ".join(c.name for c in failed)
                return f"{len(failed)} check(s) failed: {names}", False, box.get("outputs", {})
            return None, False, box.get("outputs", {})
        if isinstance(exc, Cancelled):
            return "cancelled: the run was interrupted", False, {}
        if isinstance(exc, StageFailed):
            return str(exc), exc.retryable, exc.outputs
        if isinstance(exc, InvalidInput):
            ctx.invalid_input = True
            return "; ".join(exc.lines()), False, {}
        if isinstance(exc, EnvironmentProblem):
            ctx.environment_problem = True
            return str(exc), True, {}
        if isinstance(exc, XciCnError):
            return str(exc), False, {}
        log.error("unexpected error\n%s", "".join(traceback.format_exception(exc)))
        return f"{type(exc).__name__}: {exc}", True, {}


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:g}s"
