"""Run one playbook with ansible-runner and translate the outcome.

The only module that imports ``ansible_runner``. Events are streamed into the
stage log as they arrive; a failure names the task and host that failed; the
artifacts directory is scrubbed of the process environment, which
ansible-runner stores verbatim and which may hold credentials.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xci_cn.errors import Cancelled, EnvironmentProblem, StageFailed, TemporaryError
from xci_cn.secrets import SECRET_KEY_PATTERN


@dataclass
class PlaybookResult:
    status: str
    rc: int
    stats: dict[str, Any]
    artifacts_dir: Path
    failures: list[str] = field(default_factory=list)


def _venv_bin() -> str:
    # ansible-runner looks for ansible-playbook on PATH: use the interpreter's
    # own bin dir so the pinned ansible-core is the one that runs.
    return str(Path(sys.executable).parent)


def _describe_failure(data: dict[str, Any]) -> str:
    host = data.get("host", "?")
    task = data.get("task", "?")
    result = data.get("res", {}) or {}
    message = result.get("msg") or result.get("stderr") or result.get("reason") or ""
    if isinstance(message, list):
        message = " ".join(str(m) for m in message)
    message = str(message).strip().splitlines()[0] if str(message).strip() else ""
    text = f"task {task!r} failed on host {host!r}"
    return f"{text}: {message}" if message else text


def scrub_artifacts(artifacts_dir: Path) -> None:
    """Remove secret-looking environment values from ansible-runner's
    ``command`` file (it records the whole environment of the run), and every
    known secret value from every artifact (events hold task output)."""
    from xci_cn.secrets import redactor

    redact = redactor()
    for path in artifacts_dir.rglob("*"):
        if path.is_file() and path.stat().st_size < 64 * 1024 * 1024:
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError):
                continue
            cleaned = redact(text)
            if cleaned != text:
                path.write_text(cleaned)
    for command_file in artifacts_dir.glob("**/command"):
        try:
            data = json.loads(command_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        env = data.get("env")
        if isinstance(env, dict):
            data["env"] = {k: ("<redacted>" if SECRET_KEY_PATTERN.search(k) else v)
                           for k, v in env.items()}
            command_file.write_text(json.dumps(data))


def run_playbook(
    playbook: Path,
    *,
    private_data_dir: Path,
    log: logging.Logger,
    extravars: dict[str, Any] | None = None,
    envvars: dict[str, str] | None = None,
    inventory: str | None = None,
    cancel: threading.Event | None = None,
    ident: str = "run",
    progress: Callable[[str], None] | None = None,
) -> PlaybookResult:
    """Run ``playbook``; raise StageFailed naming the failed task and host."""
    try:
        import ansible_runner
    except ImportError as exc:  # pragma: no cover - install problem
        raise EnvironmentProblem(f"ansible-runner is not installed: {exc}") from None
    if not playbook.is_file():
        raise StageFailed(f"playbook {playbook} does not exist")
    private_data_dir.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []

    def on_event(event: dict[str, Any]) -> bool:
        stdout = event.get("stdout")
        if stdout:
            for line in stdout.splitlines():
                if line.strip():
                    log.info("ansible: %s", line)
        if progress is not None and event.get("event") == "playbook_on_task_start":
            progress(f"{playbook.name}: {event.get('event_data', {}).get('task', '?')}")
        if event.get("event") in ("runner_on_failed", "runner_on_unreachable"):
            data = event.get("event_data", {})
            if not data.get("ignore_errors"):
                failures.append(_describe_failure(data))
        return True  # keep the event, or ansible-runner loses its stats

    env = {
        "PATH": _venv_bin() + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
        "ANSIBLE_DEPRECATION_WARNINGS": "0",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        **(envvars or {}),
    }
    variables = {"ansible_python_interpreter": "{{ ansible_playbook_python }}", **(extravars or {})}
    runner = ansible_runner.run(
        private_data_dir=str(private_data_dir),
        playbook=str(playbook.resolve()),
        inventory=inventory or "localhost ansible_connection=local",
        extravars=variables,
        envvars=env,
        ident=ident,
        quiet=True,
        suppress_env_files=True,
        event_handler=on_event,
        cancel_callback=(lambda: cancel.is_set()) if cancel is not None else None,
    )
    artifacts = Path(runner.config.artifact_dir)
    scrub_artifacts(artifacts)
    result = PlaybookResult(runner.status, runner.rc, runner.stats or {}, artifacts, failures)
    log.info("ansible: playbook %s finished: %s (rc=%s)", playbook.name, runner.status, runner.rc)
    if runner.status == "canceled":
        raise Cancelled("cancelled")
    # A failed task may pass on another attempt (a host that was not up yet).
    if runner.status != "successful":
        if failures:
            raise TemporaryError(f"{playbook.name}: {failures[0]}")
        raise TemporaryError(f"{playbook.name}: ansible-playbook {runner.status} (rc={runner.rc})")
    return result
