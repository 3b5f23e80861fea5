"""Registry of stage types: the names a scenario's ``type:`` may use, each
with the options model its ``with:`` is validated against.

Stage types are plugins in the ``xci_cn.stages`` entry-point group (the
built-ins are registered the same way, in setup.cfg). They are imported only
when first asked for, so ``xci-cn --help`` stays fast. Registering the same
name twice is refused. It lives with the scenario model, which validates
against it; the runner (``xci_cn.pipeline``) gets the types from here.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel


class StageType(Protocol):
    """A pluggable kind of stage (see ``xci_cn.pipeline.stage`` for what
    ``run`` is given)."""

    name: ClassVar[str]
    options_model: ClassVar[type[BaseModel]]

    def run(self, ctx: Any, options: Any) -> dict[str, Any]:
        """Do the work; return JSON-serialisable outputs or raise StageFailed."""
        ...


@runtime_checkable
class CheckedBeforeRun(Protocol):
    """A stage type that can check its options offline beyond their model
    (files, manifests), before any stage of the run starts."""

    def preflight(self, options: Any) -> None:
        """Raise InvalidInput (or ScenarioError) for what is wrong."""
        ...

GROUP = "xci_cn.stages"


class DuplicateStageType(Exception):
    pass


class StageRegistry:
    """Name -> stage type, loaded lazily from entry points."""

    def __init__(self) -> None:
        self._points: dict[str, EntryPoint] = {}
        self._loaded: dict[str, StageType] = {}
        for point in entry_points(group=GROUP):
            if point.name in self._points and self._points[point.name].value != point.value:
                raise DuplicateStageType(
                    f"stage type {point.name!r} registered twice: "
                    f"{self._points[point.name].value} and {point.value}")
            self._points[point.name] = point

    def names(self) -> list[str]:
        return sorted(set(self._points) | set(self._loaded))

    def register(self, stage_type: StageType) -> None:
        """Add a stage type by hand (tests, embedding)."""
        if stage_type.name in self._points or stage_type.name in self._loaded:
            raise DuplicateStageType(f"stage type {stage_type.name!r} is already registered")
        self._loaded[stage_type.name] = stage_type

    def get(self, name: str) -> StageType | None:
        if name in self._loaded:
            return self._loaded[name]
        point = self._points.get(name)
        if point is None:
            return None
        loaded = point.load()
        stage_type = loaded() if isinstance(loaded, type) else loaded
        self._loaded[name] = stage_type
        return stage_type


_registry: StageRegistry | None = None


def stage_types() -> StageRegistry:
    """The process-wide registry."""
    global _registry
    if _registry is None:
        _registry = StageRegistry()
    return _registry
