"""Hostile input: each gets its documented exit code and one clear line, no
traceback, nothing applied. Manifests are checked offline by the deploy
stage's pre-flight step, so most of these need no cluster at all; the
kubeconfig and API-server cases meet a real (absent, unreachable or running)
API server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import cli, write_scenario
from tests.meshmetrics import free_port
from xci_cn.config.loader import load_yaml_text
from xci_cn.config.model import load_scenario_file, parse_duration, scenario_from_loaded
from xci_cn.errors import ScenarioError

BOMB = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(6))

MANIFESTS = {
    "malformed": (b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [unclosed\n", "invalid YAML"),
    "non-utf8": (b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: caf\xe9}\n", "not valid UTF-8"),
    "bomb": (("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: boom}\n" + BOMB).encode(),
             "alias bomb"),
    "no-kind": (b"apiVersion: v1\nmetadata: {name: x}\n", "missing kind"),
    "list": (b"apiVersion: v1\nkind: List\nitems: []\nmetadata: {name: l}\n", "kind List is not supported"),
    "removed-api": (b"apiVersion: extensions/v1beta1\nkind: Ingress\nmetadata: {name: old}\n",
                    "apiVersion extensions/v1beta1 of Ingress was removed from Kubernetes; use networking.k8s.io/v1"),
    "duplicate": (b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: twice, namespace: n}\n---\n"
                  b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: twice, namespace: n}\n", "the same object as"),
    "scalar": (b"just a string\n", "not a mapping"),
    "namespace-list": (b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: [a, b]}\n",
                       "ConfigMap/c: metadata.namespace must be a string, not list"),
    "namespace-map": (b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: {a: b}}\n",
                      "ConfigMap/c: metadata.namespace must be a string, not dict"),
    "labels-list": (b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, labels: [a]}\n",
                    "ConfigMap/c: metadata.labels must be a mapping, not list"),
    "spec-string": (b"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: oops\n",
                    "Deployment/d: spec must be a mapping, not str"),
    "crd-spec-string": (b"apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n"
                        b"metadata: {name: ws.example.org}\nspec: oops\n",
                        "CustomResourceDefinition/ws.example.org: spec must be a mapping, not str"),
    "crd-no-versions": (b"apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n"
                        b"metadata: {name: ws.example.org}\nspec: {group: example.org, names: {kind: W}, "
                        b"versions: oops}\n",
                        "spec.versions must be a list of mappings with a name"),
}


@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_hostile_manifests_are_refused_before_anything_runs(tmp_path: Path, case: str) -> None:
    content, expected = MANIFESTS[case]
    (tmp_path / "m.yaml").write_bytes(content)
    marker = tmp_path / "ran"
    write_scenario(tmp_path, f"""name: hostile
installer: existing
stages:
  - {{name: first, type: shell, with: {{command: "touch {marker}"}}}}
  - {{name: deploy, type: deploy, needs: [first], with: {{manifests: [m.yaml], namespace: n}}}}
""", "s.yaml")
    proc = cli("run", "--scenario", "s.yaml", "--kubeconfig", "/nonexistent", "--installer", "sandbox",
               "--results-dir", "R", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    # file:line:col: message (stage), then the offending line and a caret when there is one
    assert re.match(r"xci-cn: m\.yaml:\d+(:\d+)?: .* \(stage deploy\)$", lines[0]), lines
    assert len(lines) in (1, 3) and expected in lines[0]
    if len(lines) == 3:
        assert lines[2].strip() == "^"
    assert "Traceback" not in proc.stderr and not marker.exists() and not (tmp_path / "R").exists()


def test_a_50_mb_manifest_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    big = tmp_path / "m.yaml"
    with open(big, "wb") as handle:
        handle.write(b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: big}\ndata:\n")
        chunk = b"  k: " + b"x" * 1_000_000 + b"\n"
        for _ in range(50):
            handle.write(chunk)
    write_scenario(tmp_path, """name: big
installer: existing
stages:
  - {name: deploy, type: deploy, with: {manifests: [m.yaml], namespace: n}}
""", "s.yaml")
    proc = cli("validate", "s.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "m.yaml:1:1: file is 50000" in proc.stderr and "the limit is" in proc.stderr


def test_a_50_mb_scenario_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with open(big, "wb") as handle:
        handle.write(b"name: big\n")
        handle.truncate(50 * 1024 * 1024)
    proc = cli("validate", "big.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("xci-cn: big.yaml:1:1: file is 52428800 bytes")


@pytest.mark.parametrize("content,expected", [
    ("not: [a kubeconfig", "kubeconfig"),
    ("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n", "kubeconfig"),
    ("\x00\x01\x02binary", "kubeconfig"),
])
def test_bad_kubeconfig_is_invalid_input(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "kc").write_text(content)
    proc = cli("run", "--installer", "existing", "--kubeconfig", "kc", "--results-dir", "R", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"xci-cn: {expected} kc") and "Traceback" not in proc.stderr
    assert not (tmp_path / "R").exists()


def test_a_directory_as_kubeconfig_is_invalid_input(tmp_path: Path) -> None:
    proc = cli("run", "--installer", "existing", "--kubeconfig", str(tmp_path), "--results-dir", "R",
               cwd=tmp_path)
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_unreachable_api_server_is_an_environment_problem(sandbox: dict, tmp_path: Path) -> None:
    config = json.loads(json.dumps(__import__("yaml").safe_load(Path(sandbox["kubeconfig"]).read_text())))
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    (tmp_path / "kc").write_text(json.dumps(config))
    proc = cli("run", "--installer", "existing", "--kubeconfig", "kc", "--results-dir", "R", cwd=tmp_path,
               timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "R" / "summary.json").read_text())
    error = summary["stages"][0]["error"]
    assert error.startswith("API server https://127.0.0.1:") and "unreachable" in error
    assert "Traceback" not in proc.stdout + proc.stderr


# -- property-based: the loader raises nothing but its own validation error ---------------------
yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=20))
yaml_values = st.recursive(yaml_scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)), max_leaves=20)
stage_like = st.fixed_dictionaries({"name": st.one_of(st.text(max_size=12), st.just("a")),
                                    "type": st.sampled_from(["shell", "ansible", "deploy", "verify", "nope", 3])},
                                   optional={"needs": st.lists(st.sampled_from(["a", "b", "c"]), max_size=3),
                                             "timeout": yaml_values, "retries": yaml_values,
                                             "always": yaml_values, "with": yaml_values})
scenario_like = st.fixed_dictionaries({"name": yaml_values, "stages": st.lists(stage_like, max_size=4)},
                                      optional={"flavors": yaml_values, "installer": yaml_values,
                                                "versions": yaml_values, "extra": yaml_values})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300), scenario_like.map(json.dumps)))
def test_the_scenario_loader_only_ever_raises_scenario_errors(text: str) -> None:
    try:
        scenario_from_loaded(load_yaml_text(text, "fuzz.yaml"))
    except ScenarioError as exc:
        assert all(line.startswith("fuzz.yaml") for line in exc.lines()), exc.lines()


# -- numbers that are not finite or not in range (durations, weights, limits) -------------------
BAD_DURATIONS = [".inf", "-.inf", ".nan", "1.0e+10", '"99999999999h"', "1e400", "100000000000000000000000000000",
                 '"8d"', '"169h"', "0", "-1"]
# Where a duration can be written; {v} is the value.
DURATION_FIELDS = {
    "stage timeout": "  - {name: a, type: shell, timeout: {v}, with: {command: 'true'}}\n",
    "deploy timeout": "  - {name: a, type: deploy, with: {manifests: [m.yaml], namespace: n, timeout: {v}}}\n",
    "deploy step_pause": ("  - {name: a, type: deploy, with: {manifests: [m.yaml], namespace: n, strategy: canary, "
                          "service: s, stable: v1, canary: v2, step_pause: {v}}}\n"),
    "analysis interval": ("  - {name: a, type: deploy, with: {manifests: [m.yaml], namespace: n, strategy: canary, "
                          "service: s, stable: v1, canary: v2, analysis: {interval: {v}}}}\n"),
    "analysis window": ("  - {name: a, type: verify, with: {namespace: n, service: s, checks: "
                        "[{type: analysis, canary: v2, window: {v}}]}}\n"),
    "http check timeout": ("  - {name: a, type: verify, with: {checks: [{type: http, url: 'http://x', "
                           "timeout: {v}}]}}\n"),
    "split check timeout": ("  - {name: a, type: verify, with: {checks: [{type: split, url: 'http://x', "
                            "weights: {v1: 100}, timeout: {v}}]}}\n"),
}
BAD_NUMBERS = {
    "analysis threshold": ("  - {name: a, type: verify, with: {namespace: n, service: s, checks: [{type: analysis, "
                           "canary: v2, metrics: [{name: m, type: success-rate, threshold: .nan}]}]}}\n"),
    "max_vs_baseline": ("  - {name: a, type: verify, with: {namespace: n, service: s, checks: [{type: analysis, "
                        "canary: v2, metrics: [{name: m, type: latency-p99, threshold: 5, "
                        "max_vs_baseline: .inf}]}]}}\n"),
    "mirror": ("  - {name: a, type: deploy, with: {manifests: [m.yaml], namespace: n, strategy: canary, "
               "service: s, stable: v1, canary: v2, mirror: .nan}}\n"),
    "split weights": ("  - {name: a, type: verify, with: {checks: [{type: split, url: 'http://x', "
                      "weights: {v1: .inf}}]}}\n"),
    "split tolerance": ("  - {name: a, type: verify, with: {checks: [{type: split, url: 'http://x', "
                        "weights: {v1: 100}, tolerance: .nan}]}}\n"),
    "failure_limit": ("  - {name: a, type: verify, with: {namespace: n, service: s, checks: [{type: analysis, "
                      "canary: v2, failure_limit: 1000000000}]}}\n"),
    "expect_status": ("  - {name: a, type: verify, with: {checks: [{type: http, url: 'http://x', "
                      "expect_status: -1}]}}\n"),
}
CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"


def _stage_scenario(tmp_path: Path, stage_line: str) -> Path:
    (tmp_path / "m.yaml").write_text(CONFIGMAP)
    write_scenario(tmp_path, "name: numbers\ninstaller: existing\nstages:\n" + stage_line, "s.yaml")
    return Path("s.yaml")


@pytest.mark.parametrize("value", BAD_DURATIONS)
@pytest.mark.parametrize("where", sorted(DURATION_FIELDS))
def test_every_duration_is_finite_and_in_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str,
                                               value: str) -> None:
    monkeypatch.chdir(tmp_path)
    path = _stage_scenario(tmp_path, DURATION_FIELDS[where].replace("{v}", value))
    with pytest.raises(ScenarioError) as caught:
        load_scenario_file(path)
    lines = caught.value.lines()
    assert lines[0].startswith("s.yaml:4:"), lines
    assert any(word in lines[0] for word in ("out of range", "not a positive duration", "is not a duration")), lines


@pytest.mark.parametrize("where", sorted(BAD_NUMBERS))
def test_every_number_is_finite_and_in_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    monkeypatch.chdir(tmp_path)
    path = _stage_scenario(tmp_path, BAD_NUMBERS[where])
    with pytest.raises(ScenarioError) as caught:
        load_scenario_file(path)
    assert caught.value.lines()[0].startswith("s.yaml:4:"), caught.value.lines()


@pytest.mark.parametrize("value,seconds", [("7d", None), ("168h", 604800.0), ("1ms", 0.001), (604800, 604800.0)])
def test_the_duration_range_ends_are_the_documented_ones(value: object, seconds: float | None) -> None:
    if seconds is None:
        with pytest.raises(ValueError):
            parse_duration(value)
    else:
        assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "61", "-1"])
def test_retry_backoff_must_be_a_finite_number_in_range(tmp_path: Path, value: str) -> None:
    proc = cli("run", "--retry-backoff", value, "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2 and "--retry-backoff" in proc.stderr and "Traceback" not in proc.stderr


# -- names: full-match patterns, checked before anything runs -----------------------------------
@pytest.mark.parametrize("selection", ["", ",", " , ,", "\n"])
@pytest.mark.parametrize("dry_run", [True, False])
def test_an_empty_stage_selection_is_an_input_error(tmp_path: Path, selection: str, dry_run: bool) -> None:
    marker = tmp_path / "ran"
    write_scenario(tmp_path, f"name: sel\nstages:\n  - {{name: teardown, type: shell, always: true, "
                             f"with: {{command: 'touch {marker}'}}}}\n", "s.yaml")
    proc = cli("run", "--scenario", "s.yaml", "--stages", selection, "--results-dir", "R",
               *(["--dry-run"] if dry_run else []), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("xci-cn: --stages ") and "names no stage" in proc.stderr
    assert not marker.exists() and not (tmp_path / "R").exists()


@pytest.mark.parametrize("name", ["x\n", "x\n\n", "UPPER", "-x", "x" * 41, "a/b", ""])
@pytest.mark.parametrize("how", ["option", "env"])
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_bad_sandbox_name_is_refused_before_any_stage(tmp_path: Path, name: str, how: str, dry_run: bool) -> None:
    marker = tmp_path / "ran"
    write_scenario(tmp_path, f"name: sb\nstages:\n"
                             f"  - {{name: first, type: shell, with: {{command: 'touch {marker}'}}}}\n", "s.yaml")
    args = ["run", "--scenario", "s.yaml", "--results-dir", "R", *(["--dry-run"] if dry_run else [])]
    if how == "option":
        proc = cli(*args, "--sandbox-name", name, cwd=tmp_path)
    else:
        proc = cli(*args, cwd=tmp_path, env={"XCI_CN_SANDBOX": name})
    if how == "env" and name == "":
        assert proc.returncode == 0  # an empty variable is an unset one: the default name
        return
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [f"xci-cn: sandbox name {name!r}: use lower case letters, digits "
                                                "and '-' (at most 40)"]
    assert not marker.exists() and not (tmp_path / "R").exists()


# -- results-directory problems are input errors ------------------------------------------------
@pytest.mark.parametrize("where,reason", [("afile/R", "Not a directory"), ("afile/a/b", "Not a directory"),
                                          ("/proc", "o such file or directory"),
                                          ("/sys/fs/xci-cn-results", "Operation not permitted")])
def test_a_results_dir_that_cannot_be_written_is_an_input_error(tmp_path: Path, where: str, reason: str) -> None:
    (tmp_path / "afile").write_text("keep me\n")
    marker = tmp_path / "ran"
    write_scenario(tmp_path, f"name: rd\nstages:\n  - {{name: a, type: shell, with: {{command: 'touch {marker}'}}}}\n",
                   "s.yaml")
    proc = cli("run", "--scenario", "s.yaml", "--results-dir", where, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"xci-cn: --results-dir {where}: ") and reason in lines[0]
    assert not marker.exists() and (tmp_path / "afile").read_text() == "keep me\n"


# -- job names that would leave the output directory --------------------------------------------
@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "/tmp/xci-cn-absolute", "./x", "a//b", "..",
                                  "a\\\\..\\\\b"])
@pytest.mark.parametrize("command", ["render", "test"])
def test_job_names_may_not_leave_the_output_dir(tmp_path: Path, name: str, command: str) -> None:
    (tmp_path / "jjb").mkdir()
    (tmp_path / "jjb" / "jobs.yaml").write_text(
        f"- job:\n    name: 'ok'\n    builders: [{{shell: 'true'}}]\n"
        f"- job:\n    name: '{name}'\n    builders: [{{shell: 'true'}}]\n")
    out = tmp_path / "deep" / "OUT"
    proc = cli("jobs", command, "--jjb", "jjb", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"xci-cn: job {name!r}: not a job name that stays inside the output directory"]
    written = [p for p in tmp_path.rglob("config.xml")]
    assert written == [] and not Path("/tmp/xci-cn-absolute").exists()


# -- nesting depth: every YAML and JSON document xci-cn reads is bounded -----------------------
def _nested_yaml(depth: int) -> str:
    return "[" * depth + "]" * depth


def _nested_block(depth: int) -> str:
    return "".join(f"{'  ' * i}k{i}:\n" for i in range(depth)) + "  " * depth + "v\n"


@pytest.mark.parametrize("style", ["flow", "block"])
@pytest.mark.parametrize("depth", [101, 500, 990])
def test_a_deeply_nested_scenario_is_refused(tmp_path: Path, style: str, depth: int) -> None:
    deep = _nested_yaml(depth) if style == "flow" else "\n" + "".join(
        f"{'  ' * (i + 1)}k{i}:\n" for i in range(depth)) + "  " * (depth + 1) + "v"
    (tmp_path / "s.yaml").write_text(f"name: deep\nstages:\n  - {{name: a, type: shell, with: {{command: 'true'}}}}\n"
                                     f"description: {deep}\n")
    proc = cli("validate", "s.yaml", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert re.match(r"xci-cn: s\.yaml:\d+:\d+: (invalid YAML: )?nested deeper than 100 levels", proc.stderr), \
        proc.stderr[:300]
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) <= 3


@pytest.mark.parametrize("depth", [101, 990, 5000])
def test_a_deeply_nested_manifest_is_refused(tmp_path: Path, depth: int) -> None:
    (tmp_path / "m.yaml").write_text(f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\n"
                                     f"data: {{k: {_nested_yaml(depth)}}}\n")
    write_scenario(tmp_path, "name: deep\nstages:\n  - {name: d, type: deploy, with: {manifests: [m.yaml], "
                             "namespace: n}}\n", "s.yaml")
    proc = cli("validate", "s.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.startswith("xci-cn: m.yaml:4:") and ("nested deeper than 100 levels" in proc.stderr
                                                            or "maximum nesting depth" in proc.stderr)


@pytest.mark.parametrize("depth", [101, 2000])
def test_a_deeply_nested_kubeconfig_is_refused(tmp_path: Path, depth: int) -> None:
    (tmp_path / "kc").write_text('{"apiVersion": "v1", "kind": "Config", "preferences": ' + "[" * depth
                                 + "]" * depth + "}\n")
    proc = cli("run", "--installer", "existing", "--kubeconfig", "kc", "--results-dir", "R", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("xci-cn: kubeconfig kc:1:") and "nested deeper than 100 levels" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "R").exists()


@pytest.mark.parametrize("depth", [101, 600])
def test_a_deeply_nested_jjb_file_is_refused(tmp_path: Path, depth: int) -> None:
    (tmp_path / "jobs.yaml").write_text(f"- job:\n    name: j\n    description: {_nested_yaml(depth)}\n"
                                        "    builders: [{shell: 'true'}]\n")
    proc = cli("jobs", "test", "--jjb", "jobs.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.startswith("xci-cn: jobs.yaml:3:") and "nested deeper than 100 levels" in proc.stderr


def _deep_json(depth: int) -> str:
    return '{"run_id": "r", "version": 1, "stages": [], "x": ' + "[" * depth + "]" * depth + "}"


@pytest.mark.parametrize("depth", [101, 100_000])
def test_a_deeply_nested_summary_or_state_is_refused(tmp_path: Path, depth: int) -> None:
    (tmp_path / "summary.json").write_text(_deep_json(depth))
    proc = cli("report", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr == f"xci-cn: {tmp_path}/summary.json: nested deeper than 100 levels; refusing to load it\n"
    write_scenario(tmp_path, "name: deep\nstages:\n  - {name: a, type: shell, with: {command: 'true'}}\n", "s.yaml")
    (tmp_path / "R").mkdir()
    (tmp_path / "R" / "state.json").write_text(_deep_json(depth))
    proc = cli("run", "--scenario", "s.yaml", "--results-dir", "R", "--resume", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.endswith("R/state.json: nested deeper than 100 levels; refusing to load it\n")


# -- wrong types inside otherwise valid documents -----------------------------------------------
SUMMARY_SHAPES = {
    '{"stages": [{"name": "a", "status": "passed", "history": 3}]}': "stages.0.history: input should be a valid list",
    '{"stages": [{"name": "a", "status": "failed", "checks": [{"name": "c", "passed": "maybe"}]}]}':
        "stages.0.checks.0.passed: input should be a valid boolean",
    '{"stages": [{"status": "passed"}]}': "stages.0.name: field required",
    '{"stages": [7]}': "stages.0: input should be a valid dictionary",
    '[1, 2]': "(document): input should be a valid dictionary",
    '{"stages": [], "inputs": "x"}': "inputs: input should be a valid dictionary",
}


@pytest.mark.parametrize("content", sorted(SUMMARY_SHAPES))
def test_report_refuses_a_summary_of_the_wrong_shape(tmp_path: Path, content: str) -> None:
    (tmp_path / "summary.json").write_text(content)
    proc = cli("report", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    expected = SUMMARY_SHAPES[content].replace(".0", "[0]")
    assert proc.stderr.splitlines()[0].startswith(f"xci-cn: {tmp_path}/summary.json: {expected}"), proc.stderr
    assert not (tmp_path / "report.html").exists()


STATE_SHAPES = {
    '"stages": 5': "stages: input should be a valid list",
    '"stages": [{"name": "a", "type": "shell", "history": [{"attempt": "x", "started": 1}]}]':
        "stages[0].history[0].attempt: input should be a valid integer",
    '"stages": [{"name": "a", "type": "shell", "history": 7}]': "stages[0].history: input should be a valid list",
    '"stages": [{"name": "a", "type": "shell", "outputs": []}]':
        "stages[0].outputs: input should be a valid dictionary",
    '"stages": [{"name": ["a"], "type": "shell", "status": "passed"}]':
        "stages[0].name: input should be a valid string",
    '"stages": [{"name": "a", "type": "shell"}], "run_id": 5': "run_id: input should be a valid string",
}


@pytest.mark.parametrize("fragment", sorted(STATE_SHAPES))
def test_resume_refuses_a_state_of_the_right_version_and_wrong_shapes(tmp_path: Path, fragment: str) -> None:
    marker = tmp_path / "ran"
    write_scenario(tmp_path, f"name: st\nstages:\n  - {{name: a, type: shell, with: {{command: 'touch {marker}'}}}}\n",
                   "s.yaml")
    (tmp_path / "R").mkdir()
    document = json.loads('{"version": 1, "run_id": "r", "fingerprint": "f", "scenario": "st", "inputs": {}, '
                          '"status": "failed", ' + fragment + "}")
    (tmp_path / "R" / "state.json").write_text(json.dumps(document))
    proc = cli("run", "--scenario", "s.yaml", "--results-dir", "R", "--resume", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines()[0].startswith(f"xci-cn: {tmp_path}/R/state.json: {STATE_SHAPES[fragment]}"), \
        proc.stderr
    assert "Traceback" not in proc.stderr and not marker.exists()


# -- messages that name the right thing ---------------------------------------------------------
def _deploy_scenario(directory: Path, manifest: str) -> None:
    write_scenario(directory, "name: paths\nstages:\n  - {name: d, type: deploy, with: {manifests: ["
                              f"'{manifest}'], namespace: n}}}}\n", "s.yaml")


@pytest.mark.parametrize("case,expected", [
    ("symlink-loop", "loop: symbolic link loop (too many levels of symbolic links)"),
    ("fifo", "fifo: is a FIFO, not a file or directory of manifests"),
    ("broken-symlink", "dangling: broken symbolic link"),
    ("missing-relative", "samples/nope/m.yaml: no such file or directory"),
    ("empty-dir", "empty: directory holds no .yaml/.yml files"),
])
def test_a_bad_manifest_path_is_named_for_what_it_is(tmp_path: Path, case: str, expected: str) -> None:
    import os

    os.symlink("loop", tmp_path / "loop")
    os.mkfifo(tmp_path / "fifo")
    os.symlink("gone.yaml", tmp_path / "dangling")
    (tmp_path / "empty").mkdir()
    name = expected.split(":")[0]
    _deploy_scenario(tmp_path, name)
    proc = cli("validate", "s.yaml", cwd=tmp_path, timeout=30)  # a FIFO read would block forever
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"xci-cn: {expected} (stage d)\n"


@pytest.mark.parametrize("case", ["symlink-loop", "fifo", "broken-symlink"])
def test_a_bad_scenario_path_is_named_for_what_it_is(tmp_path: Path, case: str) -> None:
    import os

    if case == "symlink-loop":
        os.symlink("s.yaml", tmp_path / "s.yaml")
        expected = "s.yaml: symbolic link loop (too many levels of symbolic links)"
    elif case == "fifo":
        os.mkfifo(tmp_path / "s.yaml")
        expected = "s.yaml: is a FIFO, not a regular file"
    else:
        os.symlink("gone.yaml", tmp_path / "s.yaml")
        expected = "s.yaml: broken symbolic link"
    proc = cli("validate", "s.yaml", cwd=tmp_path, timeout=30)
    assert proc.returncode == 2 and proc.stderr == f"xci-cn: {expected}\n", proc.stderr


@pytest.mark.parametrize("layout", ["top", "nested"])
def test_an_unreadable_manifest_directory_says_permission_denied(layout: str) -> None:
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="xci-cn-perm-"))
    try:
        base.chmod(0o755)
        graph = base / "graph"
        locked = graph if layout == "top" else graph / "inner"
        locked.mkdir(parents=True)
        (locked / "m.yaml").write_text(CONFIGMAP)
        if layout == "nested":
            (graph / "ok.yaml").write_text(CONFIGMAP.replace("name: c", "name: d"))
        locked.chmod(0)
        _deploy_scenario(base, "graph")
        (base / "s.yaml").chmod(0o644)
        # as an unprivileged user: root reads every directory
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                               "-m", "xci_cn.cli", "validate", "s.yaml"], cwd=base, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "HOME": str(base)})
        assert proc.returncode == 2, proc.stderr
        where = "graph" if layout == "top" else "graph/inner"
        assert proc.stderr == f"xci-cn: {where}: permission denied (stage d)\n"
    finally:
        for path in base.rglob("*"):
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(base)


# -- secrets in check URLs and stage env ---------------------------------------------------------
def test_url_credentials_and_stage_env_secrets_reach_nothing_the_run_writes(tmp_path: Path) -> None:
    port = free_port()  # nothing listens: the check fails and its URL lands in every report
    planted = {"token": "env-token-8d1f2e3c", "marked": "marked-value-4a7b", "url": "url-pass-19c6e0",
               "other": "other-pass-77aa1"}
    url = f"http://probe:{planted['url']}@127.0.0.1:{port}/health"
    write_scenario(tmp_path, f"""name: secrets
stages:
  - name: chatty
    type: shell
    with:
      command: "echo token=$API_TOKEN marked=$PLAIN url={url} other=ftp://x:{planted['other']}@h/ ; printenv"
      env: {{API_TOKEN: {planted['token']}, PLAIN: {planted['marked']}}}
      secret_env: [PLAIN]
  - name: probe
    type: verify
    needs: [chatty]
    with: {{checks: [{{type: http, url: "{url}", retries: 0, timeout: 1}}]}}
""", "s.yaml")
    proc = cli("run", "--scenario", "s.yaml", "--results-dir", "R", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the probe fails: connection refused
    written = [p for p in (tmp_path / "R").rglob("*") if p.is_file()]
    assert {"junit.xml", "summary.json", "report.html", "state.json", "chatty.log"} <= {p.name for p in written}
    leaks = [(p.name, s) for p in written for s in planted.values() if s in p.read_text(errors="replace")]
    leaks += [("console", s) for s in planted.values() if s in proc.stdout + proc.stderr]
    assert leaks == []
    log = (tmp_path / "R" / "logs" / "chatty.log").read_text()
    assert f"url=http://<redacted>@127.0.0.1:{port}/health" in log and "token=<redacted> marked=<redacted>" in log
    junit = (tmp_path / "R" / "junit.xml").read_text()
    assert f"http GET http://&lt;redacted&gt;@127.0.0.1:{port}/health" in junit or \
        f"http GET http://<redacted>@127.0.0.1:{port}/health" in junit


def test_secret_env_must_name_an_env_variable(tmp_path: Path) -> None:
    write_scenario(tmp_path, "name: s\nstages:\n  - {name: a, type: shell, with: {command: 'true', env: {A: b},"
                             " secret_env: [B]}}\n", "s.yaml")
    proc = cli("validate", "s.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr == "xci-cn: secret_env names B, which env does not set (stage a)\n"


# -- a file that is not a scenario is not quoted -------------------------------------------------
@pytest.mark.parametrize("content", [
    "root:$6$saltsalt$hashhashhash:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
    "apiVersion: v1\nkind: Config\nclusters: []\nusers: [{name: u, user: {token: tok-3b8e}}]\n",
    "password: hunter2\nsecret: s3cr3t\n",
    "- a\n- b\n", "", "42\n",
])
@pytest.mark.parametrize("how", ["validate", "run"])
def test_a_file_that_is_no_scenario_gets_one_line_without_its_content(tmp_path: Path, content: str,
                                                                      how: str) -> None:
    (tmp_path / "shadow").write_text(content)
    if how == "validate":
        proc = cli("validate", "shadow", cwd=tmp_path)
    else:
        proc = cli("run", "--results-dir", "R", cwd=tmp_path, env={"DEPLOY_SCENARIO": str(tmp_path / "shadow")})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not an xci-cn scenario (no 'name' and 'stages' at its top" in lines[0], lines
    for word in ("hash", "daemon", "tok-3b8e", "hunter2", "s3cr3t"):
        assert word not in proc.stderr


# -- a 500 that is the user's input is not retried ----------------------------------------------
@pytest.mark.parametrize("case", ["bad-base64", "wrong-type"])
def test_an_object_the_server_cannot_decode_is_invalid_input_at_once(sandbox: dict, tmp_path: Path,
                                                                     case: str) -> None:
    from xci_cn.k8s.resources import RETRY_SECONDS

    body = {"bad-base64": "kind: Secret\nmetadata: {name: bad-b64}\ndata: {key: 'not*base64!'}\n",
            "wrong-type": "kind: ConfigMap\nmetadata: {name: bad-type}\ndata: {key: [1, 2]}\n"}[case]
    (tmp_path / "m.yaml").write_text("apiVersion: v1\n" + body)
    write_scenario(tmp_path, "name: b64\ninstaller: existing\nstages:\n  - {name: d, type: deploy, "
                             "with: {manifests: [m.yaml], namespace: default}}\n", "s.yaml")
    proc = cli("run", "--scenario", "s.yaml", "--kubeconfig", str(sandbox["kubeconfig"]), "--results-dir", "R",
               cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    stage = json.loads((tmp_path / "R" / "summary.json").read_text())["stages"][0]
    assert "m.yaml:1:1: document 1:" in stage["error"] and "rejected by the API server" in stage["error"]
    # one attempt, and not the adapter's transient-failure retry either
    assert stage["attempts"] == 1 and stage["duration"] < RETRY_SECONDS, stage
