"""junit.xml for Jenkins' JUnit publisher: one testcase per stage, and one
per check where a stage reports checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from junitparser import Error, Failure, JUnitXml, Skipped, TestCase, TestSuite

from xci_cn.files import write_text_atomic
from xci_cn.secrets import redactor


def _case(name: str, classname: str, seconds: float | None) -> TestCase:
    case = TestCase(name, classname=classname, time=round(seconds or 0.0, 3))
    return case


def build_junit(summary: dict[str, Any]) -> JUnitXml:
    scenario = summary["scenario"]
    suite = TestSuite(f"xci-cn.{scenario}")
    for stage in summary["stages"]:
        classname = f"xci-cn.{scenario}.stages"
        case = _case(stage["name"], classname, stage.get("duration"))
        status = stage["status"]
        attempts = stage.get("attempts", 0)
        if status == "failed":
            message = stage.get("error") or "failed"
            if attempts > 1:
                message = f"{message} (after {attempts} attempts)"
            failure = Failure(message)
            failure.text = "\n".join(
                f"attempt {a['attempt']}: {a.get('error') or 'passed'}" for a in stage.get("history", []))
            case.result = [failure]
        elif status in ("skipped", "cancelled", "not-selected"):
            case.result = [Skipped(stage.get("error") or status)]
        elif status in ("pending", "running"):
            case.result = [Error(f"stage did not finish (status {status})")]
        suite.add_testcase(case)
        for check in stage.get("checks", []):
            check_case = _case(check["name"], f"xci-cn.{scenario}.{stage['name']}", 0)
            if check.get("skipped"):
                check_case.result = [Skipped(check.get("message") or "skipped")]
            elif not check["passed"]:
                check_case.result = [Failure(check.get("message") or "check failed")]
            suite.add_testcase(check_case)
    suite.update_statistics()
    xml = JUnitXml(f"xci-cn {scenario}")
    xml.add_testsuite(suite)
    xml.update_statistics()
    return xml


def write_junit(summary: dict[str, Any], path: Path) -> Path:
    xml = build_junit(summary)
    text = xml.tostring().decode("utf-8") if isinstance(xml.tostring(), bytes) else xml.tostring()
    write_text_atomic(path, redactor()(text))
    return path
