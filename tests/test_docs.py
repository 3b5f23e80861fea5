"""The documentation: the generated reference is current and complete, every
command has help and is documented with its options, and the Sphinx build
passes with warnings as errors."""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from pydantic import BaseModel

from xci_cn import docs_reference
from xci_cn.cli import main as cli_main
from xci_cn.config.model import Scenario, StageSpec, parse_duration
from xci_cn.docs_reference import REFERENCE, builtin_stage_types, duration_text, render, value_text

DOCS = Path(__file__).resolve().parent.parent / "docs"


# -- the generated reference -----------------------------------------------------------
def test_committed_reference_is_a_fresh_render() -> None:
    assert REFERENCE.read_text() == render(), (
        "docs/reference.rst differs from the models: run `.venv/bin/python -m xci_cn.docs_reference` "
        "and commit docs/reference.rst")


def test_check_mode_refuses_a_stale_file_and_names_the_command(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "reference.rst"
    target.write_text(render().replace("Extra attempts after a failure", "Extra attempts"))
    assert docs_reference.main(["--check", "--output", str(target)]) == 1
    assert capsys.readouterr().err == (f"{target} is out of date: run "
                                       "`.venv/bin/python -m xci_cn.docs_reference` and commit the result\n")
    assert docs_reference.main(["--output", str(target)]) == 0
    assert docs_reference.main(["--check", "--output", str(target)]) == 0
    assert target.read_text() == render()


def _sections(text: str) -> dict[str, str]:
    """Label -> the text from that label to the next one."""
    parts = re.split(r"^\.\. _([\w-]+):$", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def _schema_models() -> dict[str, dict[str, Any]]:
    """Section label -> JSON-schema properties, found by pydantic's own
    schema walk (not the generator's), for every model a scenario may hold."""
    out: dict[str, dict[str, Any]] = {}

    def collect(label: str, schema: dict[str, Any]) -> None:
        out[label] = schema["properties"]
        for name, definition in schema.get("$defs", {}).items():
            out.setdefault("ref-stage" if name == "StageSpec" else f"ref-{name.lower()}", definition["properties"])

    collect("ref-scenario", Scenario.model_json_schema(mode="serialization"))
    for name, stage_type in builtin_stage_types():
        collect(f"ref-stage-{name}", stage_type.options_model.model_json_schema(mode="serialization"))
    return out


def test_reference_has_every_field_and_description_of_every_model() -> None:
    sections = _sections(REFERENCE.read_text())
    models = _schema_models()
    # The checks of verify and the analysis models are among them.
    assert {"ref-platformcheck", "ref-meshcheck", "ref-httpcheck", "ref-splitcheck", "ref-analysischeck",
            "ref-analysisspec", "ref-metricspec", "ref-versions", "ref-stage"} <= set(models)
    for label, properties in models.items():
        assert label in sections, f"no section {label} in docs/reference.rst"
        section = sections[label]
        for name, prop in properties.items():
            assert f"   * - ``{name}``\n" in section, f"{label}: field {name} missing"
            description = re.sub(r"`([^`]+)`", r"``\1``", prop.get("description", ""))
            assert description in section, f"{label}: description of {name} missing"


def test_a_reference_row_as_rendered() -> None:
    section = _sections(REFERENCE.read_text())["ref-stage-deploy"]
    assert ("   * - ``timeout``\n"
            "     - :ref:`duration <ref-durations>`\n"
            "     - ``5m``\n"
            "     - Deadline for the graph to become healthy.\n") in section
    assert ("   * - ``mirror``\n"
            "     - number or null, >= 0, <= 100\n"
            "     - ``null``\n") in section


@pytest.mark.parametrize(("seconds", "text"), [
    (300.0, "5m"), (0.001, "1ms"), (30.0, "30s"), (5400.0, "90m"), (7200.0, "2h"), (1.5, "1500ms"),
    (0.1234, "0.1234s"),
])
def test_duration_text_is_read_back_by_the_scenario_parser(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _defaults() -> list[tuple[str, Any, bool]]:
    """(model.field, default, is a duration) of every defaulted field of
    every model a scenario may hold."""
    models: list[type[BaseModel]] = [Scenario, StageSpec, *(t.options_model for _, t in builtin_stage_types())]
    seen: set[type[BaseModel]] = set()
    out = []
    while models:
        model = models.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            models.extend(_models_in(info.annotation))
            if not info.is_required() and not info.exclude:
                duration = any(getattr(m, "func", None) is parse_duration for m in info.metadata)
                out.append((f"{model.__name__}.{name}", info.get_default(call_default_factory=True), duration))
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_defaults=True)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def test_every_default_is_written_as_a_scenario_file_would_read_it() -> None:
    defaults = _defaults()
    assert {"Scenario.flavors", "DeployOptions.timeout", "AnalysisSpec.metrics", "MetricSpec.op",
            "SplitCheck.version_header", "AnalysisCheck.rollback"} <= {where for where, _, _ in defaults}
    for where, value, duration in defaults:
        if duration:
            assert parse_duration(duration_text(value)) == pytest.approx(value), where
        else:
            assert yaml.safe_load(value_text(value)) == _plain(value), where


@pytest.mark.parametrize("text", ["on", "null", "1.30", ">=", "", "x-version", "a b"])
def test_a_string_default_reads_back_as_the_same_string(text: str) -> None:
    assert yaml.safe_load(value_text(text)) == text


# -- the command line ------------------------------------------------------------------
def _commands(command: click.Command = cli_main, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...],
                                                                                         click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands()


def test_the_command_tree_is_what_the_docs_walk() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"", "run", "validate", "stages", "scenarios detect", "sandbox up", "rollout rollback",
            "jobs trigger"} <= names


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "xci-cn" for p, _ in COMMANDS])
def test_every_command_has_help(path: tuple[str, ...], command: click.Command) -> None:
    assert command.help and command.help.strip(), f"xci-cn {' '.join(path)} has no help text"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "xci-cn" for p, _ in COMMANDS])
def test_every_command_and_option_is_in_the_command_reference(path: tuple[str, ...],
                                                             command: click.Command) -> None:
    label = "-".join(("cli", *path))
    text = (DOCS / "cli.rst").read_text()
    sections = _sections(text)
    assert label in sections, f"docs/cli.rst has no section `.. _{label}:` for `xci-cn {' '.join(path)}`"
    section = sections[label]
    if path:
        assert f"``xci-cn {' '.join(path)}``" in section
    for param in command.params:
        if isinstance(param, click.Option):
            for opt in [*param.opts, *param.secondary_opts]:
                if opt.startswith("--"):
                    assert re.search(rf"``{re.escape(opt)}(?![\w-])", section), \
                        f"xci-cn {' '.join(path)}: option {opt} is not documented"
        elif isinstance(param, click.Argument):
            assert param.human_readable_name in section, \
                f"xci-cn {' '.join(path)}: argument {param.human_readable_name} is not documented"


# -- the Sphinx build --------------------------------------------------------------------
def test_sphinx_builds_the_docs_with_warnings_as_errors(tmp_path: Path) -> None:
    out = tmp_path / "html"
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-E", "-q", "-b", "html", str(DOCS), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    pages = {p.stem for p in DOCS.glob("*.rst")}
    assert pages == {"index", "quickstart", "userguide", "cli", "reference", "jenkins", "architecture",
                     "benchmarks", "reliability", "reports", "traffic", "analysis"}
    for page in pages:
        assert (out / f"{page}.html").is_file(), page
    reference = (out / "reference.html").read_text()
    assert "max_vs_baseline" in reference and 'href="#ref-metricspec"' in reference
