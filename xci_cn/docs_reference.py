"""Render docs/reference.rst, the scenario and stage reference, from the
pydantic models themselves, so that the documentation cannot drift from the
code: every field of a scenario file and of every stage type's options, with
its type, default, limits and ``Field(description=...)``, and every model
nested in them (the checks of ``verify``, analysis and metric specs).

    .venv/bin/python -m xci_cn.docs_reference            # rewrite docs/reference.rst
    .venv/bin/python -m xci_cn.docs_reference --check    # exit 1 when it is stale

tests/test_docs.py fails when the committed file differs from a fresh render.
Only xci-cn's own stage types are rendered (entry points that point into the
``xci_cn`` package), so an installed plugin does not change the file. Nothing
at run time imports this module.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import types
import typing
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from xci_cn.config.model import _UNIT_SECONDS, Scenario, StageSpec, parse_duration
from xci_cn.config.stage_types import GROUP, stage_types
from xci_cn.paths import REPO_ROOT

REFERENCE = REPO_ROOT / "docs" / "reference.rst"
COMMAND = ".venv/bin/python -m xci_cn.docs_reference"
_PLAIN = re.compile(r"[A-Za-z0-9][\w.-]*")
_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def builtin_stage_types() -> list[tuple[str, Any]]:
    """(name, stage type) of xci-cn's own stage types, by name."""
    names = sorted(p.name for p in entry_points(group=GROUP) if p.value.startswith("xci_cn."))
    registry = stage_types()
    return [(name, registry.get(name)) for name in names]


def duration_text(seconds: float) -> str:
    """300.0 -> '5m', 0.001 -> '1ms': the shortest form parse_duration reads back."""
    for unit, size in sorted(_UNIT_SECONDS.items(), key=lambda item: -item[1]):
        count = seconds / size
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return f"{seconds:g}s"


def value_text(value: Any) -> str:
    """A default as it would be written in a scenario file (YAML flow style)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(by_alias=True, exclude_defaults=True)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):  # plain when YAML reads it back as this string ('on' is a bool)
        return value if _PLAIN.fullmatch(value) and yaml.safe_load(value) == value else json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(value_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {value_text(item)}" for key, item in value.items()) + "}"
    raise TypeError(f"no reference text for default {value!r}: teach xci_cn.docs_reference")


def prose(text: str) -> str:
    """A one-line description as reStructuredText: `x` becomes ``x``; the
    characters that would start markup are escaped."""
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(f"``{part.strip('`')}``")
        else:
            out.append(re.sub(r"([\\*|])", r"\\\1", part))
    return "".join(out)


def _is_duration(metadata: list[Any]) -> bool:
    return any(getattr(item, "func", None) is parse_duration for item in metadata)


def _limits(metadata: list[Any]) -> list[str]:
    out = []
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            out.append(f">= {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            out.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            out.append(f"<= {item.le}")
        elif isinstance(item, annotated_types.Lt):
            out.append(f"< {item.lt}")
        elif isinstance(item, annotated_types.MinLen):
            out.append("not empty" if item.min_length == 1 else f"at least {item.min_length} items")
        elif isinstance(item, annotated_types.MaxLen):
            out.append(f"at most {item.max_length} items")
    return out


def _table(rows: list[list[str]]) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 18 27 20 35", ""]
    for row in [["Field", "Type", "Default", "Description"], *rows]:
        first, *rest = row
        lines.append(f"   * - {first}".rstrip())
        lines.extend(f"     - {cell}".rstrip() for cell in rest)
    return lines


def _title(text: str, underline: str, label: str | None = None) -> list[str]:
    lines = [f".. _{label}:", ""] if label else []
    return [*lines, text, underline * len(text), ""]


class Reference:
    """Renders the page. A model met inside a field's type gets a section of
    its own further down (once), and the field links to it. ``used_in`` comes
    from a first pass, so every section lists all the fields that use it."""

    def __init__(self, used_in: dict[type[BaseModel], list[str]] | None = None) -> None:
        self.placed: dict[type[BaseModel], tuple[str, str, str]] = {}  # model -> (title, name, label)
        self.pending: list[type[BaseModel]] = []
        self.used_in: dict[type[BaseModel], list[str]] = {}
        self.known_uses = used_in or {}

    def place(self, model: type[BaseModel], title: str, name: str, label: str) -> None:
        self.placed[model] = (title, name, label)

    def ref(self, model: type[BaseModel]) -> str:
        _, name, label = self.placed[model]
        return f":ref:`{name} <{label}>`"

    def link(self, model: type[BaseModel], where: str) -> str:
        """A reference to ``model``'s section, which is added when new."""
        if model not in self.placed:
            literal = _single_literal(model, "type")
            title = model.__name__ + (f" (``type: {literal}``)" if literal else "")
            self.place(model, title, model.__name__, f"ref-{model.__name__.lower()}")
            self.pending.append(model)
        uses = self.used_in.setdefault(model, [])
        if where not in uses:
            uses.append(where)
        return self.ref(model)

    def type_text(self, annotation: Any, where: str) -> str:
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if annotation is type(None):
            return "null"
        if annotation is Any:
            return "any"
        if origin is typing.Annotated:
            inner, *metadata = args
            if _is_duration(metadata):
                return ":ref:`duration <ref-durations>`"
            text = self.type_text(inner, where)
            discriminators = [m.discriminator for m in metadata if isinstance(m, FieldInfo) and m.discriminator]
            return f"{text}, chosen by ``{discriminators[0]}``" if discriminators else text
        if origin in (typing.Union, types.UnionType):
            # "(mapping of string to number) or null", never "mapping of string to number or null"
            texts = [self.type_text(arg, where) for arg in args]
            return " or ".join(f"({text})" if " of " in text else text for text in texts)
        if origin is typing.Literal:
            values = ", ".join(f"``{value_text(arg)}``" for arg in args)
            return values if len(args) == 1 else f"one of {values}"
        if origin is list:
            return f"list of {_grouped(self.type_text(args[0], where))}"
        if origin is dict:
            return f"mapping of {self.type_text(args[0], where)} to {_grouped(self.type_text(args[1], where))}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return self.link(annotation, where)
        if annotation in _SCALARS:
            return _SCALARS[annotation]
        raise TypeError(f"no reference text for type {annotation!r}: teach xci_cn.docs_reference")

    def fields(self, model: type[BaseModel]) -> list[str]:
        if model.model_config.get("extra") != "forbid":
            raise TypeError(f"{model.__name__} accepts unknown keys; the reference says none does")
        rows = []
        for name, info in model.model_fields.items():
            if info.exclude:  # set by the loader, not written in a file
                continue
            key = info.alias or name
            duration = _is_duration(info.metadata)
            kind = ":ref:`duration <ref-durations>`" if duration else \
                self.type_text(info.annotation, f"{self.ref(model)} ``{key}``")
            kind = ", ".join([kind, *_limits(info.metadata)])
            if info.is_required():
                default = "required"
            else:
                value = info.get_default(call_default_factory=True)
                default = f"``{duration_text(value) if duration and value is not None else value_text(value)}``"
            rows.append([f"``{key}``", kind, default, prose(info.description or "")])
        return _table(rows)

    def model_section(self, model: type[BaseModel], underline: str) -> list[str]:
        title, _, label = self.placed[model]
        lines = _title(title, underline, label)
        doc = model.__dict__.get("__doc__")
        if doc:
            lines += [inspect.cleandoc(doc), ""]
        uses = self.known_uses.get(model, [])
        if uses:
            lines += ["Used in " + ", ".join(uses) + ".", ""]
        return lines + self.fields(model) + [""]

    def page(self) -> list[str]:
        self.place(Scenario, "Scenario", "Scenario", "ref-scenario")
        self.place(StageSpec, "Stage", "Stage", "ref-stage")
        stages = builtin_stage_types()
        for name, stage_type in stages:
            self.place(stage_type.options_model, f"``{name}``", name, f"ref-stage-{name}")
        units = ", ".join(f"``{unit}``" for unit in _UNIT_SECONDS)
        lines = [
            f".. Generated by `{COMMAND}` from the pydantic models; do not edit.",
            "   tests/test_docs.py fails when this file differs from a fresh render.",
            "",
            *_title("Scenario and stage reference", "=", "reference"),
            "Every field a scenario file may hold, generated from the models that validate it. Every "
            "mapping below refuses keys it does not list, and ``xci-cn validate FILE`` reports every "
            "problem of a file at once as ``file:line: field: message``, before anything runs.",
            "",
            *_title("Durations", "-", "ref-durations"),
            f"A duration is a positive number of seconds, or a text of numbers with the units {units}, "
            "for example ``30s``, ``5m``, ``1h30m``, ``1.5s``. It lies between 1ms and 7 days "
            "(604800s); ``.inf``, ``.nan`` and longer durations are refused when the scenario is "
            "validated, and so is ``.inf``/``.nan`` for every other number of a scenario.",
            "",
            *_title("Scenario file", "-", "ref-scenario-file"),
            *self.model_section(Scenario, "~"),
            *self.model_section(StageSpec, "~"),
        ]
        while self.pending:  # models met in the scenario's own fields (Versions)
            lines += self.model_section(self.pending.pop(0), "~")
        lines += [*_title("Stage types", "-", "ref-stage-types"),
                  "A stage's options go under its ``with:``; ``xci-cn stages`` lists the registered types.", ""]
        for _name, stage_type in stages:
            model = stage_type.options_model
            title, _, label = self.placed[model]
            lines += _title(title, "~", label)
            doc = sys.modules[type(stage_type).__module__].__doc__
            if doc:
                lines += [inspect.cleandoc(doc), ""]
            lines += [f"Options (``{model.__name__}``):", "", *self.fields(model), ""]
        lines += [*_title("Nested options", "-", "ref-nested"), "Models used inside the options above.", ""]
        while self.pending:
            lines += self.model_section(self.pending.pop(0), "~")
        return lines


def _grouped(text: str) -> str:
    return f"({text})" if " or " in text else text


def _single_literal(model: type[BaseModel], name: str) -> str | None:
    info = model.model_fields.get(name)
    if info is None or typing.get_origin(info.annotation) is not typing.Literal:
        return None
    args = typing.get_args(info.annotation)
    return str(args[0]) if len(args) == 1 else None


def render() -> str:
    """The whole reference page (two passes: the first finds where each
    nested model is used)."""
    first = Reference()
    first.page()
    return "\n".join(Reference(first.used_in).page()).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xci_cn.docs_reference",
                                     description="Render the scenario and stage reference.")
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs from a fresh render")
    parser.add_argument("--output", type=Path, default=REFERENCE, help="default: docs/reference.rst")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run `{COMMAND}` and commit the result", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
