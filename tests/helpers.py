"""Small helpers shared by the tests (no fakes: these write real scenario
files and run the real CLI)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xci_cn.config.model import load_scenario_file
from xci_cn.paths import SAMPLES_DIR
from xci_cn.pipeline.runner import Runner, RunResult
from xci_cn.pipeline.stage import RunInputs

XCI_CN = [sys.executable, "-m", "xci_cn.cli"]


def write_scenario(directory: Path, text: str, name: str = "scenario.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def make_runner(directory: Path, text: str, **runner_options) -> Runner:
    """A Runner for the scenario ``text`` (written to ``directory``), results
    in ``directory/results``, with a short retry backoff."""
    scenario = load_scenario_file(write_scenario(directory, text))
    inputs = RunInputs(scenario=scenario.name, flavor=scenario.flavors[0], installer=scenario.installer)
    runner_options.setdefault("retry_backoff", 0.05)
    return Runner(scenario, inputs, directory / "results", **runner_options)


def run_scenario(directory: Path, text: str, **runner_options) -> RunResult:
    return make_runner(directory, text, **runner_options).run()


def junit_cases(path: Path) -> dict[str, list[str]]:
    """junit.xml's testcases: name -> the kinds of its results (Failure,
    Skipped, Error; none when it passed)."""
    from junitparser import JUnitXml

    return {case.name: [type(result).__name__ for result in case.result]
            for suite in JUnitXml.fromfile(str(path)) for case in suite}


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        return subprocess.run([*XCI_CN, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        # Say where it hung: the output it had written when it was killed.
        said = "".join(part.decode(errors="replace") if isinstance(part, bytes) else part
                       for part in (exc.stdout, exc.stderr) if part)
        raise AssertionError(f"xci-cn {' '.join(args)} still running after {timeout:g}s; it had said:\n"
                             f"{said}") from None


def read_properties(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


SLOW = """name: slow
stages:
  - {{name: first, type: shell, with: {{command: "echo first >> {log}"}}}}
  - name: long
    type: shell
    needs: [first]
    with: {{command: "echo long >> {log}; sleep {sleep} & echo $! > {log}.pid; wait"}}
  - {{name: after, type: shell, needs: [long], with: {{command: "echo after >> {log}"}}}}
  - {{name: logs, type: shell, needs: [after], always: true, with: {{command: "echo logs >> {log}"}}}}
"""


def start_run(tmp_path: Path, text: str) -> subprocess.Popen[str]:
    write_scenario(tmp_path, text, "slow.yaml")
    return subprocess.Popen([*XCI_CN, "run", "--scenario", "slow.yaml", "--results-dir", "R"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(path: Path, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text().split():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")


# Namespaces sdc_copy named during the running test; conftest's
# delete_sdc_namespaces removes them from every running sandbox at the test's
# end, so that the shared sandbox does not pile up pods that keep running
# (and being probed) for the rest of the session.
SDC_NAMESPACES: list[str] = []


def sdc_copy(tmp_path: Path) -> tuple[Path, str]:
    """The bundled sample in a namespace of its own, so tests do not meet;
    deleted when the test ends."""
    namespace = f"sdc-{uuid.uuid4().hex[:6]}"
    SDC_NAMESPACES.append(namespace)
    target = tmp_path / "sdc"
    shutil.copytree(SAMPLES_DIR / "sdc", target)
    for path in target.glob("*.yaml"):
        text = path.read_text().replace("namespace: sdc", f"namespace: {namespace}")
        if path.name == "00-namespace.yaml":
            text = text.replace("name: sdc\n", f"name: {namespace}\n")
        text = text.replace(".sdc.svc", f".{namespace}.svc")
        path.write_text(text)
    return target, namespace


def deploy_scenario(manifests: Path, namespace: str, **options: object) -> str:
    extra = "".join(f", {k}: {json.dumps(v)}" for k, v in options.items())
    return f"""name: deploy-test
installer: existing
stages:
  - name: deploy
    type: deploy
    with: {{manifests: ["{manifests}"], namespace: {namespace}{extra}}}
"""


def run_on_cluster(tmp_path: Path, sandbox: dict, text: str, results: str = "R") -> tuple[int, dict, str]:
    write_scenario(tmp_path, text, "s.yaml")
    proc = cli("run", "--scenario", "s.yaml", "--kubeconfig", str(sandbox["kubeconfig"]),
               "--results-dir", results, cwd=tmp_path, timeout=300)
    summary_path = tmp_path / results / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return proc.returncode, summary, proc.stdout + proc.stderr


def kubectl(sandbox: dict, *args: str) -> str:
    import subprocess

    from xci_cn.sandbox.binaries import find_kubectl

    # A discovery cache of the sandbox's own: ~/.kube/cache is keyed by
    # host:port, and another sandbox that had the same port may have served
    # other kinds (a Gateway API "gateway").
    kubeconfig = Path(sandbox["kubeconfig"])
    return subprocess.run([str(find_kubectl()), "--kubeconfig", str(kubeconfig),
                           "--cache-dir", str(kubeconfig.parent / "kubectl-cache"), *args],
                          capture_output=True, text=True, check=True).stdout


def vs_weights(sandbox: dict, namespace: str) -> dict[str, int]:
    vs = json.loads(kubectl(sandbox, "get", "virtualservice", "http-lb", "-n", namespace, "-o", "json"))
    return {d["destination"]["subset"]: d.get("weight", 100) for d in vs["spec"]["http"][0]["route"]}


DEMO = """\
name: demo
description: free text
installer: sandbox            # sandbox | existing | kubespray
flavors: [aio, mini]          # subset of aio, mini, noha, ha
versions: {kubernetes: "1.36", istio: "1.32"}
stages:
  - name: prepare
    type: shell               # a registered stage type
    with: {command: "echo hi"}
  - name: build
    type: shell
    needs: [prepare]          # DAG edges
    timeout: 30s              # hard limit; the stage is cancelled
    retries: 1                # extra attempts, with backoff
    with: {command: "exit 1"}
  - name: collect-logs
    type: shell
    needs: [build]
    always: true              # runs even after a failure or an abort
    with: {command: "echo logs"}
"""


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def unreachable_kubeconfig(directory: Path) -> Path:
    from tests.meshmetrics import free_port

    """A well-formed kubeconfig whose API server does not listen."""
    path = directory / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{free_port()}",
                                               "insecure-skip-tls-verify": True}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
    }))
    return path


def until(what: str, found: Callable[[], Any], timeout: float = 60.0, every: float = 0.5) -> Any:
    """``found()``'s first truthy answer, asked every ``every`` s; an assertion
    error naming ``what`` and the last answer after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = found()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what} not seen in {timeout:g}s (last: {last!r})")
