"""What the person (or the Jenkins console) sees while a run goes on.

Plain mode: one timestamped line per stage transition, no control codes —
what the Jenkins console wants. The CLI picks the mode; stages never print.
"""

from __future__ import annotations

import sys
import threading
from datetime import UTC, datetime
from typing import TextIO

from xci_cn.pipeline.state import StageRecord


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(record: StageRecord, event: str) -> str:
    """``build failed 0.02s (attempt 2/2): command exited with status 1``"""
    if event == "started":
        extra = f" (attempt 1/{record.max_attempts})" if record.max_attempts > 1 else ""
        return f"{record.name} started{extra}"
    if event == "retrying":
        return f"{record.name} retrying (attempt {record.attempts}/{record.max_attempts})"
    duration = f" {record.duration:.2f}s" if record.duration is not None else ""
    attempts = f" (attempt {record.attempts}/{record.max_attempts})" if record.max_attempts > 1 else ""
    resumed = " (resumed: passed in an earlier run)" if record.resumed else ""
    text = f"{record.name} {event}{duration}{attempts}{resumed}"
    if event in ("failed", "skipped", "cancelled") and record.error:
        text += f": {record.error}"
    return text


class PlainConsole:
    """Timestamped lines; safe to call from stage threads."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False, verbose: bool = False,
                 redact=None):
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.verbose = verbose
        self.redact = redact or (lambda text: text)
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        with self._lock:
            self.stream.write(f"{now()} {self.redact(text)}\n")
            self.stream.flush()

    def transition(self, record: StageRecord, event: str) -> None:
        if self.quiet and event not in ("failed",):
            return
        self.line(describe(record, event))

    def progress(self, stage: str, text: str) -> None:
        if self.verbose or not self.quiet:
            self.line(f"{stage}: {text}")
