"""`xci-cn scenarios detect` against real git repositories made by the tests:
the change is HEAD, its files name the scenario, the commit message and job
parameters override, and scenario.properties is what EnvInject reads."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from junitparser import JUnitXml, Skipped

from tests.helpers import cli, read_properties
from xci_cn.paths import SCENARIOS_DIR

# Nothing from the developer's shell may steer detection in these tests.
CLEAN_ENV = {"DEPLOY_SCENARIO": "", "XCI_FLAVOR": "", "INSTALLER_TYPE": "", "GERRIT_PROJECT": "",
             "GERRIT_TOPIC": ""}
NOFEATURE = (SCENARIOS_DIR / "k8-nosdn-nofeature.yaml").read_text()
SMALL_SCENARIO = """name: k8-small
installer: sandbox
flavors: [aio]
stages:
  - {name: hello, type: shell, with: {command: "true"}}
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=Dev", "-c", "user.email=dev@example.org",
                           *args], check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, files: dict[str, str | None], message: str = "A change") -> str:
    """Write (or, for None, delete) files and commit them; return the sha."""
    for name, text in files.items():
        path = repo / name
        if text is None:
            git(repo, "rm", "-q", name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        git(repo, "add", name)
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A checkout laid out like xci-cn: its scenarios, installer playbooks, docs."""
    repo = tmp_path / "xci-cn"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "master")
    base = {f"scenarios/{p.name}": p.read_text() for p in SCENARIOS_DIR.glob("*.yaml")}
    base.update({"scenarios/k8-small.yaml": SMALL_SCENARIO, "playbooks/kubespray.yml": "---\n",
                 "playbooks/sandbox-up.yml": "---\n", "docs/index.md": "# docs\n",
                 "README.md": "xci-cn\n"})
    commit(repo, base, "Initial layout")
    return repo


def detect(repo: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return cli("scenarios", "detect", "--repo", str(repo), "--output", "out/scenario.properties", *args,
               cwd=repo.parent, env={**CLEAN_ENV, **(env or {})})


def props(repo: Path) -> dict[str, str]:
    return read_properties(repo.parent / "out" / "scenario.properties")


@pytest.mark.parametrize(("files", "scenario", "installer"), [
    ({"scenarios/k8-nosdn-nofeature.yaml": NOFEATURE + "# edited\n"}, "k8-nosdn-nofeature", "sandbox"),
    ({"scenarios/k8-nosdn-nofeature/README.md": "notes\n"}, "k8-nosdn-nofeature", "sandbox"),
    ({"playbooks/vars/scenarios/k8-small.yml": "x: 1\n"}, "k8-small", "sandbox"),
    ({"playbooks/kubespray.yml": "# edited\n"}, "k8-nosdn-istio", "kubespray"),
    ({"xci_cn/sandbox/cluster.py": "# edited\n"}, "k8-nosdn-istio", "sandbox"),
    ({"scenarios/k8-nosdn-nofeature.yaml": NOFEATURE + "# edited\n", "playbooks/kubespray.yml": "# e\n"},
     "k8-nosdn-nofeature", "kubespray"),
    ({"README.md": "edited\n"}, "k8-nosdn-istio", "sandbox"),
])
def test_changed_files_name_the_scenario_and_installer(repo: Path, files: dict, scenario: str,
                                                       installer: str) -> None:
    sha = commit(repo, files)
    proc = detect(repo, env={"GERRIT_PROJECT": "releng-xci-cn"})
    assert proc.returncode == 0, proc.stderr
    flavor = "aio" if scenario == "k8-small" else "mini"  # k8-small cannot run mini: its first flavor
    assert props(repo) == {"INSTALLER_TYPE": installer, "DEPLOY_SCENARIO": scenario, "XCI_FLAVOR": flavor,
                           "SCENARIO_SHA": sha, "PROJECT_NAME": "releng-xci-cn", "SKIP_VERIFY": "false"}
    assert proc.stdout.startswith(f"scenario {scenario} flavor {flavor} installer {installer} (")


def test_the_properties_file_is_exactly_what_envinject_reads(repo: Path) -> None:
    commit(repo, {"docs/index.md": "more docs\n"})
    assert detect(repo).returncode == 0
    text = (repo.parent / "out" / "scenario.properties").read_text()
    assert [line.split("=")[0] for line in text.splitlines()] == [
        "INSTALLER_TYPE", "DEPLOY_SCENARIO", "XCI_FLAVOR", "SCENARIO_SHA", "PROJECT_NAME", "SKIP_VERIFY"]
    assert props(repo)["PROJECT_NAME"] == "xci-cn"  # no GERRIT_PROJECT: the checkout's name


def test_two_scenarios_touched_is_an_input_error_naming_them(repo: Path) -> None:
    commit(repo, {"scenarios/k8-nosdn-nofeature/notes.md": "a\n", "scenarios/k8-small/notes.md": "b\n"})
    proc = detect(repo)
    assert proc.returncode == 2
    assert proc.stderr == ("xci-cn: the change touches 2 scenarios: k8-nosdn-nofeature "
                           "(scenarios/k8-nosdn-nofeature/notes.md), k8-small (scenarios/k8-small/notes.md); "
                           "split it, or name one with a 'deploy-scenario:' line in the commit message\n")
    assert not (repo.parent / "out").exists()


def test_two_installers_touched_is_an_input_error(repo: Path) -> None:
    commit(repo, {"playbooks/kubespray.yml": "# a\n", "playbooks/sandbox-up.yml": "# b\n"})
    proc = detect(repo)
    assert proc.returncode == 2
    assert "the change touches 2 installers: kubespray (playbooks/kubespray.yml), sandbox " \
           "(playbooks/sandbox-up.yml)" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_commit_message_lines_override_the_files(repo: Path) -> None:
    commit(repo, {"scenarios/k8-nosdn-nofeature/notes.md": "a\n", "scenarios/k8-small/notes.md": "b\n"},
           "Touch two scenarios\n\nBody text.\n\nDeploy-Scenario: k8-nosdn-istio\nxci-flavor:ha\n"
           "installer-type: existing\nChange-Id: I0123\n")
    proc = detect(repo)
    assert proc.returncode == 0, proc.stderr
    got = props(repo)
    assert (got["DEPLOY_SCENARIO"], got["XCI_FLAVOR"], got["INSTALLER_TYPE"]) == \
        ("k8-nosdn-istio", "ha", "existing")
    assert "scenario from commit message deploy-scenario" in proc.stdout


def test_job_parameters_set_by_hand_win_over_the_message(repo: Path) -> None:
    commit(repo, {"README.md": "x\n"}, "Change\n\ndeploy-scenario: k8-small\nxci-flavor: aio\n")
    proc = detect(repo, env={"DEPLOY_SCENARIO": "k8-nosdn-nofeature", "XCI_FLAVOR": "noha"})
    assert proc.returncode == 0, proc.stderr
    assert (props(repo)["DEPLOY_SCENARIO"], props(repo)["XCI_FLAVOR"]) == ("k8-nosdn-nofeature", "noha")


@pytest.mark.parametrize(("message", "env", "error"), [
    ("deploy-scenario: k8-foo", {}, "commit message deploy-scenario: 'k8-foo' is not a known scenario "
                                    "(known: k8-nosdn-istio, k8-nosdn-nofeature, k8-small)"),
    ("installer-type: docker", {}, "commit message installer-type: 'docker' is not an installer "
                                   "(one of sandbox, existing, kubespray)"),
    ("deploy-scenario: k8-small\nxci-flavor: ha", {},
     "commit message xci-flavor: "),
    ("xci-flavor: tiny", {}, "commit message xci-flavor: unknown flavor 'tiny' (one of aio, mini, noha, ha)"),
    ("deploy-scenario: k8-small\ndeploy-scenario: k8-nosdn-istio", {},
     "commit message: deploy-scenario is given twice (k8-small, k8-nosdn-istio)"),
    ("xci-flavor:", {}, "commit message: 'xci-flavor:' has no value"),
    ("plain", {"DEPLOY_SCENARIO": "nope"}, "job parameter DEPLOY_SCENARIO: 'nope' is not a known scenario"),
])
def test_bad_overrides_exit_2_with_one_line_naming_the_source(repo: Path, message: str, env: dict,
                                                              error: str) -> None:
    commit(repo, {"README.md": "y\n"}, f"Subject\n\n{message}\n")
    proc = detect(repo, env=env)
    assert proc.returncode == 2, proc.stdout
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith(f"xci-cn: {error}"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_unsupported_flavor_names_the_scenario_file(repo: Path) -> None:
    commit(repo, {"scenarios/k8-small.yaml": SMALL_SCENARIO + "# edited\n"}, "Edit\n\nxci-flavor: ha\n")
    proc = detect(repo)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("scenario 'k8-small' does not support flavor 'ha' (supported: aio)")
    assert "scenarios/k8-small.yaml" in proc.stderr


def test_skip_verify_topic_records_a_skipped_verify(repo: Path) -> None:
    commit(repo, {"scenarios/k8-small.yaml": SMALL_SCENARIO + "# edited\n"}, "Edit\n\nxci-flavor: aio\n")
    proc = detect(repo, "--results-dir", "R", env={"GERRIT_TOPIC": "skip-verify"})
    assert proc.returncode == 0, proc.stderr
    assert props(repo)["SKIP_VERIFY"] == "true" and props(repo)["DEPLOY_SCENARIO"] == "k8-small"
    assert "the verify pipeline will not run" in proc.stdout
    cases = [case for suite in JUnitXml.fromfile(str(repo.parent / "R" / "junit.xml")) for case in suite]
    assert [case.name for case in cases] == ["verify"]
    assert isinstance(cases[0].result[0], Skipped) and "skip-verify" in cases[0].result[0].message
    # The merge pipeline ignores the topic.
    (repo.parent / "R" / "junit.xml").unlink()
    proc = detect(repo, "--results-dir", "R", "--pipeline", "merge", "--topic", "skip-verify")
    assert proc.returncode == 0 and props(repo)["SKIP_VERIFY"] == "false"
    assert not (repo.parent / "R" / "junit.xml").exists()


def test_a_removed_scenario_names_nothing(repo: Path) -> None:
    commit(repo, {"scenarios/k8-small.yaml": None})
    assert detect(repo).returncode == 0
    assert props(repo)["DEPLOY_SCENARIO"] == "k8-nosdn-istio"


def test_a_merge_commit_is_compared_with_its_first_parent(repo: Path) -> None:
    git(repo, "checkout", "-q", "-b", "topic")
    commit(repo, {"scenarios/k8-nosdn-nofeature/notes.md": "n\n"})
    git(repo, "checkout", "-q", "master")
    commit(repo, {"scenarios/k8-small/notes.md": "on master meanwhile\n"})
    git(repo, "merge", "-q", "--no-ff", "-m", "Merge topic", "topic")
    proc = detect(repo)
    assert proc.returncode == 0, proc.stderr
    assert props(repo)["DEPLOY_SCENARIO"] == "k8-nosdn-nofeature"


def test_a_root_commit_counts_all_its_files(tmp_path: Path) -> None:
    repo = tmp_path / "clover"
    repo.mkdir()
    git(repo, "init", "-q")
    commit(repo, {"samples/sdc.yaml": "kind: List\n", "scenarios/k8-nosdn-nofeature/x.md": "x\n"})
    proc = detect(repo)
    assert proc.returncode == 0, proc.stderr
    assert props(repo)["DEPLOY_SCENARIO"] == "k8-nosdn-nofeature" and props(repo)["PROJECT_NAME"] == "clover"


def test_not_a_checkout_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    proc = detect(tmp_path / "plain")
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"xci-cn: --repo {tmp_path / 'plain'}: fatal: not a git repository")
    assert len(proc.stderr.splitlines()) == 1


@pytest.mark.parametrize("files", [
    {"scenarios/k8-unknown/notes.md": "a\n"},
    {"scenarios/k8-unknown/role/tasks/main.yml": "---\n", "scenarios/k8-unknown/xci_overrides": "x=1\n"},
    {"scenarios/k8-unknown.yaml.orig": "x\n", "playbooks/vars/scenarios/k8-unknown.yml": "x: 1\n"},
])
def test_a_touched_scenario_xci_cn_has_no_file_for_is_an_input_error(repo: Path, files: dict) -> None:
    commit(repo, files)
    proc = detect(repo)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("xci-cn: the change touches scenario 'k8-unknown' (")
    assert "which xci-cn has no scenario file for (known: " in lines[0] and "add scenarios/k8-unknown.yaml" in lines[0]
    assert not (repo.parent / "out").exists()


def test_a_commit_message_line_chooses_despite_an_unknown_touched_scenario(repo: Path) -> None:
    commit(repo, {"scenarios/k8-unknown/notes.md": "a\n"}, "Notes\n\ndeploy-scenario: k8-small\n")
    proc = detect(repo)
    assert proc.returncode == 0, proc.stderr
    assert props(repo)["DEPLOY_SCENARIO"] == "k8-small"


@pytest.mark.parametrize("second", ["scenarios/k8-unknown/notes.md", "scenarios/k8-small.yaml"])
def test_two_touched_scenarios_are_an_error_bundled_or_not(repo: Path, second: str) -> None:
    commit(repo, {"scenarios/k8-other/notes.md": "a\n", second: SMALL_SCENARIO + "# e\n"})
    proc = detect(repo)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("xci-cn: the change touches 2 scenarios: k8-other (scenarios/k8-other/notes.md),")


@pytest.mark.parametrize("inner", ["k8-dir.yaml", "scenario.yaml"])
def test_a_scenario_directory_counts_as_that_scenario(repo: Path, inner: str) -> None:
    text = SMALL_SCENARIO.replace("name: k8-small", "name: k8-dir")
    commit(repo, {f"scenarios/k8-dir/{inner}": text, "scenarios/k8-dir/role/tasks/main.yml": "---\n"})
    commit(repo, {"scenarios/k8-dir/role/tasks/main.yml": "--- # edited\n"})
    proc = detect(repo)
    assert proc.returncode == 0, proc.stderr
    assert props(repo)["DEPLOY_SCENARIO"] == "k8-dir" and props(repo)["XCI_FLAVOR"] == "aio"
