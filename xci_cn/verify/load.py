"""Load during analysis: vegeta sends requests through the Gateway at a
constant rate while a rollout's steps are analysed, so the canary has
metrics to be judged on (no traffic, no data, no verdict).

vegeta, not a loop of our own: its open model keeps the asked rate whatever
the answers' latency (a slow canary cannot lower the load and hide), and it
reports status codes and latency percentiles. Each request's result is kept
(``vegeta encode``), so the report can show the load and the answering
version second by second, and every step its own share.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from xci_cn.config.model import Duration
from xci_cn.errors import EnvironmentProblem, InvalidInput

# What one vegeta process sends on the 2-core sandbox host with room to
# spare (bench/traffic_bench.py measures the ceiling); above it the machine
# would silently send less than asked.
MAX_RATE = 1000
SHORTFALL = 0.9  # sent / asked below this is reported as a shortfall
# Before the load starts, the URL must answer this many times running; a
# gateway error (an upstream not routed yet) starts the count again.
ANSWERED_IN_A_ROW = 10
ANSWER_WITHIN_S = 15.0
GATEWAY_ERRORS = (502, 503, 504)


class TrafficSpec(BaseModel):
    """Requests through the Gateway while a rollout is analysed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(default=None, description="Base URL (default: the sandbox's Gateway).")
    path: str = Field(default="/", description="Path requested.")
    rate: int = Field(default=50, ge=1, le=MAX_RATE, description=f"Requests per second (at most {MAX_RATE}, "
                                                                 "what the load generator sustains here).")
    duration: Duration | None = Field(default=None, description="How long; default: while the stage "
                                                                "runs (the rollout and its analysis).")
    headers: dict[str, str] = Field(default_factory=dict, description="Request headers.")
    max_in_flight: int | None = Field(default=None, ge=1, description="At most this many requests "
                                                                      "waiting for an answer (default: as "
                                                                      "many as the rate needs).")
    version_header: str = Field(default="x-version", description="Response header naming the version "
                                                                 "that answered.")
    timeout: Duration = Field(default=5.0, description="Per request.")


@dataclass
class LoadRecord:
    """What was sent and what came back."""

    url: str
    rate_asked: int
    requests: int = 0
    rate_sent: float = 0.0
    duration_s: float = 0.0
    codes: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    per_second: list[dict[str, Any]] = field(default_factory=list)
    shortfall: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "rate_asked": self.rate_asked, "requests": self.requests,
                "rate_sent": round(self.rate_sent, 2), "duration_s": round(self.duration_s, 3),
                "codes": self.codes, "latency_ms": self.latency_ms, "versions": self.versions,
                "errors": self.errors[:10], "per_second": self.per_second, "shortfall": self.shortfall}


class Load:
    """One vegeta attack running in the background."""

    def __init__(self, vegeta: Path, spec: TrafficSpec, base_url: str | None, workdir: Path):
        url = spec.url or base_url
        if not url:
            raise InvalidInput("traffic: no URL to send to: set `url` (the sandbox's Gateway is the default "
                               "when a provision stage brought one up)")
        if not vegeta.is_file():
            raise EnvironmentProblem(f"traffic needs vegeta ({vegeta}); 'xci-cn sandbox build' builds it")
        self.vegeta = vegeta
        self.spec = spec
        self.url = url.rstrip("/") + "/" + spec.path.lstrip("/")
        workdir.mkdir(parents=True, exist_ok=True)
        self.results = workdir / "load.bin"
        self.log = workdir / "load.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def wait_answering(self, sleep: Callable[[float], None], within: float = ANSWER_WITHIN_S,
                       in_a_row: int = ANSWERED_IN_A_ROW) -> float | None:
        """Seconds until the URL answered ``in_a_row`` times running (any
        answer but a gateway error: 502, 503, 504), None if not ``within``.
        Pods are Ready a moment before every hop routes to them (kube-proxy
        programs a Service's rules after its EndpointSlice changes): a load
        started at once meets the graph's own start-up, not the rollout."""
        import requests

        started = time.monotonic()
        answered = 0
        with requests.Session() as session:
            while True:
                try:
                    code = session.get(self.url, headers=self.spec.headers, timeout=2).status_code
                except requests.RequestException:
                    code = None
                answered = answered + 1 if code is not None and code not in GATEWAY_ERRORS else 0
                if answered >= in_a_row:
                    return time.monotonic() - started
                if time.monotonic() - started > within:
                    return None
                sleep(0.05)

    def start(self) -> Load:
        argv = [str(self.vegeta), "attack", f"-rate={self.spec.rate}/s",
                f"-duration={self.spec.duration or 0:g}s", f"-timeout={self.spec.timeout:g}s",
                "-keepalive=true", f"-output={self.results}"]
        argv += [f"-header={name}: {value}" for name, value in self.spec.headers.items()]
        if self.spec.max_in_flight:
            argv += [f"-max-workers={self.spec.max_in_flight}", f"-workers={self.spec.max_in_flight}"]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=log, stderr=log)
        assert self.process.stdin is not None
        self.process.stdin.write(f"GET {self.url}\n".encode())
        self.process.stdin.close()
        self.started = time.monotonic()
        return self

    def elapsed(self) -> float:
        """Seconds since the attack started (steps mark their span with it)."""
        return time.monotonic() - self.started

    def stop(self) -> LoadRecord:
        """Stop the attack (vegeta flushes its results on SIGINT) and read them."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.read()

    def read(self) -> LoadRecord:
        record = LoadRecord(self.url, self.spec.rate)
        if not self.results.exists() or not self.results.stat().st_size:
            record.errors.append(f"vegeta wrote no results ({self.log.read_text(errors='replace')[-300:]})")
            return record
        encoded = subprocess.run([str(self.vegeta), "encode", "--to", "json", str(self.results)],
                                 capture_output=True, check=False)
        if encoded.returncode != 0:
            raise EnvironmentProblem(f"vegeta encode failed: {encoded.stderr.decode(errors='replace')[-300:]}")
        return summarise(record, encoded.stdout.decode().splitlines(), self.spec.version_header)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def summarise(record: LoadRecord, lines: list[str], version_header: str) -> LoadRecord:
    """Counts, rates, latency percentiles and per-second buckets from
    vegeta's per-request JSON results."""
    results = [json.loads(line) for line in lines if line.strip()]
    if not results:
        return record
    stamps = [datetime.fromisoformat(r["timestamp"]).timestamp() for r in results]
    first, last = min(stamps), max(stamps)
    latencies = sorted(r["latency"] / 1e6 for r in results)
    codes: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    seconds: dict[int, dict[str, Any]] = {}
    errors: Counter[str] = Counter()
    wanted = version_header.lower()
    for result, stamp in zip(results, stamps, strict=True):
        code = str(result.get("code", 0))
        codes[code] += 1
        headers = {k.lower(): v for k, v in (result.get("headers") or {}).items()}
        version = (headers.get(wanted) or ["?"])[0] if result.get("code") else "-"
        versions[version] += 1
        if result.get("error"):
            errors[result["error"]] += 1
        bucket = seconds.setdefault(int(stamp - first), {"t": int(stamp - first), "requests": 0, "errors": 0,
                                                         "versions": Counter()})
        bucket["requests"] += 1
        bucket["errors"] += not 200 <= int(code) < 400
        bucket["versions"][version] += 1
    record.requests = len(results)
    record.duration_s = last - first
    record.rate_sent = (len(results) - 1) / (last - first) if last > first else float(len(results))
    record.codes = dict(sorted(codes.items()))
    record.versions = dict(sorted(versions.items()))
    record.errors = [f"{n} x {text}" for text, n in errors.most_common(10)]
    record.latency_ms = {name: round(_percentile(latencies, q), 3)
                         for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))}
    record.per_second = [{**b, "versions": dict(b["versions"])} for _, b in sorted(seconds.items())]
    # A short run ends before the rate can be judged; two seconds show it.
    if record.duration_s >= 2 and record.rate_sent < SHORTFALL * record.rate_asked:
        record.shortfall = (f"traffic: asked {record.rate_asked}/s, the load generator sent "
                            f"{record.rate_sent:.0f}/s on this machine; lower `rate`")
    return record


def share_between(per_second: list[dict[str, Any]], start: float, end: float) -> dict[str, int]:
    """Answers per version in the whole seconds within [start, end) of the load."""
    out: Counter[str] = Counter()
    for bucket in per_second:
        if start <= bucket["t"] and bucket["t"] + 1 <= end:
            out.update(bucket["versions"])
    return dict(out)


# What a version is recorded as when no version answered: a failed request, an answer without one.
NO_VERSION = ("-", "?")


def versions_between(per_second: list[dict[str, Any]], start: float, end: float) -> dict[str, int]:
    """Answers per version that named one, in the whole seconds within [start, end)."""
    return {v: n for v, n in share_between(per_second, start, end).items() if v not in NO_VERSION}
