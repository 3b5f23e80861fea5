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
    assert re.fullmatch(pattern, lines[0]), f"{lines[0]!r} != {expected!r}"


def test_corpus_is_not_empty() -> None:
    assert len(CASES) >= 20


def test_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"name: demo\n" + b"# padding\n" * 600_000)
    with pytest.raises(ScenarioError, match=r"big.yaml:1: file is \d+ bytes; the limit is"):
        load_scenario_file(big)


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text("name: demo\nflavors: [tiny]\nstages:\n  - {name: a, type: shell, colour: red}\n")
    with pytest.raises(ScenarioError) as caught:
        load_scenario_file(path)
    text = "\n".join(caught.value.lines())
    assert "many.yaml:2: flavors[0]" in text
    assert "many.yaml:4: stages[0].colour: unknown field" in text


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


