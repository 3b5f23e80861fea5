"""Scenario loading: a corpus of bad inputs, each with its one expected line
(golden ``.error`` files beside the ``.yaml``), and the good paths."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import DEMO
from xci_cn.config.model import (
    bundled_scenarios,
    check_flavor,
    find_cycle,
    load_scenario_file,
    parse_duration,
)
from xci_cn.errors import InvalidInput, ScenarioError

CORPUS = Path(__file__).parent / "corpus" / "bad-scenarios"
CASES = sorted(p for p in CORPUS.glob("*.yaml"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_bad_scenario_gives_its_one_line(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CORPUS)
    expected = (CORPUS / f"{path.stem}.error").read_text().strip()
    with pytest.raises(ScenarioError) as caught:
        load_scenario_file(Path(path.name))
    lines = caught.value.lines()
    assert len(lines) == 1, lines
    pattern = ".*".join(re.escape(part) for part in expected.split("*"))
    assert re.fullmatch(pattern, lines[0], re.DOTALL), f"{lines[0]!r} != {expected!r}"


def test_corpus_is_not_empty() -> None:
    assert len(CASES) >= 20


def test_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"name: demo\n" + b"# padding\n" * 600_000)
    with pytest.raises(ScenarioError, match=r"big.yaml:1:1: file is \d+ bytes; the limit is"):
        load_scenario_file(big)


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text("name: demo\nflavors: [tiny]\nstages:\n  - {name: a, type: shell, colour: red}\n")
    with pytest.raises(ScenarioError) as caught:
        load_scenario_file(path)
    heads = [line.splitlines()[0] for line in caught.value.lines()]
    # The stage's options are checked although the model found problems too.
    assert heads == [f"{path}:2:11: flavors[0]: 'tiny' is not one of 'aio', 'mini', 'noha' or 'ha'",
                     f"{path}:4:5: stages[0].with.command: required field is missing",
                     f"{path}:4:28: stages[0].colour: unknown field"]


def test_four_problems_of_model_options_and_dag_print_four(tmp_path: Path) -> None:
    """Every problem of a file at once, each ``file:line:col: field: message``
    and its line with a caret under the column, in the order of the file."""
    path = tmp_path / "four.yaml"
    path.write_text("name: demo\n"
                    "colour: red\n"
                    "stages:\n"
                    "  - name: a\n"
                    "    type: shell\n"
                    "    timeout: .inf\n"
                    "    with: {command: 'true', shel: zsh}\n"
                    "  - {name: b, type: shell, needs: [nope], with: {command: 'true'}}\n")
    with pytest.raises(ScenarioError) as caught:
        load_scenario_file(path)
    assert caught.value.lines() == [
        f"{path}:2:1: colour: unknown field\n    colour: red\n    ^",
        f"{path}:6:5: stages[0].timeout: inf is out of range: a duration is 1ms to 7 days (604800s)\n"
        "        timeout: .inf\n        ^",
        f"{path}:7:29: stages[0].with.shel: unknown field\n"
        "        with: {command: 'true', shel: zsh}\n                                ^",
        f"{path}:8:36: stages[1].needs[0]: unknown stage 'nope'\n"
        "      - {name: b, type: shell, needs: [nope], with: {command: 'true'}}\n"
        "                                       ^",
    ]


def test_issue_demo_scenario_loads(tmp_path: Path) -> None:
    path = tmp_path / "demo.yaml"
    path.write_text(DEMO)
    scenario = load_scenario_file(path)
    assert [s.name for s in scenario.stages] == ["prepare", "build", "collect-logs"]
    build = scenario.stage("build")
    assert build.timeout == 30.0 and build.retries == 1 and build.needs == ["prepare"]
    assert scenario.stage("collect-logs").always is True
    assert scenario.versions.kubernetes == "1.36"
    assert scenario.source == str(path)


def test_unsupported_flavor_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "demo.yaml"
    path.write_text(DEMO)
    scenario = load_scenario_file(path)
    check_flavor(scenario, "mini")
    with pytest.raises(InvalidInput, match=r"does not support flavor 'ha' \(supported: aio, mini\)"):
        check_flavor(scenario, "ha")
    with pytest.raises(InvalidInput, match="unknown flavor 'huge'"):
        check_flavor(scenario, "huge")


@pytest.mark.parametrize("text,seconds", [
    ("30s", 30), ("5m", 300), ("1h30m", 5400), ("500ms", 0.5), (12, 12), ("1m 30s", 90), (0.25, 0.25)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "30 parsecs", "s", "-5s", 0, -1, True, [1], "5m5"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_find_cycle() -> None:
    assert find_cycle({"a": ["b"], "b": []}) is None
    assert find_cycle({"a": ["b"], "b": ["a"]}) == ["a", "b", "a"]


def test_bundled_scenarios_validate() -> None:
    bundled = bundled_scenarios()
    assert {"k8-nosdn-istio", "k8-nosdn-nofeature"} <= set(bundled)
    for path in bundled.values():
        scenario = load_scenario_file(path)
        assert scenario.name == path.stem


# -- validation is light and reads each manifest once -------------------------------------------
READS = """
import sys
from pathlib import Path
reads = []
sys.addaudithook(lambda event, args: reads.append(str(args[0])) if event == "open" and
                 str(args[0]).endswith("m.yaml") else None)
from xci_cn.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"kubernetes", "ansible_runner", "jenkins", "jenkins_jobs"})
print("READS", len(reads), "HEAVY", ",".join(heavy) or "-")
"""
EVERY_TYPE = """name: every
stages:
  - {name: provision, type: provision}
  - {name: ansible, type: ansible, with: {playbook: site.yml}}
  - {name: deploy, type: deploy, needs: [provision], with: {manifests: [m.yaml, m.yaml], namespace: n,
     strategy: canary, service: s, stable: v1, canary: v2}}
  - {name: verify, type: verify, needs: [deploy], with: {namespace: n, service: s, checks: [
     {type: platform}, {type: mesh}, {type: http, url: 'http://127.0.0.1:9'}]}}
  - {name: rollout, type: rollout, needs: [verify], with: {action: status, namespace: n, service: s}}
  - {name: shell, type: shell, always: true, with: {command: 'true'}}
"""


@pytest.mark.parametrize("args", [["validate", "s.yaml"], ["run", "--scenario", "s.yaml", "--dry-run"]])
def test_validation_imports_no_cluster_client_and_reads_each_manifest_once(tmp_path: Path, args: list[str]) -> None:
    import subprocess
    import sys

    (tmp_path / "m.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    (tmp_path / "s.yaml").write_text(EVERY_TYPE)
    proc = subprocess.run([sys.executable, "-c", READS, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    # the deploy stage names m.yaml twice: read once per name, by the pre-flight step alone
    assert proc.stdout.strip().splitlines()[-1] == "READS 2 HEAVY -", proc.stdout + proc.stderr


def test_the_deploy_stage_runs_on_what_its_preflight_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xci_cn.config.stage_types import StageRegistry
    from xci_cn.pipeline.preflight import preflight

    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    (tmp_path / "s.yaml").write_text(EVERY_TYPE)
    scenario = load_scenario_file(Path("s.yaml"))
    registry = StageRegistry()
    with pytest.raises(ScenarioError, match=r"m.yaml:1:1: document 1: ConfigMap/c: the same object as .* \(stage "
                                            r"deploy\)"):
        preflight(scenario, registry=registry)
    (tmp_path / "s.yaml").write_text(EVERY_TYPE.replace("[m.yaml, m.yaml]", "[m.yaml]"))
    scenario = load_scenario_file(Path("s.yaml"))
    preflight(scenario, registry=registry)
    (tmp_path / "m.yaml").unlink()  # what runs is what was checked, not a second read
    deploy = registry.get("deploy")
    options = deploy.options_model.model_validate(scenario.stage("deploy").with_)
    first, second = deploy._manifests(options), deploy._manifests(options)
    assert [m.name for m in first.manifests] == ["c"] and first.manifests[0].body is not second.manifests[0].body
