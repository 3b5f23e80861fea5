"""The ``ansible`` stage: real ansible-runner runs of local playbooks."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import run_scenario

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: say hello
      ansible.builtin.debug:
        msg: "hello {{ greeting }} on {{ xci_flavor }}"
    - name: write a file
      ansible.builtin.copy:
        dest: "{{ target }}"
        content: "{{ deploy_scenario }}"
    - name: break on purpose
      ansible.builtin.command: /bin/false
      when: explode | default(false) | bool
"""


def scenario(playbook: Path, target: Path, explode: bool) -> str:
    return f"""
name: ans
stages:
  - name: play
    type: ansible
    with:
      playbook: {playbook}
      extravars: {{greeting: world, target: "{target}", explode: {str(explode).lower()}}}
"""


def test_playbook_runs_and_streams_events(tmp_path: Path) -> None:
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    target = tmp_path / "out.txt"
    result = run_scenario(tmp_path, scenario(playbook, target, False))
    record = result.records[0]
    assert record.status == "passed", record.error
    assert target.read_text() == "ans"
    log = (tmp_path / "results" / "logs" / "play.log").read_text()
    assert "hello world on aio" in log and "TASK [write a file]" in log
    assert record.outputs["status"] == "successful"


def test_failure_names_task_and_host(tmp_path: Path) -> None:
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    result = run_scenario(tmp_path, scenario(playbook, tmp_path / "out.txt", True))
    record = result.records[0]
    assert record.status == "failed"
    assert record.error.startswith("play.yml: task 'break on purpose' failed on host 'localhost'")


def test_artifacts_do_not_keep_secret_environment(tmp_path: Path, monkeypatch) -> None:
    secret = "s3cr3t-token-value-4711"
    monkeypatch.setenv("GERRIT_PASSWORD", secret)
    monkeypatch.setenv("JENKINS_API_TOKEN", secret)
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    result = run_scenario(tmp_path, scenario(playbook, tmp_path / "out.txt", False))
    assert result.records[0].status == "passed"
    written = [p for p in (tmp_path / "results").rglob("*") if p.is_file()]
    assert any(p.name == "command" for p in written)
    for path in written:
        assert secret not in path.read_text(errors="replace"), path
    command = next(p for p in written if p.name == "command")
    assert json.loads(command.read_text())["env"]["GERRIT_PASSWORD"] == "<redacted>"
