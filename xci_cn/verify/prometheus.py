"""A small Prometheus HTTP API client (instant queries), for canary analysis.

Errors are values, not exceptions: analysis turns an unreachable server or a
bad query into an ``Error`` verdict that names the query."""

from __future__ import annotations

import math
from dataclasses import dataclass

import requests


@dataclass
class QueryResult:
    value: float | None  # None: no data (empty vector, or NaN such as 0/0)
    error: str | None = None


class Prometheus:
    def __init__(self, url: str, timeout: float = 5.0, session: requests.Session | None = None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()

    def query(self, promql: str) -> QueryResult:
        """Evaluate ``promql`` now; a single-sample vector or a scalar."""
        try:
            response = self.session.get(f"{self.url}/api/v1/query", params={"query": promql},
                                        timeout=self.timeout)
        except requests.RequestException as exc:
            return QueryResult(None, f"Prometheus {self.url} unreachable: {type(exc).__name__}")
        try:
            body = response.json()
        except ValueError:
            return QueryResult(None, f"Prometheus answered {response.status_code} without JSON")
        if body.get("status") != "success":
            return QueryResult(None, f"query failed: {body.get('errorType', '')}: {body.get('error', '')}")
        data = body["data"]
        if data["resultType"] == "scalar":
            raw = data["result"][1]
        elif data["resultType"] == "vector":
            if not data["result"]:
                return QueryResult(None)
            if len(data["result"]) > 1:
                return QueryResult(None, f"query returned {len(data['result'])} series; aggregate it to one")
            raw = data["result"][0]["value"][1]
        else:
            return QueryResult(None, f"unsupported result type {data['resultType']}")
        value = float(raw)
        return QueryResult(None if math.isnan(value) else value)

    def close(self) -> None:
        self.session.close()
