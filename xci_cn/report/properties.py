"""scenario.properties: KEY=VALUE lines for Jenkins' EnvInject."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xci_cn.files import write_text_atomic


def escape(value: str) -> str:
    """Java properties escaping of a value (EnvInject reads it that way);
    '=' and ':' need no escape in a value."""
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def render_properties(values: dict[str, Any]) -> str:
    return "".join(f"{key}={escape('' if value is None else value)}\n" for key, value in values.items())


def write_properties(summary: dict[str, Any], path: Path) -> Path:
    inputs = summary["inputs"]
    jenkins = inputs.get("jenkins", {})
    values = {
        "DEPLOY_SCENARIO": summary["scenario"],
        "XCI_FLAVOR": summary["flavor"],
        "INSTALLER_TYPE": summary["installer"],
        "XCI_DISTRO": inputs.get("distro", ""),
        "RESULT": summary["result"],
        "XCI_CN_RUN_ID": summary["run_id"],
        "FAILED_STAGES": ",".join(s["name"] for s in summary["stages"] if s["status"] == "failed"),
    }
    for key in ("GERRIT_CHANGE_NUMBER", "GERRIT_PATCHSET_NUMBER", "GERRIT_REFSPEC", "BUILD_URL"):
        if jenkins.get(key):
            values[key] = jenkins[key]
    write_text_atomic(path, render_properties(values))
    return path
