"""Keeping secrets out of logs, artifacts and reports.

A ``Redactor`` knows the secret values of a run (tokens, passwords, client
keys read from the environment and kubeconfigs) and replaces them wherever
text is written. ``SECRET_KEY_PATTERN`` recognises secret-bearing names;
the userinfo of every URL is redacted by rule.
"""

from __future__ import annotations

import os
import re
import threading

SECRET_KEY_PATTERN = re.compile(r"(TOKEN|PASSWORD|PASSWD|SECRET|API_KEY|PRIVATE|CREDENTIAL|AUTH)",
                                re.IGNORECASE)
REDACTED = "<redacted>"
# The userinfo of a URL (``http://user:password@host/``): redacted by rule,
# wherever a URL is shown, whoever wrote it.
URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@\"'<>]+@")
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
        self.add_from_mapping(dict(environ if environ is not None else os.environ))

    def add_from_mapping(self, mapping: dict[str, str], secret_names: list[str] | tuple[str, ...] = ()) -> None:
        """The values of secret-named keys (or of the keys marked secret)."""
        for key, value in mapping.items():
            if key in secret_names or SECRET_KEY_PATTERN.search(key):
                self.add(value)

    def __call__(self, text: str) -> str:
        if "://" in text:
            text = URL_USERINFO.sub(rf"\1{REDACTED}@", text)
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
