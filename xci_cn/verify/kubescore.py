"""kube-score, the linter behind the ``cnf`` check's static rules.

The only module that runs kube-score: objects go in as one multi-document
file, its JSON (output v2) comes out as ``Scored`` records — per object and
kube-score test: grade, skipped, and comments naming the container. Its
failures become project errors here, once.

Why kube-score: a maintained Go linter served by the Go module proxy, built
and cached like the sandbox's binaries; it starts in ~0.1 s, where Checkov
(a Python package with hundreds of policies) spends seconds importing, which
alone would break the 2-second budget of the static checks.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xci_cn.errors import EnvironmentProblem, InvalidInput

GRADE_ALL_OK = 10  # kube-score: 10 all OK, 7 almost OK, 5 warning, 1 critical
TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Comment:
    container: str | None
    summary: str
    description: str


@dataclass(frozen=True)
class Scored:
    """One kube-score test's result for one object."""

    kind: str
    namespace: str | None
    name: str
    test: str  # kube-score's test ID, e.g. container-resources
    grade: int
    skipped: bool
    comments: tuple[Comment, ...]

    @property
    def passed(self) -> bool:
        return self.grade >= GRADE_ALL_OK


def score(binary: Path, objects: list[dict[str, Any]], kubernetes_version: str = "v1.36") -> list[Scored]:
    """Score ``objects`` (Kubernetes bodies). kube-score's own ignore
    annotations are disabled: exceptions belong in the scenario's allow-list,
    where a reviewer sees them."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="xci-cn-cnf-") as handle:
        # JSON is YAML: one document per object, no YAML emitter needed.
        handle.write("\n---\n".join(json.dumps(obj) for obj in objects))
        handle.flush()
        argv = [str(binary), "score", "--output-format", "json", "--kubernetes-version", kubernetes_version,
                "--disable-ignore-checks-annotations", "--disable-optional-checks-annotations", handle.name]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_SECONDS,
                                  stdin=subprocess.DEVNULL, check=False)
        except OSError as exc:
            raise EnvironmentProblem(f"kube-score {binary}: {exc.strerror or exc}") from None
        except subprocess.TimeoutExpired:
            raise EnvironmentProblem(f"kube-score {binary} did not answer within {TIMEOUT_SECONDS}s") from None
    # Exit 1 means "critical findings", which is a result, not an error.
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise InvalidInput(f"kube-score could not read the objects (exit {proc.returncode}): {last}") from None
    return list(_parse(report or []))


def _parse(report: list[dict[str, Any]]) -> Any:
    for obj in report:
        meta, kind = obj.get("object_meta") or {}, (obj.get("type_meta") or {}).get("kind", "")
        for check in obj.get("checks") or []:
            comments = tuple(Comment(c.get("path") or None, c.get("summary") or "", c.get("description") or "")
                             for c in check.get("comments") or [])
            yield Scored(kind, meta.get("namespace") or None, meta.get("name", ""), check["check"]["id"],
                         int(check.get("grade", 0)), bool(check.get("skipped")), comments)
