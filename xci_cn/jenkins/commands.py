"""The click commands of the Jenkins integration: ``xci-cn scenarios detect``
and the ``xci-cn jobs`` group (render, test, update, trigger, follow).

Registered by xci_cn/cli.py. Light at import time: jenkins_jobs, jenkins and
the rest are imported inside the commands. Like every command, these only
raise xci_cn.errors (or return an exit code); the CLI's ``Border`` turns
them into one line each and the exit code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from xci_cn.cli_types import FiniteFloatRange
from xci_cn.errors import EXIT_PASSED, InvalidInput


class JobProblems(InvalidInput):
    """Every problem found in the job tree, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))

    def lines(self) -> list[str]:
        return list(self.problems)


# -- scenarios detect ------------------------------------------------------------------
@click.command("detect")
@click.option("--repo", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Git checkout of the change; the change is its HEAD.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("scenario.properties"), show_default=True,
              help="Properties file for EnvInject.")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True, help="Where a skipped verify is recorded (junit.xml).")
@click.option("--project", envvar="GERRIT_PROJECT", default=None,
              help="Gerrit project [env GERRIT_PROJECT]; default: the checkout's directory name.")
@click.option("--topic", envvar="GERRIT_TOPIC", default="", help="Gerrit topic [env GERRIT_TOPIC].")
@click.option("--pipeline", type=click.Choice(["verify", "merge"]), default="verify", show_default=True,
              help="The pipeline the result is for (skip-verify applies to verify only).")
def detect(repo: Path, output: Path, results_dir: Path, project: str | None, topic: str,
           pipeline: str) -> None:
    """Determine the scenario a Gerrit change tests and write scenario.properties.

    Commit-message lines 'deploy-scenario:', 'xci-flavor:', 'installer-type:'
    override what the changed files say; job parameters DEPLOY_SCENARIO,
    XCI_FLAVOR, INSTALLER_TYPE set by hand override both. Two scenarios
    touched is an error (exit 2).
    """
    from xci_cn.jenkins.gerrit import detect as run_detection
    from xci_cn.jenkins.gerrit import read_change, write_detection

    change = read_change(repo, project=project, topic=topic)
    detection = run_detection(change, repo, pipeline=pipeline)
    written = write_detection(detection, output, results_dir)
    click.echo(f"scenario {detection.scenario} flavor {detection.flavor} installer {detection.installer} "
               f"({'; '.join(detection.reasons)}) -> {written[0]}")
    if detection.skip_verify:
        click.echo(f"topic skip-verify: the verify pipeline will not run; recorded in {written[-1]}")


# -- jobs ------------------------------------------------------------------------------
@click.group()
def jobs() -> None:
    """Render, check and push the JJB job tree; trigger and follow builds.

    Credentials come from $JENKINS_USER and $JENKINS_API_TOKEN, or from a
    JJB-style config file ([jenkins] url=, user=, password=) given with --conf
    or $XCI_CN_JENKINS_CONF (default ~/.config/xci-cn/jenkins.ini) — never
    from the command line.
    """


def _default_tree() -> Path:
    from xci_cn.paths import JJB_DIR

    return JJB_DIR


_tree_option = click.option(
    "--jjb", "trees", multiple=True, type=click.Path(path_type=Path),
    help="JJB YAML file or directory (repeatable); default: xci-cn's jjb/.")
_names_argument = click.argument("names", nargs=-1)
_url_option = click.option("--url", default=None, help="Jenkins URL [env JENKINS_URL].")
_conf_option = click.option("--conf", type=click.Path(dir_okay=False, path_type=Path), default=None,
                            help="Jenkins config file [env XCI_CN_JENKINS_CONF].")
_timeout_option = click.option("--timeout", type=FiniteFloatRange(0), default=0,
                               help="Give up (exit 3) after this many seconds; 0: never.")
_poll_option = click.option("--poll", type=FiniteFloatRange(0.01, 60), default=2.0, show_default=True,
                            help="Seconds between polls of the queue and the console.")


def _render_checked(trees: tuple[Path, ...], names: tuple[str, ...]) -> Any:
    from xci_cn.jenkins.jjb import check, render

    rendered = render(list(trees) or [_default_tree()], names)
    for warning in rendered.warnings:
        click.echo(f"warning: jenkins-job-builder: {warning}", err=True)
    problems = check(rendered)
    if problems:
        raise JobProblems(problems)
    if names and not rendered.jobs:
        raise InvalidInput(f"no job matches {' '.join(names)}")
    return rendered


def _output_dir_option(help: str) -> Callable[..., Any]:
    return click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help=help)


@jobs.command("render")
@_tree_option
@_output_dir_option("Write OUT/<job>/config.xml; without it, list the job names.")
@_names_argument
def jobs_render(trees: tuple[Path, ...], output_dir: Path | None, names: tuple[str, ...]) -> None:
    """Render the job tree (optionally only jobs matching NAMES globs) with JJB."""
    from xci_cn.jenkins.jjb import render, write_jobs

    rendered = render(list(trees) or [_default_tree()], names)
    if output_dir is None:
        for name in rendered.names():
            click.echo(name)
        return
    write_jobs(rendered.jobs, output_dir)
    click.echo(f"{len(rendered.jobs)} jobs written to {output_dir}")


@jobs.command("test")
@_tree_option
@_output_dir_option("Also write OUT/<job>/config.xml.")
@_names_argument
def jobs_test(trees: tuple[Path, ...], output_dir: Path | None, names: tuple[str, ...]) -> None:
    """Render and check the job tree: JJB's errors, misspelled sections, jobs
    without builders; one line per problem, exit 2 when there is any."""
    from xci_cn.jenkins.jjb import write_jobs

    started = time.perf_counter()
    rendered = _render_checked(trees, names)
    if output_dir is not None:
        write_jobs(rendered.jobs, output_dir)
    click.echo(f"{len(rendered.jobs)} jobs rendered and checked in {time.perf_counter() - started:.2f}s")


@jobs.command("update")
@_tree_option
@_url_option
@_conf_option
@_names_argument
def jobs_update(trees: tuple[Path, ...], url: str | None, conf: Path | None, names: tuple[str, ...]) -> None:
    """Push the checked job tree to Jenkins: create missing jobs, reconfigure
    changed ones, leave the others alone."""
    from xci_cn.jenkins.jobs import JenkinsJobs, load_settings

    settings = load_settings(url, conf)
    rendered = _render_checked(trees, names)
    with JenkinsJobs(settings) as client:
        report = client.update(rendered.jobs, on_change=lambda action, name: click.echo(f"{action} {name}"))
    click.echo(f"{settings.url}: {len(report.created)} created, {len(report.updated)} updated, "
               f"{len(report.unchanged)} unchanged")


def _follow(client: Any, build: Any, poll: float, deadline: float | None) -> int:
    from xci_cn.jenkins.jobs import result_exit_code
    from xci_cn.secrets import redactor

    redact = redactor()
    result = client.follow(build, lambda line: click.echo(redact(line)), poll=poll, deadline=deadline)
    click.echo(f"{build.job} #{build.number} finished: {result}", err=True)
    return result_exit_code(result)


def _deadline(timeout: float) -> float | None:
    return time.monotonic() + timeout if timeout else None


@jobs.command("trigger")
@click.argument("job")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Build parameter (repeatable).")
@click.option("--follow/--no-follow", default=True, show_default=True,
              help="Follow the console and exit with the build's result.")
@_url_option
@_conf_option
@_timeout_option
@_poll_option
def jobs_trigger(job: str, params: tuple[str, ...], follow: bool, url: str | None, conf: Path | None,
                 timeout: float, poll: float) -> int:
    """Trigger a parameterized build of JOB; with --follow (default) print its
    console and exit with its result: SUCCESS 0, UNSTABLE/FAILURE 1, ABORTED 130."""
    from xci_cn.jenkins.jobs import JenkinsJobs, load_settings, parse_parameters

    parameters = parse_parameters(params)
    with JenkinsJobs(load_settings(url, conf)) as client:
        return _trigger(client, job, parameters, follow, timeout, poll)


def _trigger(client: Any, job: str, parameters: dict[str, str], follow: bool, timeout: float,
             poll: float) -> int:
    from xci_cn.jenkins.jobs import result_exit_code

    deadline = _deadline(timeout)
    queue_item = client.trigger(job, parameters)
    click.echo(f"{job}: queued (item {queue_item})", err=True)
    if not follow:
        return EXIT_PASSED
    build = client.wait_for_build(job, queue_item, poll=poll, deadline=deadline)
    if build is None:
        click.echo(f"{job}: the queued build was cancelled", err=True)
        return result_exit_code("ABORTED")
    click.echo(f"{job} #{build.number} started: {build.url}", err=True)
    return _follow(client, build, poll, deadline)


@jobs.command("follow")
@click.argument("job")
@click.argument("number", type=click.IntRange(1), required=False)
@_url_option
@_conf_option
@_timeout_option
@_poll_option
def jobs_follow(job: str, number: int | None, url: str | None, conf: Path | None, timeout: float,
                poll: float) -> int:
    """Print the console of build NUMBER of JOB (default: its last build)
    until it finishes; exit with its result like `trigger`."""
    from xci_cn.jenkins.jobs import BuildRef, JenkinsJobs, load_settings

    with JenkinsJobs(load_settings(url, conf)) as client:
        build = BuildRef(job, number, "") if number else client.last_build(job)
        return _follow(client, build, poll, _deadline(timeout))
