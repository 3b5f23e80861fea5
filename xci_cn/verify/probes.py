"""Traffic probes: HTTP checks with retries, and a weighted-split check that
compares the observed share per version with the route weights."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import requests
from pydantic import BaseModel, Field
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from xci_cn.config.model import STRICT, Duration


class HttpCheck(BaseModel):
    model_config = STRICT

    type: Literal["http"] = Field(description="An HTTP check.")
    name: str | None = Field(default=None, description="Testcase name (default: the URL).")
    url: str = Field(description="URL to request.")
    method: Literal["GET", "HEAD", "POST"] = Field(default="GET", description="HTTP method.")
    headers: dict[str, str] = Field(default_factory=dict, description="Request headers.")
    expect_status: int = Field(default=200, ge=100, le=599, description="Status the answer must have.")
    expect_body: str | None = Field(default=None, description=(
        "Regular expression searched for in the body (Python re; start it with (?s) for . to match newlines)."))
    retries: int = Field(default=3, ge=0, le=20, description="Extra attempts, with backoff.")
    timeout: Duration = Field(default=5.0, description="Per request.")


SERVICE_HOST = re.compile(r"(?P<name>[a-z0-9-]+)\.(?P<namespace>[a-z0-9-]+)\.svc(\.cluster\.local)?")


def service_host(url: str) -> tuple[str, str] | None:
    """(name, namespace) when the URL's host is a Service's cluster name
    (``name.ns.svc`` or ``name.ns.svc.cluster.local``)."""
    from urllib.parse import urlsplit

    match = SERVICE_HOST.fullmatch(urlsplit(url).hostname or "")
    return (match["name"], match["namespace"]) if match else None


def with_cluster_ip(url: str, cluster_ip: str) -> str:
    """The URL with its Service host replaced by the Service's ClusterIP
    (the host does not use the cluster's DNS; kube-proxy routes ClusterIPs)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = cluster_ip + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class SplitCheck(BaseModel):
    model_config = STRICT

    type: Literal["split"] = Field(description="A weighted-split check.")
    name: str | None = Field(default=None, description="Testcase name (default: the URL).")
    url: str = Field(description="URL whose answers say which version served them.")
    requests: int = Field(default=200, ge=10, le=100_000, description="Requests sent.")
    weights: dict[str, Annotated[float, Field(ge=0, le=100)]] | None = Field(
        default=None, description="Expected percent per version; default: the VirtualService's stored "
                                  "weights for `service`.")
    service: str | None = Field(default=None, description="VirtualService whose weights are expected.")
    version_header: str = Field(default="x-version", description="Response header naming the version.")
    version_body: str | None = Field(default=None, description="Regex with one group finding the version "
                                                              "in the body (instead of the header).")
    tolerance: float = Field(default=10.0, gt=0, le=100, description="Allowed difference in percentage "
                                                                     "points (Clover: 10 for 50/50).")
    timeout: Duration = Field(default=5.0, description="Per request.")


@dataclass
class ProbeResult:
    name: str
    passed: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)


class _Unexpected(Exception):
    pass


def run_http(check: HttpCheck, session: requests.Session | None = None) -> ProbeResult:
    session = session or requests.Session()
    name = check.name or f"http {check.method} {check.url}"
    attempts = 0

    def once() -> requests.Response:
        nonlocal attempts
        attempts += 1
        response = session.request(check.method, check.url, headers=check.headers, timeout=check.timeout)
        if response.status_code != check.expect_status:
            raise _Unexpected(f"status {response.status_code}, expected {check.expect_status}")
        if check.expect_body and not re.search(check.expect_body, response.text):
            raise _Unexpected(f"body does not match {check.expect_body!r}: {response.text[:120]!r}")
        return response

    try:
        for attempt in Retrying(stop=stop_after_attempt(check.retries + 1),
                                wait=wait_exponential(multiplier=0.2, max=5),
                                retry=retry_if_exception_type((_Unexpected, requests.RequestException))):
            with attempt:
                response = once()
    except RetryError as exc:
        cause = exc.last_attempt.exception()
        text = str(cause) if isinstance(cause, _Unexpected) else f"{type(cause).__name__}: {cause}"
        return ProbeResult(name, False, f"{check.url}: {text} (after {attempts} attempts)",
                           {"attempts": attempts})
    return ProbeResult(name, True, f"{check.url}: {response.status_code} in "
                                   f"{response.elapsed.total_seconds() * 1000:.0f} ms", {"attempts": attempts})


def run_split(check: SplitCheck, expected: dict[str, float], session: requests.Session | None = None
              ) -> ProbeResult:
    """Send ``requests`` requests; each version's observed share must be
    within ``tolerance`` points of its expected weight."""
    session = session or requests.Session()
    seen: Counter[str] = Counter()
    errors = 0
    pattern = re.compile(check.version_body) if check.version_body else None
    for _ in range(check.requests):
        try:
            response = session.get(check.url, timeout=check.timeout)
        except requests.RequestException:
            errors += 1
            continue
        if pattern is not None:
            match = pattern.search(response.text)
            version = match.group(1) if match else "?"
        else:
            version = response.headers.get(check.version_header, "?")
        seen[version] += 1
    return judge_split(check, expected, dict(seen), errors)


def judge_split(check: SplitCheck, expected: dict[str, float], counts: dict[str, int], errors: int = 0,
                also: dict[str, int] | None = None) -> ProbeResult:
    """The verdict on answers per version: the probe's own ``counts`` plus,
    with ``also``, the answers other traffic to the same route got over the
    same time. A proxy that balances by deterministic weighted round robin
    (Traefik) keeps the weights over all its requests, not within one client's
    share of them, so a probe beside other load must count that load too."""
    name = check.name or f"split {check.url}"
    seen: Counter[str] = Counter(counts)
    seen.update(also or {})
    answered = sum(seen.values())
    observed = {v: 100.0 * n / answered for v, n in seen.items()} if answered else {}
    total = sum(expected.values()) or 1
    expected_pct = {v: 100.0 * w / total for v, w in expected.items()}
    problems = []
    for version in sorted(set(expected_pct) | set(observed)):
        got, want = observed.get(version, 0.0), expected_pct.get(version, 0.0)
        if abs(got - want) > check.tolerance:
            problems.append(f"{version}: {got:.1f}% observed, {want:.1f}% expected")
    if errors:
        problems.append(f"{errors} of {check.requests} requests failed")
    shares = ", ".join(f"{v} {observed.get(v, 0):.1f}%" for v in sorted(set(expected_pct) | set(observed)))
    counted = f" (with {sum(also.values())} answers of the stage's traffic)" if also else ""
    details: dict[str, Any] = {"observed": observed, "expected": expected_pct, "requests": check.requests,
                               "errors": errors, "counts": dict(counts)}
    if also is not None:
        details["traffic_counts"] = dict(also)
    if problems:
        return ProbeResult(name, False, f"beyond ±{check.tolerance:g} points{counted}: " + "; ".join(problems),
                           details)
    return ProbeResult(name, True, f"{shares} within ±{check.tolerance:g} points of {expected_pct}{counted}",
                       details)
