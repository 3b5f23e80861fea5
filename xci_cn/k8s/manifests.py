"""Reading a CN-VNF service graph: files or directories of multi-document
YAML, each document an object with its origin (file, document index), so
every message can name ``file: document N: Kind/name``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xci_cn.config.loader import LoadedYaml, load_yaml_documents, located, os_reason, path_problem, read_text
from xci_cn.errors import InvalidInput, ScenarioError

# Applied first, in this order; everything else after, in file order.
KIND_ORDER = ("Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "Role",
              "ClusterRoleBinding", "RoleBinding", "ConfigMap", "Secret", "PersistentVolumeClaim",
              "Service", "Deployment", "StatefulSet", "DaemonSet", "Job")


@dataclass
class Manifest:
    """One object to apply."""

    body: dict[str, Any]
    file: str
    index: int  # 1-based document number within the file
    line: int = 1
    column: int = 1
    defaulted_namespace: bool = False

    @property
    def api_version(self) -> str:
        return self.body["apiVersion"]

    @property
    def kind(self) -> str:
        return self.body["kind"]

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]

    @property
    def namespace(self) -> str | None:
        return self.body["metadata"].get("namespace")

    @property
    def key(self) -> tuple[str, str, str | None, str]:
        group = self.api_version.rsplit("/", 1)[0] if "/" in self.api_version else ""
        return (group, self.kind, self.namespace, self.name)

    def where(self) -> str:
        return located(self.file, (self.line, self.column), f"document {self.index}: {self.kind}/{self.name}")

    def ref(self) -> str:
        namespace = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {namespace}{self.name}"


@dataclass
class ManifestSet:
    manifests: list[Manifest] = field(default_factory=list)

    def ordered(self) -> list[Manifest]:
        def rank(item: tuple[int, Manifest]) -> tuple[int, int]:
            index, manifest = item
            kind = manifest.kind
            return (KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER), index)

        return [m for _, m in sorted(enumerate(self.manifests), key=rank)]


# (apiVersion, kind) -> the API to use instead, for APIs Kubernetes removed.
_WORKLOADS = ("Deployment", "DaemonSet", "ReplicaSet", "StatefulSet")
REMOVED_APIS: dict[tuple[str, str], str] = {
    **{("extensions/v1beta1", k): "apps/v1" for k in _WORKLOADS},
    **{("apps/v1beta1", k): "apps/v1" for k in _WORKLOADS},
    **{("apps/v1beta2", k): "apps/v1" for k in _WORKLOADS},
    ("extensions/v1beta1", "Ingress"): "networking.k8s.io/v1",
    ("extensions/v1beta1", "NetworkPolicy"): "networking.k8s.io/v1",
    ("extensions/v1beta1", "PodSecurityPolicy"): "Pod Security Admission (PodSecurityPolicy was removed)",
    ("policy/v1beta1", "PodSecurityPolicy"): "Pod Security Admission (PodSecurityPolicy was removed)",
    ("networking.k8s.io/v1beta1", "Ingress"): "networking.k8s.io/v1",
    ("networking.k8s.io/v1beta1", "IngressClass"): "networking.k8s.io/v1",
    ("batch/v1beta1", "CronJob"): "batch/v1",
    ("policy/v1beta1", "PodDisruptionBudget"): "policy/v1",
    ("autoscaling/v2beta1", "HorizontalPodAutoscaler"): "autoscaling/v2",
    ("autoscaling/v2beta2", "HorizontalPodAutoscaler"): "autoscaling/v2",
    ("apiextensions.k8s.io/v1beta1", "CustomResourceDefinition"): "apiextensions.k8s.io/v1",
    ("discovery.k8s.io/v1beta1", "EndpointSlice"): "discovery.k8s.io/v1",
    ("scheduling.k8s.io/v1beta1", "PriorityClass"): "scheduling.k8s.io/v1",
    ("coordination.k8s.io/v1beta1", "Lease"): "coordination.k8s.io/v1",
    **{("rbac.authorization.k8s.io/v1beta1", k): "rbac.authorization.k8s.io/v1"
       for k in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")},
    **{("storage.k8s.io/v1beta1", k): "storage.k8s.io/v1"
       for k in ("StorageClass", "CSIDriver", "CSINode", "VolumeAttachment")},
    **{("admissionregistration.k8s.io/v1beta1", k): "admissionregistration.k8s.io/v1"
       for k in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")},
}


def removed_api_problem(manifest: Manifest) -> str | None:
    """The offline check: an API Kubernetes removed, with what to use."""
    replacement = REMOVED_APIS.get((manifest.api_version, manifest.kind))
    if replacement is None:
        return None
    return (f"{manifest.where()}: apiVersion {manifest.api_version} of {manifest.kind} was removed "
            f"from Kubernetes; use {replacement}")


def manifest_files(paths: list[str | Path]) -> list[Path]:
    """The YAML files of ``paths`` (files, or directories searched
    recursively); each problem names the path as given and what is wrong."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        problem = path_problem(path, "file or directory of manifests")
        if problem:
            raise InvalidInput(problem)
        files.extend(_yaml_files_under(path) if path.is_dir() else [path])
    return files


def _yaml_files_under(directory: Path) -> list[Path]:
    """rglob would skip an unreadable directory without a word (and then
    report that it "holds no .yaml files"): walk, and say why instead."""
    def refuse(exc: OSError) -> None:
        raise InvalidInput(f"{exc.filename or directory}: {os_reason(exc)}")

    found: list[Path] = []
    for root, dirs, names in os.walk(directory, onerror=refuse):
        dirs.sort()
        found.extend(Path(root) / n for n in sorted(names)
                     if n.endswith((".yaml", ".yml")) and (Path(root) / n).is_file())
    if not found:
        raise InvalidInput(f"{directory}: directory holds no .yaml/.yml files")
    return found


def _shape_problems(body: dict[str, Any]) -> list[str]:
    """Wrong types inside an otherwise valid object, found before they reach
    code that assumes the Kubernetes shape (a TypeError in a key, an
    AttributeError on a CRD's spec)."""
    problems = []
    meta = body["metadata"]
    for key in ("namespace", "generateName"):
        if key in meta and not isinstance(meta[key], str):
            problems.append(f"metadata.{key} must be a string, not {type(meta[key]).__name__}")
    for key in ("labels", "annotations"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            problems.append(f"metadata.{key} must be a mapping, not {type(meta[key]).__name__}")
    if "spec" in body and body["spec"] is not None and not isinstance(body["spec"], dict):
        problems.append(f"spec must be a mapping, not {type(body['spec']).__name__}")
    elif body["kind"] == "CustomResourceDefinition":
        spec = body.get("spec") or {}
        names = spec.get("names")
        if not isinstance(spec.get("group"), str):
            problems.append("spec.group must be a string")
        if not isinstance(names, dict) or not isinstance(names.get("kind"), str):
            problems.append("spec.names.kind must be a string")
        versions = spec.get("versions")
        if not isinstance(versions, list) or not all(
                isinstance(v, dict) and isinstance(v.get("name"), str) for v in versions):
            problems.append("spec.versions must be a list of mappings with a name")
    return problems


def _document_problem(doc: LoadedYaml, index: int, message: str, loc: tuple = ()) -> str:
    return doc.problem(loc, f"document {index}: {message}", field_path=False)


def load_manifests(paths: list[str | Path], default_namespace: str | None = None) -> ManifestSet:
    """Parse every document; structural problems are all reported at once."""
    problems: list[str] = []
    result = ManifestSet()
    for path in manifest_files(paths):
        try:
            documents = load_yaml_documents(read_text(path), str(path))
        except ScenarioError as exc:
            problems.extend(exc.lines())
            continue
        for index, doc in enumerate(documents, start=1):
            body = doc.data
            if not isinstance(body, dict):
                problems.append(_document_problem(doc, index, "not a mapping"))
                continue
            if body.get("kind") == "List" and isinstance(body.get("items"), list):
                problems.append(_document_problem(doc, index, "kind List is not supported; "
                                                              "write one document per object", ("kind",)))
                continue
            missing = [k for k in ("apiVersion", "kind") if not isinstance(body.get(k), str) or not body[k]]
            meta = body.get("metadata")
            if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
                missing.append("metadata.name")
            if missing:
                name = meta.get("name", "?") if isinstance(meta, dict) else "?"
                label = f"{body.get('kind', '?')}/{name}"
                problems.append(_document_problem(doc, index, f"{label}: missing {', '.join(missing)}"))
                continue
            shape = _shape_problems(body)
            if shape:
                label = f"{body['kind']}/{body['metadata']['name']}"
                problems.extend(_document_problem(doc, index, f"{label}: {p}", tuple(p.split(" ")[0].split(".")))
                                for p in shape)
                continue
            line, column = doc.mark_of(())
            result.manifests.append(Manifest(body, str(path), index, line, column))
    seen: dict[tuple, Manifest] = {}
    for manifest in result.manifests:
        meta = manifest.body["metadata"]
        if default_namespace and manifest.kind != "Namespace" and "namespace" not in meta:
            # Cluster-scoped kinds drop it again once discovery tells (apply.py).
            manifest.body["metadata"]["namespace"] = default_namespace
            manifest.defaulted_namespace = True
        if manifest.key in seen:
            problems.append(f"{manifest.where()}: the same object as {seen[manifest.key].where()}")
        seen.setdefault(manifest.key, manifest)
    if problems:
        raise ScenarioError(problems)
    return result
