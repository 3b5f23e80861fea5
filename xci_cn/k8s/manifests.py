"""Reading a CN-VNF service graph: files or directories of multi-document
YAML, each document an object with its origin (file, document index), so
every message can name ``file: document N: Kind/name``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xci_cn.config.loader import load_yaml_documents, read_text
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
        return f"{self.file}:{self.line}: document {self.index}: {self.kind}/{self.name}"

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


def manifest_files(paths: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
            if not found:
                raise InvalidInput(f"{path}: directory holds no .yaml/.yml files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise InvalidInput(f"{path}: no such file or directory")
    return files


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
            where = f"{path}:{doc.lines.get((), 1)}: document {index}"
            body = doc.data
            if not isinstance(body, dict):
                problems.append(f"{where}: not a mapping")
                continue
            if body.get("kind") == "List" and isinstance(body.get("items"), list):
                problems.append(f"{where}: kind List is not supported; write one document per object")
                continue
            missing = [k for k in ("apiVersion", "kind") if not isinstance(body.get(k), str) or not body[k]]
            meta = body.get("metadata")
            if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
                missing.append("metadata.name")
            if missing:
                name = meta.get("name", "?") if isinstance(meta, dict) else "?"
                label = f"{body.get('kind', '?')}/{name}"
                problems.append(f"{where}: {label}: missing {', '.join(missing)}")
                continue
            result.manifests.append(Manifest(body, str(path), index, doc.lines.get((), 1)))
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
