"""Has the proxy taken a routing change yet? A stored HTTPRoute is not yet
served: Traefik applies provider changes after a throttle (2 s by default,
500 ms in the sandbox). A step's split is measured, and its analysis window
starts, only once the proxy's own API shows the new weights.

Traefik's API lists the weighted service of each HTTPRoute rule
(``httproute-<ns>-<route>-…-wrr``) with its backends
(``<ns>-<service>-http-<port>``) and their weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests

from xci_cn.errors import TemporaryError


def served_weights(api_url: str, namespace: str, route: str, backends: dict[str, str],
                   session: requests.Session | None = None) -> list[dict[str, int]]:
    """Version -> weight of every weighted service Traefik serves for
    ``route``; ``backends`` maps version -> Service."""
    session = session or requests.Session()
    response = session.get(f"{api_url.rstrip('/')}/api/http/services", params={"per_page": 1000}, timeout=2)
    response.raise_for_status()
    prefix = f"httproute-{namespace}-{route}-"
    by_service = {f"{namespace}-{service}-http-": version for version, service in backends.items()}
    listing = response.json()
    servers = {s.get("name", "").split("@")[0]: len((s.get("loadBalancer") or {}).get("servers") or [])
               for s in listing}
    out = []
    for service in listing:
        if not service.get("name", "").startswith(prefix) or "weighted" not in service:
            continue
        weights: dict[str, int] = {}
        for member in service["weighted"].get("services") or []:
            version = next((v for p, v in by_service.items() if member["name"].startswith(p)), member["name"])
            if member.get("status"):  # a backend Traefik could not load yet: answered with this status
                version = f"{version} (answers {member['status']})"
            elif not servers.get(member["name"].split("@")[0]):
                version = f"{version} (no endpoints yet)"
            weights[version] = weights.get(version, 0) + int(member.get("weight", 1))
        out.append(weights)
    return out


def wait_served(api_url: str, namespace: str, route: str, backends: dict[str, str], weights: dict[str, int],
                timeout: float = 15.0, sleep: Callable[[float], Any] = time.sleep) -> float:
    """Wait until every rule of ``route`` is served with ``weights``
    (version -> weight; versions with 0 may be absent); seconds waited."""
    started = time.monotonic()
    wanted = {v: w for v, w in weights.items() if w}
    seen: list[dict[str, int]] = []
    with requests.Session() as session:
        while True:
            try:
                seen = served_weights(api_url, namespace, route, backends, session)
            except requests.RequestException as exc:
                seen = [{"error": 0, type(exc).__name__: 0}]
            if seen and all({v: w for v, w in s.items() if w} == wanted for s in seen):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TemporaryError(f"the proxy ({api_url}) does not serve HTTPRoute {namespace}/{route} with "
                                     f"{wanted} after {timeout:g}s (it serves {seen or 'nothing for it'})")
            sleep(0.1)
