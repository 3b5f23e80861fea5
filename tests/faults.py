"""Injecting faults into a sandbox's real components: stop a control-plane
process by PID and start it again with the same command line, as a crash
and a supervisor's restart would."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

from xci_cn.sandbox.cluster import Sandbox, pid_alive


def restart_component(sandbox_name: str, component: str, down_seconds: float, *, node: bool = False,
                      sig: int = signal.SIGKILL) -> None:
    """Stop ``component`` (etcd, kube-apiserver …; with ``node`` the real
    node's kubelet, containerd …) with ``sig``, wait, start it again with its
    original command line, and record the new PID where the sandbox keeps it
    (so 'sandbox down' still stops it)."""
    sandbox = Sandbox(sandbox_name)
    pid_dir = sandbox.node.dir / "pids" if node else sandbox.cluster_dir / "pids"
    log_dir = sandbox.node.logs if node else sandbox.cluster_dir / "logs"
    pid_file = pid_dir / f"{component}.pid"
    pid = int(pid_file.read_text())
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")]
    cwd = os.readlink(f"/proc/{pid}/cwd")
    os.kill(pid, sig)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(down_seconds)
    # Started through a shell that exits at once, so the component is not this
    # test process's child (kwokctl detaches its components the same way).
    if node:  # back into the node's network namespace
        from xci_cn.sandbox.node import in_netns

        argv = in_netns(sandbox.node, argv)
    log = log_dir / f"{component}.log"
    script = f"{shlex.join(argv)} >>{shlex.quote(str(log))} 2>&1 </dev/null & echo $!"
    new_pid = subprocess.run(["setsid", "bash", "-c", script], cwd=cwd, capture_output=True, text=True,
                             check=True).stdout.strip()
    pid_file.write_text(new_pid)
