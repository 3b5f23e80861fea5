"""Istio host names: one service, four spellings.

Istio resolves a short host (``reviews``) relative to the namespace of the
rule that names it; ``reviews.bookinfo``, ``reviews.bookinfo.svc`` and
``reviews.bookinfo.svc.cluster.local`` name the same Service. Every check,
router and read-back compares hosts through ``service_of``, never as text.
"""

from __future__ import annotations


def service_of(host: str, namespace: str) -> str | None:
    """``'namespace/name'`` of the Service ``host`` names, seen from a rule in
    ``namespace``; None for hosts outside the cluster (``example.com``, ``*``)."""
    if not host or "*" in host:
        return None
    parts = host.rstrip(".").split(".")
    if len(parts) == 1:
        return f"{namespace}/{parts[0]}"
    if len(parts) == 2 or (len(parts) >= 3 and parts[2] == "svc"):
        return f"{parts[1]}/{parts[0]}"
    return None


def same_service(host: str, namespace: str, other: str, other_namespace: str) -> bool:
    """Do two hosts, each seen from its rule's namespace, name one Service?
    Hosts outside the cluster are the same only when spelled the same."""
    mine, theirs = service_of(host, namespace), service_of(other, other_namespace)
    if mine is None or theirs is None:
        return host == other
    return mine == theirs
