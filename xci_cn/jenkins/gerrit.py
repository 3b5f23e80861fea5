"""Which scenario does a Gerrit change test? The ``xci-cn scenarios detect``
logic, run by the verify and merge jobs before ``xci-cn run``.

The change is HEAD of a git checkout (what the Gerrit trigger checked out);
its files are those HEAD changes against its first parent. The rule, in
order of precedence (docs/jenkins.rst):

1. Job parameters set by hand (DEPLOY_SCENARIO, XCI_FLAVOR, INSTALLER_TYPE
   non-empty in the environment) win.
2. Commit-message lines ``deploy-scenario: <s>``, ``xci-flavor: <f>``,
   ``installer-type: <i>``.
3. Changed files: ``scenarios/<name>.yaml``, ``scenarios/<name>/…`` and
   ``playbooks/vars/scenarios/<name>.yml`` name the scenario; installer paths
   (``INSTALLER_PATHS``) name an installer, tested with the default scenario
   unless a scenario is named too. Two scenarios (or two installers) named by
   files is an error unless 1. or 2. chooses, known to xci-cn or not; so is a
   touched scenario xci-cn has no file for (a directory ``scenarios/<name>/``
   counts as that scenario, with ``<name>.yaml`` or ``scenario.yaml`` in it).
4. Defaults: k8-nosdn-istio, flavor mini (or the scenario's first flavor when
   it does not support mini), the scenario's own installer.

The topic ``skip-verify`` makes the verify pipeline a recorded no-op success.
Validation happens here, before anything runs: unknown scenario, flavor the
scenario does not support, unknown installer -> InvalidInput naming the
source of the value.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from xci_cn.errors import EnvironmentProblem, InvalidInput
from xci_cn.settings import Settings, current

DEFAULT_SCENARIO = "k8-nosdn-istio"
DEFAULT_FLAVOR = "mini"
SKIP_VERIFY_TOPIC = "skip-verify"

# Paths of an installer's code: a change to them is tested with that installer.
INSTALLER_PATHS: dict[str, tuple[str, ...]] = {
    "sandbox": ("playbooks/sandbox-*.yml", "playbooks/templates/*", "xci_cn/sandbox/*"),
    "kubespray": ("playbooks/kubespray.yml", "playbooks/vars/kubespray*", "xci_cn/installers/kubespray*"),
}
_SCENARIO_PATHS = (
    re.compile(r"^scenarios/(?P<name>[^/]+)\.ya?ml$"),
    re.compile(r"^scenarios/(?P<name>[^/]+)/.+$"),
    re.compile(r"^playbooks/vars/scenarios/(?P<name>[^/]+)\.ya?ml$"),
)
_MESSAGE_KEYS = {"deploy-scenario": "scenario", "xci-flavor": "flavor", "installer-type": "installer"}
_MESSAGE_LINE = re.compile(r"^\s*(deploy-scenario|xci-flavor|installer-type)\s*:\s*(\S*)\s*$",
                           re.IGNORECASE)
_PARAMETERS = {"scenario": "DEPLOY_SCENARIO", "flavor": "XCI_FLAVOR", "installer": "INSTALLER_TYPE"}


@dataclass(frozen=True)
class Change:
    """What detection needs to know about the change under test."""

    sha: str
    message: str
    files: list[str]
    project: str
    topic: str = ""


@dataclass
class Detection:
    """The result: the values for scenario.properties, and why."""

    scenario: str
    flavor: str
    installer: str
    sha: str
    project: str
    skip_verify: bool = False
    reasons: list[str] = field(default_factory=list)

    def properties(self) -> dict[str, str]:
        return {
            "INSTALLER_TYPE": self.installer,
            "DEPLOY_SCENARIO": self.scenario,
            "XCI_FLAVOR": self.flavor,
            "SCENARIO_SHA": self.sha,
            "PROJECT_NAME": self.project,
            "SKIP_VERIFY": "true" if self.skip_verify else "false",
        }


def _git(repo: Path, *args: str) -> str:
    if shutil.which("git") is None:
        raise EnvironmentProblem("git is not installed (needed to read the change)")
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["git failed"])[0]
        raise InvalidInput(f"--repo {repo}: {first}")
    return proc.stdout


def read_change(repo: Path, project: str | None = None, topic: str | None = None) -> Change:
    """HEAD of the checkout at ``repo`` as a change: its sha, message and the
    files it touches against its first parent (all files for a root commit)."""
    if not repo.is_dir():
        raise InvalidInput(f"--repo {repo}: no such directory")
    sha = _git(repo, "rev-parse", "--verify", "HEAD").strip()
    message = _git(repo, "log", "-1", "--format=%B", "HEAD")
    has_parent = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "-q", "HEAD^1"],
                                capture_output=True, stdin=subprocess.DEVNULL).returncode == 0
    if has_parent:
        names = _git(repo, "diff", "--name-only", "--no-renames", "HEAD^1", "HEAD")
    else:
        names = _git(repo, "ls-tree", "-r", "--name-only", "HEAD")
    files = sorted({line for line in names.splitlines() if line})
    return Change(sha=sha, message=message, files=files,
                  project=project or repo.resolve().name, topic=topic or "")


def message_overrides(message: str) -> dict[str, str]:
    """``deploy-scenario:`` / ``xci-flavor:`` / ``installer-type:`` lines of a
    commit message. The same key twice with different values is an error."""
    found: dict[str, str] = {}
    for line in message.splitlines():
        match = _MESSAGE_LINE.fullmatch(line)
        if not match:
            continue
        key, value = match.group(1).lower(), match.group(2)
        if not value:
            raise InvalidInput(f"commit message: '{key}:' has no value")
        field_name = _MESSAGE_KEYS[key]
        if field_name in found and found[field_name] != value:
            raise InvalidInput(f"commit message: {key} is given twice ({found[field_name]}, {value})")
        found[field_name] = value
    return found


def scenarios_in(files: list[str]) -> dict[str, list[str]]:
    """Scenario name -> the changed files that name it."""
    named: dict[str, list[str]] = {}
    for path in files:
        for pattern in _SCENARIO_PATHS:
            match = pattern.fullmatch(path)
            if match:
                named.setdefault(match.group("name"), []).append(path)
                break
    return named


def installers_in(files: list[str]) -> dict[str, list[str]]:
    """Installer -> the changed files of its code."""
    named: dict[str, list[str]] = {}
    for path in files:
        for installer, globs in INSTALLER_PATHS.items():
            if any(fnmatch.fnmatchcase(path, g) for g in globs):
                named.setdefault(installer, []).append(path)
    return named


def known_scenarios(repo: Path) -> dict[str, Path]:
    """Bundled scenarios, and those of the checkout (a change to xci-cn may
    add one); the checkout's file wins."""
    from xci_cn.config.model import bundled_scenarios

    known = dict(bundled_scenarios())
    directory = repo / "scenarios"
    if directory.is_dir():
        for path in sorted(directory.glob("*.y*ml")):
            known[path.stem] = path
        # releng-xci-scenarios keeps a scenario as a directory: scenarios/<name>/
        # with <name>.yaml (or scenario.yaml) in it.
        for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
            for candidate in (sub / f"{sub.name}.yaml", sub / f"{sub.name}.yml", sub / "scenario.yaml"):
                if candidate.is_file():
                    known[sub.name] = candidate
                    break
    return known


def _paths_text(paths: list[str]) -> str:
    return f"{', '.join(paths[:2])}{', …' if len(paths) > 2 else ''}"


def _describe(named: dict[str, list[str]]) -> str:
    return ", ".join(f"{name} ({_paths_text(paths)})" for name, paths in sorted(named.items()))


def detect(change: Change, repo: Path, env: Settings | None = None, pipeline: str = "verify") -> Detection:
    """Apply the rule of this module's docstring to ``change``."""
    from xci_cn.config.model import INSTALLERS, check_flavor, load_scenario_file

    env = env or current()
    known = known_scenarios(repo)
    message = message_overrides(change.message)
    # Job parameters set by hand: DEPLOY_SCENARIO, XCI_FLAVOR, INSTALLER_TYPE.
    manual = {key: str(getattr(env, key)).strip() for key in _PARAMETERS
              if env.given(key) and str(getattr(env, key) or "").strip()}
    chosen = {**message, **manual}
    source = {key: (f"job parameter {_PARAMETERS[key]}" if key in manual else
                    f"commit message {next(k for k, v in _MESSAGE_KEYS.items() if v == key)}")
              for key in chosen}
    reasons = [f"{key} from {source[key]}" for key in sorted(chosen)]

    # A scenario the change removed (none of its touched files is left, and
    # xci-cn does not know it): nothing left to test there.
    by_files = {name: paths for name, paths in scenarios_in(change.files).items()
                if name in known or any((repo / p).exists() for p in paths)}
    installers = installers_in(change.files)
    if "scenario" not in chosen and len(by_files) > 1:
        raise InvalidInput(f"the change touches {len(by_files)} scenarios: {_describe(by_files)}; "
                           "split it, or name one with a 'deploy-scenario:' line in the commit message")
    unknown = {name: paths for name, paths in by_files.items() if name not in known}
    if "scenario" not in chosen and unknown:
        name, paths = next(iter(unknown.items()))
        raise InvalidInput(f"the change touches scenario {name!r} ({_paths_text(paths)}), which "
                           f"xci-cn has no scenario file for (known: {', '.join(sorted(known))}); add "
                           f"scenarios/{name}.yaml, or name one with a 'deploy-scenario:' line in the commit message")
    if "installer" not in chosen and len(installers) > 1:
        raise InvalidInput(f"the change touches {len(installers)} installers: {_describe(installers)}; "
                           "split it, or name one with an 'installer-type:' line in the commit message")

    scenario = chosen.get("scenario")
    if scenario is None and by_files:
        scenario = next(iter(by_files))
        reasons.append(f"scenario from {', '.join(by_files[scenario])}")
    if scenario is None:
        scenario = DEFAULT_SCENARIO
        reasons.append("default scenario")
    if scenario not in known:
        raise InvalidInput(f"{source.get('scenario', 'scenario')}: {scenario!r} is not a known scenario "
                           f"(known: {', '.join(sorted(known))})")
    loaded = load_scenario_file(known[scenario])

    installer = chosen.get("installer")
    if installer is None and installers:
        installer = next(iter(installers))
        reasons.append(f"installer from {', '.join(installers[installer])}")
    installer = installer or loaded.installer
    if installer not in INSTALLERS:
        raise InvalidInput(f"{source.get('installer', 'installer')}: {installer!r} is not an installer "
                           f"(one of {', '.join(INSTALLERS)})")

    flavor = chosen.get("flavor")
    if flavor is None:
        # The default, or the scenario's first flavor when it cannot run mini.
        flavor = DEFAULT_FLAVOR if DEFAULT_FLAVOR in loaded.flavors else loaded.flavors[0]
    try:
        check_flavor(loaded, flavor)
    except InvalidInput as exc:
        raise InvalidInput(f"{source['flavor']}: {exc}") from None

    skip = pipeline == "verify" and change.topic.strip() == SKIP_VERIFY_TOPIC
    if skip:
        reasons.append(f"topic {SKIP_VERIFY_TOPIC}: verify pipeline not run")
    return Detection(scenario=scenario, flavor=flavor, installer=installer, sha=change.sha,
                     project=change.project, skip_verify=skip, reasons=reasons)


def write_detection(detection: Detection, output: Path, results_dir: Path | None = None) -> list[Path]:
    """Write scenario.properties for EnvInject; for a skipped verify also a
    junit.xml in ``results_dir`` recording the skip (what Jenkins shows)."""
    from xci_cn.files import write_text_atomic
    from xci_cn.report.properties import render_properties

    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, render_properties(detection.properties()))
    written = [output]
    if detection.skip_verify and results_dir is not None:
        from xci_cn.report.junit import write_junit

        results_dir.mkdir(parents=True, exist_ok=True)
        summary = {"scenario": detection.scenario, "stages": [
            {"name": "verify", "status": "skipped",
             "error": f"topic {SKIP_VERIFY_TOPIC}: the verify pipeline was not run"}]}
        written.append(write_junit(summary, results_dir / "junit.xml"))
    return written
