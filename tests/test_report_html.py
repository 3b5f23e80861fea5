"""report.html: rendered by real runs of ``xci-cn run`` and by ``xci-cn
report``, then opened in a real headless Chromium (tests/browser.py) whose
DOM is inspected — the timeline's rows and bars, the canary charts' columns
and points, where they are drawn — and screenshotted into the test's tmp dir.

There is no cluster in these tests, so the pipelines are ``shell`` stages:
one that passes, and one where a stage fails after retries and the stage
after it is skipped. A failed canary (analysis that breaks its thresholds,
then a rollback) comes from a hand-written summary.json
(tests/corpus/reports/canary-rollback.summary.json) rendered with
``xci-cn report``, which is a real input of that command.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import signal
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.browser import Browser
from tests.helpers import SLOW, cli, start_run, wait_for_line, write_scenario
from xci_cn.report.charts import nice_step, seconds_label
from xci_cn.report.html import render_html
from xci_cn.secrets import Redactor

CORPUS = Path(__file__).parent / "corpus" / "reports"
CHANGE = {"GERRIT_PROJECT": "releng-xci", "GERRIT_CHANGE_NUMBER": "71234", "GERRIT_PATCHSET_NUMBER": "3",
          "GERRIT_REFSPEC": "refs/changes/34/71234/3",
          "BUILD_URL": "https://build.opnfv.org/ci/job/xci-cn-verify/412/"}

PASSING = """name: green
installer: sandbox
flavors: [mini]
stages:
  - {name: prepare, type: shell, with: {command: "sleep 0.2"}}
  - {name: build, type: shell, needs: [prepare], with: {command: "sleep 0.4"}}
  - {name: lint, type: shell, needs: [prepare], with: {command: "sleep 0.1"}}
  - {name: collect-logs, type: shell, needs: [build, lint], always: true, with: {command: "true"}}
"""

# build fails three times (two retries); deploy, which needs it, is skipped.
# The command, and so the error message, carries markup that must stay text.
FAILING = """name: red
installer: sandbox
flavors: [mini]
stages:
  - {name: prepare, type: shell, with: {command: "sleep 0.2"}}
  - name: build
    type: shell
    needs: [prepare]
    retries: 2
    with: {command: "sleep 0.1; test '<b>bold</b>' = plain"}
  - {name: deploy, type: shell, needs: [build], with: {command: "true"}}
  - {name: collect-logs, type: shell, needs: [deploy], always: true, with: {command: "true"}}
"""

# Which chart elements are drawn: the visible rendering only (report.html has
# a wide and a narrow one of each chart and CSS shows one).
VISIBLE = "const visible = (sel) => [...document.querySelectorAll(sel)]" \
          ".filter(e => e.getBoundingClientRect().width > 0);"
TIMELINE_JS = VISIBLE + """
const svgs = visible('svg.timeline');
return {count: svgs.length, rows: [...svgs[0].querySelectorAll('g.stage')].map(g => ({
  stage: g.dataset.stage, status: g.dataset.status,
  marker: (g.querySelector('text.marker') || {}).textContent || null,
  bars: [...g.querySelectorAll('rect.bar')].map(r => {
    const b = r.getBoundingClientRect();
    return {x: b.x, w: b.width, h: b.height, status: r.dataset.status, attempt: +r.dataset.attempt};
  })}))};
"""
CANARY_JS = VISIBLE + """
const box = (e) => { const b = e.getBoundingClientRect(); return {x: b.x, y: b.y, w: b.width, h: b.height}; };
const weights = visible('svg.weights');
return {
  weightCharts: weights.length,
  steps: [...weights[0].querySelectorAll('g.step')].map(g => ({
    action: g.dataset.action,
    rollbackMark: !!g.querySelector('rect.rollback-mark'),
    verdict: (g.querySelector('text.verdict') || {}).textContent || null,
    shares: [...g.querySelectorAll('rect.weight')].map(r => ({version: r.dataset.version,
                                                             percent: +r.dataset.percent, ...box(r)}))})),
  metrics: visible('svg.metric').map(s => ({
    name: s.dataset.metric, version: s.dataset.version,
    threshold: s.querySelector('polyline.threshold') ? box(s.querySelector('polyline.threshold')) : null,
    points: [...s.querySelectorAll('circle.point')].map(c => ({passed: c.dataset.passed,
      cy: c.getBoundingClientRect().y + c.getBoundingClientRect().height / 2}))})),
};
"""
PAGE_JS = """
return {
  title: document.title,
  header: document.querySelector('header').innerText,
  stageRows: [...document.querySelectorAll('table.stages tbody tr')].map(r => r.dataset.stage),
  logLinks: [...document.querySelectorAll('a.log')].map(a => a.href),
  problems: [...document.querySelectorAll('ul.problems li')].map(li => li.innerText),
  checks: [...document.querySelectorAll('table.checks tbody tr')].map(r => r.className),
  canaries: document.querySelectorAll('section.canary').length,
  foreign: document.querySelectorAll('script, img, iframe, object, embed, link, [style]').length,
  resources: performance.getEntriesByType('resource').length,
  overflow: document.documentElement.scrollWidth - window.innerWidth,
};
"""


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """One Chromium for the module (a fresh profile); every test sets its viewport."""
    session = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield session
    finally:
        leftover = session.quit()
        assert leftover == [], f"processes outlived the browser and were killed: {leftover}"


def _look(chromium: Browser, report: Path, shots: Path, width: int) -> dict[str, Any]:
    """Open ``report`` at ``width``, screenshot it, return what the page shows."""
    chromium.viewport(width)
    chromium.open(report)
    chromium.screenshot(shots / f"{report.parent.name}-{width}.png")
    page = chromium.js(PAGE_JS)
    assert page["foreign"] == 0 and page["resources"] == 0, page  # self-contained: nothing fetched
    assert page["overflow"] <= 0, f"page wider than a {width}px screen by {page['overflow']}px"
    return page


def _run(tmp_path: Path, text: str, results: str) -> Path:
    write_scenario(tmp_path, text, f"{results}.yaml")
    proc = cli("run", "--scenario", f"{results}.yaml", "--results-dir", results, "--retry-backoff", "0.2",
               cwd=tmp_path, env=CHANGE)
    assert proc.returncode in (0, 1), proc.stderr
    report = tmp_path / results / "report.html"
    assert report.is_file(), proc.stdout
    return report


# -- real pipelines in the browser ----------------------------------------------------
@pytest.mark.parametrize("width", [1200, 390])
def test_passing_pipeline(tmp_path: Path, chromium: Browser, width: int) -> None:
    report = _run(tmp_path, PASSING, "green")
    page = _look(chromium, report, tmp_path, width)
    assert page["title"].startswith("PASSED")
    for text in ("green", "mini", "sandbox", "releng-xci", "71234", "refs/changes/34/71234/3",
                 "https://build.opnfv.org/ci/job/xci-cn-verify/412/"):
        assert text in page["header"]
    assert page["stageRows"] == ["prepare", "build", "lint", "collect-logs"]
    assert page["problems"] == [] and page["canaries"] == 0
    linked = sorted(Path(href.removeprefix("file://")).name for href in page["logLinks"])
    assert linked == ["build.log", "collect-logs.log", "lint.log", "prepare.log"]
    assert all(Path(href.removeprefix("file://")).is_file() for href in page["logLinks"])

    timeline = chromium.js(TIMELINE_JS)
    assert timeline["count"] == 1
    rows = {row["stage"]: row for row in timeline["rows"]}
    assert list(rows) == ["prepare", "build", "lint", "collect-logs"]
    for row in rows.values():
        assert row["status"] == "passed" and len(row["bars"]) == 1
        assert row["bars"][0]["w"] > 0 and row["bars"][0]["h"] > 0
    # The DAG in time: build and lint start after prepare; collect-logs after build.
    bar = {name: row["bars"][0] for name, row in rows.items()}
    assert bar["build"]["x"] >= bar["prepare"]["x"] + bar["prepare"]["w"] - 1
    assert bar["lint"]["x"] >= bar["prepare"]["x"] + bar["prepare"]["w"] - 1
    assert bar["build"]["w"] > bar["lint"]["w"]  # 0.4s against 0.1s
    assert bar["collect-logs"]["x"] >= bar["build"]["x"] + bar["build"]["w"] - 1


@pytest.mark.parametrize("width", [1200, 390])
def test_pipeline_with_retries_and_a_skipped_stage(tmp_path: Path, chromium: Browser, width: int) -> None:
    report = _run(tmp_path, FAILING, "red")
    page = _look(chromium, report, tmp_path, width)
    assert page["title"].startswith("FAILED")
    assert page["problems"] == [
        "stage build failed (after 3 attempts): command exited with status 1: "
        "sleep 0.1; test '<b>bold</b>' = plain"]
    # No log for the stage that never ran.
    assert sorted(Path(h).name for h in page["logLinks"]) == ["build.log", "collect-logs.log", "prepare.log"]

    rows = {row["stage"]: row for row in chromium.js(TIMELINE_JS)["rows"]}
    assert [r["status"] for r in rows.values()] == ["passed", "failed", "skipped", "passed"]
    attempts = rows["build"]["bars"]
    assert [b["attempt"] for b in attempts] == [1, 2, 3]
    assert all(b["status"] == "failed" and b["w"] > 0 for b in attempts)
    # Retries are visible: each attempt starts after the previous one ended.
    for before, after in zip(attempts, attempts[1:], strict=False):
        assert after["x"] > before["x"] + before["w"]
    assert rows["deploy"]["bars"] == [] and rows["deploy"]["marker"] == "skipped"
    assert len(rows["collect-logs"]["bars"]) == 1


@pytest.mark.parametrize("width", [1200, 390])
def test_failed_canary_from_a_hand_written_summary(tmp_path: Path, chromium: Browser, width: int) -> None:
    results = tmp_path / "canary"
    (results / "logs").mkdir(parents=True)
    shutil.copy(CORPUS / "canary-rollback.summary.json", results / "summary.json")
    for stage in ("provision", "deploy-sdc", "collect-logs", "teardown"):
        (results / "logs" / f"{stage}.log").write_text("log\n")
    proc = cli("report", str(results))
    assert proc.returncode == 0 and proc.stdout.strip() == str(results / "report.html"), proc.stderr
    page = _look(chromium, results / "report.html", tmp_path, width)
    assert page["title"].startswith("FAILED") and page["canaries"] == 1
    assert "71234" in page["header"] and "refs/changes/34/71234/3" in page["header"]
    # Failures first: the failed check leads the table of six.
    assert page["checks"][0] == "check failed" and page["checks"][1:] == ["check passed"] * 5

    rows = chromium.js(TIMELINE_JS)["rows"]
    assert [len(r["bars"]) for r in rows] == [2, 1, 0, 0, 1, 1]  # provision retried once

    canary = chromium.js(CANARY_JS)
    assert canary["weightCharts"] == 1
    steps = canary["steps"]
    assert [s["action"] for s in steps] == ["shift", "shift", "shift", "rollback"]
    assert [s["rollbackMark"] for s in steps] == [False, False, False, True]
    assert [s["verdict"] for s in steps] == ["Successful", "Successful", "Failed", None]
    assert [[(w["version"], w["percent"]) for w in s["shares"]] for s in steps] == [
        [("v1", 90), ("v2", 10)], [("v1", 75), ("v2", 25)], [("v1", 50), ("v2", 50)], [("v1", 100)]]
    # Drawn to scale: every column is the same full height, split by weight.
    full = sum(w["h"] for w in steps[3]["shares"])
    for step in steps:
        assert sum(w["h"] for w in step["shares"]) == pytest.approx(full, abs=1)
        for share in step["shares"]:
            assert share["h"] == pytest.approx(full * share["percent"] / 100, abs=1)

    metrics = {(m["name"], m["version"]): m for m in canary["metrics"]}
    assert set(metrics) == {("request-success-rate", "v2"), ("latency-p99-ms", "v2"),
                            ("request-success-rate", "v1")}
    assert [p["passed"] for p in metrics["request-success-rate", "v2"]["points"]] == ["true", "true", "false"]
    assert [p["passed"] for p in metrics["latency-p99-ms", "v2"]["points"]] == ["true", "true", "false"]
    assert [p["passed"] for p in metrics["request-success-rate", "v1"]["points"]] == ["true"] * 3
    # The failing points sit on the wrong side of the (flat) threshold line.
    rate = metrics["request-success-rate", "v2"]
    assert rate["points"][0]["cy"] < rate["threshold"]["y"] < rate["points"][2]["cy"]  # >= 0.99: 0.93 below
    latency = metrics["latency-p99-ms", "v2"]
    assert latency["points"][2]["cy"] < latency["threshold"]["y"] < latency["points"][0]["cy"]  # <= 300


# What Jenkins sends with archived artifacts unless an admin relaxes it
# (hudson.model.DirectoryBrowserSupport.CSP): no inline CSS, no scripts.
JENKINS_CSP = "sandbox; default-src 'none'; img-src 'self'; style-src 'self';"


class _JenkinsLikeHandler(http.server.SimpleHTTPRequestHandler):
    def end_headers(self) -> None:
        self.send_header("Content-Security-Policy", JENKINS_CSP)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: pytest would show each request


def test_charts_still_drawn_when_served_as_jenkins_serves_artifacts(tmp_path: Path,
                                                                     chromium: Browser) -> None:
    results = tmp_path / "jenkins"
    results.mkdir()
    shutil.copy(CORPUS / "canary-rollback.summary.json", results / "summary.json")
    assert cli("report", str(results)).returncode == 0
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_JenkinsLikeHandler, directory=str(results)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        chromium.viewport(1200)
        chromium.driver.get(f"http://127.0.0.1:{server.server_address[1]}/report.html")
        chromium.screenshot(tmp_path / "jenkins-csp-1200.png")
        # The stylesheet really is blocked (sections lose their border)...
        border = chromium.js("return getComputedStyle(document.querySelector('section')).borderTopWidth")
        assert border == "0px"
        # ...and yet one rendering of each chart is drawn, with its bars and points.
        timeline = chromium.js(TIMELINE_JS)
        assert timeline["count"] == 1 and [len(r["bars"]) for r in timeline["rows"]] == [2, 1, 0, 0, 1, 1]
        assert all(b["w"] > 0 for r in timeline["rows"] for b in r["bars"])
        canary = chromium.js(CANARY_JS)
        assert canary["weightCharts"] == 1 and len(canary["steps"]) == 4 and len(canary["metrics"]) == 3
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_untrusted_text_stays_text_in_the_browser(tmp_path: Path, chromium: Browser) -> None:
    summary = json.loads((CORPUS / "canary-rollback.summary.json").read_text())
    attack = '"><script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
    summary["inputs"]["jenkins"]["BUILD_URL"] = "javascript:window.pwned=3"
    deploy = summary["stages"][1]
    deploy["error"] = attack
    deploy["checks"][2]["message"] = attack
    deploy["outputs"]["steps"][2]["analysis"]["metrics"][0]["name"] = attack
    deploy["outputs"]["steps"][3]["reason"] = attack
    results = tmp_path / "hostile"
    results.mkdir()
    (results / "summary.json").write_text(json.dumps(summary))
    assert cli("report", str(results)).returncode == 0
    chromium.viewport(1200)
    chromium.open(results / "report.html")
    assert chromium.js("return window.pwned === undefined")
    assert chromium.js("return document.querySelectorAll('script, img').length") == 0
    assert chromium.js("return document.querySelectorAll('header a').length") == 0  # javascript: is no link
    assert attack in chromium.js("return document.querySelector('ul.problems').innerText")


# -- the page without a browser -----------------------------------------------------
def test_report_command_rerenders_the_page_a_run_wrote(tmp_path: Path) -> None:
    report = _run(tmp_path, FAILING, "red")
    written = report.read_text()
    report.unlink()
    assert cli("report", str(report.parent)).returncode == 0
    assert report.read_text() == written


def test_report_is_written_after_an_abort(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    proc = start_run(tmp_path, SLOW.format(log=log, sleep=300))
    wait_for_line(log, "long")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 143
    page = (tmp_path / "R" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<title>INTERRUPTED" in page
    assert 'data-stage="long" data-status="cancelled"' in page


@pytest.mark.parametrize("content,message", [
    (None, "summary.json: no such file (a results directory of 'xci-cn run' has one)"),
    ("{not json", "summary.json:1:2: not JSON: Expecting property name enclosed in double quotes"),
    ('{"stages": 3}', "summary.json: stages: input should be a valid list"),
])
def test_report_command_refuses_what_is_not_a_summary(tmp_path: Path, content: str | None,
                                                       message: str) -> None:
    if content is not None:
        (tmp_path / "summary.json").write_text(content)
    proc = cli("report", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr == f"xci-cn: {tmp_path}/{message}\n"
    assert not (tmp_path / "report.html").exists()


def test_secrets_are_redacted_everywhere_in_the_page() -> None:
    summary = json.loads((CORPUS / "canary-rollback.summary.json").read_text())
    secret = "s3cr3t-token-value"
    summary["inputs"]["jenkins"]["GERRIT_REFSPEC"] = f"refs/{secret}"
    summary["stages"][1]["error"] = f"login with {secret} refused"
    summary["stages"][1]["checks"][0]["details"] = {secret: secret}
    summary["stages"][1]["outputs"]["steps"][3]["reason"] = secret
    redact = Redactor()
    redact.add(secret)
    page = render_html(summary, redact=redact)
    assert secret not in page
    assert page.count("&lt;redacted&gt;") >= 5


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attributes: set[str] = set()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attributes |= {name for name, _ in attrs}
        self.hrefs += [value or "" for name, value in attrs if name == "href"]


EMITTED = {"html", "head", "meta", "title", "style", "body", "main", "header", "section", "footer", "h1",
           "h2", "h3", "h4", "dl", "dt", "dd", "div", "span", "b", "ul", "li", "a", "p", "table", "thead",
           "tbody", "tr", "th", "td", "details", "summary", "pre", "br", "svg", "g", "rect", "line",
           "polyline", "circle", "text", "i"}

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["<script>x</script>", '"><b onclick=x>', "</svg><svg onload=x>", "&amp;", "javascript:x"])


@settings(max_examples=60, deadline=None)
@given(name=text, error=text, message=text, metric=text, version=text, url=text)
def test_no_text_becomes_markup(name: str, error: str, message: str, metric: str, version: str,
                                url: str) -> None:
    summary = json.loads((CORPUS / "canary-rollback.summary.json").read_text())
    summary["inputs"]["jenkins"]["BUILD_URL"] = url
    stage = summary["stages"][1]
    stage.update(name=name, error=error)
    stage["checks"][0]["message"] = message
    step = stage["outputs"]["steps"][0]
    step["weights"] = {version: 90, "v2": 10}
    step["analysis"]["metrics"][0].update(name=metric, version=version)
    parser = _Tags()
    parser.feed(render_html(summary, redact=lambda t: t))
    assert parser.tags <= EMITTED
    assert not {a for a in parser.attributes if a.startswith("on")}
    assert all(h.startswith(("https://", "logs/", "summary.json")) for h in parser.hrefs), parser.hrefs


@pytest.mark.parametrize("seconds,label", [(0, "0s"), (0.0042, "4ms"), (0.5, "500ms"), (1.5, "1.5s"),
                                           (12.4, "12s"), (60, "1m"), (95.4, "1m35s"), (3725, "1h02m")])
def test_seconds_label(seconds: float, label: str) -> None:
    assert seconds_label(seconds) == label


@pytest.mark.parametrize("span,step", [(0.224, 0.05), (1, 0.2), (312.5, 100), (0.069, 0.02), (0, 1.0)])
def test_nice_step(span: float, step: float) -> None:
    assert nice_step(span) == pytest.approx(step)
