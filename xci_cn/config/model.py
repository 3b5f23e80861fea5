"""The validated scenario model: what a scenario file may say, and nothing else.

``load_scenario`` is the single entry: YAML with line marks -> pydantic models
-> per-stage-type option models -> DAG checks. Every problem is collected and
reported as ``file:line:col: field: message`` with the offending line, before
anything runs. Nothing here reads a manifest or imports a Kubernetes client:
what a stage type can check offline beyond its options (the deploy stage's
manifests) is its pre-flight step (xci_cn.pipeline.preflight).
"""

from __future__ import annotations

import math
import re
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails

from xci_cn.config.loader import LoadedYaml, Loc, load_yaml_file
from xci_cn.config.stage_types import stage_types
from xci_cn.errors import ScenarioError
from xci_cn.paths import SCENARIOS_DIR

Flavor = Literal["aio", "mini", "noha", "ha"]
FLAVORS: tuple[Flavor, ...] = ("aio", "mini", "noha", "ha")
INSTALLERS = ("sandbox", "existing", "kubespray")
Installer = Literal["sandbox", "existing", "kubespray"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Every duration of a scenario lies in this range: a timeout of years, .inf
# or .nan would reach time.sleep/Event.wait (OverflowError) or never expire.
MIN_DURATION_SECONDS = 0.001
MAX_DURATION_SECONDS = 7 * 24 * 3600.0


def _in_range(value: Any, seconds: float) -> float:
    if not math.isfinite(seconds) or not MIN_DURATION_SECONDS <= seconds <= MAX_DURATION_SECONDS:
        raise ValueError(f"{value!r} is out of range: a duration is 1ms to 7 days "
                         f"({MAX_DURATION_SECONDS:g}s)")
    return seconds


def parse_duration(value: Any) -> float:
    """``'1m30s'`` -> 90.0; plain numbers are seconds. Raises ValueError
    unless the result is finite and within 1 ms .. 7 days."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError(f"{value!r} is not a positive duration")
        try:
            return _in_range(value, float(value))
        except OverflowError:  # an int beyond any float
            raise ValueError(f"{value!r} is out of range: a duration is 1ms to 7 days") from None
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration")
    text = value.strip().replace(" ", "")
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text) or total <= 0:
        raise ValueError(f"{value!r} is not a duration (use e.g. 30s, 5m, 1h30m)")
    return _in_range(value, total)


Duration = Annotated[float, BeforeValidator(parse_duration)]

STAGE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # always fullmatch: "$" allows a final newline


# Every model of a scenario: frozen, unknown keys refused, numbers finite.
STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class StrictModel(BaseModel):
    """Frozen, no unknown keys, no .inf/.nan."""

    model_config = STRICT


class Versions(StrictModel):
    kubernetes: str | None = Field(default=None, description="Kubernetes version the scenario pins.")
    istio: str | None = Field(default=None, description="Istio version the scenario pins.")

    @field_validator("kubernetes", "istio", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        # "1.30" written unquoted arrives as a float; keep the user's text.
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class StageSpec(StrictModel):
    """One node of the stage DAG, as written in the scenario file."""

    name: str = Field(description="Unique stage name: lower case, digits, '-' and '_'.")
    type: str = Field(description="A registered stage type (see `xci-cn stages`).")
    needs: list[str] = Field(default_factory=list, description="Stages that must pass first.")
    timeout: Duration | None = Field(
        default=None, description="Hard limit per attempt (e.g. 30s, 10m); the stage is cancelled."
    )
    retries: int = Field(default=0, ge=0, le=10, description="Extra attempts after a failure, with backoff.")
    always: bool = Field(
        default=False, description="Run even after an earlier failure or an abort (logs, teardown)."
    )
    with_: dict[str, Any] = Field(
        default_factory=dict, alias="with", description="Options of the stage type."
    )

    model_config = ConfigDict(**STRICT, populate_by_name=True)

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not STAGE_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid stage name (lower case, digits, '-', '_')")
        return value


class Scenario(StrictModel):
    """A deployable XCI scenario and its stage pipeline."""

    name: str = Field(description="Scenario name, e.g. k8-nosdn-istio.")
    description: str = Field(default="", description="Free text.")
    installer: Installer = Field(default="sandbox", description="What the provision stage brings up.")
    flavors: list[Flavor] = Field(
        default_factory=lambda: list(FLAVORS), min_length=1, description="Supported XCI flavors."
    )
    versions: Versions = Field(default_factory=Versions, description="Pinned component versions.")
    stages: list[StageSpec] = Field(min_length=1, description="The stage DAG.")

    # Set by the loader, not by the file.
    source: str = Field(default="", exclude=True)

    def stage(self, name: str) -> StageSpec:
        for spec in self.stages:
            if spec.name == name:
                return spec
        raise KeyError(name)


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    given = error.get("input")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"{given!r} is not one of {expected}"
    msg = error["msg"]
    if msg.startswith("Value error, "):
        return msg[len("Value error, "):]
    msg = msg[0].lower() + msg[1:]
    if kind not in ("too_short", "too_long") and not isinstance(given, dict | list):
        msg += f" (got {given!r})"
    return msg


def _problems(loaded: LoadedYaml, exc: ValidationError, prefix: Loc = ()) -> list[str]:
    problems = []
    for error in exc.errors():
        loc = prefix + tuple(error["loc"])
        # pydantic reports the alias-free name; the file says "with".
        loc = tuple("with" if part == "with_" else part for part in loc)
        problems.append(loaded.problem(loc, _message(error)))
    return problems


def _dag_problems(loaded: LoadedYaml, stages: list[Any]) -> list[str]:
    """Duplicate names, unknown needs and cycles, on the stages as written
    (so that they are found beside every other problem of the file)."""
    problems: list[str] = []
    names: dict[str, int] = {}
    graph: dict[str, list[str]] = {}
    for index, raw in enumerate(stages):
        name = raw.get("name") if isinstance(raw, dict) else None
        if not isinstance(name, str):
            continue
        if name in names:
            problems.append(loaded.problem(("stages", index, "name"), f"duplicate stage {name!r}"))
        names.setdefault(name, index)
    for index, raw in enumerate(stages):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            continue
        raw_needs = raw.get("needs")
        needs: list[Any] = raw_needs if isinstance(raw_needs, list) else []
        for n, need in enumerate(needs):
            if not isinstance(need, str):
                continue
            if need not in names:
                problems.append(loaded.problem(("stages", index, "needs", n), f"unknown stage {need!r}"))
            elif need == raw["name"]:
                problems.append(loaded.problem(("stages", index, "needs", n), "a stage cannot need itself"))
        graph.setdefault(raw["name"], []).extend(n for n in needs if isinstance(n, str) and n in names)
    if problems:
        return problems
    cycle = find_cycle(graph)
    if cycle:
        problems.append(loaded.problem(("stages", names[cycle[0]], "needs"), f"cycle {' -> '.join(cycle)}"))
    return problems


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle in ``graph`` (node -> needs) as ``[a, b, a]`` (a needs b),
    starting at its first node in ``graph``'s order; None without one."""
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        # graphlib lists each node before the ones that need it; a need
        # points the other way.
        cycle = list(reversed(exc.args[1]))[:-1]
        order = {name: index for index, name in enumerate(graph)}
        first = min(range(len(cycle)), key=lambda i: order.get(cycle[i], len(order)))
        cycle = cycle[first:] + cycle[:first]
        return [*cycle, cycle[0]]
    return None


def scenario_from_loaded(loaded: LoadedYaml) -> Scenario:
    """Validate a parsed document into a Scenario, or raise ScenarioError with
    every problem of the file at once (model, stage options, DAG), in the
    order of the file."""
    data = loaded.data
    if not isinstance(data, dict) or not ({"name", "stages"} & set(data)):
        # Not a scenario at all (a job parameter pointing at /etc/shadow):
        # one line, and nothing of its content.
        kind = "empty" if data is None else "a mapping" if isinstance(data, dict) else type(data).__name__
        raise ScenarioError([f"{loaded.path}: not an xci-cn scenario (no 'name' and 'stages' at its top; "
                             f"the document is {kind})"])
    problems: list[str] = []
    scenario = None
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        problems.extend(_problems(loaded, exc))
    raw_stages = data.get("stages")
    stages: list[Any] = raw_stages if isinstance(raw_stages, list) else []
    registry = stage_types()
    for index, raw in enumerate(stages):
        type_name = raw.get("type") if isinstance(raw, dict) else None
        if not isinstance(type_name, str):
            continue  # the model reported it
        stage_type = registry.get(type_name)
        if stage_type is None:
            known = ", ".join(sorted(registry.names()))
            problems.append(loaded.problem(("stages", index, "type"),
                                           f"unknown stage type {type_name!r} (known: {known})"))
            continue
        options = raw.get("with", {})
        if not isinstance(options, dict):
            continue  # the model reported it
        try:
            stage_type.options_model.model_validate(options)
        except ValidationError as exc:
            problems.extend(_problems(loaded, exc, ("stages", index, "with")))
    problems.extend(_dag_problems(loaded, stages))
    if problems or scenario is None:
        raise ScenarioError(_in_file_order(problems))
    return scenario.model_copy(update={"source": loaded.path})


def _in_file_order(problems: list[str]) -> list[str]:
    def position(problem: str) -> tuple[int, int]:
        match = re.match(r".*?:(\d+):(\d+): ", problem)
        return (int(match.group(1)), int(match.group(2))) if match else (0, 0)

    return sorted(dict.fromkeys(problems), key=position)


def load_scenario_file(path: Path) -> Scenario:
    """Load and fully validate a scenario file."""
    return scenario_from_loaded(load_yaml_file(path))


def bundled_scenarios() -> dict[str, Path]:
    """Name -> file of the scenarios shipped with xci-cn."""
    return {p.stem: p for p in sorted(SCENARIOS_DIR.glob("*.yaml"))}


def resolve_scenario(ref: str) -> Path:
    """A bundled scenario name, or a path to a scenario file."""
    candidate = Path(ref)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists() or "/" in ref:
        return candidate
    bundled = bundled_scenarios()
    if ref in bundled:
        return bundled[ref]
    from xci_cn.errors import InvalidInput

    known = ", ".join(bundled) or "none"
    raise InvalidInput(f"unknown scenario {ref!r} (bundled: {known}; or give a path to a .yaml file)")


def check_flavor(scenario: Scenario, flavor: str) -> None:
    """Refuse a flavor the scenario does not support, before anything runs."""
    from xci_cn.errors import InvalidInput

    if flavor not in FLAVORS:
        raise InvalidInput(f"unknown flavor {flavor!r} (one of {', '.join(FLAVORS)})")
    if flavor not in scenario.flavors:
        raise InvalidInput(f"{scenario.source}: scenario {scenario.name!r} does not support flavor "
                           f"{flavor!r} (supported: {', '.join(scenario.flavors)})")
