"""Small helpers shared by the tests (no fakes: these write real scenario
files and run the real CLI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from xci_cn.config.model import load_scenario_file
from xci_cn.pipeline.runner import Runner, RunResult
from xci_cn.pipeline.stage import RunInputs

XCI_CN = [sys.executable, "-m", "xci_cn.cli"]


def write_scenario(directory: Path, text: str, name: str = "scenario.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def make_runner(directory: Path, text: str, **runner_options) -> Runner:
    """A Runner for the scenario ``text`` (written to ``directory``), results
    in ``directory/results``, with a short retry backoff."""
    scenario = load_scenario_file(write_scenario(directory, text))
    inputs = RunInputs(scenario=scenario.name, flavor=scenario.flavors[0], installer=scenario.installer)
    runner_options.setdefault("retry_backoff", 0.05)
    return Runner(scenario, inputs, directory / "results", **runner_options)


def run_scenario(directory: Path, text: str, **runner_options) -> RunResult:
    return make_runner(directory, text, **runner_options).run()


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([*XCI_CN, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
