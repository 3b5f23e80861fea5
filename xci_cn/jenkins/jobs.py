"""Jobs on a Jenkins, through python-jenkins: push rendered jobs (create or
reconfigure only those that changed), trigger a parameterized build, follow
its console until it ends.

Called by ``xci-cn jobs update|trigger|follow`` (xci_cn.jenkins.commands).
The only module that imports jenkins. Credentials come from the environment
or a config file — never from the command line — and the token is added to
the process redactor before the first request. python-jenkins' and
requests' errors become xci-cn errors here (unreachable -> EnvironmentProblem,
refused credentials or unknown job -> InvalidInput).
"""

from __future__ import annotations

import configparser
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from xci_cn.errors import EXIT_FAILED, EXIT_PASSED, EXIT_SIGINT, EnvironmentProblem, InvalidInput
from xci_cn.jenkins.jjb import RenderedJob
from xci_cn.secrets import redactor
from xci_cn.settings import Settings, current

# Build result -> exit code of `xci-cn jobs trigger|follow`.
RESULT_EXIT_CODES = {"SUCCESS": EXIT_PASSED, "UNSTABLE": EXIT_FAILED, "FAILURE": EXIT_FAILED,
                     "NOT_BUILT": EXIT_FAILED, "ABORTED": EXIT_SIGINT}
DEFAULT_CONF = Path("~/.config/xci-cn/jenkins.ini")


@dataclass(frozen=True)
class JenkinsSettings:
    """Where Jenkins is and who we are. ``token`` never appears in repr."""

    url: str
    user: str | None = None
    token: str | None = field(default=None, repr=False)
    timeout: float = 30.0


def load_settings(url: str | None, conf: Path | None, env: Settings | None = None) -> JenkinsSettings:
    """Precedence: ``--url`` > environment (JENKINS_URL, JENKINS_USER,
    JENKINS_API_TOKEN or JENKINS_PASSWORD) > the config file (``--conf``, env
    XCI_CN_JENKINS_CONF, else ~/.config/xci-cn/jenkins.ini; JJB's
    jenkins_jobs.ini format: ``[jenkins] url= user= password=``)."""
    env = env or current()
    file_values: dict[str, str] = {}
    explicit = conf or env.jenkins_conf
    path = (explicit or DEFAULT_CONF).expanduser()
    if explicit is not None and not path.is_file():
        raise InvalidInput(f"{path}: no such Jenkins config file")
    if path.is_file():
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path, encoding="utf-8")
        except configparser.Error as exc:
            raise InvalidInput(f"{path}: {' '.join(str(exc).split())}") from None
        if not parser.has_section("jenkins"):
            raise InvalidInput(f"{path}: no [jenkins] section")
        file_values = dict(parser.items("jenkins"))
    user = env.jenkins_user or file_values.get("user") or None
    token = (env.jenkins_api_token or env.jenkins_password or file_values.get("password")
             or file_values.get("api_token") or None)
    redactor().add(token)
    resolved = url or env.jenkins_url or file_values.get("url")
    if not resolved:
        raise InvalidInput("no Jenkins URL: --url, $JENKINS_URL or url= in the [jenkins] section of "
                           f"{path}")
    if not resolved.startswith(("http://", "https://")):
        raise InvalidInput(f"Jenkins URL {resolved!r} must start with http:// or https://")
    if bool(user) != bool(token):
        raise InvalidInput("Jenkins credentials need both a user and a token "
                           "($JENKINS_USER and $JENKINS_API_TOKEN, or user= and password=)")
    timeout = float(file_values.get("timeout", 30) or 30)
    return JenkinsSettings(url=resolved.rstrip("/") + "/", user=user, token=token, timeout=timeout)


@contextmanager
def _translated(settings: JenkinsSettings, what: str) -> Iterator[None]:
    """python-jenkins / requests errors -> xci-cn errors, once, here."""
    import jenkins
    import requests

    try:
        yield
    except jenkins.NotFoundException:
        raise InvalidInput(f"{what}: not found on {settings.url}") from None
    except jenkins.TimeoutException as exc:
        raise EnvironmentProblem(f"Jenkins at {settings.url} timed out ({what}): {exc}") from None
    except jenkins.JenkinsException as exc:
        text = " ".join(str(exc).split())
        if text.endswith("does not exist"):  # python-jenkins' word for a 404 on job or build info
            raise InvalidInput(f"{what}: not found on {settings.url}") from None
        if "[401]" in text or "[403]" in text:
            raise InvalidInput(f"Jenkins at {settings.url} refused the request ({what}): "
                               f"{text.split(': ', 1)[-1][:200]}; check JENKINS_USER / JENKINS_API_TOKEN "
                               "or the config file") from None
        raise EnvironmentProblem(f"Jenkins at {settings.url}: {what}: {text[:300]}") from None
    except requests.ConnectionError:
        raise EnvironmentProblem(f"Jenkins at {settings.url} is unreachable ({what})") from None
    except requests.RequestException as exc:
        raise EnvironmentProblem(f"Jenkins at {settings.url}: {what}: {exc}") from None


def normalized(config_xml: str) -> bytes:
    """config.xml in a form where only meaningful differences remain: Jenkins
    rewrites the declaration, indentation and adds plugin="name@version"
    attributes when it stores a job."""
    root = ET.fromstring(config_xml.encode("utf-8") if isinstance(config_xml, str) else config_xml)
    for element in root.iter():
        element.attrib.pop("plugin", None)
        element.text = (element.text or "").strip() or None
        element.tail = None
    return ET.tostring(root, encoding="utf-8")


@dataclass
class UpdateReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BuildRef:
    job: str
    number: int
    url: str


class JenkinsJobs:
    """A Jenkins seen through python-jenkins (crumb and basic auth handled by
    its session)."""

    def __init__(self, settings: JenkinsSettings):
        import jenkins

        self.settings = settings
        self.server = jenkins.Jenkins(settings.url, username=settings.user, password=settings.token,
                                      timeout=settings.timeout)

    def close(self) -> None:
        """Close the HTTP session (python-jenkins has no call for it)."""
        session = getattr(self.server, "_session", None)
        if session is not None:
            session.close()

    def __enter__(self) -> JenkinsJobs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs ----------------------------------------------------------------------
    def job_names(self) -> set[str]:
        with _translated(self.settings, "listing jobs"):
            return {job["name"] for job in self.server.get_jobs()}

    def update(self, jobs: Sequence[RenderedJob], on_change: Callable[[str, str], None] | None = None) \
            -> UpdateReport:
        """Create missing jobs, reconfigure those whose config differs, leave
        the rest alone (no POST for them)."""
        report = UpdateReport()
        existing = self.job_names()
        for job in jobs:
            if job.name not in existing:
                with _translated(self.settings, f"creating job {job.name}"):
                    self.server.create_job(job.name, job.xml)
                report.created.append(job.name)
                action = "created"
            else:
                with _translated(self.settings, f"reading job {job.name}"):
                    current = self.server.get_job_config(job.name)
                if normalized(current) == normalized(job.xml):
                    report.unchanged.append(job.name)
                    continue
                with _translated(self.settings, f"reconfiguring job {job.name}"):
                    self.server.reconfig_job(job.name, job.xml)
                report.updated.append(job.name)
                action = "updated"
            if on_change:
                on_change(action, job.name)
        return report

    # -- builds --------------------------------------------------------------------
    def trigger(self, job: str, parameters: Mapping[str, str]) -> int:
        """Queue a build; return the queue item number."""
        with _translated(self.settings, f"job {job}"):
            return self.server.build_job(job, dict(parameters) or None)

    def wait_for_build(self, job: str, queue_item: int, poll: float = 1.0,
                       deadline: float | None = None) -> BuildRef | None:
        """The build a queue item became, or None when it was cancelled."""
        while True:
            with _translated(self.settings, f"queue item {queue_item}"):
                item = self.server.get_queue_item(queue_item)
            executable = item.get("executable")
            if executable:
                return BuildRef(job, int(executable["number"]), executable.get("url", ""))
            if item.get("cancelled"):
                return None
            _check_deadline(deadline, f"build of {job} still queued")
            time.sleep(poll)

    def last_build(self, job: str) -> BuildRef:
        with _translated(self.settings, f"job {job}"):
            info = self.server.get_job_info(job)
        last = info.get("lastBuild")
        if not last:
            raise InvalidInput(f"job {job} has no builds on {self.settings.url}")
        return BuildRef(job, int(last["number"]), last.get("url", ""))

    def follow(self, build: BuildRef, on_line: Callable[[str], None], poll: float = 1.0,
               deadline: float | None = None) -> str:
        """Stream the console (progressiveText, from offset X-Text-Size while
        X-More-Data says so) line by line; return the build's result."""
        from urllib.parse import quote

        import requests

        # python-jenkins has no call for the progressive console: same
        # session (auth, crumb), URL built as it builds job URLs (folders too).
        path = "".join(f"job/{quote(part)}/" for part in build.job.split("/"))
        url = f"{self.settings.url}{path}{build.number}/logText/progressiveText"
        offset, pending = 0, ""
        while True:
            with _translated(self.settings, f"build {build.job} #{build.number}"):
                response = self.server.jenkins_request(
                    requests.Request("GET", url, params={"start": offset}))
            text = response.text
            offset = int(response.headers.get("X-Text-Size", offset + len(text.encode("utf-8"))))
            pending += text
            *lines, pending = pending.split("\n")
            for line in lines:
                on_line(line)
            if response.headers.get("X-More-Data", "").lower() != "true":
                break
            _check_deadline(deadline, f"{build.job} #{build.number} still running")
            time.sleep(poll)
        if pending:
            on_line(pending)
        # The console can end a moment before Jenkins records the result.
        while True:
            with _translated(self.settings, f"build {build.job} #{build.number}"):
                info = self.server.get_build_info(build.job, build.number)
            if not info.get("building") and info.get("result"):
                return str(info["result"])
            _check_deadline(deadline, f"{build.job} #{build.number} still running")
            time.sleep(poll)


def _check_deadline(deadline: float | None, what: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise EnvironmentProblem(f"gave up waiting: {what} (--timeout)")


def parse_parameters(pairs: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` options -> a dict; a bad one is an InvalidInput naming it."""
    parameters: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"-p {pair!r}: expected KEY=VALUE")
        parameters[key.strip()] = value
    return parameters


def result_exit_code(result: str | None) -> int:
    """SUCCESS 0, UNSTABLE/FAILURE 1, ABORTED 130 (a cancelled queue item
    counts as aborted)."""
    return RESULT_EXIT_CODES.get(result or "ABORTED", EXIT_FAILED)


__all__ = ["JenkinsJobs", "JenkinsSettings", "UpdateReport", "BuildRef", "load_settings",
           "normalized", "parse_parameters", "result_exit_code"]
