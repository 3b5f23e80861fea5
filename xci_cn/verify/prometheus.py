"""A small Prometheus HTTP API client (instant and range queries), for
canary analysis.

Errors are values, not exceptions: analysis turns an unreachable server or a
bad query into an ``Error`` verdict that names the query. Results keep the
series exactly as Prometheus sent them (labels, timestamps, values as
strings such as ``"NaN"``), so an analysis tape can re-judge them later
without the server."""

from __future__ import annotations

from typing import Any

import requests

from xci_cn.verify.series import QueryResult, Series


class Prometheus:
    def __init__(self, url: str, timeout: float = 5.0, session: requests.Session | None = None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()

    def query(self, promql: str, at: float | None = None) -> QueryResult:
        """Evaluate ``promql`` at ``at`` (default: now): a vector or a scalar."""
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self._get("query", params)

    def query_range(self, promql: str, start: float, end: float, step: float) -> QueryResult:
        """Evaluate ``promql`` every ``step`` seconds from ``start`` to ``end``."""
        return self._get("query_range", {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                         "step": f"{step:g}"})

    def _get(self, endpoint: str, params: dict[str, Any]) -> QueryResult:
        try:
            response = self.session.get(f"{self.url}/api/v1/{endpoint}", params=params, timeout=self.timeout)
        except requests.RequestException as exc:
            return QueryResult(error=f"Prometheus {self.url} unreachable: {type(exc).__name__}")
        try:
            body = response.json()
        except ValueError:
            return QueryResult(error=f"Prometheus answered {response.status_code} without JSON")
        if body.get("status") != "success":
            return QueryResult(error=f"query failed: {body.get('errorType', '')}: {body.get('error', '')}")
        data = body["data"]
        kind, result = data["resultType"], data["result"]
        if kind == "scalar":
            return QueryResult([Series({}, [(float(result[0]), str(result[1]))])])
        if kind == "vector":
            return QueryResult([Series(item["metric"], [(float(item["value"][0]), str(item["value"][1]))])
                                for item in result])
        if kind == "matrix":
            return QueryResult([Series(item["metric"], [(float(t), str(v)) for t, v in item["values"]])
                                for item in result])
        return QueryResult(error=f"unsupported result type {kind}")

    def close(self) -> None:
        self.session.close()
