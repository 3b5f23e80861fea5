"""Speed of the cnf check on the SDC sample.

Targets (issue "CNF checks"):
* the static rules of the SDC graph <= 2 s: timed in-process (manifests read,
  kube-score run, rules judged) and as ``xci-cn cnf samples/sdc`` in a fresh
  process, imports included, which is what a person waits for;
* each runtime rule on the SDC graph <= 60 s on 2 cores (``--runtime``): the
  sample is deployed to a sandbox of its own with a real node, and a verify
  stage runs the runtime rules; each rule's seconds come from summary.json.

Usage: .venv/bin/python bench/cnf_bench.py [--runs 7] [--runtime] [--sandbox bench-cnf]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import sdc_copy
from xci_cn.k8s.manifests import load_manifests
from xci_cn.paths import SAMPLES_DIR
from xci_cn.sandbox.binaries import ensure_tools
from xci_cn.verify import cnf, kubescore

STATIC_TARGET = 2.0
RUNTIME_TARGET = 60.0
RUNTIME_RULES = [r.name for r in cnf.RULES.values() if r.runtime]


def static_once(binary: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    subjects = [cnf.Subject.of(m) for m in load_manifests([SAMPLES_DIR / "sdc"]).manifests]
    spec = cnf.CnfCheck(type="cnf")
    findings = cnf.lint(subjects, spec, lambda bodies: kubescore.score(binary, bodies),
                        runtime_reason="static only")
    summary = cnf.summarise(findings, spec)
    return time.perf_counter() - started, summary


def cli_once() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "xci_cn.cli", "cnf", str(SAMPLES_DIR / "sdc")], capture_output=True,
                   check=False)
    return time.perf_counter() - started


def runtime(sandbox: str) -> dict[str, float | None]:
    """Seconds per runtime rule, from one run on a sandbox of its own."""
    with tempfile.TemporaryDirectory(prefix="cnf-bench-") as tmp:
        manifests, namespace = sdc_copy(Path(tmp))
        scenario = Path(tmp) / "s.yaml"
        scenario.write_text(f"""name: cnf-bench
installer: sandbox
flavors: [mini]
stages:
  - {{name: provision, type: provision}}
  - name: deploy
    type: deploy
    needs: [provision]
    with: {{manifests: ["{manifests}"], namespace: {namespace}}}
  - name: verify
    type: verify
    needs: [deploy]
    with:
      namespace: {namespace}
      checks: [{{type: cnf, checks: {json.dumps(RUNTIME_RULES)}}}]
  - {{name: teardown, type: provision, needs: [verify], always: true, with: {{action: down}}}}
""")
        subprocess.run([sys.executable, "-m", "xci_cn.cli", "run", "--scenario", str(scenario), "--sandbox-name",
                        sandbox, "--results-dir", f"{tmp}/R", "-q"], check=False)
        summary = json.loads((Path(tmp) / "R" / "summary.json").read_text())
    verify = next(s for s in summary["stages"] if s["name"] == "verify")
    results = (verify.get("outputs") or {}).get("cnf") or [{}]
    for check in verify.get("checks") or []:
        if not check["passed"] or check.get("skipped"):
            print(f"  {'skipped' if check.get('skipped') else 'FAILED'} {check['name']}: {check['message']}")
    return {r["rule"]: r.get("seconds") for r in results[0].get("rules", [])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--runtime", action="store_true", help="Also time the runtime rules (a real node).")
    parser.add_argument("--sandbox", default="bench-cnf")
    args = parser.parse_args()
    binary = ensure_tools()["kube-score"]
    static_once(binary)  # warm the page cache
    times, summary = [], {}
    for _ in range(args.runs):
        seconds, summary = static_once(binary)
        times.append(seconds)
    cli = [cli_once() for _ in range(max(3, args.runs // 2))]
    ok = True
    for label, values in (("static rules, in-process", times), ("xci-cn cnf samples/sdc", cli)):
        median = statistics.median(values)
        ok &= median <= STATIC_TARGET
        print(f"{label}: median {median:.3f}s over {len(values)} runs (target {STATIC_TARGET}s, "
              f"ratio {median / STATIC_TARGET:.2f})")
    print(f"SDC static score {summary['score']}%: {summary['passed']} rules passed, {summary['failed']} failed")
    if args.runtime:
        for rule, seconds in runtime(args.sandbox).items():
            ok &= seconds is not None and seconds <= RUNTIME_TARGET
            ratio = f"ratio {seconds / RUNTIME_TARGET:.2f}" if seconds is not None else "did not run"
            print(f"runtime rule {rule}: {seconds}s (target {RUNTIME_TARGET:g}s, {ratio})")
    print("RESULT within targets" if ok else "RESULT OUTSIDE targets")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
