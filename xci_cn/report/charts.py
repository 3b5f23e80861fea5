"""Inline SVG charts for report.html, drawn in Python so that the report needs
no script library: the stage timeline (a Gantt chart with one bar per
attempt) and, for canary rollouts, the traffic weights per step and each
analysed metric against its threshold; with traffic, the share each version
actually answered per step and the load sent second by second.

Called by ``xci_cn.report.html``. Every function takes plain summary.json
data, returns SVG markup, and escapes all text it places (stage names,
versions and messages are untrusted). Elements carry ``class`` and
``data-*`` attributes so that tests (and readers) can find them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Any

STATUS_COLOURS = {
    "passed": "#2e7d32", "failed": "#c62828", "skipped": "#9e9e9e", "cancelled": "#ef6c00",
    "running": "#1565c0", "pending": "#bdbdbd", "not-selected": "#cfcfcf",
}
# Stable first, canary second: colours that stay distinguishable in greyscale.
VERSION_COLOURS = ["#5c6bc0", "#ffa726", "#26a69a", "#ec407a", "#8d6e63", "#78909c"]
# The viewBox widths of the two renderings of each chart: report.html shows
# the wide one on screens and the narrow one on phones, so that text stays
# readable instead of being scaled down with the whole picture.
WIDE, NARROW, COMPACT_BELOW = 800, 380, 500
FONT = "font-family=\"system-ui, -apple-system, 'Segoe UI', sans-serif\" font-size=\"12\""


def parse_time(text: Any) -> float | None:
    """Seconds since the epoch of an ISO 8601 time from summary.json, or None."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def number(value: Any) -> float | None:
    """A finite float, or None for anything else (summary.json may be hand-written)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def seconds_label(seconds: float) -> str:
    """``0.42s``, ``12s``, ``3m05s``, ``1h02m``: short enough for an axis."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms" if seconds else "0s"
    if seconds < 10:
        return f"{seconds:.2f}".rstrip("0").rstrip(".") + "s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes}m{rest:02d}s" if rest else f"{minutes}m"
    hours, rest = divmod(round(seconds) // 60, 60)
    return f"{hours}h{rest:02d}m"


def nice_step(span: float, ticks: int = 5) -> float:
    """A round tick interval (1, 2, 5 × 10^k) giving about ``ticks`` ticks."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return factor * power
    return 10 * power


def value_label(value: float) -> str:
    return f"{value:.4g}"


def _text(x: float, y: float, text: str, *, anchor: str = "start", cls: str = "",
          fill: str = "#333") -> str:
    klass = f' class="{cls}"' if cls else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{fill}"{klass}>'
            f"{escape(text)}</text>")


def _stacked(shares: dict[str, Any], colours: dict[str, str], bottom: float, height: float
             ) -> Iterator[tuple[str, float, float, float]]:
    """(version, percent, y, h) of each version's segment of a 100 % column
    standing on ``bottom``, stacked in ``colours``' order; zero shares are left out."""
    for version in colours:
        share = number(shares.get(version))
        if not share:
            continue
        h = height * min(max(share, 0), 100) / 100
        bottom -= h
        yield version, share, bottom, h


def _clip(text: str, length: int) -> str:
    return text if len(text) <= length else text[:length - 1] + "…"


# -- the stage timeline -------------------------------------------------------------
@dataclass
class _Bar:
    start: float
    end: float
    status: str
    title: str
    attempt: int


def _attempt_bars(stage: dict[str, Any], run_end: float | None) -> list[_Bar]:
    """One bar per attempt. An attempt that errored and was followed by
    another is a failed try; the last attempt has the stage's status."""
    history = [a for a in stage.get("history") or [] if isinstance(a, dict)]
    bars = []
    for index, attempt in enumerate(history):
        start = parse_time(attempt.get("started"))
        if start is None:
            continue
        duration = number(attempt.get("duration"))
        last = index == len(history) - 1
        status = str(stage.get("status", "pending")) if last else "failed"
        if status == "passed" and attempt.get("error"):
            status = "failed"
        # An attempt without a duration never finished (the run was killed).
        end = start + duration if duration is not None else max(run_end or start, start)
        ordinal = attempt.get("attempt")
        ordinal = ordinal if isinstance(ordinal, int) else index + 1
        title = f"{stage.get('name')} attempt {ordinal}: " + (
            seconds_label(duration) if duration is not None else "did not finish")
        if attempt.get("error"):
            title += f" — {attempt['error']}"
        bars.append(_Bar(start, end, status, title, ordinal))
    return bars


def timeline_svg(stages: list[dict[str, Any]], run_started: str | None,
                 run_duration: float | None, width: int = WIDE) -> str:
    """A Gantt chart: a row per stage, a bar per attempt (so retries and the
    backoff between them are visible), coloured by status; stages that did
    not run get a row with a word instead of a bar. Narrower than
    ``COMPACT_BELOW``, names go above the bars instead of beside them."""
    run_start = parse_time(run_started)
    resumed = {id(s) for s in stages if s.get("resumed")}
    bars_of = {}
    starts = [run_start] if run_start is not None else []
    run_seconds = number(run_duration)
    run_end = run_start + run_seconds if run_start is not None and run_seconds is not None else None
    ends = [run_end] if run_end is not None else []
    for stage in stages:
        if id(stage) in resumed:  # their attempts belong to an earlier run
            continue
        bars = _attempt_bars(stage, run_end)
        bars_of[id(stage)] = bars
        starts += [b.start for b in bars]
        ends += [b.end for b in bars]
    t0 = min(starts) if starts else 0.0
    span = max(max(ends or [t0]) - t0, 0.001)

    compact = width < COMPACT_BELOW
    # label_w: the names' column (none when names sit above the bars);
    # bar_y: the bar's offset in its row; text_y: the baseline of the row's words.
    label_w, right_w, row_h, bar_y, text_y = (4, 78, 36, 17, 12) if compact else (170, 90, 26, 5, 17)
    top = 28
    plot_w = width - label_w - right_w
    height = top + row_h * max(len(stages), 1) + 8

    def x_of(t: float) -> float:
        return label_w + (t - t0) / span * plot_w

    parts = [f'<svg class="chart timeline" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Stage timeline" xmlns="http://www.w3.org/2000/svg" {FONT}>']
    step = nice_step(span, 3 if compact else 5)
    tick = 0.0
    while tick <= span + 1e-9:
        x = label_w + tick / span * plot_w
        parts.append(f'<line class="grid" x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{height - 8}" '
                     'stroke="#e0e0e0"/>')
        anchor = "start" if compact and tick == 0 else "middle"
        parts.append(_text(x, top - 10, seconds_label(tick), anchor=anchor, fill="#666"))
        tick += step
    for row, stage in enumerate(stages):
        name = str(stage.get("name", "?"))
        status = str(stage.get("status", "pending"))
        y = top + row * row_h
        parts.append(f'<g class="stage" data-stage="{escape(name)}" data-status="{escape(status)}">')
        parts.append(f"<title>{escape(name)}: {escape(status)}</title>")
        if compact:
            parts.append(_text(label_w, y + text_y, _clip(name, 40), cls="label"))
        else:
            parts.append(_text(label_w - 8, y + text_y, _clip(name, 24), anchor="end", cls="label"))
        bars = bars_of.get(id(stage), [])
        if bars:
            # A faint band from the first start to the last end: the wait between
            # retries shows as band without a bar.
            first, last = x_of(bars[0].start), x_of(bars[-1].end)
            parts.append(f'<rect class="span" x="{first:.1f}" y="{y + bar_y + 6}" '
                         f'width="{max(last - first, 1):.1f}" height="4" '
                         f'fill="{STATUS_COLOURS.get(status, "#999")}" opacity="0.25"/>')
        for bar in bars:
            x = x_of(bar.start)
            w = max(x_of(bar.end) - x, 3)  # a 5 ms stage must still be visible
            colour = STATUS_COLOURS.get(bar.status, "#999")
            parts.append(f'<rect class="bar" data-attempt="{bar.attempt}" data-status="{escape(bar.status)}" '
                         f'x="{x:.1f}" y="{y + bar_y}" width="{w:.1f}" height="16" rx="2" '
                         f'fill="{colour}"><title>{escape(bar.title)}</title></rect>')
        took = number(stage.get("duration"))
        attempts = stage.get("attempts") or 0
        if id(stage) in resumed:
            note = "passed earlier (resumed)"
        elif bars:
            note = seconds_label(took) if took is not None else status
            if isinstance(attempts, int) and attempts > 1:
                note += f" ×{attempts}"
        else:
            note = status
        if bars:
            parts.append(_text(width - 4, y + bar_y + 12, note, anchor="end", cls="duration"))
        elif compact:
            parts.append(_text(width - 4, y + text_y, note, anchor="end", cls="marker",
                               fill=STATUS_COLOURS.get(status, "#666")))
        else:
            parts.append(_text(label_w + 4, y + text_y, note, cls="marker",
                               fill=STATUS_COLOURS.get(status, "#666")))
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


# -- canary: weights and metrics per step ------------------------------------------
def _versions(steps: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for step in steps:
        for version in (step.get("weights") or {}):
            if str(version) not in seen:
                seen.append(str(version))
    return seen


def version_colours(steps: list[dict[str, Any]]) -> dict[str, str]:
    return {v: VERSION_COLOURS[i % len(VERSION_COLOURS)] for i, v in enumerate(_versions(steps))}


_CANARY_LEFT, _CANARY_RIGHT = 48, 12


def _column_x(index: int, count: int, width: int) -> tuple[float, float]:
    """Left edge and width of step ``index``'s column; the weights and the
    metric charts share it so that their steps line up."""
    slot = (width - _CANARY_LEFT - _CANARY_RIGHT) / max(count, 1)
    return _CANARY_LEFT + index * slot + slot * 0.15, slot * 0.7


def step_label(step: dict[str, Any], index: int) -> str:
    action = str(step.get("action") or "shift")
    return action if action != "shift" else f"step {step.get('step', index + 1)}"


def weights_svg(steps: list[dict[str, Any]], width: int = WIDE) -> str:
    """One stacked column per step: each version's share of the traffic, in
    the order the steps happened, with the time since the first step."""
    colours = version_colours(steps)
    first_at = next((t for t in (parse_time(s.get("at")) for s in steps) if t is not None), None)
    top, plot_h = 24, 180
    height = top + plot_h + 62
    parts = [f'<svg class="chart weights" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Traffic weights per canary step" xmlns="http://www.w3.org/2000/svg" {FONT}>']
    for percent in (0, 25, 50, 75, 100):
        y = top + plot_h * (1 - percent / 100)
        parts.append(f'<line class="grid" x1="{_CANARY_LEFT}" y1="{y:.1f}" x2="{width - _CANARY_RIGHT}" '
                     f'y2="{y:.1f}" stroke="#e0e0e0"/>')
        parts.append(_text(_CANARY_LEFT - 6, y + 4, f"{percent}%", anchor="end", fill="#666"))
    for index, step in enumerate(steps):
        x, w = _column_x(index, len(steps), width)
        action = str(step.get("action") or "shift")
        parts.append(f'<g class="step" data-index="{index}" data-step="{escape(str(step.get("step", "")))}" '
                     f'data-action="{escape(action)}">')
        weights = step.get("weights") or {}
        title = f"{step_label(step, index)}: " + ", ".join(
            f"{v} {weights[v]}%" for v in weights)
        if step.get("reason"):
            title += f" — {step['reason']}"
        parts.append(f"<title>{escape(title)}</title>")
        for version, share, y, h in _stacked(weights, colours, top + plot_h, plot_h):
            parts.append(f'<rect class="weight" data-version="{escape(version)}" data-percent="{share:g}" '
                         f'x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
                         f'fill="{colours[version]}"/>')
            if h >= 14:
                parts.append(_text(x + w / 2, y + h / 2 + 4, f"{share:g}%", anchor="middle", fill="#fff"))
        measured = step.get("measured")
        if isinstance(measured, dict) and measured:
            # What the real requests of this step met: a thin column beside the weights.
            for version, share, y, h in _stacked(measured, colours, top + plot_h, plot_h):
                parts.append(f'<rect class="measured" data-version="{escape(version)}" '
                             f'data-percent="{share:g}" x="{x + w + 2:.1f}" y="{y:.1f}" '
                             f'width="5" height="{h:.1f}" fill="{colours[version]}" stroke="#333" '
                             'stroke-width="0.5"><title>'
                             f'{escape(f"measured: {version} {share:.1f}% of the answers")}</title></rect>')
        if action == "rollback":
            parts.append(f'<rect class="rollback-mark" x="{x - 2:.1f}" y="{top - 2}" width="{w + 4:.1f}" '
                         f'height="{plot_h + 4}" fill="none" stroke="{STATUS_COLOURS["failed"]}" '
                         'stroke-width="2" stroke-dasharray="5 3"/>')
        mirror = step.get("mirror")
        if isinstance(mirror, dict) and number(mirror.get("percent")) is not None:
            parts.append(_text(x + w / 2, top - 6, f"mirror {float(mirror['percent']):g}%",
                               anchor="middle", cls="mirror", fill="#666"))
        label = _clip(step_label(step, index), 14 if width >= COMPACT_BELOW else 9)
        parts.append(_text(x + w / 2, top + plot_h + 16, label, anchor="middle", cls="label"))
        at = parse_time(step.get("at"))
        if at is not None and first_at is not None:
            parts.append(_text(x + w / 2, top + plot_h + 31, "+" + seconds_label(max(at - first_at, 0)),
                               anchor="middle", fill="#666"))
        verdict = (step.get("analysis") or {}).get("verdict") if isinstance(step.get("analysis"), dict) \
            else None
        if verdict:
            colour = {"Successful": STATUS_COLOURS["passed"], "Failed": STATUS_COLOURS["failed"]}.get(
                str(verdict), STATUS_COLOURS["cancelled"])
            parts.append(_text(x + w / 2, top + plot_h + 46, _clip(str(verdict), 14), anchor="middle",
                               cls="verdict", fill=colour))
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


@dataclass
class MetricSeries:
    """One metric of one version across the steps that analysed it."""

    name: str
    version: str
    op: str
    points: list[tuple[int, float | None, float | None, bool | None]]  # index, value, threshold, passed


def metric_series(steps: list[dict[str, Any]]) -> list[MetricSeries]:
    series: dict[tuple[str, str], MetricSeries] = {}
    for index, step in enumerate(steps):
        analysis = step.get("analysis")
        if not isinstance(analysis, dict):
            continue
        for metric in analysis.get("metrics") or []:
            if not isinstance(metric, dict):
                continue
            key = (str(metric.get("name", "?")), str(metric.get("version") or ""))
            item = series.setdefault(key, MetricSeries(key[0], key[1], str(metric.get("op") or ""), []))
            passed = metric.get("passed")
            item.points.append((index, number(metric.get("value")), number(metric.get("threshold")),
                                passed if isinstance(passed, bool) else None))
    return list(series.values())


def metric_svg(series: MetricSeries, step_count: int, width: int = WIDE) -> str:
    """The metric's value at each analysed step against its threshold (dashed);
    points that broke the threshold are red."""
    values = [v for _, v, t, _ in series.points for v in (v, t) if v is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high == low:
        low, high = low - (abs(low) * 0.1 or 1.0), high + (abs(high) * 0.1 or 1.0)
    # Round ticks around the data, with a margin so no point sits on the frame.
    tick = nice_step(high - low, 3)
    low, high = math.floor(low / tick - 0.3) * tick, math.ceil(high / tick + 0.3) * tick
    top, plot_h = 14, 110
    height = top + plot_h + 24

    def y_of(value: float) -> float:
        return top + plot_h * (1 - (value - low) / (high - low))

    def centre(index: int) -> float:
        x, w = _column_x(index, step_count, width)
        return x + w / 2

    label = series.name + (f" ({series.version})" if series.version else "")
    parts = [f'<svg class="chart metric" data-metric="{escape(series.name)}" '
             f'data-version="{escape(series.version)}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg" {FONT}>']
    count = round((high - low) / tick)
    for k in range(count + 1):
        tick_value = low + k * tick
        y = y_of(tick_value)
        parts.append(f'<line class="grid" x1="{_CANARY_LEFT}" y1="{y:.1f}" x2="{width - _CANARY_RIGHT}" '
                     f'y2="{y:.1f}" stroke="#eee"/>')
        parts.append(_text(_CANARY_LEFT - 6, y + 4, value_label(round(tick_value, 12)), anchor="end", fill="#666"))
    thresholds = [(centre(i), y_of(t)) for i, _, t, _ in series.points if t is not None]
    if thresholds:
        # Extend a lone threshold across the plot so it reads as a line.
        if len(thresholds) == 1:
            thresholds = [(_CANARY_LEFT, thresholds[0][1]), (width - _CANARY_RIGHT, thresholds[0][1])]
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in thresholds)
        parts.append(f'<polyline class="threshold" points="{points}" fill="none" stroke="#c62828" '
                     'stroke-width="1.5" stroke-dasharray="6 4"/>')
    line = [(centre(i), y_of(v)) for i, v, _, _ in series.points if v is not None]
    if len(line) > 1:
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in line)
        parts.append(f'<polyline class="value" points="{points}" fill="none" stroke="#37474f" '
                     'stroke-width="2"/>')
    for index, value, threshold, passed in series.points:
        x = centre(index)
        if value is None:
            parts.append(_text(x, top + plot_h / 2, "no data", anchor="middle", cls="no-data", fill="#999"))
            continue
        colour = (STATUS_COLOURS["cancelled"] if passed is None
                  else STATUS_COLOURS["passed"] if passed else STATUS_COLOURS["failed"])
        verdict = "no verdict" if passed is None else "passed" if passed else "failed"
        title = f"{label} at step index {index + 1}: {value_label(value)}"
        if threshold is not None:
            title += f" (threshold {series.op} {value_label(threshold)})"
        parts.append(f'<circle class="point" data-index="{index}" data-passed="{str(passed).lower()}" '
                     f'cx="{x:.1f}" cy="{y_of(value):.1f}" r="5" fill="{colour}">'
                     f"<title>{escape(title + ': ' + verdict)}</title></circle>")
        parts.append(_text(x + 8, y_of(value) - 6, value_label(value), fill=colour))
    parts.append("</svg>")
    return "".join(parts)


def load_svg(per_second: list[dict[str, Any]], steps: list[dict[str, Any]], width: int = WIDE) -> str:
    """Requests sent per second, stacked by the version that answered, with
    failed answers in red and each step's start marked."""
    colours = version_colours(steps)
    for bucket in per_second:
        for version in bucket.get("versions") or {}:
            colours.setdefault(str(version), VERSION_COLOURS[len(colours) % len(VERSION_COLOURS)])
    peak = max([int(b.get("requests") or 0) for b in per_second] + [1])
    tick = nice_step(peak, 4)
    high = math.ceil(peak / tick) * tick
    span = max([int(b.get("t") or 0) for b in per_second] + [1]) + 1
    top, plot_h = 14, 140
    height = top + plot_h + 30
    left, right = _CANARY_LEFT, width - _CANARY_RIGHT
    slot = (right - left) / span
    parts = [f'<svg class="chart load" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Requests sent per second" xmlns="http://www.w3.org/2000/svg" {FONT}>']
    for k in range(round(high / tick) + 1):
        y = top + plot_h * (1 - k * tick / high)
        parts.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(_text(left - 6, y + 4, value_label(k * tick), anchor="end", fill="#666"))
    for bucket in per_second:
        t = int(bucket.get("t") or 0)
        bottom = float(top + plot_h)
        versions = bucket.get("versions") or {}
        title = f"+{t}s: {bucket.get('requests', 0)} requests, " + ", ".join(
            f"{v} {n}" for v, n in versions.items()) + f"; {bucket.get('errors', 0)} failed"
        parts.append(f'<g class="second" data-t="{t}" data-requests="{int(bucket.get("requests") or 0)}" '
                     f'data-errors="{int(bucket.get("errors") or 0)}"><title>{escape(title)}</title>')
        for version, count in versions.items():
            h = plot_h * int(count) / high
            parts.append(f'<rect data-version="{escape(str(version))}" x="{left + t * slot:.1f}" '
                         f'y="{bottom - h:.1f}" width="{max(slot - 1, 1):.1f}" height="{h:.1f}" '
                         f'fill="{colours.get(str(version), "#999")}"/>')
            bottom -= h
        errors = int(bucket.get("errors") or 0)
        if errors:
            h = plot_h * errors / high
            parts.append(f'<rect class="errors" x="{left + t * slot:.1f}" y="{top + plot_h - h:.1f}" '
                         f'width="{max(slot - 1, 1):.1f}" height="{h:.1f}" fill="none" '
                         f'stroke="{STATUS_COLOURS["failed"]}" stroke-width="1.5"/>')
        parts.append("</g>")
    for index, step in enumerate(steps):
        start = number(step.get("load_from_s"))
        if start is None:
            continue
        x = left + start * slot
        parts.append(f'<line class="step-start" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" '
                     'stroke="#37474f" stroke-dasharray="3 3"/>')
        parts.append(_text(x + 3, top + 10, _clip(step_label(step, index), 10), fill="#37474f"))
    parts.append(_text(left, top + plot_h + 18, "0 s", fill="#666"))
    parts.append(_text(right, top + plot_h + 18, f"{span} s", anchor="end", fill="#666"))
    parts.append("</svg>")
    return "".join(parts)


def counts_svg(counts: dict[str, Any], width: int = WIDE) -> str:
    """One stacked bar: passed, failed and skipped rules, each segment
    labelled with its count (the cnf check's categories)."""
    order = ("passed", "failed", "skipped")
    values = [max(int(number(counts.get(k)) or 0), 0) for k in order]
    total = sum(values) or 1
    height, x = 30, 0.0
    parts = [f'<svg class="chart counts" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{", ".join(f"{v} {k}" for k, v in zip(order, values, strict=True))}" '
             f'xmlns="http://www.w3.org/2000/svg" {FONT}>']
    for key, value in zip(order, values, strict=True):
        if not value:
            continue
        w = value / total * width
        parts.append(f'<rect class="{key}" x="{x:.1f}" y="2" width="{w:.1f}" height="24" '
                     f'fill="{STATUS_COLOURS[key]}"><title>{value} {key}</title></rect>')
        parts.append(_text(x + 6, 19, f"{value} {key}" if w > 70 else str(value), fill="#fff"))
        x += w
    return "".join(parts) + "</svg>"
