"""`xci-cn run` as Jenkins runs it: a real subprocess, its exit codes, its
result files, signals and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from junitparser import Failure, JUnitXml

from tests.helpers import (
    DEMO,
    SLOW,
    alive,
    cli,
    junit_cases,
    read_properties,
    start_run,
    wait_for_line,
    write_scenario,
)


def test_issue_demo_exits_1_with_results_that_say_so(tmp_path: Path) -> None:
    write_scenario(tmp_path, DEMO, "demo.yaml")
    proc = cli("run", "--scenario", "demo.yaml", "--results-dir", "R", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    results = tmp_path / "R"
    summary = json.loads((results / "summary.json").read_text())
    stages = {s["name"]: s for s in summary["stages"]}
    assert stages["prepare"]["status"] == "passed"
    assert stages["build"]["status"] == "failed" and stages["build"]["attempts"] == 2
    assert stages["collect-logs"]["status"] == "passed"
    assert summary["result"] == "FAILED" and summary["scenario"] == "demo"
    xml = JUnitXml.fromfile(str(results / "junit.xml"))
    cases = {case.name: case for suite in xml for case in suite}
    assert set(cases) == {"prepare", "build", "collect-logs"}
    assert cases["prepare"].is_passed and cases["collect-logs"].is_passed
    failure = cases["build"].result[0]
    assert isinstance(failure, Failure) and "after 2 attempts" in failure.message
    props = read_properties(results / "scenario.properties")
    assert props["RESULT"] == "FAILED" and props["DEPLOY_SCENARIO"] == "demo"
    assert props["FAILED_STAGES"] == "build" and props["XCI_FLAVOR"] == "mini"
    # The console: one timestamped line per transition, no control codes.
    assert "\x1b[" not in proc.stdout
    assert any(line.endswith("build retrying (attempt 2/2)") for line in proc.stdout.splitlines())
    assert (results / "logs" / "build.log").exists()


def test_environment_is_the_default_and_options_win(tmp_path: Path) -> None:
    write_scenario(tmp_path, DEMO.replace('"exit 1"', '"true"'), "demo.yaml")
    env = {"DEPLOY_SCENARIO": "demo.yaml", "XCI_FLAVOR": "aio", "GERRIT_CHANGE_NUMBER": "4242",
           "BUILD_URL": "https://jenkins.example/job/x/1/"}
    proc = cli("run", "--results-dir", "R1", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "R1" / "summary.json").read_text())
    assert summary["flavor"] == "aio"
    assert summary["inputs"]["jenkins"]["GERRIT_CHANGE_NUMBER"] == "4242"
    props = read_properties(tmp_path / "R1" / "scenario.properties")
    assert props["BUILD_URL"] == "https://jenkins.example/job/x/1/" and props["RESULT"] == "PASSED"
    proc = cli("run", "--flavor", "mini", "--results-dir", "R2", cwd=tmp_path, env=env)
    assert proc.returncode == 0
    assert json.loads((tmp_path / "R2" / "summary.json").read_text())["flavor"] == "mini"


def test_invalid_input_exit_2_one_line_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    write_scenario(tmp_path, f"""name: bad
stages:
  - {{name: a, type: shell, with: {{command: "touch {marker}"}}}}
  - {{name: b, type: shell, timeout: 30 parsecs, with: {{command: "true"}}}}
""", "bad.yaml")
    proc = cli("run", "--scenario", "bad.yaml", "--results-dir", "R", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "xci-cn: bad.yaml:4:28: stages[1].timeout: '30 parsecs' is not a duration (use e.g. 30s, 5m, 1h30m)",
        '      - {name: b, type: shell, timeout: 30 parsecs, with: {command: "true"}}',
        "                               ^"]
    assert not marker.exists() and not (tmp_path / "R").exists()
    assert "Traceback" not in proc.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    write_scenario(tmp_path, DEMO, "demo.yaml")
    for args, text in [
        (["run", "--scenario", "demo.yaml", "--flavor", "ha"], "does not support flavor 'ha'"),
        (["run", "--scenario", "nosuch"], "unknown scenario 'nosuch'"),
        (["run", "--scenario", "demo.yaml", "--stages", "prepare,nope"], "unknown stage(s) nope"),
        (["run", "--scenario", "demo.yaml", "--installer", "docker"], "unknown installer 'docker'"),
        (["run", "--bogus-option"], "No such option"),
        (["validate", "missing.yaml"], "missing.yaml: no such file"),
    ]:
        proc = cli(*args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        assert text in proc.stderr and "Traceback" not in proc.stderr


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path: Path) -> None:
    write_scenario(tmp_path, DEMO, "demo.yaml")
    proc = cli("run", "--scenario", "demo.yaml", "--dry-run", "--results-dir", "R", cwd=tmp_path)
    assert proc.returncode == 0
    assert "1. prepare" in proc.stdout and "3. collect-logs (always)" in proc.stdout
    assert not (tmp_path / "R").exists()


def test_stage_selection(tmp_path: Path) -> None:
    write_scenario(tmp_path, DEMO, "demo.yaml")
    proc = cli("run", "--scenario", "demo.yaml", "--stages", "prepare", "--results-dir", "R", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout
    summary = json.loads((tmp_path / "R" / "summary.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["passed", "not-selected", "not-selected"]


def test_sigterm_cancels_runs_always_writes_partial_results_exits_143(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    proc = start_run(tmp_path, SLOW.format(log=log, sleep=300))
    wait_for_line(log, "long")
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert log.read_text().split() == ["first", "long", "logs"]
    summary = json.loads((tmp_path / "R" / "summary.json").read_text())
    statuses = {s["name"]: s["status"] for s in summary["stages"]}
    assert statuses == {"first": "passed", "long": "cancelled", "after": "cancelled", "logs": "passed"}
    assert summary["result"] == "INTERRUPTED"
    assert junit_cases(tmp_path / "R" / "junit.xml") == {"first": [], "long": ["Skipped"], "after": ["Skipped"],
                                                         "logs": []}
    assert "received SIGTERM" in out
    # The cancelled stage's `sleep 300` is not left behind.
    assert not alive(int(Path(f"{log}.pid").read_text()))


def test_sigint_exits_130(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    proc = start_run(tmp_path, SLOW.format(log=log, sleep=300))
    wait_for_line(log, "long")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130


def test_resume_after_sigkill_skips_what_passed(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    proc = start_run(tmp_path, SLOW.format(log=log, sleep=300))
    wait_for_line(log, "long")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    os.kill(int(Path(f"{log}.pid").read_text()), signal.SIGKILL)  # the orphan of the killed run, by PID
    state = json.loads((tmp_path / "R" / "state.json").read_text())
    assert {s["name"]: s["status"] for s in state["stages"]}["first"] == "passed"
    # Same scenario, now fast: --resume must not run `first` again.
    write_scenario(tmp_path, SLOW.format(log=log, sleep=0), "slow.yaml")
    done = cli("run", "--scenario", "slow.yaml", "--results-dir", "R", "--resume", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert log.read_text().split() == ["first", "long", "long", "after", "logs"]
    summary = json.loads((tmp_path / "R" / "summary.json").read_text())
    first = summary["stages"][0]
    assert first["status"] == "passed" and first["resumed"] is True
    assert "resuming run" in done.stdout


def test_resume_reruns_a_stage_whose_definition_changed(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    write_scenario(tmp_path, SLOW.format(log=log, sleep=0), "slow.yaml")
    assert cli("run", "--scenario", "slow.yaml", "--results-dir", "R", cwd=tmp_path).returncode == 0
    write_scenario(tmp_path, SLOW.format(log=log, sleep=0).replace("echo after", "echo after2"), "slow.yaml")
    assert cli("run", "--scenario", "slow.yaml", "--results-dir", "R", "--resume",
               cwd=tmp_path).returncode == 0
    # first and long resumed; after changed -> runs again; logs is `always` -> runs again.
    assert log.read_text().split() == ["first", "long", "after", "logs", "after2", "logs"]


def test_help_imports_no_heavy_module() -> None:
    # What --help costs is measured by bench/startup_bench.py; this holds the
    # reason it is cheap: the client libraries and pydantic stay unimported.
    code = ("import sys; from click.testing import CliRunner; "
            "from xci_cn.cli import main; r=CliRunner().invoke(main, ['--help']); "
            "assert r.exit_code == 0, r.output; "
            "print(*(m in sys.modules for m in ('kubernetes', 'ansible_runner', 'jenkins_jobs', 'pydantic')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False", "False"]


def test_version() -> None:
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("xci-cn, version ")


def test_resume_reruns_the_dependents_of_a_stage_that_runs_again(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    text = SLOW.format(log=log, sleep=0)
    write_scenario(tmp_path, text, "slow.yaml")
    assert cli("run", "--scenario", "slow.yaml", "--results-dir", "R", cwd=tmp_path).returncode == 0
    write_scenario(tmp_path, text.replace("echo first", "echo first2"), "slow.yaml")
    assert cli("run", "--scenario", "slow.yaml", "--results-dir", "R", "--resume", cwd=tmp_path).returncode == 0
    # first changed -> runs; long and after need it -> run again although unchanged.
    assert log.read_text().split()[4:] == ["first2", "long", "after", "logs"]
