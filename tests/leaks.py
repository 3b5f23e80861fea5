"""Finding processes and ports a sandbox left behind (used by tests and the
benchmark)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from xci_cn.sandbox.cluster import pid_alive


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and pid_alive(int(entry.name)):
            found.append((int(entry.name), cmdline.strip()))
    return found


def port_listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
