"""Keeping secrets out of logs, artifacts and reports.

A ``Redactor`` knows the secret values of a run (tokens, passwords, client
keys read from the environment and kubeconfigs) and replaces them wherever
text is written. ``SECRET_KEY_PATTERN`` recognises secret-bearing names.
"""

from __future__ import annotations

import os
import re
import threading

SECRET_KEY_PATTERN = re.compile(r"(TOKEN|PASSWORD|PASSWD|SECRET|API_KEY|PRIVATE|CREDENTIAL|AUTH)",
                                re.IGNORECASE)
REDACTED = "<redacted>"
# Values shorter than this are not secrets worth masking and would mangle text.
MIN_SECRET_LENGTH = 6


class Redactor:
    """Replaces every known secret value in text."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str | None) -> None:
        if not value or len(value) < MIN_SECRET_LENGTH:
            return
        with self._lock:
            if value not in self._values:
                self._values.add(value)
                self._pattern = None

    def add_from_environment(self, environ: dict[str, str] | None = None) -> None:
        for key, value in (environ if environ is not None else os.environ).items():
            if SECRET_KEY_PATTERN.search(key):
                self.add(value)

    def __call__(self, text: str) -> str:
        with self._lock:
            if not self._values:
                return text
            if self._pattern is None:
                ordered = sorted(self._values, key=len, reverse=True)
                self._pattern = re.compile("|".join(re.escape(v) for v in ordered))
            pattern = self._pattern
        return pattern.sub(REDACTED, text)


_global = Redactor()


def redactor() -> Redactor:
    """The process-wide redactor (filled by the CLI at start-up)."""
    return _global
