"""Pre-flight and server-side apply of a manifest set.

``preflight`` finds every problem before anything is written: kinds the
cluster does not serve (with the replacement for APIs Kubernetes removed),
and schema errors from a server-side dry-run against the real API server
(Istio's CRD schemas included). ``apply`` writes namespaces and CRDs first,
then everything else, with field manager ``xci-cn``, and says per object
whether it was created, configured or unchanged.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from xci_cn.errors import ScenarioError
from xci_cn.k8s.client import ApiException, object_not_decodable, translate
from xci_cn.k8s.health import Target, wait_healthy
from xci_cn.k8s.manifests import KIND_ORDER, Manifest, ManifestSet, removed_api_problem
from xci_cn.k8s.resources import FIELD_MANAGER, ResourceInfo, Resources


@dataclass
class Applied:
    kind: str
    name: str
    namespace: str | None
    action: str  # created | configured | unchanged
    resource_version: str
    generation: int | None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "namespace": self.namespace, "action": self.action,
                "resource_version": self.resource_version, "generation": self.generation}


class Applier:
    """Validates and applies manifest sets through one Resources handle."""

    def __init__(self, resources: Resources, *, field_manager: str = FIELD_MANAGER, workers: int = 8):
        self.resources = resources
        self.field_manager = field_manager
        self.workers = workers

    # -- pre-flight ---------------------------------------------------------------------
    def preflight(self, manifests: ManifestSet, stage_namespace: str | None = None
                  ) -> dict[int, ResourceInfo | None]:
        """Resolve every manifest against the cluster and dry-run it; raise
        ScenarioError with one line per problem. Returns id(manifest) -> info
        (None for objects of a CRD defined in the same set). A missing
        ``stage_namespace`` joins the set as a Namespace to create (as Helm's
        --create-namespace); any other namespace must exist or be in the set."""
        problems: list[str] = []
        infos: dict[int, ResourceInfo | None] = {}
        set_crds = _crds_in(manifests)
        for manifest in manifests.manifests:
            info = self.resources.lookup(manifest.api_version, manifest.kind)
            if info is None:
                if (manifest.api_version, manifest.kind) in set_crds:
                    infos[id(manifest)] = None
                    continue
                problems.append(removed_api_problem(manifest) or (
                    f"{manifest.where()}: kind {manifest.kind} is not served by the cluster in apiVersion "
                    f"{manifest.api_version} (unknown kind, or its CRD is not installed)"))
                continue
            if not info.namespaced:
                manifest.body["metadata"].pop("namespace", None)
            elif not manifest.namespace:
                problems.append(f"{manifest.where()}: namespaced kind without metadata.namespace "
                                "(set it, or give the deploy stage a namespace)")
                continue
            infos[id(manifest)] = info
        if problems:
            raise ScenarioError(problems)
        existing = self._existing_namespaces()
        if existing is not None:
            declared = {m.name for m in manifests.manifests if m.kind == "Namespace"}
            if stage_namespace and stage_namespace not in existing | declared:
                namespace = Manifest({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": stage_namespace}},
                                     "(the deploy stage's namespace)", 0)
                manifests.manifests.insert(0, namespace)
                infos[id(namespace)] = self.resources.lookup("v1", "Namespace")
                declared.add(stage_namespace)
            problems = [f"{m.where()}: namespace {m.namespace} exists neither in the cluster nor in the manifests"
                        for m in manifests.manifests
                        if infos.get(id(m)) is not None and infos[id(m)].namespaced  # type: ignore[union-attr]
                        and m.namespace not in existing | declared]
            if problems:
                raise ScenarioError(problems)
        checks = [(m, infos[id(m)]) for m in manifests.manifests if infos.get(id(m)) is not None]
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="dry-run") as pool:
            for problem in pool.map(lambda pair: self._dry_run(pair[0], pair[1], existing), checks):
                if problem:
                    problems.append(problem)
        if problems:
            raise ScenarioError(problems)
        return infos

    def _existing_namespaces(self) -> set[str] | None:
        """Names of the namespaces that exist; None when this identity may not
        list them (a namespaced ServiceAccount): its namespaces must exist."""
        info = self.resources.lookup("v1", "Namespace")
        assert info is not None
        try:
            listing = self.resources.list(info, None)
        except ApiException as exc:
            if exc.status == 403:
                return None
            raise translate(exc, "listing namespaces") from None
        except Exception as exc:  # noqa: BLE001 - translated
            raise translate(exc, "listing namespaces") from None
        return {item["metadata"]["name"] for item in listing.get("items", [])}

    def _dry_run(self, manifest: Manifest, info: ResourceInfo, existing: set[str] | None) -> str | None:
        body = copy.deepcopy(manifest.body)
        if info.namespaced and existing is not None and manifest.namespace not in existing:
            # The namespace comes with this set and does not exist yet: the
            # schema does not depend on it, so validate in 'default'.
            body["metadata"]["namespace"] = "default"
        try:
            self.resources.apply(info, body, dry_run=True, field_manager=self.field_manager)
        except ApiException as exc:
            if _rejects_input(exc):
                return f"{manifest.where()}: rejected by the API server: {_server_message(exc)}"
            raise translate(exc, f"dry-run of {manifest.ref()}") from None
        except Exception as exc:  # noqa: BLE001 - translated
            raise translate(exc, f"dry-run of {manifest.ref()}") from None
        return None

    # -- apply ----------------------------------------------------------------------------
    def apply(self, manifests: ManifestSet, infos: dict[int, ResourceInfo | None],
              cancel: threading.Event | None = None, crd_timeout: float = 60,
              on_applied: Callable[[Manifest, Applied], None] | None = None) -> list[Applied]:
        """Apply in order; ``on_applied`` hears of each object as it is written
        (the waiter starts before the writes end)."""
        ordered = manifests.ordered()
        notify = on_applied or (lambda manifest, applied: None)
        first = [m for m in ordered if m.kind in ("Namespace", "CustomResourceDefinition")]
        before = self._stored_versions(first, infos)
        results = [self._write(m, infos, before, notify) for m in first]
        crds = [m for m in first if m.kind == "CustomResourceDefinition"]
        if crds:
            crd_info = self.resources.lookup("apiextensions.k8s.io/v1", "CustomResourceDefinition")
            assert crd_info is not None
            crd_targets = [Target(crd_info, None, m.name) for m in crds]
            for target in crd_targets:
                target.mark_applied(None)
            wait_healthy(self.resources, crd_targets, time.monotonic() + crd_timeout, cancel)
            for manifest in manifests.manifests:
                if infos.get(id(manifest)) is None:
                    self.resources.forget(manifest.api_version)
                    infos[id(manifest)] = self.resources.lookup(manifest.api_version, manifest.kind)
        rest = [m for m in ordered if m.kind not in ("Namespace", "CustomResourceDefinition")]
        # Within one rank of KIND_ORDER objects do not depend on each other:
        # apply them in parallel; ranks go one after the other.
        ranks: dict[int, list[Manifest]] = {}
        for manifest in rest:
            rank = KIND_ORDER.index(manifest.kind) if manifest.kind in KIND_ORDER else len(KIND_ORDER)
            ranks.setdefault(rank, []).append(manifest)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="apply") as pool:
            for rank in sorted(ranks):
                if cancel is not None and cancel.is_set():
                    break
                versions = self._stored_versions(ranks[rank], infos)
                results.extend(pool.map(
                    lambda m, versions=versions: self._write(m, infos, versions, notify), ranks[rank]))
        return results

    def _write(self, manifest: Manifest, infos: dict[int, ResourceInfo | None],
               versions: dict[tuple[str, str | None, str], str],
               notify: Callable[[Manifest, Applied], None]) -> Applied:
        applied = self._apply_one(manifest, infos[id(manifest)], versions.get(_identity(manifest), ""))
        notify(manifest, applied)
        return applied

    def _stored_versions(self, manifests: list[Manifest], infos: dict[int, ResourceInfo | None]
                         ) -> dict[tuple[str, str | None, str], str]:
        """resourceVersion of what is stored now, one LIST per kind and
        namespace (not one GET per object): tells created/configured/unchanged."""
        versions: dict[tuple[str, str | None, str], str] = {}
        collections = {(infos[id(m)], m.namespace) for m in manifests if infos.get(id(m)) is not None}
        for info, namespace in collections:
            try:
                listing = self.resources.list(info, namespace)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - translated
                raise translate(exc, f"listing {info.kind} in {namespace}") from None  # type: ignore[union-attr]
            for item in listing.get("items", []):
                meta = item["metadata"]
                versions[(info.kind, meta.get("namespace"), meta["name"])] = meta["resourceVersion"]  # type: ignore[union-attr]
        return versions

    def _apply_one(self, manifest: Manifest, info: ResourceInfo | None, before: str) -> Applied:
        if info is None:
            raise ScenarioError([f"{manifest.where()}: kind {manifest.kind} is still not served after "
                                 "its CRD was applied"])
        try:
            stored = self.resources.apply(info, manifest.body, field_manager=self.field_manager)
        except ApiException as exc:
            if _rejects_input(exc):
                raise ScenarioError([f"{manifest.where()}: rejected by the API server: "
                                     f"{_server_message(exc)}"]) from None
            raise translate(exc, f"applying {manifest.ref()}") from None
        except Exception as exc:  # noqa: BLE001 - translated
            raise translate(exc, f"applying {manifest.ref()}") from None
        meta = stored["metadata"]
        if not before:
            action = "created"
        elif before == meta["resourceVersion"]:
            action = "unchanged"
        else:
            action = "configured"
        return Applied(manifest.kind, manifest.name, meta.get("namespace"), action, meta["resourceVersion"],
                       meta.get("generation"))


def _identity(manifest: Manifest) -> tuple[str, str | None, str]:
    return (manifest.kind, manifest.namespace, manifest.name)


def _crds_in(manifests: ManifestSet) -> set[tuple[str, str]]:
    out = set()
    for manifest in manifests.manifests:
        if manifest.kind != "CustomResourceDefinition":
            continue
        spec = manifest.body.get("spec") or {}
        kind = (spec.get("names") or {}).get("kind")
        for version in spec.get("versions") or []:
            out.add((f"{spec.get('group')}/{version.get('name')}", kind))
    return out


def _rejects_input(exc: ApiException) -> bool:
    """The API server refused the object itself (not a permission or an outage).
    A value of the wrong type or undecodable data comes back as a 500 — still
    the manifest's fault (client.object_not_decodable)."""
    if exc.status in (400, 404, 409, 422):
        return True
    return object_not_decodable(exc)


def _server_message(exc: ApiException) -> str:
    import json

    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        return exc.reason or str(exc.status)
    message = body.get("message") or exc.reason or ""
    return " ".join(message.split())
