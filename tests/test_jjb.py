"""The JJB tree in jjb/: `jenkins-jobs test` accepts it, and the generated
XML says what the jobs must do — builders present (JJB drops a misspelled
section without a word), Gerrit triggers with recheck/reverify, the JUnit and
archive paths equal what `xci-cn run` writes, shell escaping right. The shell
builders are run with bash to check their glue."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import cli, write_scenario
from xci_cn.jenkins.jjb import Rendered, check, render
from xci_cn.paths import JJB_DIR, SCENARIOS_DIR

GERRIT = "com.sonyericsson.hudson.plugins.gerrit.trigger.hudsontrigger"
STREAMS = {"master": "master", "lakelse": "stable/lakelse", "kali": "stable/kali", "jerma": "stable/jerma"}


@pytest.fixture(scope="module")
def tree() -> Rendered:
    return render([JJB_DIR])


@pytest.fixture(scope="module")
def jobs(tree: Rendered) -> dict[str, ET.Element]:
    return {job.name: job.element() for job in tree.jobs}


def kind(name: str) -> str:
    if "-xci-cn-verify-" in name:
        return "verify"
    if "-xci-cn-merge-" in name:
        return "merge"
    return "daily-phase" if any(f"-{p}-daily-" in name for p in
                                ("deploy", "verify", "functest", "yardstick")) else "daily"


def commands(job: ET.Element) -> list[str]:
    return [c.text or "" for c in job.iter("command")]


def builders(job: ET.Element) -> list[ET.Element]:
    return list(job.find("builders"))


def parameter_defaults(job: ET.Element) -> dict[str, str]:
    return {p.findtext("name"): p.findtext("defaultValue") or ""
            for p in job.find("properties/hudson.model.ParametersDefinitionProperty/parameterDefinitions")}


def test_jenkins_jobs_test_accepts_the_tree_and_agrees_with_our_render(tree: Rendered,
                                                                       tmp_path: Path) -> None:
    """What CI runs: JJB's own command line, compared with the API render."""
    jjb = Path(sys.executable).with_name("jenkins-jobs")
    proc = subprocess.run([str(jjb), "test", "-r", "--config-xml", "-o", str(tmp_path), str(JJB_DIR)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    written = {p.parent.name: p.read_text() for p in tmp_path.glob("*/config.xml")}
    assert written == {job.name: job.xml for job in tree.jobs}


def test_the_tree_has_every_job_and_nothing_is_dropped(tree: Rendered, jobs: dict[str, ET.Element]) -> None:
    scenarios = sorted(p.stem for p in SCENARIOS_DIR.glob("*.yaml"))
    pods = ["ericsson-pod2", "huawei-pod12", "intel-pod16", "intel-pod17", "lf-pod4"]
    expected = {f"{project}-xci-cn-{kind}-{stream}" for project in ("xci-cn", "clover")
                for kind in ("verify", "merge") for stream in STREAMS}
    for stream in STREAMS:
        for scenario in scenarios:  # the daily loops cover exactly the bundled scenarios
            for pod in pods:
                expected.add(f"xci-cn-{scenario}-{pod}-daily-{stream}")
                expected.update(f"xci-cn-{scenario}-{pod}-{phase}-daily-{stream}"
                                for phase in ("deploy", "verify", "functest", "yardstick"))
    assert set(jobs) == expected and len(jobs) >= 200
    assert check(tree) == [] and tree.warnings == []
    for name, job in jobs.items():
        want = {"verify": 4, "merge": 5, "daily": 5, "daily-phase": 2}[kind(name)]
        assert len(builders(job)) == want, name
        assert job.find("publishers") is not None and len(job.find("publishers")) >= 2, name


def test_streams_build_their_branch(jobs: dict[str, ET.Element]) -> None:
    for stream, branch in STREAMS.items():
        for name in (f"xci-cn-xci-cn-verify-{stream}", f"clover-xci-cn-merge-{stream}",
                     f"xci-cn-k8-nosdn-istio-lf-pod4-daily-{stream}"):
            defaults = parameter_defaults(jobs[name])
            assert defaults["BRANCH"] == branch and defaults["GERRIT_BRANCH"] == branch
            assert defaults["GERRIT_REFSPEC"] == f"refs/heads/{branch}"
            assert defaults["PROJECT"] == name.split("-xci-cn-")[0] if "-daily-" not in name else "xci-cn"
            assert jobs[name].findtext("scm/branches/hudson.plugins.git.BranchSpec/name") == "origin/$BRANCH"
    assert jobs["xci-cn-xci-cn-verify-jerma"].findtext("disabled") == "true"
    assert jobs["xci-cn-xci-cn-verify-master"].findtext("disabled") == "false"


def gerrit_trigger(job: ET.Element) -> ET.Element:
    return job.find(f"triggers/{GERRIT}.GerritTrigger")


def test_verify_and_merge_gerrit_triggers(jobs: dict[str, ET.Element]) -> None:
    for name, job in jobs.items():
        if kind(name) not in ("verify", "merge"):
            assert gerrit_trigger(job) is None, name
            continue
        trigger = gerrit_trigger(job)
        events = [e.tag.rsplit(".", 1)[1] for e in trigger.find("triggerOnEvents")]
        comments = [c.text for c in trigger.iter("commentAddedCommentContains")]
        if kind(name) == "verify":
            assert events == ["PluginPatchsetCreatedEvent", "PluginDraftPublishedEvent",
                              "PluginCommentAddedContainsEvent", "PluginCommentAddedContainsEvent"]
            assert comments == ["recheck", "reverify"]
            assert job.find(".//buildChooser").get("class").endswith("GerritTriggerBuildChooser")
        else:
            assert events == ["PluginChangeMergedEvent", "PluginCommentAddedContainsEvent"]
            assert comments == ["remerge"]
            assert job.find(".//buildChooser").get("class") == "hudson.plugins.git.util.DefaultBuildChooser"
        project = trigger.find(f"gerritProjects/{GERRIT}.data.GerritProject")
        assert project.findtext("pattern") == name.split("-xci-cn-")[0]
        assert project.findtext("branches/*/pattern") == "**/" + parameter_defaults(job)["BRANCH"]
        assert [p.findtext("pattern") for p in project.find("forbiddenFilePaths")] == ["docs/**"]
        assert project.findtext("disableStrictForbiddenFileVerification") == "true"


@pytest.fixture(scope="module")
def runner_output(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where `xci-cn run` writes its results when Jenkins runs it in the
    workspace without --results-dir: found by running it."""
    workspace = tmp_path_factory.mktemp("workspace")
    write_scenario(workspace, "name: tiny\nstages:\n  - {name: a, type: shell, with: {command: 'true'}}\n",
                   "tiny.yaml")
    proc = cli("run", "--scenario", "tiny.yaml", cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    yield workspace


def test_junit_and_archive_paths_are_the_runners(jobs: dict[str, ET.Element], runner_output: Path) -> None:
    [junit] = [p.relative_to(runner_output) for p in runner_output.rglob("junit.xml")]
    results_dir = junit.parent
    assert (runner_output / results_dir / "summary.json").exists()
    for name, job in jobs.items():
        publisher = job.find("publishers/hudson.tasks.junit.JUnitResultArchiver")
        assert publisher is not None, name
        assert publisher.findtext("testResults") == str(junit), name
        assert publisher.findtext("allowEmptyResults") == ("false" if kind(name) in ("verify", "merge")
                                                          else "true"), name
        archive = job.find("publishers/hudson.tasks.ArtifactArchiver")
        assert archive.findtext("artifacts") == f"{results_dir}/**", name
        assert archive.findtext("excludes") == f"{results_dir}/kubeconfig", name
        # The builders that run xci-cn write to that same directory.
        runs = [c for c in commands(job) if "xci-cn run " in c]
        assert runs and all(f"--results-dir {results_dir}" in c for c in runs), name


def test_every_job_has_a_timeout_throttle_or_blocker_and_cleanup(jobs: dict[str, ET.Element]) -> None:
    for name, job in jobs.items():
        minutes = job.findtext(".//hudson.plugins.build__timeout.BuildTimeoutWrapper/strategy/timeoutMinutes")
        assert minutes and int(minutes) > 0, name
        assert job.find("publishers/hudson.plugins.ws__cleanup.WsCleanup") is not None, name
        if kind(name) in ("verify", "merge"):
            throttle = job.find("properties/hudson.plugins.throttleconcurrents.ThrottleJobProperty")
            assert throttle.findtext("maxConcurrentPerNode") == "1"
            assert [c.text for c in throttle.find("categories")] == ["xci-cn-sandbox"]
        if kind(name) == "daily":
            pod = job.findtext("assignedNode")
            blocker = job.find("properties/hudson.plugins.buildblocker.BuildBlockerProperty")
            assert blocker.findtext("blockingJobs") == f"xci-cn-.*-{pod}-.*daily-.*"
        if kind(name) != "daily-phase":  # phases share the loop's cluster: no teardown there
            post = job.find("publishers/org.jenkinsci.plugins.postbuildscript.PostBuildScript")
            results = [r.text for r in post.iter("string")]
            assert results == ["SUCCESS", "UNSTABLE", "FAILURE", "NOT_BUILT", "ABORTED"], name


def test_verify_builders_detect_inject_then_run(jobs: dict[str, ET.Element]) -> None:
    job = jobs["clover-xci-cn-verify-kali"]
    steps = builders(job)
    assert [s.tag for s in steps] == ["hudson.tasks.Shell", "hudson.tasks.Shell", "EnvInjectBuilder",
                                      "hudson.tasks.Shell"]
    assert "xci-cn scenarios detect --pipeline verify" in steps[1].findtext("command")
    assert '--output "${WORKSPACE}/scenario.properties"' in steps[1].findtext("command")
    assert steps[2].findtext("info/propertiesFilePath") == "${WORKSPACE}/scenario.properties"
    defaults = parameter_defaults(job)
    assert (defaults["DEPLOY_SCENARIO"], defaults["XCI_FLAVOR"], defaults["INSTALLER_TYPE"]) == ("", "", "")
    merge = [s.findtext("command") for s in builders(jobs["clover-xci-cn-merge-kali"])]
    assert "--pipeline merge" in merge[1] and "PROMOTED_ON" in merge[-1]


def test_shell_escaping(jobs: dict[str, ET.Element]) -> None:
    for name, job in jobs.items():
        for command in commands(job):
            # JJB turned every ${{VAR}} into ${VAR} and {{ into {.
            assert "{{" not in command, name
            assert "${WORKSPACE}" in command or "xci-cn sandbox" in command or "xci-cn run" in command, name
            for marker in ("{WORKSPACE}", "{XCI_CN_SANDBOX}", "{XCI_CN_STAGES}"):
                assert command.count(marker) == command.count("$" + marker), (name, marker)
            subprocess.run(["bash", "-n"], input=command, text=True, check=True)  # parses


def test_daily_loop_phases_and_thresholds(jobs: dict[str, ET.Element]) -> None:
    job = jobs["xci-cn-k8-nosdn-nofeature-intel-pod17-daily-kali"]
    assert job.findtext("triggers/hudson.triggers.TimerTrigger/spec") == "H H(0-5) * * 0"
    assert job.findtext("assignedNode") == "intel-pod17"
    triggered = []
    for config in job.iter("hudson.plugins.parameterizedtrigger.BlockableBuildTriggerConfig"):
        block = config.find("block")
        thresholds = tuple(block.findtext(f"{t}/name") if block.find(t) is not None else "never"
                           for t in ("buildStepFailureThreshold", "unstableThreshold", "failureThreshold"))
        triggered.append((config.findtext("projects"), thresholds))
        assert config.findtext("projects") in jobs
    prefix = "xci-cn-k8-nosdn-nofeature-intel-pod17"
    assert triggered == [
        (f"{prefix}-deploy-daily-kali", ("FAILURE", "UNSTABLE", "FAILURE")),
        (f"{prefix}-verify-daily-kali", ("FAILURE", "UNSTABLE", "FAILURE")),
        (f"{prefix}-functest-daily-kali", ("never", "never", "never")),
        (f"{prefix}-yardstick-daily-kali", ("never", "never", "never")),
    ]
    for phase, stages, optional in [("deploy", "provision,deploy", "false"), ("verify", "verify", "true"),
                                    ("functest", "functest", "true"), ("yardstick", "yardstick", "true")]:
        phase_job = jobs[f"{prefix}-{phase}-daily-kali"]
        defaults = parameter_defaults(phase_job)
        assert (defaults["XCI_CN_STAGES"], defaults["XCI_CN_PHASE_OPTIONAL"]) == (stages, optional)
        assert (defaults["DEPLOY_SCENARIO"], defaults["XCI_CN_SANDBOX"]) == \
            ("k8-nosdn-nofeature", "xci-cn-daily")
        assert phase_job.findtext("assignedNode") == "intel-pod17"


# -- the shell glue, run with bash ----------------------------------------------------
def recording_xci_cn(directory: Path, exit_code: int = 0, dry_run_error: str = "") -> Path:
    """An `xci-cn` on PATH that records its arguments (the runner itself is
    tested elsewhere; here only what the job passes it matters)."""
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    script = bin_dir / "xci-cn"
    script.write_text(f"""#!/bin/bash
echo "$*" >> "{directory}/calls"
case "$*" in *--dry-run*) [ -n "{dry_run_error}" ] && {{ echo "{dry_run_error}" >&2; exit 2; }};; esac
exit {exit_code}
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def run_builder(command: str, workspace: Path, bin_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {"PATH": f"{bin_dir}:/usr/bin:/bin", "WORKSPACE": str(workspace), "HOME": str(workspace),
            "BUILD_URL": "https://jenkins.example/job/xci-cn-merge/7/", **env}
    return subprocess.run(["bash", "-c", command], cwd=workspace, env=full, capture_output=True, text=True,
                          timeout=60)


PROPERTIES = ("INSTALLER_TYPE=kubespray\nDEPLOY_SCENARIO=k8-nosdn-nofeature\nXCI_FLAVOR=noha\n"
              "SCENARIO_SHA=0123abcd\nPROJECT_NAME=clover\nSKIP_VERIFY={skip}\n")


@pytest.mark.parametrize("skip", ["false", "true"])
def test_run_builder_takes_the_detected_values_and_honours_skip_verify(jobs: dict[str, ET.Element],
                                                                      tmp_path: Path, skip: str) -> None:
    run = builders(jobs["clover-xci-cn-verify-master"])[3].findtext("command")
    (tmp_path / "scenario.properties").write_text(PROPERTIES.format(skip=skip))
    bin_dir = recording_xci_cn(tmp_path)
    # An empty job parameter in the environment must not shadow the detection.
    proc = run_builder(run, tmp_path, bin_dir, DEPLOY_SCENARIO="", XCI_FLAVOR="")
    assert proc.returncode == 0, proc.stderr
    if skip == "true":
        assert not (tmp_path / "calls").exists()
        assert "topic skip-verify: verify pipeline not run" in proc.stdout
    else:
        assert (tmp_path / "calls").read_text() == ("run --scenario k8-nosdn-nofeature --flavor noha "
                                                    "--installer kubespray --results-dir results\n")


def test_run_builder_fails_the_build_when_the_run_fails(jobs: dict[str, ET.Element], tmp_path: Path) -> None:
    run = builders(jobs["xci-cn-xci-cn-merge-master"])[3].findtext("command")
    (tmp_path / "scenario.properties").write_text(PROPERTIES.format(skip="false"))
    assert run_builder(run, tmp_path, recording_xci_cn(tmp_path, exit_code=1)).returncode == 1


def test_promote_builder_adds_promoted_by_and_on(jobs: dict[str, ET.Element], tmp_path: Path) -> None:
    promote = builders(jobs["clover-xci-cn-merge-lakelse"])[4].findtext("command")
    (tmp_path / "scenario.properties").write_text(PROPERTIES.format(skip="false"))
    proc = run_builder(promote, tmp_path, recording_xci_cn(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "results" / "promotion" / "k8-nosdn-nofeature.properties").read_text().splitlines()
    assert lines[:5] == PROPERTIES.format(skip="false").splitlines()[:5]
    assert lines[5] == "PROMOTED_BY=https://jenkins.example/job/xci-cn-merge/7/"
    assert lines[6].startswith("PROMOTED_ON=20") and lines[6].endswith("Z") and len(lines) == 7


@pytest.mark.parametrize(("optional", "dry_run_error", "called", "code"), [
    ("true", "xci-cn: --stages: unknown stage(s) functest (scenario has provision)", False, 0),
    ("true", "", True, 0),
    ("false", "xci-cn: --stages: unknown stage(s) provision", True, 0),
    ("true", "xci-cn: unknown scenario 'nope'", True, 0),
])
def test_phase_builder_skips_only_an_optional_phase_the_scenario_lacks(
        jobs: dict[str, ET.Element], tmp_path: Path, optional: str, dry_run_error: str, called: bool,
        code: int) -> None:
    phase = builders(jobs["xci-cn-k8-nosdn-istio-lf-pod4-functest-daily-master"])[1].findtext("command")
    bin_dir = recording_xci_cn(tmp_path, dry_run_error=dry_run_error)
    proc = run_builder(phase, tmp_path, bin_dir, XCI_CN_STAGES="functest", XCI_CN_PHASE_OPTIONAL=optional,
                       DEPLOY_SCENARIO="k8-nosdn-istio")
    assert proc.returncode == code, proc.stderr
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    assert ("run --stages functest --results-dir results" in calls) == called
    if not called:
        assert "phase functest: scenario k8-nosdn-istio has no stage(s) functest; skipped" in proc.stdout


# -- xci-cn jobs render / test ----------------------------------------------------------
def test_jobs_test_and_render_commands(tmp_path: Path, tree: Rendered) -> None:
    proc = cli("jobs", "test")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{len(tree.jobs)} jobs rendered and checked in ")
    listed = cli("jobs", "render", "*-verify-master")
    assert listed.returncode == 0
    assert listed.stdout.splitlines() == sorted(n for n in tree.names() if n.endswith("-verify-master"))
    out = tmp_path / "out"
    written = cli("jobs", "render", "-o", str(out), "clover-*")
    assert written.returncode == 0 and written.stdout == f"8 jobs written to {out}\n"
    assert (out / "clover-xci-cn-verify-master" / "config.xml").read_text() == \
        next(j.xml for j in tree.jobs if j.name == "clover-xci-cn-verify-master")


@pytest.mark.parametrize(("text", "error"), [
    ("- job:\n    name: j\n    publisher: []\n    builders:\n      - shell: 'true'\n",
     "{path}:3:5: job 'j': unknown section 'publisher' (JJB would drop it)"),
    ("- job-template:\n    name: 't-{x}'\n    builders:\n      - no-such-macro\n- project:\n    name: p\n"
     "    x: 1\n    jobs: ['t-{x}']\n",
     "{path}:1:3: In job template 't-{x}': Unknown entry point or macro 'no-such-macro' for "
     "component type: 'builder'."),
    ("- job-template:\n    name: 't-{x}'\n    builders:\n      - shell: 'echo ${WORKSPACE}'\n- project:\n"
     "    name: p\n    x: 1\n    jobs: ['t-{x}']\n",
     "{path}:4:17: In job template 't-{x}': While formatting string 'echo ${WORKSPACE}': "
     "Missing parameter: 'WORKSPACE'"),
    ("- job:\n    name: [unclosed\n", "{path}:3:1: expected ',' or ']', but got '<stream end>'"),
    ("- job:\n    name: j\n", "job 'j': no builders (a misspelled 'builders:' section?)"),
])
def test_jobs_test_reports_each_problem_on_one_line(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(text)
    proc = cli("jobs", "test", "--jjb", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == "xci-cn: " + error.replace("{path}", str(path)), proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_does_not_import_jenkins_or_jjb() -> None:
    code = ("import sys; from click.testing import CliRunner; from xci_cn.cli import main; "
            "r = CliRunner().invoke(main, ['jobs', '--help']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('jenkins', 'jenkins_jobs', 'requests') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
