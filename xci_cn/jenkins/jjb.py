"""Render and check the Jenkins Job Builder tree (``jjb/``) through JJB's own
Python API — the same code path as ``jenkins-jobs test``, without its CLI.

Called by ``xci-cn jobs render|test|update`` (xci_cn.jenkins.commands), by
tests/test_jjb.py and by bench/jjb_bench.py. The only module that imports
jenkins_jobs. JJB's errors become InvalidInput here, one line each, located
as ``file:line:col``.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xci_cn.errors import InvalidInput

# Fixed JJB settings: a user's /etc/jenkins_jobs or ~/.config/jenkins_jobs must
# never change what is rendered. Jenkins is not asked for plugin versions, so
# JJB writes its newest formats (as `jenkins-jobs test` does offline).
_JJB_SETTINGS = """\
[job_builder]
keep_descriptions=False
ignore_cache=True
recursive=True
exclude=.*
allow_duplicates=False
allow_empty_variables=False
retain_anchors=False

[jenkins]
url=http://localhost:8080/
query_plugins_info=False
"""

# Job types whose work is not in <builders> (none are used in jjb/ today).
_NO_BUILDERS_TYPES = {"pipeline", "workflow", "multibranch", "folder", "githuborg", "externaljob"}


@dataclass(frozen=True)
class RenderedJob:
    """One job as Jenkins receives it: its name and config.xml."""

    name: str
    xml: str
    project_type: str = "freestyle"

    def element(self) -> ET.Element:
        return ET.fromstring(self.xml)


@dataclass
class Rendered:
    """The result of rendering a tree: jobs, plus what JJB warned about and
    what `check` found in the YAML before rendering."""

    jobs: list[RenderedJob]
    warnings: list[str] = field(default_factory=list)
    unknown_sections: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        return [job.name for job in self.jobs]


def yaml_files(paths: Sequence[Path]) -> list[Path]:
    """The YAML files of ``paths`` (files, or directories searched
    recursively, hidden entries skipped), in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(Path(root) / f for f in sorted(files)
                             if f.endswith((".yaml", ".yml")) and not f.startswith("."))
        elif path.is_file():
            found.append(path)
        else:
            from xci_cn.config.loader import path_problem

            raise InvalidInput(path_problem(path, "JJB file or directory") or f"{path}: not a file")
    if not found:
        raise InvalidInput(f"{', '.join(map(str, paths))}: no JJB YAML files found")
    return found


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage().splitlines()[0])


@contextmanager
def _jjb_logging() -> Iterator[_Collect]:
    """JJB logs through the root logger and its own; keep both off the
    console and hand its warnings back to the caller instead."""
    collect = _Collect()
    loggers = [logging.getLogger("jenkins_jobs"), logging.getLogger()]
    saved = [(lg, lg.propagate, lg.level, list(lg.handlers)) for lg in loggers]
    jjb_logger = loggers[0]
    jjb_logger.handlers = [collect]
    jjb_logger.propagate = False
    root = loggers[1]
    root.setLevel(max(root.level, logging.WARNING))
    try:
        yield collect
    finally:
        for lg, propagate, level, handlers in saved:
            lg.propagate, lg.handlers = propagate, handlers
            lg.setLevel(level)


def _jjb_config() -> Any:
    from jenkins_jobs.config import JJBConfig

    with tempfile.NamedTemporaryFile("w", suffix=".ini", prefix="xci-cn-jjb-", delete=False) as ini:
        ini.write(_JJB_SETTINGS)
    try:
        config = JJBConfig(ini.name, config_file_required=True)
    finally:
        os.unlink(ini.name)
    config.validate()
    return config


def error_line(exc: Exception) -> str:
    """JJB's multi-line error as one located problem: the innermost location,
    the innermost object named (job, template, project) and the message, then
    the offending line (the format of every YAML problem, config.loader)."""
    from jenkins_jobs.errors import JenkinsJobsException

    from xci_cn.config.loader import located_in_file

    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        message = str(exc.problem or exc.context)
        return located_in_file(mark.name, (mark.line + 1, mark.column + 1), message) if mark else message
    if isinstance(exc, JenkinsJobsException):
        message = " ".join(str(exc.message).split())
        pos = exc.pos or next((c.pos for c in reversed(exc.ctx) if c.pos), None)
        # The innermost object named ("In job template 't-{x}'"), not the project.
        named = next((c.message for c in reversed(exc.ctx) if c.message.startswith("In ")), None)
        message = f"{named + ': ' if named else ''}{message}"
        return located_in_file(str(pos.path), (pos.line + 1, pos.column + 1), message) if pos else message
    return " ".join(str(exc).split())


def _unknown_sections(roots: Any) -> list[str]:
    """Keys of jobs and job templates that JJB takes for template variables
    although they hold a list or mapping — a misspelled section (``builder:``
    for ``builders:``), which JJB drops without a word."""
    from xci_cn.config.loader import located_in_file

    problems = []
    for kind, items in (("job-template", roots.job_templates), ("job", roots.jobs)):
        for item in items.values():
            for key, value in item.params.items():
                if isinstance(value, list | dict):
                    pos = getattr(item.params, "key_pos", {}).get(key) or item.pos
                    problems.append(located_in_file(str(pos.path), (pos.line + 1, pos.column + 1),
                                                    f"{kind} {item.name!r}: unknown section {key!r} "
                                                    "(JJB would drop it)"))
    return problems


def render(paths: Sequence[Path], names: Sequence[str] = ()) -> Rendered:
    """Render every job of the JJB tree at ``paths`` (optionally only those
    whose names match one of the ``names`` globs). Raises InvalidInput with
    JJB's error on one line."""
    from jenkins_jobs.errors import JenkinsJobsException
    from jenkins_jobs.loader import load_files
    from jenkins_jobs.registry import ModuleRegistry
    from jenkins_jobs.roots import Roots
    from jenkins_jobs.xml_config import XmlJobGenerator

    from xci_cn.config.loader import check_nesting

    files = yaml_files([Path(p) for p in paths])
    for path in files:
        check_nesting(path)  # JJB's loader recurses: a deep file would end in RecursionError
    with _jjb_logging() as collected:
        try:
            config = _jjb_config()
            roots = Roots(config)
            load_files(config, roots, files)
            registry = ModuleRegistry(config, config.builder["plugins_info"])
            registry.set_macros(roots.macros)
            job_data = roots.generate_jobs()
            if names:
                job_data = [j for j in job_data if any(fnmatch.fnmatch(j.name, g) for g in names)]
            registry.amend_job_dicts(job_data)
            xml_jobs = XmlJobGenerator(registry).generateXML(job_data)
        except (JenkinsJobsException, yaml.YAMLError) as exc:
            raise InvalidInput(error_line(exc)) from None
        types = {j.name: j.data.get("project-type", "freestyle") for j in job_data}
        jobs = [RenderedJob(x.name, x.output().decode("utf-8"), types.get(x.name, "freestyle"))
                for x in xml_jobs]
        unknown = _unknown_sections(roots)
    jobs.sort(key=lambda job: job.name)
    return Rendered(jobs=jobs, warnings=list(dict.fromkeys(collected.lines)), unknown_sections=unknown)


def check(rendered: Rendered) -> list[str]:
    """Problems JJB does not report: misspelled sections, and jobs that
    would do nothing because they have no builders."""
    problems = list(rendered.unknown_sections)
    for job in rendered.jobs:
        if job.project_type in _NO_BUILDERS_TYPES:
            continue
        builders = job.element().find("builders")
        if builders is None or len(builders) == 0:
            problems.append(f"job {job.name!r}: no builders (a misspelled 'builders:' section?)")
    return problems


def _outside_problem(name: str) -> str | None:
    """Why a job name cannot be a directory under the output directory:
    Jenkins folders ("team/job") can, "../x", "/x", "." and "" cannot."""
    parts = name.split("/")
    if name.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\0" in name \
            or "\\" in name:
        return f"job {name!r}: not a job name that stays inside the output directory"
    return None


def write_jobs(jobs: Sequence[RenderedJob], out_dir: Path) -> list[Path]:
    """Write ``OUT/<job>/config.xml`` (the layout of ``jenkins-jobs test
    --config-xml``)."""
    problems = [p for p in (_outside_problem(job.name) for job in jobs) if p]
    if problems:  # checked for every job before the first is written
        raise InvalidInput("; ".join(problems))
    written = []
    for job in jobs:
        path = out_dir / job.name / "config.xml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(job.xml, encoding="utf-8")
        written.append(path)
    return written
