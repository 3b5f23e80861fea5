"""What a person sees in the terminal: the live DAG view on a TTY (a real
pseudo-terminal around the real CLI, and the view's rows rendered from real
stage records), plain lines everywhere else, and ``--help`` that does not
pay for rich."""

from __future__ import annotations

import fcntl
import io
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from rich.console import Console

from tests.helpers import XCI_CN, write_scenario
from xci_cn.live import LiveConsole, elapsed
from xci_cn.pipeline.state import AttemptRecord, StageRecord
from xci_cn.secrets import Redactor

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

SCENARIO = """name: tty
installer: sandbox
flavors: [mini]
stages:
  - {name: prepare, type: shell, with: {command: "sleep 0.5"}}
  - {name: build, type: shell, needs: [prepare], retries: 1, with: {command: "sleep 0.3; exit 1"}}
  - {name: lint, type: shell, needs: [prepare], with: {command: "sleep 0.6"}}
  - {name: deploy, type: shell, needs: [build, lint], with: {command: "true"}}
  - {name: collect-logs, type: shell, needs: [deploy], always: true, with: {command: "true"}}
"""


def run_in_terminal(tmp_path: Path, *args: str, columns: int = 110) -> tuple[int, str]:
    """``xci-cn run`` with a pseudo-terminal as stdout and stderr, as in a
    developer's shell; returns the exit code and everything it wrote."""
    write_scenario(tmp_path, SCENARIO, "tty.yaml")
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen([*XCI_CN, "run", "--scenario", "tty.yaml", "--results-dir", "R",
                             "--retry-backoff", "0.3", *args], cwd=tmp_path, stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


def last_frame(output: str) -> list[str]:
    """The view as it was left: the last header and the rows after it. (Each
    redraw moves the cursor up over the previous frame without a newline, so
    with the control codes gone a header may follow the last row's text.)"""
    plain = ANSI.sub("", output).replace("\r", "")
    return [line.rstrip() for line in plain[plain.rindex("stages "):].split("\n")]


def test_a_terminal_gets_the_live_dag_view(tmp_path: Path) -> None:
    code, output = run_in_terminal(tmp_path)
    assert code == 1
    assert "\x1b[" in output and "\x1b[?25l" in output  # redrawn in place, cursor hidden meanwhile
    frame = last_frame(output)
    assert frame[0].startswith("stages 5/5 done, 1 failed · ")
    # DAG order with levels, status and duration (or why not run) of each stage.
    expected = [r"✓ +1 +prepare +passed +(\d+\.\d)s",
                r"✗ +2 +build +failed +\d+\.\ds +command exited with status 1: sleep 0\.3; exit 1",
                r"✓ +2 +lint +passed +\d+\.\ds",
                r"– +3 +deploy +skipped +not run: needs build",
                r"✓ +4 +collect-logs +passed +\d+\.\ds"]
    assert len(frame) >= 6
    for line, pattern in zip(frame[1:6], expected, strict=True):
        assert re.fullmatch(pattern, line.strip()), (line, pattern)
    assert float(re.fullmatch(expected[0], frame[1].strip()).group(1)) >= 0.5
    # While running, frames showed the running stages with a clock.
    plain = ANSI.sub("", output)
    assert re.search(r"prepare\s+running\s+\d+\.\ds", plain)
    assert re.search(r"build\s+running 2/2\s+\d+\.\ds", plain)
    # Retries and failures also go to the scrollback, in full, and the result.
    plain_lines = plain.replace("\r", "").split("\n")
    assert any(line.endswith("build retrying (attempt 2/2)") for line in plain_lines)
    assert any("build failed" in line and line.endswith("exit 1") for line in plain_lines)
    assert re.fullmatch(r"\S+Z result FAILED in \d+\.\ds; failed: build; results in R",
                        [line for line in plain_lines if line.strip()][-1].strip())
    assert (tmp_path / "R" / "report.html").is_file()


def test_quiet_on_a_terminal_prints_only_failures_and_the_result(tmp_path: Path) -> None:
    code, output = run_in_terminal(tmp_path, "--quiet")
    assert code == 1
    assert "\x1b" not in output
    lines = output.replace("\r", "").strip().split("\n")
    assert len(lines) == 2, lines
    assert re.fullmatch(r"\S+Z build failed \d+\.\d\ds \(attempt 2/2\): "
                        r"command exited with status 1: sleep 0\.3; exit 1", lines[0])
    assert re.fullmatch(r"\S+Z result FAILED in \d+\.\ds; failed: build; results in R", lines[1])


def test_not_a_terminal_means_plain_lines_even_when_verbose(tmp_path: Path) -> None:
    write_scenario(tmp_path, SCENARIO, "tty.yaml")
    proc = subprocess.run([*XCI_CN, "run", "--scenario", "tty.yaml", "--results-dir", "R", "--verbose",
                           "--retry-backoff", "0.1"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "TERM": "xterm-256color"})
    assert proc.returncode == 1
    assert "\x1b" not in proc.stdout + proc.stderr
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", line) for line in proc.stdout.splitlines())


# -- the view's rows from stage records --------------------------------------------------
def record(name: str, status: str, needs: list[str] | None = None, **fields: object) -> StageRecord:
    return StageRecord(name=name, type="shell", needs=needs or [], status=status, **fields)


def rendered(view: LiveConsole, width: int = 120) -> list[str]:
    out = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    out.print(view.render())
    return [line.rstrip() for line in out.file.getvalue().splitlines()]


@pytest.fixture
def view() -> LiveConsole:
    redact = Redactor()
    redact.add("hunter2-secret")
    # The live part writes to a buffer (not a terminal): only render() is looked at.
    return LiveConsole(console=Console(file=io.StringIO(), width=120), redact=redact, refresh_per_second=20)


def test_rows_show_status_clock_retry_and_progress(view: LiveConsole) -> None:
    now = time.time()
    records = [
        record("sandbox", "running", started=now - 65, attempts=1, max_attempts=1),
        record("build", "running", ["sandbox"], started=now - 3, attempts=1, max_attempts=3,
               history=[AttemptRecord(1, now - 3, 1.0, "exit 1 with hunter2-secret")]),
        record("deploy", "running", started=now - 2, attempts=1, max_attempts=1),
        record("verify", "pending", ["build", "deploy"]),
        record("old", "passed", duration=2.5, attempts=1, resumed=True),
        record("lint", "failed", duration=0.3, attempts=1, error="bad <style> hunter2-secret"),
        record("skip", "not-selected"),
        record("halt", "cancelled", duration=1.0, attempts=1, error="cancelled: the run was interrupted"),
    ]
    with view.show(records):
        view.progress("sandbox", "building kube-apiserver: 120 packages so far, 60s")
        view.progress("deploy", "canary step 2/4: v1 75% / v2 25%")
        lines = rendered(view)
    assert lines[0].startswith("stages 4/8 done, 1 failed, 1 cancelled · ")
    rows = {line.split()[2]: line for line in lines[1:] if len(line.split()) > 2}
    assert re.search(r"sandbox\s+running\s+1m05s\s+building kube-apiserver: 120 packages so far, 60s$",
                     rows["sandbox"])
    assert re.search(r"build\s+running 1/3\s+3\.\ds\s+attempt 1 failed, retrying: exit 1 with <redacted>$",
                     rows["build"])
    # A known total draws a bar beside the text.
    assert re.search(r"deploy\s+running\s+2\.\ds\s+━+\s+canary step 2/4: v1 75% / v2 25%$", rows["deploy"])
    assert re.search(r"verify\s+pending\s+waits for build, deploy$", rows["verify"])
    assert re.search(r"old\s+passed\s+2\.5s\s+passed in an earlier run \(resumed\)$", rows["old"])
    assert re.search(r"lint\s+failed\s+0\.3s\s+bad <style> <redacted>$", rows["lint"])
    assert re.search(r"halt\s+cancelled\s+1\.0s\s+cancelled: the run was interrupted$", rows["halt"])
    assert "hunter2" not in "\n".join(lines)
    # DAG levels, in order.
    assert [line.split()[1] for line in lines[1:]] == ["1", "1", "1", "1", "1", "1", "2", "3"]


def test_progress_text_is_dropped_when_the_stage_moves_on(view: LiveConsole) -> None:
    build = record("build", "running", started=time.time(), attempts=1, max_attempts=2)
    with view.show([build]):
        view.progress("build", "step 1/2")
        assert "step 1/2" in rendered(view)[1]
        build.status = "passed"
        build.duration = 1.0
        view.transition(build, "passed")
        assert "step 1/2" not in "\n".join(rendered(view))


def test_failures_go_above_the_view_and_verbose_adds_progress(view: LiveConsole) -> None:
    build = record("build", "failed", attempts=2, max_attempts=2, duration=1.5, error="exit 1")
    with view.show([build]):
        view.transition(build, "retrying")
        view.transition(build, "failed")
        view.progress("build", "quiet detail")
        view.verbose = True
        view.progress("build", "loud detail")
    printed = ANSI.sub("", view.console.file.getvalue())
    assert re.search(r"Z build retrying \(attempt 2/2\)\n", printed)
    assert re.search(r"Z build failed 1\.50s \(attempt 2/2\): exit 1\n", printed)
    assert "quiet detail" not in printed and re.search(r"Z build: loud detail\n", printed)


@pytest.mark.parametrize("seconds,text", [(0.04, "0.0s"), (4.3, "4.3s"), (65, "1m05s"), (3725, "1h02m")])
def test_elapsed(seconds: float, text: str) -> None:
    assert elapsed(seconds) == text


def test_help_does_not_import_rich() -> None:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "xci_cn.cli", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "Usage:" in proc.stdout
    modules = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
               if line.startswith("import time:")}
    assert "click" in modules  # the probe sees imports at all
    assert not {m for m in modules if m == "rich" or m.startswith("rich.") or m == "xci_cn.live"}
