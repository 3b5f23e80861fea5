"""report.html: the page a Jenkins user opens first.

Rendered from summary.json alone (by ``write_results`` at the end of every
run, and by ``xci-cn report RESULTS_DIR``), so a run can be re-rendered
later. The page is self-contained: inline CSS and SVG (``charts.py``), no
scripts, fonts or requests, and a Content-Security-Policy that forbids them,
so it opens the same from Jenkins' artifact archive, a mail attachment or a
laptop without network. Every piece of text is redacted and escaped.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from xci_cn.files import write_text_atomic
from xci_cn.report.charts import (
    NARROW,
    STATUS_COLOURS,
    WIDE,
    counts_svg,
    load_svg,
    metric_series,
    metric_svg,
    number,
    parse_time,
    seconds_label,
    step_label,
    timeline_svg,
    version_colours,
    weights_svg,
)
from xci_cn.secrets import redactor

# The Jenkins/Gerrit variables shown at the top, in the order people read them.
CHANGE_FIELDS = (("Project", "GERRIT_PROJECT"), ("Change", "GERRIT_CHANGE_NUMBER"),
                 ("Patchset", "GERRIT_PATCHSET_NUMBER"), ("Refspec", "GERRIT_REFSPEC"),
                 ("Branch", "GERRIT_BRANCH"), ("Job", "JOB_NAME"), ("Build", "BUILD_NUMBER"),
                 ("Build URL", "BUILD_URL"))
RESULT_FILES = ("summary.json", "junit.xml", "scenario.properties")
BADGE_COLOURS = {**STATUS_COLOURS, "interrupted": STATUS_COLOURS["cancelled"],
                 "rolled-back": STATUS_COLOURS["failed"], "other": "#616161"}

CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #212121;
       background: #fafafa; }
main { max-width: 1100px; margin: 0 auto; padding: 12px; }
h1 { font-size: 1.35em; margin: 8px 0; overflow-wrap: anywhere; }
h2 { font-size: 1.15em; margin: 24px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 1em; margin: 16px 0 6px; }
section, header { background: #fff; border: 1px solid #e0e0e0; border-radius: 6px; padding: 10px 14px;
                  margin-bottom: 14px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 6px 0; }
dl.facts dt { color: #666; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-weight: 600;
         font-size: .85em; white-space: nowrap; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: 4px 8px; border-bottom: 1px solid #eee; }
th { color: #555; font-weight: 600; white-space: nowrap; }
td.message { overflow-wrap: anywhere; min-width: 12em; }
a.log { white-space: nowrap; }
tr.failed td { background: #fff5f5; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #f5f5f5; padding: 6px; margin: 4px 0;
      font-size: 12px; }
svg.chart { width: 100%; height: auto; display: block; }
section > h2:first-child { margin-top: 0; }
.facts-cols { display: flex; flex-wrap: wrap; gap: 0 48px; }
.facts-cols > div { min-width: 0; }
.legend span { display: inline-block; margin-right: 14px; }
.legend svg { margin-right: 4px; vertical-align: -1px; }
ul.problems { margin: 4px 0; padding-left: 20px; }
ul.problems li { overflow-wrap: anywhere; }
.muted { color: #777; }
footer { color: #777; font-size: .85em; margin: 12px 0 24px; }
""" + "".join(f".badge.status-{name} {{ background: {colour}; }}\n"
             for name, colour in BADGE_COLOURS.items()) + """
@media (max-width: 600px) {
  main { padding: 6px; }
  section, header { padding: 8px; }
  .wide { display: none; }
  .narrow[hidden] { display: block; }
  table.cards thead { display: none; }
  table.cards tr { display: block; padding: 6px 2px; border-bottom: 1px solid #ddd; }
  table.cards td { display: block; border: 0; padding: 1px 2px; min-width: 0; }
  table.cards td:empty { display: none; }
  table.cards td[data-label]::before { content: attr(data-label) ": "; color: #777; }
  table.cards td[data-label="Status"]::before, table.cards td[data-label="Verdict"]::before { content: none; }
}
"""


def _responsive(draw: Callable[[int], str]) -> str:
    """A chart drawn twice: wide for screens, narrow for phones (CSS shows
    one), so that its text is never scaled below reading size. The narrow
    one is ``hidden`` so that without the stylesheet (a Jenkins that serves
    artifacts with its default Content-Security-Policy) only one shows."""
    return f'<div class="wide">{draw(WIDE)}</div><div class="narrow" hidden>{draw(NARROW)}</div>'


def _redact_tree(value: Any, redact: Callable[[str], str]) -> Any:
    """Every string in a JSON tree redacted, keys too (a secret can be a key)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)): _redact_tree(v, redact) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_tree(v, redact) for v in value]
    return value


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _badge(status: Any) -> str:
    """The status as a coloured word; its colour comes from a class, not a
    style attribute, so that it is still a readable word without CSS."""
    text = str(status or "unknown").lower()
    slug = text.replace(" ", "-")
    return f'<span class="badge status-{slug if slug in BADGE_COLOURS else "other"}">{_e(text)}</span>'


def _link(url: Any) -> str:
    """A link only for http(s) URLs: a ``javascript:`` BUILD_URL stays text."""
    text = str(url or "")
    if urlsplit(text).scheme.lower() in ("http", "https"):
        return f'<a href="{_e(text)}">{_e(text)}</a>'
    return _e(text)


def _when(text: Any) -> str:
    ts = parse_time(text)
    if ts is None:
        return _e(text or "-")
    return _e(datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))


def _duration(value: Any) -> str:
    seconds = number(value)
    return "-" if seconds is None else _e(seconds_label(seconds))


def _stages(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in summary.get("stages") or [] if isinstance(s, dict)]


def _mapping(value: Any) -> dict[str, Any]:
    """``value`` when it is a mapping, else an empty one (a summary from disk
    may hold anything)."""
    return value if isinstance(value, dict) else {}


def _header(summary: dict[str, Any]) -> str:
    inputs = _mapping(summary.get("inputs"))
    jenkins = _mapping(inputs.get("jenkins"))
    run = [("Scenario", _e(summary.get("scenario"))), ("Flavor", _e(summary.get("flavor"))),
           ("Installer", _e(summary.get("installer"))), ("Distro", _e(inputs.get("distro") or "-")),
           ("Started", _when(summary.get("started"))), ("Duration", _duration(summary.get("duration"))),
           ("Run", _e(summary.get("run_id"))), ("Scenario file", _e(summary.get("scenario_file") or "-"))]
    if summary.get("interrupted_by"):
        run.append(("Interrupted by", f"signal {_e(summary['interrupted_by'])}"))
    change = [(label, _link(jenkins[key]) if key == "BUILD_URL" else _e(jenkins[key]))
              for label, key in CHANGE_FIELDS if jenkins.get(key)]
    facts = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in run)
    change_facts = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in change) \
        or '<dt>Change</dt><dd class="muted">not run by Jenkins for a change</dd>'
    return (f'<header><h1>{_badge(summary.get("result"))} xci-cn run: {_e(summary.get("scenario"))}</h1>'
            f'<div class="facts-cols"><div><h3>Run</h3><dl class="facts run">{facts}</dl></div>'
            f'<div><h3>Change</h3><dl class="facts change">{change_facts}</dl></div></div></header>')


def _problems(stages: list[dict[str, Any]]) -> str:
    """The first thing to read on a red build: what failed and why."""
    items = []
    for stage in stages:
        if stage.get("status") == "failed":
            attempts = stage.get("attempts") or 0
            after = f" (after {attempts} attempts)" if isinstance(attempts, int) and attempts > 1 else ""
            items.append(f"<li>stage <b>{_e(stage.get('name'))}</b> failed{after}: "
                         f"{_e(stage.get('error') or 'no message')}</li>")
        for check in stage.get("checks") or []:
            if isinstance(check, dict) and check.get("passed") is False:
                items.append(f"<li>check <b>{_e(check.get('name'))}</b> of {_e(stage.get('name'))} failed: "
                             f"{_e(check.get('message') or 'no message')}</li>")
    if not items:
        return ""
    return (f'<section class="problems"><h2>What failed</h2><ul class="problems">{"".join(items)}</ul>'
            "</section>")


def _log_link(stage: dict[str, Any], results_dir: Path | None) -> str:
    name = str(stage.get("name", ""))
    relative = f"logs/{name}.log"
    if results_dir is not None:
        exists = (results_dir / relative).is_file()
    else:
        exists = bool(stage.get("history"))
    if not exists or not name or "/" in name:
        return '<span class="muted">-</span>'
    return f'<a class="log" href="logs/{_e(quote(name))}.log">{_e(name)}.log</a>'


def _history(stage: dict[str, Any]) -> str:
    history = [a for a in stage.get("history") or [] if isinstance(a, dict)]
    if len(history) < 2:
        return ""
    rows = "".join(
        f"<li>attempt {_e(a.get('attempt'))}: {_when(a.get('started'))}, {_duration(a.get('duration'))}"
        f"{' — ' + _e(a['error']) if a.get('error') else ' — passed'}</li>" for a in history)
    return f"<details><summary>{len(history)} attempts</summary><ul>{rows}</ul></details>"


# Columns whose text is long and must wrap anywhere (messages, errors).
WRAPPING = {"Error", "Message", "Notes"}


def _table(cls: str, headers: list[str], rows: list[tuple[str, list[str]]]) -> str:
    """A table that is a table on screens and a list of cards on phones: each
    cell carries its column's name (shown by CSS when the header is hidden).
    ``rows`` are (attributes of the ``tr``, cells' HTML)."""
    def td(header: str, html: str) -> str:
        klass = ' class="message"' if header in WRAPPING else ""
        return f'<td data-label="{_e(header)}"{klass}>{html}</td>'

    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(f"<tr {attrs}>" + "".join(td(h, cell) for h, cell in zip(headers, cells, strict=True))
                   + "</tr>" for attrs, cells in rows)
    return (f'<div class="table-wrap"><table class="{cls} cards"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _stage_table(stages: list[dict[str, Any]], results_dir: Path | None) -> str:
    rows = []
    for stage in stages:
        status = str(stage.get("status", ""))
        attempts = stage.get("attempts") or 0
        max_attempts = stage.get("max_attempts") or attempts
        marks = [word for word in ("always", "resumed") if stage.get(word)]
        mark_html = f' <span class="muted">({_e(", ".join(marks))})</span>' if marks else ""
        rows.append((f'class="{_e(status)}" data-stage="{_e(stage.get("name"))}"', [
            _badge(status), f"<b>{_e(stage.get('name'))}</b>{mark_html}", _e(stage.get("type")),
            _duration(stage.get("duration")), f"{_e(attempts)}/{_e(max_attempts)}",
            _e(stage.get("error") or "") + _history(stage), _log_link(stage, results_dir)]))
    return _table("stages", ["Status", "Stage", "Type", "Duration", "Attempts", "Error", "Log"], rows)


def _checks(stages: list[dict[str, Any]]) -> str:
    checks = [(stage, check) for stage in stages for check in stage.get("checks") or []
              if isinstance(check, dict)]
    if not checks:
        return ('<section class="checks"><h2>Checks</h2><p class="muted">No stage reported checks.</p>'
                "</section>")
    # Failures first; otherwise the order the stages reported them in.
    checks.sort(key=lambda pair: pair[1].get("passed") is not False)
    failed = sum(check.get("passed") is False for _, check in checks)
    rows = []
    for stage, check in checks:
        passed = check.get("passed")
        verdict = "skipped" if check.get("skipped") else \
            "passed" if passed is True else "failed" if passed is False else "unknown"
        details = check.get("details")
        details_html = ""
        if details:
            text = json.dumps(details, indent=2, sort_keys=True, default=str)
            details_html = f"<details><summary>details</summary><pre>{_e(text)}</pre></details>"
        rows.append((f'class="check {verdict}"', [
            _badge(verdict), _e(stage.get("name")), _e(check.get("name")),
            _e(check.get("message") or "") + details_html]))
    return (f'<section class="checks"><h2>Checks: {failed} failed of {len(checks)}</h2>'
            + _table("checks", ["Verdict", "Stage", "Check", "Message"], rows) + "</section>")


def _counts_chart(counts: dict[str, Any], width: int) -> str:
    return counts_svg(counts, width)


def _cnf(stage: dict[str, Any]) -> str:
    """The cnf check's verdicts: per category passed/failed/skipped drawn as
    a bar, the score, and each rule's status."""
    outputs = _mapping(stage.get("outputs"))
    sections = []
    for result in outputs.get("cnf") or []:
        if not isinstance(result, dict) or not isinstance(result.get("categories"), dict):
            continue
        bars = "".join(f"<h3>{_e(name.capitalize())}: {_e(_percent(counts.get('score')))}</h3>"
                       + _responsive(functools.partial(_counts_chart, counts))
                       for name, counts in result["categories"].items() if isinstance(counts, dict))
        rows = [(f'class="{_e(rule.get("status"))}"', [
            _badge(rule.get("status")), _e(rule.get("rule")), _e(rule.get("category")),
            "runtime" if rule.get("runtime") else "static", _e(rule.get("findings")),
            _duration(rule.get("seconds")) if rule.get("seconds") is not None else "", _e(rule.get("summary"))])
            for rule in result.get("rules") or [] if isinstance(rule, dict)]
        sections.append(
            f'<section class="cnf" data-stage="{_e(stage.get("name"))}"><h2>CNF checks: {_e(stage.get("name"))} — '
            f"score {_e(_percent(result.get('score')))}</h2>{bars}"
            + _table("cnf-rules", ["Status", "Rule", "Category", "Kind", "Findings", "Took", "Passes when"], rows)
            + "</section>")
    return "".join(sections)


def _percent(value: Any) -> str:
    return "no rule ran" if value is None else f"{value:g}%"


def _canary_steps(stage: dict[str, Any]) -> list[dict[str, Any]]:
    outputs = _mapping(stage.get("outputs"))
    steps = outputs.get("steps")
    if not isinstance(steps, list):
        return []
    return [s for s in steps if isinstance(s, dict) and isinstance(s.get("weights"), dict)]


def _step_rows(steps: list[dict[str, Any]]) -> str:
    rows = []
    for index, step in enumerate(steps):
        weights = ", ".join(f"{k} {v}%" for k, v in step["weights"].items())
        measured = _mapping(step.get("measured"))
        if measured:
            weights += " (measured " + ", ".join(f"{k} {v:g}%" for k, v in measured.items()) + ")"
        analysis = _mapping(step.get("analysis"))
        failing = [m for m in analysis.get("metrics") or []
                   if isinstance(m, dict) and m.get("passed") is False]
        notes = [str(step["reason"])] if step.get("reason") else []
        notes += [f"{m.get('name')} ({m.get('version') or '-'}) = {m.get('value')}, "
                  f"needs {m.get('op') or ''} {m.get('threshold')}" for m in failing]
        mirror = step.get("mirror")
        if isinstance(mirror, dict):
            notes.append(f"mirror {mirror.get('percent')}% to {mirror.get('subset')}")
        notes += _graph_notes(step)
        rows.append((f'class="{_e(step.get("action") or "shift")}"', [
            _e(step_label(step, index)), _e(weights), _when(step.get("at")),
            _e(analysis.get("verdict") or "-"), "<br>".join(_e(n) for n in notes)]))
    return _table("steps", ["Step", "Weights", "At", "Analysis", "Notes"], rows)


def _graph_notes(step: dict[str, Any]) -> list[str]:
    """A graph canary's step, per service in the order they moved: weights,
    verdict, and after a rollback what was read back."""
    services = step.get("services")
    if not isinstance(services, dict):
        return []
    notes = []
    for name in step.get("order") or list(services):
        item = services.get(name)
        if not isinstance(item, dict):
            continue
        weights = ", ".join(f"{k} {v}%" for k, v in (item.get("weights") or {}).items())
        verdict = (item.get("analysis") or {}).get("verdict") if isinstance(item.get("analysis"), dict) else None
        read_back = item.get("read_back") if isinstance(item.get("read_back"), dict) else None
        text = f"{name}: {weights}" + (f", analysis {verdict}" if verdict else "")
        if read_back is not None:
            text += ", read back " + ("ok" if read_back.get("ok") else f"FAILED: {read_back.get('problem')}")
        notes.append(text)
    return notes


def _canary(stage: dict[str, Any]) -> str:
    steps = _canary_steps(stage)
    if not steps:
        return ""
    outputs = stage["outputs"]
    legend = "".join(f'<span><svg width="12" height="12" viewBox="0 0 12 12" aria-hidden="true">'
                     f'<rect width="12" height="12" rx="2" fill="{colour}"/></svg>{_e(version)}</span>'
                     for version, colour in version_colours(steps).items())
    metrics = []
    for series in metric_series(steps):
        thresholds = {t for _, _, t, _ in series.points if t is not None}
        need = f" — needs {series.op} {', '.join(f'{t:g}' for t in sorted(thresholds))}" if thresholds else ""
        metrics.append(f"<h4>{_e(series.name)}{' (' + _e(series.version) + ')' if series.version else ''}"
                       f"{_e(need)}</h4>"
                       + _responsive(functools.partial(metric_svg, series, len(steps))))
    metric_html = "".join(metrics) or '<p class="muted">No metric analysis recorded for these steps.</p>'
    rolled_back = any(s.get("action") == "rollback" for s in steps)
    strategy = outputs.get("strategy") or "canary"
    where = "/".join(str(x) for x in (outputs.get("namespace"), outputs.get("service")) if x)
    badge = _badge("rolled back" if rolled_back else stage.get("status"))
    return (f'<section class="canary" data-stage="{_e(stage.get("name"))}">'
            f"<h2>{_e(str(strategy).capitalize())} rollout: {_e(stage.get('name'))}"
            f"{' — ' + _e(where) if where else ''} {badge}"
            f"</h2><h3>Traffic weights per step</h3><div class=\"legend\">{legend}</div>"
            f"{_responsive(lambda width: weights_svg(steps, width))}"
            f"<h3>Metrics against thresholds</h3>{metric_html}{_load(outputs, steps)}"
            f"{_step_rows(steps)}</section>")


def _load(outputs: dict[str, Any], steps: list[dict[str, Any]]) -> str:
    """The traffic sent during the rollout, if any: what and how fast."""
    traffic = outputs.get("traffic")
    if not isinstance(traffic, dict) or not isinstance(traffic.get("per_second"), list):
        return ""
    latency = traffic.get("latency_ms") or {}
    facts = (f"{traffic.get('requests', 0)} requests to {traffic.get('url', '?')} at "
             f"{traffic.get('rate_sent', 0)}/s (asked {traffic.get('rate_asked', '?')}/s); codes "
             + ", ".join(f"{code}: {n}" for code, n in (traffic.get("codes") or {}).items())
             + f"; latency p50 {latency.get('p50', '-')} ms, p99 {latency.get('p99', '-')} ms")
    shortfall = f'<p class="problem">{_e(traffic["shortfall"])}</p>' if traffic.get("shortfall") else ""
    return (f"<h3>Load sent (answers per second by version)</h3><p>{_e(facts)}</p>{shortfall}"
            + _responsive(lambda width: load_svg(traffic["per_second"], steps, width)))


def render_html(summary: dict[str, Any], results_dir: Path | None = None,
                redact: Callable[[str], str] | None = None) -> str:
    """The whole page for ``summary`` (summary.json's content). With
    ``results_dir``, stage logs are linked only where they exist."""
    summary = _redact_tree(summary, redact or redactor())
    stages = _stages(summary)
    links = ""
    if results_dir is not None:
        present = [name for name in RESULT_FILES if (results_dir / name).is_file()]
        links = " · ".join(f'<a href="{name}">{name}</a>' for name in present)
    canaries = "".join(_canary(stage) for stage in stages)
    cnf_sections = "".join(_cnf(stage) for stage in stages)
    timeline = _responsive(lambda width: timeline_svg(stages, summary.get("started"),
                                                      summary.get("duration"), width))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        # Nothing may be fetched or run: the report is archived and opened anywhere.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{_e(summary.get('result'))} — xci-cn {_e(summary.get('scenario'))}</title>"
        f"<style>{CSS}</style></head><body><main>"
        f"{_header(summary)}{_problems(stages)}"
        f'<section class="timeline"><h2>Timeline</h2>{timeline}{_stage_table(stages, results_dir)}</section>'
        f"{cnf_sections}{_checks(stages)}{canaries}"
        f"<footer>xci-cn {_e(summary.get('xci_cn_version'))}, rendered from summary.json"
        f"{' · ' + links if links else ''}</footer></main></body></html>\n")


def write_html(summary: dict[str, Any], path: Path) -> Path:
    """Write report.html beside the results it links to."""
    write_text_atomic(path, render_html(summary, results_dir=path.parent))
    return path
