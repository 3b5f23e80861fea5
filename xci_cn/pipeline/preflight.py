"""The pre-flight step of a run: what each stage type can check offline
beyond its options, for every stage at once, before any stage starts.

A stage type opts in with ``preflight(options)`` (``CheckedBeforeRun``), raising InvalidInput (or
ScenarioError) for what is wrong; the deploy stage reads and checks its
manifests here, once per run, and keeps what it read for its run.
"""

from __future__ import annotations

from xci_cn.config.model import Scenario
from xci_cn.config.stage_types import CheckedBeforeRun, StageRegistry, stage_types
from xci_cn.errors import InvalidInput, ScenarioError


def preflight(scenario: Scenario, selected: list[str] | None = None,
              registry: StageRegistry | None = None) -> None:
    """Run every (selected) stage's pre-flight step; raise ScenarioError with
    every problem, each prefixed by the stage it belongs to."""
    registry = registry or stage_types()
    problems: list[str] = []
    for spec in scenario.stages:
        if selected is not None and spec.name not in selected:
            continue
        stage_type = registry.get(spec.type)
        if not isinstance(stage_type, CheckedBeforeRun):
            continue
        try:
            stage_type.preflight(stage_type.options_model.model_validate(spec.with_))
        except InvalidInput as exc:
            problems.extend(f"{line} (stage {spec.name})" if "\n" not in line else
                            line.replace("\n", f" (stage {spec.name})\n", 1) for line in exc.lines())
    if problems:
        raise ScenarioError(problems)
