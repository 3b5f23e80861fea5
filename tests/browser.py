"""A real headless Chromium for tests, driven with selenium through the
Debian ``chromium-driver``. Selenium Manager is never used (the driver path
is given), so nothing is downloaded. Every process it starts — chromedriver
and Chromium's process tree — is recorded by PID and killed by PID if
``quit`` leaves any behind.

Used by tests/test_report_html.py.
"""

from __future__ import annotations

import base64
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Chromium quiet and offline: no sandbox (we run as root in CI), no GPU,
# no background requests, a throw-away profile.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")


def _children(pid: int) -> list[int]:
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    for task in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        found += [int(child) for child in text.split()]
    return found


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, parents first."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        tree.append(current)
        todo += _children(current)
    return tree


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, just not yet reaped


class Browser:
    """One Chromium session; use ``browser()`` to get one that is cleaned up."""

    def __init__(self, profile: Path, width: int = 1200, height: int = 900):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={width},{height}")
        self.driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        self.pids = descendants(self.driver.service.process.pid)

    def open(self, path: Path) -> None:
        self.driver.get(path.resolve().as_uri())

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def viewport(self, width: int, height: int = 800) -> None:
        """Show pages as a screen ``width`` CSS pixels wide (a phone below 600)."""
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})

    def screenshot(self, path: Path) -> Path:
        """The whole page at the current viewport width, however long it is."""
        width = self.js("return window.innerWidth")
        height = self.js("return document.documentElement.scrollHeight")
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def quit(self) -> list[int]:
        """Stop the session; kill by PID whatever outlived it. Returns the
        PIDs that had to be killed (empty when quit was clean)."""
        self.pids = sorted(set(self.pids) | set(descendants(self.pids[0])))
        try:
            self.driver.quit()
        finally:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(alive(p) for p in self.pids):
                time.sleep(0.05)
            leftover = [p for p in self.pids if alive(p)]
            for pid in leftover:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return leftover


@contextmanager
def browser(profile: Path, width: int = 1200, height: int = 900) -> Iterator[Browser]:
    session = Browser(profile, width, height)
    try:
        yield session
    finally:
        session.quit()
