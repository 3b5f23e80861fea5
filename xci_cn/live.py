"""The live view of a run on a terminal: the stage DAG redrawn in place.

``xci-cn run`` uses it when stdout is a TTY (and not ``--quiet``); the
Jenkins console, which is not a TTY, gets ``console.PlainConsole``'s
timestamped lines instead. Rows follow the DAG's levels: running stages
with a spinner, elapsed time and their latest progress text (a bar when the
text says ``n/m``), finished ones with status and duration, waiting ones
with what they wait for. Failures, retries and, with ``--verbose``, every
progress line are also printed above the view so that they stay in the
scrollback. Imports rich, so only the CLI's run path imports this module.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from xci_cn.console import describe, now
from xci_cn.pipeline.plan import levels
from xci_cn.pipeline.state import (
    CANCELLED,
    FAILED,
    NOT_SELECTED,
    PASSED,
    PENDING,
    RUNNING,
    SKIPPED,
    TERMINAL,
    StageRecord,
)

MARKS = {PASSED: ("✓", "green"), FAILED: ("✗", "bold red"), SKIPPED: ("–", "dim"),
         CANCELLED: ("⊘", "yellow"), NOT_SELECTED: ("·", "dim"), PENDING: ("·", "dim")}
# "canary step 2/4", "pulling 3/10 images": progress with a known total.
FRACTION = re.compile(r"\b(\d+)\s*/\s*(\d+)\b")


def elapsed(seconds: float) -> str:
    """``4.2s``, ``1m05s``, ``1h02m`` — a clock a person reads at a glance."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


class LiveConsole:
    """Same calls as ``PlainConsole`` (``line``, ``transition``, ``progress``)
    plus ``show(records)``, the context in which the view is live."""

    def __init__(self, stream: TextIO | None = None, verbose: bool = False,
                 redact: Callable[[str], str] | None = None, console: Console | None = None,
                 refresh_per_second: float = 8):
        self.console = console or Console(file=stream, highlight=False)
        self.verbose = verbose
        self.redact = redact or (lambda text: text)
        self.refresh_per_second = refresh_per_second
        self.records: list[StageRecord] = []
        self.by_name: dict[str, StageRecord] = {}
        self.depth: dict[str, int] = {}
        self.started = time.time()
        self._progress: dict[str, str] = {}
        self._spinners: dict[str, Spinner] = {}
        self._lock = threading.Lock()

    # -- what the runner and the CLI call -------------------------------------------------
    def line(self, text: str) -> None:
        """A permanent line (above the live view while it runs)."""
        self.console.print(Text(f"{now()} {self.redact(text)}"), soft_wrap=True)

    def transition(self, record: StageRecord, event: str) -> None:
        with self._lock:  # a new attempt or a result: the old progress text is stale
            self._progress.pop(record.name, None)
        # The view shows these too, but a failure must outlive the view's
        # last frame in the scrollback, with its full message.
        if event in ("retrying", FAILED, CANCELLED) or (event == SKIPPED and self.verbose):
            self.line(describe(record, event))

    def progress(self, stage: str, text: str) -> None:
        with self._lock:
            self._progress[stage] = self.redact(text)
        if self.verbose:
            self.line(f"{stage}: {text}")

    @contextmanager
    def show(self, records: list[StageRecord]) -> Iterator[LiveConsole]:
        """Keep the view live while the block runs; leave its last frame."""
        self.records = records
        self.by_name = {r.name: r for r in records}
        self.depth = {name: index for index, names in enumerate(levels(SimpleNamespace(stages=records)))
                      for name in names}
        self.started = time.time()
        live = Live(console=self.console, get_renderable=self.render, auto_refresh=True,
                    refresh_per_second=self.refresh_per_second, transient=False,
                    vertical_overflow="visible")
        with live:
            yield self
        # ``Live`` drew its last frame on exit: every stage with its final status.

    # -- drawing ------------------------------------------------------------------------
    def render(self) -> RenderableType:
        """The current view: a header line and one row per stage."""
        with self._lock:
            progress = dict(self._progress)
        records = sorted(self.records, key=lambda r: self.depth.get(r.name, 0))
        done = sum(r.status in TERMINAL for r in records)
        header = Text(f"stages {done}/{len(records)} done", style="bold")
        for status, style in ((FAILED, "bold red"), (CANCELLED, "yellow")):
            count = sum(r.status == status for r in records)
            if count:
                header.append(f", {count} {status}", style=style)
        header.append(f" · {elapsed(time.time() - self.started)}", style="dim")
        table = Table(box=None, show_header=False, pad_edge=False, expand=True, padding=(0, 1))
        table.add_column("mark", width=2, no_wrap=True)
        table.add_column("level", style="dim", justify="right", width=2, no_wrap=True)
        table.add_column("stage", no_wrap=True, overflow="ellipsis", max_width=32)
        table.add_column("status", no_wrap=True)
        table.add_column("time", justify="right", no_wrap=True)
        table.add_column("detail", ratio=1, no_wrap=True, overflow="ellipsis")
        for record in records:
            table.add_row(*self._row(record, progress.get(record.name)))
        return Group(header, table)

    def _row(self, record: StageRecord, progress: str | None) -> list[RenderableType]:
        level = str(self.depth.get(record.name, 0) + 1)
        name = Text(record.name, style="bold" if record.status == RUNNING else "")
        if record.status == RUNNING:
            spinner = self._spinners.setdefault(record.name, Spinner("dots", style="cyan"))
            since = time.time() - (record.started or time.time())
            status = Text("running", style="cyan")
            if record.max_attempts > 1:
                status.append(f" {record.attempts}/{record.max_attempts}", style="dim")
            return [spinner, level, name, status, Text(elapsed(since)), self._detail(record, progress)]
        mark, style = MARKS.get(record.status, ("?", ""))
        duration = elapsed(record.duration) if record.duration is not None else ""
        if record.resumed:
            detail = Text("passed in an earlier run (resumed)", style="dim")
        elif record.status == PENDING:
            waiting = [n for n in record.needs if n in self.by_name
                       and self.by_name[n].status not in TERMINAL]
            detail = Text(f"waits for {', '.join(waiting)}" if waiting else "", style="dim")
        else:
            detail = Text(self.redact(record.error or ""), style="red" if record.status == FAILED else "dim")
            if record.status == PASSED and record.attempts > 1:
                detail = Text(f"passed at attempt {record.attempts}/{record.max_attempts}", style="yellow")
        return [Text(mark, style=style), level, name, Text(record.status, style=style), Text(duration),
                detail]

    def _detail(self, record: StageRecord, progress: str | None) -> RenderableType:
        """A running stage's latest news: waiting for a retry, or its progress."""
        last = record.history[-1] if record.history else None
        if last is not None and last.error and last.duration is not None:
            return Text(f"attempt {last.attempt} failed, retrying: {self.redact(last.error)}", style="yellow")
        if not progress:
            return Text("")
        match = FRACTION.search(progress)
        if match and 0 < int(match.group(2)) and int(match.group(1)) <= int(match.group(2)):
            grid = Table.grid(padding=(0, 1))
            grid.add_column(width=16, no_wrap=True)
            grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
            grid.add_row(ProgressBar(total=int(match.group(2)), completed=int(match.group(1)), width=16),
                         Text(progress))
            return grid
        return Text(progress)
