"""What a stage type is and what it is given.

A stage type has a ``name``, an ``options_model`` (pydantic, validated before
anything runs) and ``run(ctx, options) -> outputs``. It never prints or exits:
it logs to ``ctx.log``, reports checks with ``ctx.check`` and raises
``xci_cn.errors.StageFailed`` (or a subclass) when it fails; only a
``TemporaryError`` is retried. It may also define ``preflight(options)``:
what it can check offline beyond its options, run once per run before any
stage starts (xci_cn.pipeline.preflight).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from xci_cn.config.stage_types import StageType
from xci_cn.errors import Cancelled, InvalidInput, raise_if_set


class StageOptions(BaseModel):
    """Base of every stage type's options: frozen, unknown keys refused,
    numbers finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


@dataclass
class RunInputs:
    """What the run was asked to do: the XCI/Jenkins contract, resolved."""

    scenario: str
    flavor: str
    installer: str
    distro: str = "ubuntu"
    kubeconfig: str | None = None
    sandbox_name: str = "xci-cn"
    jenkins: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "flavor": self.flavor,
            "installer": self.installer,
            "distro": self.distro,
            "kubeconfig": self.kubeconfig,
            "sandbox_name": self.sandbox_name,
            "jenkins": dict(self.jenkins),
        }


@dataclass
class Check:
    """One verdict a stage reports (a JUnit testcase of its own)."""

    name: str
    passed: bool
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    blocking: bool = True  # False: a failure is reported but does not fail the stage
    skipped: bool = False  # not judged (nothing to judge, or an accepted exception)


@dataclass
class StageContext:
    """Everything a running stage may use."""

    stage: str
    attempt: int
    inputs: RunInputs
    scenario: Any  # xci_cn.config.model.Scenario (kept loose to avoid an import cycle)
    results_dir: Path
    log: logging.Logger
    log_path: Path
    cancel: threading.Event
    needs_outputs: dict[str, dict[str, Any]]
    all_outputs: dict[str, dict[str, Any]]
    checks: list[Check] = field(default_factory=list)
    progress: Any = None  # callable(str) for long steps; None when nobody listens

    def check(self, name: str, passed: bool, message: str = "", *, blocking: bool = True,
              skipped: bool = False, **details: Any) -> Check:
        """Record a verdict; failing checks do not raise by themselves. A
        failed blocking check fails the stage when it returns."""
        item = Check(name, passed, message, details, blocking, skipped)
        self.checks.append(item)
        verdict = "skipped" if skipped else "passed" if passed else "FAILED" if blocking else "failed (not blocking)"
        self.log.info("check %s: %s%s", name, verdict, f" - {message}" if message else "")
        return item

    def report_progress(self, text: str) -> None:
        self.log.info("%s", text)
        if self.progress is not None:
            self.progress(text)

    def raise_if_cancelled(self) -> None:
        raise_if_set(self.cancel)

    def sleep(self, seconds: float) -> None:
        """Sleep that wakes up (and raises) when the stage is cancelled."""
        if self.cancel.wait(seconds):
            raise Cancelled("cancelled")

    def run_command(self, argv: list[str] | str, *, env: dict[str, str] | None = None,
                    cwd: str | Path | None = None, shell: bool = False) -> int:
        """Run a command with its output, redacted, into the stage log. On
        cancel the whole process group is killed (TERM, then KILL), so no
        child outlives it."""
        from xci_cn.secrets import redactor

        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        redact = redactor()
        with open(self.log_path, "a", encoding="utf-8", errors="replace") as out:
            proc = subprocess.Popen(
                argv, shell=shell, env=full_env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, text=True, errors="replace",
                executable="/bin/bash" if shell else None,
            )
            assert proc.stdout is not None

            def copy() -> None:  # a secret a command prints never reaches the log
                for line in proc.stdout:  # type: ignore[union-attr]
                    out.write(redact(line))
                    out.flush()

            reader = threading.Thread(target=copy, daemon=True, name=f"log-{self.stage}")
            reader.start()
            try:
                while True:
                    try:
                        code = proc.wait(timeout=0.1)
                        break
                    except subprocess.TimeoutExpired:
                        if self.cancel.is_set():
                            kill_process_group(proc)
                            raise Cancelled("cancelled") from None
            except BaseException:
                kill_process_group(proc)
                raise
            finally:
                reader.join(timeout=5)
                proc.stdout.close()
            return code


def kill_process_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """TERM the process group of ``proc``, KILL it if it lingers."""
    if proc.poll() is not None:
        # The leader is gone, but children in its group may remain.
        _signal_group(proc.pid, signal.SIGKILL)
        return
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    _signal_group(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def find_kubeconfig(ctx: StageContext) -> str | None:
    """The run's cluster: a kubeconfig output by a finished stage (provision),
    else the one given to the run (``--kubeconfig``/``$KUBECONFIG``)."""
    for outputs in ctx.all_outputs.values():
        path = outputs.get("kubeconfig")
        if path and Path(path).exists():
            return str(path)
    return ctx.inputs.kubeconfig


def require_kubeconfig(ctx: StageContext) -> str:
    """``find_kubeconfig``, or InvalidInput saying how to give one."""
    kubeconfig = find_kubeconfig(ctx)
    if not kubeconfig:
        raise InvalidInput(f"stage {ctx.stage} needs a cluster: a provision stage before it, or --kubeconfig")
    return kubeconfig


__all__ = ["Cancelled", "Check", "RunInputs", "StageContext", "StageOptions", "StageType",
           "kill_process_group"]
