"""The ``xci-cn`` command: the only place that prints and chooses exit codes.

``Border``, the top group, is the one place where xci-cn's errors become a
line and an exit code; commands raise those errors or return an exit code,
and never call ``sys.exit``.

Heavy modules (the kubernetes client, ansible-runner) are imported inside the
commands that need them, so ``xci-cn --help`` starts fast.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from xci_cn import __version__
from xci_cn.cli_types import FiniteFloatRange
from xci_cn.errors import EXIT_FAILED, EXIT_INVALID_INPUT, EXIT_PASSED, EXIT_SIGINT, InvalidInput, XciCnError
from xci_cn.jenkins.commands import detect, jobs


class SettingOption(click.Option):
    """An option for a setting of ``xci_cn.settings.Settings``: its default
    and environment variable come from there, and the command gets the value
    ``Settings.resolve`` gives (the command line's, else the environment's,
    else the default). The settings (and pydantic) are imported only when
    the command runs or its help is shown, so ``xci-cn --help`` stays fast."""

    def __init__(self, decls: list[str], *, field: str, **attrs: Any):
        self.field = field
        self.help_text = attrs.pop("help", "")
        super().__init__(decls, default=None, callback=self._resolve, **attrs)

    def _resolve(self, _ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        from xci_cn.settings import Settings

        return getattr(Settings.resolve(**{self.field: value}), self.field)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from xci_cn.settings import describe

        self.help = describe(self.field, self.help_text)
        return super().get_help_record(ctx)


def setting(*decls: str, field: str, help: str = "") -> Callable[[Any], Any]:
    return click.option(*decls, cls=SettingOption, field=field, help=help)


class Border(click.Group):
    """The one border between xci-cn and the person: every command below it
    raises xci-cn's errors (or returns an exit code); here each error becomes
    one redacted line per problem on stderr and its documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            code = super().invoke(ctx)
        except XciCnError as exc:
            from xci_cn.secrets import redactor

            _say([redactor()(line) for line in exc.lines()])
            code = exc.exit_code
        except KeyboardInterrupt:
            _say(["interrupted"])
            code = EXIT_SIGINT
        except BrokenPipeError:  # `xci-cn … | head`: the reader left; not an error
            code = EXIT_PASSED
        except OSError as exc:
            _say([f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")])
            code = EXIT_FAILED
        if isinstance(code, int) and code != EXIT_PASSED:
            ctx.exit(code)
        return code


def _say(lines: list[str]) -> None:
    for line in lines:
        click.echo(f"xci-cn: {line}", err=True)


@click.group(cls=Border, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xci-cn")
def main() -> None:
    """Continuous delivery for cloud-native network functions on XCI scenarios.

    Exit codes: 0 passed, 1 a stage or verification failed, 2 invalid input or
    usage, 3 a tool or service is missing, 130/143 interrupted (SIGINT/SIGTERM).
    """


# -- scenarios ----------------------------------------------------------------------
@main.group()
def scenarios() -> None:
    """List, show and (for a Gerrit change) detect scenarios."""


@scenarios.command("list")
def scenarios_list() -> None:
    """List the bundled scenarios."""
    from xci_cn.config.model import bundled_scenarios, load_scenario_file

    for name, path in bundled_scenarios().items():
        scenario = load_scenario_file(path)
        click.echo(f"{name:24} {','.join(scenario.flavors):18} {scenario.installer:10} "
                   f"{scenario.description}")


@scenarios.command("show")
@click.argument("name")
def scenarios_show(name: str) -> None:
    """Print a scenario (bundled name or file) after validating it."""
    from xci_cn.config.model import load_scenario_file, resolve_scenario

    path = resolve_scenario(name)
    load_scenario_file(path)
    click.echo(path.read_text(), nl=False)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def validate(file: Path) -> None:
    """Validate a scenario file and its stages' pre-flight checks (manifests);
    print every problem as file:line:col: field: message and the line."""
    from xci_cn.config.model import load_scenario_file
    from xci_cn.pipeline.preflight import preflight

    scenario = load_scenario_file(file)
    preflight(scenario)
    click.echo(f"{file}: valid scenario {scenario.name!r} with {len(scenario.stages)} stages")


@main.command("cnf")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--check", "checks", multiple=True, help="A rule to run (repeatable; default: every default rule).")
@click.option("--object", "objects", multiple=True, help="Workloads to check: Kind/name or name pattern.")
@click.option("--namespace", default=None, help="Namespace for objects that name none.")
def cnf_files(paths: tuple[Path, ...], checks: tuple[str, ...], objects: tuple[str, ...],
              namespace: str | None) -> int:
    """Check manifest files against the cnf check's static rules, without a
    cluster; print each failure with file:document and how to fix it. Exit 1
    when an essential rule fails."""
    from pydantic import ValidationError

    from xci_cn.k8s.manifests import load_manifests
    from xci_cn.sandbox.binaries import find_tool
    from xci_cn.verify import cnf, kubescore

    try:
        spec = cnf.CnfCheck(type="cnf", checks=list(checks) or None, objects=list(objects) or ["*"])
    except ValidationError as exc:
        raise InvalidInput("; ".join(error["msg"].removeprefix("Value error, ") for error in exc.errors())) from None
    subjects = [cnf.Subject.of(m) for m in load_manifests(list(paths), namespace).manifests]
    binary = find_tool("kube-score")
    findings = cnf.lint(subjects, spec, lambda bodies: kubescore.score(binary, bodies),
                        runtime_reason="runtime rules need the deployed pods")
    for finding in findings:
        if not finding.passed:
            click.echo(f"FAILED {finding.case}: {finding.text()}")
    summary = cnf.summarise(findings, spec)
    essential = summary["categories"][cnf.ESSENTIAL]
    click.echo(f"cnf: score {summary['score']}%: {summary['passed']} rules passed, {summary['failed']} failed, "
               f"{summary['skipped']} skipped ({essential['failed']} essential failed)")
    if any(not f.passed and spec.blocking(cnf.RULES[f.rule]) for f in findings):
        return EXIT_FAILED
    return EXIT_PASSED


@main.command("stages")
def stages_list() -> None:
    """List the registered stage types."""
    from xci_cn.config.stage_types import stage_types

    for name in stage_types().names():
        click.echo(name)


@main.command("report")
@click.argument("results_dir", type=click.Path(file_okay=False, path_type=Path))
def report(results_dir: Path) -> None:
    """Render RESULTS_DIR/report.html from RESULTS_DIR/summary.json."""
    from xci_cn.report.html import write_html
    from xci_cn.report.summary import read_summary

    summary = read_summary(results_dir / "summary.json")
    click.echo(str(write_html(summary, results_dir / "report.html")))


# -- run -----------------------------------------------------------------------------
@main.command()
@setting("--scenario", "scenario_ref", field="scenario", help="Bundled scenario name or scenario file.")
@setting("--flavor", field="flavor", help="XCI flavor: aio, mini, noha, ha.")
@setting("--installer", field="installer", help="sandbox, existing or kubespray; default: the scenario's.")
@setting("--distro", field="distro")
@setting("--kubeconfig", field="kubeconfig", help="Cluster for the 'existing' installer.")
@setting("--sandbox-name", field="sandbox", help="Name of the local sandbox cluster.")
@click.option("--stages", "selected", default=None, help="Comma-separated stages to run (others not run).")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("results"), show_default=True)
@click.option("--resume", is_flag=True, help="Skip stages that passed in the previous run with the "
                                             "same scenario and inputs.")
@click.option("--dry-run", is_flag=True, help="Validate and print the plan; run nothing.")
@click.option("--jobs", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Stages run at once at most.")
@click.option("--retry-backoff", type=FiniteFloatRange(0, 60), default=1.0, show_default=True,
              help="Seconds before the first retry; doubled for each further one.")
@click.option("-q", "--quiet", is_flag=True, help="Print only failures and the result.")
@click.option("-v", "--verbose", is_flag=True, help="Also print stage progress details.")
def run(scenario_ref: str, flavor: str, installer: str | None, distro: str, kubeconfig: str | None,
        sandbox_name: str, selected: str | None, results_dir: Path, resume: bool, dry_run: bool,
        jobs: int, retry_backoff: float, quiet: bool, verbose: bool) -> int | None:
    """Run a scenario's stage pipeline and write results for Jenkins."""
    from xci_cn import settings
    from xci_cn.config.model import INSTALLERS, check_flavor, load_scenario_file, resolve_scenario
    from xci_cn.pipeline.stage import RunInputs

    scenario = load_scenario_file(resolve_scenario(scenario_ref))
    check_flavor(scenario, flavor)
    installer = installer or scenario.installer
    if installer not in INSTALLERS:
        raise InvalidInput(f"unknown installer {installer!r} (one of {', '.join(INSTALLERS)})")
    if installer == "existing":
        # Pre-flight: a bad kubeconfig is the user's input; refuse it before
        # anything runs (connect() reads it without touching the network).
        if not kubeconfig:
            raise InvalidInput("installer 'existing' needs a kubeconfig: --kubeconfig or $KUBECONFIG")
        from xci_cn.k8s.client import connect

        connect(kubeconfig).close()
    from xci_cn.sandbox.cluster import Sandbox

    Sandbox(sandbox_name)  # refuses a bad --sandbox-name/$XCI_CN_SANDBOX before anything runs
    stage_names = [s.name for s in scenario.stages]
    chosen = None
    if selected is not None:
        chosen = [s.strip() for s in selected.split(",") if s.strip()]
        if not chosen:
            # An empty selection would otherwise mean "everything", teardown included.
            raise InvalidInput(f"--stages {selected!r} names no stage (scenario has {', '.join(stage_names)})")
        unknown = [s for s in chosen if s not in stage_names]
        if unknown:
            raise InvalidInput(f"--stages: unknown stage(s) {', '.join(unknown)} "
                               f"(scenario has {', '.join(stage_names)})")
    from xci_cn.pipeline.preflight import preflight

    preflight(scenario, chosen)
    inputs = RunInputs(scenario=scenario.name, flavor=flavor, installer=installer, distro=distro,
                       kubeconfig=kubeconfig, sandbox_name=sandbox_name, jenkins=settings.current().jenkins_context())
    if dry_run:
        from xci_cn.pipeline.plan import levels

        click.echo(f"scenario {scenario.name} ({scenario.source}) flavor={flavor} "
                   f"installer={installer}")
        for depth, names in enumerate(levels(scenario)):
            marks = [f"{n}{' (always)' if scenario.stage(n).always else ''}" for n in names
                     if chosen is None or n in chosen]
            if marks:
                click.echo(f"  {depth + 1}. {', '.join(marks)}")
        return EXIT_PASSED
    _check_results_dir(results_dir)
    return _run_pipeline(scenario, inputs, results_dir, chosen, resume, jobs, retry_backoff, quiet, verbose)


def _check_results_dir(results_dir: Path) -> None:
    """The results directory must be creatable and writable before any stage
    runs: a path under a file, or a read-only directory, is the user's input."""
    import tempfile

    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=results_dir, prefix=".xci-cn-probe."):
            pass
    except OSError as exc:
        raise InvalidInput(f"--results-dir {results_dir}: {exc.strerror or exc}") from None


def _run_pipeline(scenario: Any, inputs: Any, results_dir: Path, chosen: list[str] | None,
                  resume: bool, jobs: int, retry_backoff: float, quiet: bool, verbose: bool) -> int:
    import contextlib

    from xci_cn.console import PlainConsole
    from xci_cn.pipeline.runner import Runner
    from xci_cn.report import write_results
    from xci_cn.secrets import redactor

    redact = redactor()
    redact.add_from_environment()
    # A person at a terminal gets the live view; Jenkins' console (not a TTY)
    # and --quiet get plain timestamped lines without control codes.
    live = sys.stdout.isatty() and not quiet
    if live:
        from xci_cn.live import LiveConsole

        console: Any = LiveConsole(verbose=verbose, redact=redact)
    else:
        console = PlainConsole(quiet=quiet, verbose=verbose, redact=redact)
    runner = Runner(scenario, inputs, results_dir, selected=chosen, resume=resume, jobs=jobs,
                    retry_backoff=retry_backoff, on_transition=console.transition,
                    progress=console.progress, redact=redact)
    if runner.resumed_from:
        console.line(f"resuming run {runner.resumed_from}: "
                     f"{sum(r.resumed for r in runner.records)} stage(s) already passed")
    if not quiet:
        console.line(f"run {runner.run_id}: scenario {scenario.name} flavor {inputs.flavor} "
                     f"installer {inputs.installer} -> {results_dir}")

    def on_signal(signum: int, _frame: Any) -> None:
        console.line(f"received {signal.Signals(signum).name}: cancelling; 'always' stages still run")
        runner.abort(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with console.show(runner.records) if live else contextlib.nullcontext():
            result = runner.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    write_results(result, results_dir)
    failed = [r.name for r in result.records if r.status == "failed"]
    console.line(f"result {result.status.upper()} in {result.duration:.1f}s"
                 + (f"; failed: {', '.join(failed)}" if failed else "")
                 + f"; results in {results_dir}")
    return result.exit_code



# -- sandbox -------------------------------------------------------------------------
@main.group()
def sandbox() -> None:
    """The local XCI sandbox: a real control plane with kwok-simulated nodes."""


def _progress_printer(quiet: bool = False) -> Callable[[str], None]:
    from xci_cn.console import now

    def say(text: str) -> None:
        if not quiet:
            click.echo(f"{now()} {text}", err=True)

    return say


@sandbox.command("build")
@click.option("--force", is_flag=True, help="Rebuild even when the cache verifies.")
def sandbox_build(force: bool) -> None:
    """Build (or verify the cached) sandbox binaries and tools (the cnf
    check's kube-score); print the sandbox's binary directory."""
    from xci_cn.sandbox.binaries import ensure_binaries, ensure_tools

    binaries = ensure_binaries(progress=_progress_printer(), force=force)
    ensure_tools(progress=_progress_printer(), force=force)
    click.echo(str(binaries.bin_dir))


def _sandbox_log() -> Any:
    import logging

    log = logging.getLogger("xci_cn.sandbox.cli")
    log.propagate = False
    return log


@sandbox.command("up")
@setting("--flavor", field="flavor", help="XCI flavor: aio, mini, noha, ha.")
@setting("--name", field="sandbox")
@click.option("--api-port", type=click.IntRange(0, 65535), default=0,
              help="Preferred API server port (another is chosen when it is taken).")
@click.option("--no-istio", is_flag=True, help="Do not install Istio's CRDs.")
@setting("--pods", field="sandbox_pods",
         help="real: a real node (kubelet, containerd) runs the pods, needs root; simulated: kwok nodes only.")
@click.option("-q", "--quiet", is_flag=True)
def sandbox_up(flavor: str, name: str, api_port: int, no_istio: bool, pods: str, quiet: bool) -> None:
    """Start a sandbox: real control plane, the flavor's nodes (one real), Istio's CRDs."""
    import time

    from xci_cn.sandbox.cluster import up

    started = time.monotonic()
    result = up(name, flavor, istio=not no_istio, api_port=api_port, pods=pods, log=_sandbox_log(),
                progress=_progress_printer(quiet))
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"sandbox {name} up in {time.monotonic() - started:.1f}s: flavor {flavor}, "
               f"API {result.api_url}, kubeconfig {result.sandbox.kubeconfig}")


@sandbox.command("down")
@setting("--name", field="sandbox")
def sandbox_down(name: str) -> None:
    """Stop a sandbox and delete its directory; nothing is left running."""
    from xci_cn.sandbox.cluster import down

    down(name, log=_sandbox_log())
    click.echo(f"sandbox {name} removed")


@sandbox.command("load-image")
@click.argument("tarball", type=click.Path(path_type=Path))
@click.option("--name", "image_name", default=None,
              help="Image reference to give an image whose tarball names none.")
@setting("--sandbox", "sandbox_name", field="sandbox")
def sandbox_load_image(tarball: Path, image_name: str | None, sandbox_name: str) -> None:
    """Import an OCI or docker-archive image tarball into the real node's containerd."""
    from xci_cn.sandbox.cluster import load_image

    for loaded in load_image(sandbox_name, tarball, image_name):
        click.echo(f"loaded {loaded}")


@sandbox.command("images")
@setting("--name", field="sandbox")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def sandbox_images(name: str, as_json: bool) -> None:
    """The images on the real node (name, digest, size)."""
    import json

    from xci_cn.sandbox.cluster import images

    listed = images(name)
    if as_json:
        click.echo(json.dumps(listed, indent=2))
        return
    for image in listed:
        click.echo(f"{image['name']:60} {image['digest'][:19]}  {image['size']}")


@sandbox.command("status")
@setting("--name", field="sandbox")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def sandbox_status(name: str, as_json: bool) -> int:
    """API URL, server version, nodes with roles and Ready state, Istio and Gateway API CRDs,
    the Gateway's and Prometheus' addresses."""
    import json

    from xci_cn.sandbox.cluster import status

    report = status(name)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return EXIT_PASSED
    state = "up" if report["up"] else ("FAILED to come up: its logs are kept in " + report["dir"]
                                       if report["state"] == "failed" else "DOWN")
    click.echo(f"sandbox {name}: {state} (flavor {report['flavor']})")
    click.echo(f"  API: {report['api_url']}  server: {report.get('server_version', '-')}")
    click.echo(f"  kubeconfig: {report['kubeconfig']}")
    for component, state in report["components"].items():
        click.echo(f"  {component:24} pid {state['pid']:<8} {'running' if state['running'] else 'stopped'}")
    for node in report.get("nodes", []):
        click.echo(f"  node {node['name']:10} {','.join(node['roles']) or '-':24} "
                   f"{'Ready' if node['ready'] else 'NotReady'}")
    if report["up"]:
        for label, key in (("Istio CRDs", "istio_crds"), ("Gateway API CRDs", "gateway_api_crds")):
            crds = report.get(key, [])
            click.echo(f"  {label}: {sum(c['established'] for c in crds)}/{len(crds)} Established")
        for label, key in (("Gateway", "gateway_url"), ("Prometheus", "prometheus_url")):
            if report.get(key):
                click.echo(f"  {label}: {report[key]}")
    return EXIT_PASSED if report["up"] else EXIT_FAILED


@sandbox.command("kubeconfig")
@setting("--name", field="sandbox")
def sandbox_kubeconfig(name: str) -> None:
    """Print the path of the sandbox's kubeconfig (for scripts)."""
    from xci_cn.sandbox.cluster import Sandbox, list_sandboxes

    sandbox = Sandbox(name)
    if not sandbox.kubeconfig.exists():
        raise InvalidInput(f"there is no sandbox named {name!r} that is up (sandboxes: "
                           f"{', '.join(list_sandboxes()) or 'none'})")
    click.echo(str(sandbox.kubeconfig))

# -- rollout -------------------------------------------------------------------------
def _cluster_kubeconfig(kubeconfig: str | None, sandbox_name: str) -> str:
    """--kubeconfig when given, else the named sandbox's."""
    if kubeconfig:
        return kubeconfig
    from xci_cn.sandbox.cluster import Sandbox

    sandbox = Sandbox(sandbox_name)
    if not sandbox.kubeconfig.exists():
        raise InvalidInput(f"no cluster: give --kubeconfig (or $KUBECONFIG), or bring up sandbox "
                           f"{sandbox_name!r} with 'xci-cn sandbox up'")
    return str(sandbox.kubeconfig)


@main.group()
def rollout() -> None:
    """Promote, roll back or show a bluegreen/canary rollout."""


def _rollout_command(action: str) -> Any:
    @click.option("--namespace", "-n", required=True)
    @click.option("--service", required=True, help="VirtualService/DestinationRule name (istio); the "
                                                   "versions' Services are <service>-<version> (gateway-api).")
    @click.option("--host", default=None, help="Route host (default <service>.<ns>.svc.cluster.local).")
    @click.option("--router", type=click.Choice(["istio", "gateway-api"]), default="istio", show_default=True,
                  help="What moves the traffic: a VirtualService or an HTTPRoute.")
    @click.option("--route", default=None, help="HTTPRoute name (gateway-api; default: the service).")
    @setting("--kubeconfig", field="kubeconfig")
    @setting("--sandbox-name", field="sandbox")
    def command(namespace: str, service: str, host: str | None, router: str, route: str | None,
                kubeconfig: str | None, sandbox_name: str) -> None:
        import json

        from xci_cn.k8s.strategies import lifecycle

        result = lifecycle.run(_cluster_kubeconfig(kubeconfig, sandbox_name), action, namespace, service, host,
                               router=router, route=route)
        click.echo(json.dumps(result, indent=2))

    command.__doc__ = {
        "promote": "Make the canary the stable version (all traffic; old version scaled to 0).",
        "rollback": "All traffic back to the stable version; read back what is stored.",
        "status": "Show the stored route weights and rollout state.",
    }[action]
    return rollout.command(action)(command)


for _action in ("promote", "rollback", "status"):
    _rollout_command(_action)


# -- analysis ------------------------------------------------------------------------
@main.group()
def analysis() -> None:
    """Re-judge a run's recorded canary analyses (its analysis.json) offline."""


@analysis.command("replay")
@click.argument("results_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--metrics", "rules_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Metric rules (YAML: a list of metrics, or metrics/scoring/failure_limit/error_limit/"
                   "inconclusive) to judge with instead of the recorded ones.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also render the replay's report.html (from RESULTS_DIR/summary.json) into this directory.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def analysis_replay(results_dir: Path, rules_file: Path | None, report_dir: Path | None, as_json: bool) -> int:
    """Re-judge RESULTS_DIR/analysis.json without a cluster or Prometheus and
    print the verdicts per step, and per metric what changed. Exit 0 when the
    replayed outcome is a pass, 1 when not."""
    import json

    from xci_cn.verify.replay import load_rules, replay, replayed_summary
    from xci_cn.verify.tape import TAPE_NAME, read_tape

    tape, notes = read_tape(results_dir / TAPE_NAME)
    for note in notes:
        click.echo(f"xci-cn: note: {note}", err=True)
    rules = load_rules(rules_file) if rules_file else None
    result = replay(tape, rules, str(rules_file or "--metrics"))
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2, sort_keys=True))
    else:
        for line in result.lines():
            click.echo(line)
    if report_dir is not None:
        from xci_cn.report.html import write_html
        from xci_cn.report.summary import read_summary

        source = results_dir / "summary.json"
        if not source.is_file():
            raise InvalidInput(f"{source}: no such file (the report is rendered from the run's summary)")
        summary = replayed_summary(read_summary(source), result, str(rules_file) if rules_file else None)
        click.echo(str(write_html(summary, report_dir / "report.html")), err=as_json)
    return EXIT_PASSED if result.passed else EXIT_FAILED


# -- jenkins (light: heavy imports live inside the commands) -------------------------
main.add_command(jobs)
scenarios.add_command(detect)

if __name__ == "__main__":  # pragma: no cover
    main()

__all__ = ["main", "EXIT_INVALID_INPUT"]
