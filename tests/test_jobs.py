"""`xci-cn jobs update|trigger|follow` against tests/jenkins_server.py, an HTTP
server speaking the Jenkins REST endpoints python-jenkins uses, with basic
auth and CSRF crumbs enforced. (A real Jenkins cannot be installed here.)"""

from __future__ import annotations

import socket
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import cli
from tests.jenkins_server import CRUMB_FIELD, FakeJenkins
from xci_cn.errors import InvalidInput
from xci_cn.jenkins.jjb import render
from xci_cn.jenkins.jobs import load_settings, normalized
from xci_cn.paths import JJB_DIR
from xci_cn.settings import Settings, current

GLOB = "xci-cn-xci-cn-*"  # the verify and merge jobs of the xci-cn project: 8 jobs


@pytest.fixture
def jenkins() -> Iterator[FakeJenkins]:
    server = FakeJenkins()
    yield server
    server.stop()


def env_for(server: FakeJenkins, **extra: str) -> dict[str, str]:
    return {"JENKINS_URL": server.url, "JENKINS_USER": server.user, "JENKINS_API_TOKEN": server.token,
            "XCI_CN_JENKINS_CONF": "", "HOME": "/nonexistent", **extra}


def jobs_cli(server: FakeJenkins, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return cli("jobs", *args, env=env_for(server, **env))


def assert_no_secret(server: FakeJenkins, proc: subprocess.CompletedProcess[str]) -> None:
    assert server.token not in proc.stdout and server.token not in proc.stderr


# -- the server is strict, so what passes through it proves auth and crumbs -----------
def test_the_fake_jenkins_refuses_bad_auth_and_missing_crumbs(jenkins: FakeJenkins) -> None:
    good = (jenkins.user, jenkins.token)
    with requests.Session() as session:
        assert session.get(f"{jenkins.url}api/json", timeout=5).status_code == 401
        assert session.get(f"{jenkins.url}api/json", auth=(jenkins.user, "wrong-token"),
                           timeout=5).status_code == 401
        assert session.post(f"{jenkins.url}createItem?name=x", data=b"<project/>", auth=good,
                            timeout=5).status_code == 403
        crumb = session.get(f"{jenkins.url}crumbIssuer/api/json", auth=good, timeout=5).json()
        assert crumb["crumbRequestField"] == CRUMB_FIELD
        # A crumb is bound to its session: without the cookie it is refused.
        assert requests.post(f"{jenkins.url}createItem?name=x", data=b"<project/>", auth=good, timeout=5,
                             headers={CRUMB_FIELD: crumb["crumb"]}).status_code == 403
        assert session.post(f"{jenkins.url}createItem?name=x", data=b"<project/>", auth=good, timeout=5,
                            headers={CRUMB_FIELD: crumb["crumb"]}).status_code == 200
    assert list(jenkins.jobs) == ["x"]


# -- update ------------------------------------------------------------------------------
def as_jenkins_stores_it(config_xml: str) -> str:
    root = ET.fromstring(config_xml.encode("utf-8"))
    for element in root.iter("hudson.tasks.Shell"):
        element.set("plugin", "shell@1.0")
    ET.indent(root, space="    ")
    return "<?xml version='1.1' encoding='UTF-8'?>\n" + ET.tostring(root, encoding="unicode")


def test_update_creates_then_changes_only_what_differs(jenkins: FakeJenkins) -> None:
    expected = {job.name: job.xml for job in render([JJB_DIR], [GLOB]).jobs}
    assert len(expected) == 8

    first = jobs_cli(jenkins, "update", GLOB)
    assert first.returncode == 0, first.stderr
    assert jenkins.jobs == expected
    assert sorted(line.split()[1] for line in first.stdout.splitlines()[:-1]) == sorted(expected)
    assert first.stdout.splitlines()[-1] == f"{jenkins.url}: 8 created, 0 updated, 0 unchanged"
    assert all(r.status != 403 for r in jenkins.log) and jenkins.posts()
    assert_no_secret(jenkins, first)

    # Jenkins stores jobs its own way (declaration, indentation, plugin=
    # attributes): that is no change.
    name = sorted(expected)[0]
    jenkins.jobs[name] = as_jenkins_stores_it(expected[name])
    jenkins.log.clear()
    second = jobs_cli(jenkins, "update", GLOB)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [f"{jenkins.url}: 0 created, 0 updated, 8 unchanged"]
    assert jenkins.posts() == []

    # Someone edited one job by hand: only that one is reconfigured.
    drifted = sorted(expected)[3]
    jenkins.jobs[drifted] = expected[drifted].replace("xci-cn run", "echo skipped")
    jenkins.log.clear()
    third = jobs_cli(jenkins, "update", GLOB)
    assert third.returncode == 0, third.stderr
    assert third.stdout.splitlines() == [f"updated {drifted}",
                                         f"{jenkins.url}: 0 created, 1 updated, 7 unchanged"]
    assert [r.path for r in jenkins.posts()] == [f"/job/{drifted}/config.xml"]
    assert jenkins.jobs[drifted] == expected[drifted]


def test_update_refuses_a_broken_tree_before_touching_jenkins(jenkins: FakeJenkins, tmp_path: Path) -> None:
    tree = tmp_path / "jjb"
    tree.mkdir()
    (tree / "jobs.yaml").write_text("- job:\n    name: lazy\n    builder:\n      - shell: 'true'\n")
    proc = jobs_cli(jenkins, "update", "--jjb", str(tree))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"xci-cn: {tree}/jobs.yaml:3:5: job 'lazy': unknown section 'builder' (JJB would drop it)",
        "        builder:",
        "        ^",
        "xci-cn: job 'lazy': no builders (a misspelled 'builders:' section?)"]
    assert jenkins.log == []


def test_wrong_token_exit_2_one_line_and_the_token_is_never_printed(jenkins: FakeJenkins) -> None:
    wrong = "tok-wrong-0123456789"
    proc = cli("jobs", "update", GLOB, env=env_for(jenkins, JENKINS_API_TOKEN=wrong))
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith(f"xci-cn: Jenkins at {jenkins.url} refused the request (listing jobs)")
    assert wrong not in proc.stdout + proc.stderr and jenkins.jobs == {}


def test_unreachable_jenkins_exit_3() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = cli("jobs", "trigger", "any", env={"JENKINS_URL": f"http://127.0.0.1:{port}/", "JENKINS_USER": "",
                                              "JENKINS_API_TOKEN": "", "XCI_CN_JENKINS_CONF": ""})
    assert proc.returncode == 3
    assert proc.stderr == f"xci-cn: Jenkins at http://127.0.0.1:{port}/ is unreachable (job any)\n"


def test_credentials_are_not_accepted_on_the_command_line(jenkins: FakeJenkins) -> None:
    proc = jobs_cli(jenkins, "update", "--token", jenkins.token)
    assert proc.returncode == 2 and "No such option '--token'" in proc.stderr


# -- settings ------------------------------------------------------------------------
def environment(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> Settings:
    """The settings with exactly ``values`` of the Jenkins client's variables set."""
    for name in ("JENKINS_URL", "JENKINS_USER", "JENKINS_API_TOKEN", "JENKINS_PASSWORD", "XCI_CN_JENKINS_CONF"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return current()


def test_settings_precedence_option_environment_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "jenkins.ini"
    conf.write_text("[jenkins]\nurl=https://file.example/\nuser=file-user\npassword=file-token-123\n")
    from_file = load_settings(None, conf, environment(monkeypatch, {}))
    assert (from_file.url, from_file.user, from_file.token) == \
        ("https://file.example/", "file-user", "file-token-123")
    assert "file-token-123" not in repr(from_file)
    env = environment(monkeypatch, {"JENKINS_URL": "https://env.example", "JENKINS_USER": "env-user",
                                    "JENKINS_API_TOKEN": "env-token-1"})
    from_env = load_settings(None, conf, env)
    assert (from_env.url, from_env.user, from_env.token) == \
        ("https://env.example/", "env-user", "env-token-1")
    assert load_settings("http://option.example", conf, env).url == "http://option.example/"
    assert load_settings(None, None, environment(monkeypatch, {"XCI_CN_JENKINS_CONF": str(conf)})).user \
        == "file-user"


@pytest.mark.parametrize(("conf_text", "env", "error"), [
    (None, {}, "no Jenkins URL: --url, $JENKINS_URL or url="),
    ("[jenkins]\nurl=ftp://x\n", {}, "Jenkins URL 'ftp://x' must start with http:// or https://"),
    ("[jenkins]\nurl=http://x\nuser=u\n", {}, "Jenkins credentials need both a user and a token"),
    ("[other]\nurl=http://x\n", {}, "no [jenkins] section"),
    ("not an ini", {}, "File contains no section headers."),
])
def test_bad_settings_are_input_errors(tmp_path: Path, conf_text: str | None, env: dict, error: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "jenkins.ini"
    if conf_text is not None:
        conf.write_text(conf_text)
    settings = environment(monkeypatch, {**env, "HOME": str(tmp_path)})
    with pytest.raises(InvalidInput) as caught:
        load_settings(None, conf if conf_text is not None else None, settings)
    assert error in str(caught.value)


def test_credentials_from_a_config_file(jenkins: FakeJenkins, tmp_path: Path) -> None:
    conf = tmp_path / "jenkins_jobs.ini"
    conf.write_text(f"[jenkins]\nurl={jenkins.url}\nuser={jenkins.user}\npassword={jenkins.token}\n")
    proc = cli("jobs", "update", "--conf", str(conf), "xci-cn-xci-cn-verify-master",
               env={"JENKINS_URL": "", "JENKINS_USER": "", "JENKINS_API_TOKEN": "",
                    "XCI_CN_JENKINS_CONF": ""})
    assert proc.returncode == 0, proc.stderr
    assert list(jenkins.jobs) == ["xci-cn-xci-cn-verify-master"]


def test_normalized_ignores_only_what_jenkins_rewrites() -> None:
    ours = '<?xml version="1.0" encoding="utf-8"?>\n<project>\n  <a>x</a>\n</project>\n'
    stored = "<?xml version='1.1' encoding='UTF-8'?><project><a plugin=\"p@1\">x</a></project>"
    assert normalized(ours) == normalized(stored)
    assert normalized(ours) != normalized(ours.replace(">x<", ">y<"))


# -- trigger and follow --------------------------------------------------------------
def scripted(jenkins: FakeJenkins, job: str, result: str, lines: list[str]) -> None:
    jenkins.jobs[job] = "<project/>"
    jenkins.scripts[job] = lambda params: ([f"{line}\n" for line in lines], result)


@pytest.mark.parametrize(("result", "code"), [("SUCCESS", 0), ("UNSTABLE", 1), ("FAILURE", 1),
                                              ("ABORTED", 130)])
def test_trigger_follows_the_console_and_exits_with_the_result(jenkins: FakeJenkins, result: str,
                                                               code: int) -> None:
    lines = ["Started by user ci-bot", "+ xci-cn run", "run 1: scenario k8-nosdn-istio",
             f"Finished: {result}"]
    scripted(jenkins, "xci-cn-verify", result, lines)
    proc = jobs_cli(jenkins, "trigger", "xci-cn-verify", "-p", "DEPLOY_SCENARIO=k8-nosdn-nofeature",
                    "-p", "XCI_FLAVOR=aio", "--poll", "0.02")
    assert proc.returncode == code, proc.stderr
    assert proc.stdout.splitlines() == lines
    build = jenkins.builds["xci-cn-verify"][0]
    assert build.parameters == {"DEPLOY_SCENARIO": "k8-nosdn-nofeature", "XCI_FLAVOR": "aio"}
    assert proc.stderr.splitlines()[-1] == f"xci-cn-verify #1 finished: {result}"
    # The console was read progressively: several requests, each from the last offset.
    reads = [r for r in jenkins.log if r.path.endswith("/logText/progressiveText")]
    assert len(reads) == len(lines) and reads[0].query["start"] == "0" and reads[-1].query["start"] != "0"
    assert all(r.status != 403 for r in jenkins.log)


def test_a_build_cancelled_in_the_queue_counts_as_aborted(jenkins: FakeJenkins) -> None:
    scripted(jenkins, "busy", "SUCCESS", ["never runs"])
    jenkins.cancel_in_queue.add("busy")
    proc = jobs_cli(jenkins, "trigger", "busy", "--poll", "0.02")
    assert proc.returncode == 130
    assert proc.stderr.splitlines()[-1] == "busy: the queued build was cancelled"


def test_no_follow_returns_once_queued(jenkins: FakeJenkins) -> None:
    scripted(jenkins, "quick", "FAILURE", ["x"])
    proc = jobs_cli(jenkins, "trigger", "quick", "--no-follow")
    assert proc.returncode == 0 and proc.stderr == "quick: queued (item 1)\n"
    assert "quick" not in jenkins.builds


def test_follow_a_given_or_the_last_build_and_redact_secrets(jenkins: FakeJenkins) -> None:
    scripted(jenkins, "leaky", "FAILURE", ["using token " + jenkins.token, "Finished: FAILURE"])
    assert jobs_cli(jenkins, "trigger", "leaky", "--poll", "0.02").returncode == 1
    jenkins.scripts["leaky"] = lambda params: (["second\n", "Finished: SUCCESS\n"], "SUCCESS")
    assert jobs_cli(jenkins, "trigger", "leaky", "--poll", "0.02").returncode == 0
    last = jobs_cli(jenkins, "follow", "leaky", "--poll", "0.02")
    assert last.returncode == 0 and last.stdout.splitlines() == ["second", "Finished: SUCCESS"]
    first = jobs_cli(jenkins, "follow", "leaky", "1", "--poll", "0.02")
    assert first.returncode == 1
    assert first.stdout.splitlines() == ["using token <redacted>", "Finished: FAILURE"]
    assert_no_secret(jenkins, first)


@pytest.mark.parametrize(("args", "code", "error"), [
    (["trigger", "nope"], 2, "xci-cn: job nope: not found on {url}"),
    (["follow", "nope"], 2, "xci-cn: job nope: not found on {url}"),
    (["trigger", "known", "-p", "NOEQUALS"], 2, "xci-cn: -p 'NOEQUALS': expected KEY=VALUE"),
    (["follow", "known"], 2, "xci-cn: job known has no builds on {url}"),
    (["follow", "known", "7"], 2, "xci-cn: build known #7: not found on {url}"),
])
def test_bad_job_or_parameter_exit_2(jenkins: FakeJenkins, args: list[str], code: int, error: str) -> None:
    jenkins.jobs["known"] = "<project/>"
    proc = jobs_cli(jenkins, *args)
    assert proc.returncode == code
    assert proc.stderr == error.format(url=jenkins.url) + "\n"


def test_follow_gives_up_at_the_timeout_with_exit_3(jenkins: FakeJenkins) -> None:
    scripted(jenkins, "slow", "SUCCESS", [f"line {n}" for n in range(10_000)])
    proc = jobs_cli(jenkins, "trigger", "slow", "--poll", "0.05", "--timeout", "1")
    assert proc.returncode == 3
    assert proc.stderr.splitlines()[-1] == "xci-cn: gave up waiting: slow #1 still running (--timeout)"
