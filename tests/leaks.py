"""Finding processes and ports a sandbox left behind (used by tests and the
benchmark)."""

from __future__ import annotations

import socket
from pathlib import Path

from xci_cn.sandbox.cluster import pid_alive
from xci_cn.sandbox.node import command_lines


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains ``text``."""
    return [(pid, cmdline.strip()) for pid, cmdline in command_lines() if text in cmdline and pid_alive(pid)]


def ours(state: dict[str, list[str]], marks: list[str]) -> dict[str, list[str]]:
    """The entries of ``host_state`` naming any of ``marks`` (a sandbox's
    directory, its node's id, interface names, subnets): what one sandbox
    left, on a host that other sandboxes share meanwhile."""
    return {key: [entry for entry in entries if any(mark in entry for mark in marks)]
            for key, entries in state.items()}


def port_listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def host_state() -> dict[str, list[str]]:
    """What a real node changes on the host, for before/after comparisons:
    interfaces, routes, mounts, iptables rules (v4 and v6), top-level
    cgroups, kubelet's log links, the node's runtime dirs, the sysctls it
    sets (and the host's own network ones, which it must leave alone), and
    runtime processes (containerd, shims, kubelet, kube-proxy, CoreDNS)."""
    import subprocess

    from xci_cn.sandbox import node

    def rules(tool: str) -> list[str]:
        out = subprocess.run([f"{tool}-save"], capture_output=True, text=True).stdout
        return sorted(line.split(" [")[0] for line in out.splitlines()
                      if line and not line.startswith(("#", "*", "COMMIT")))

    def listing(path: Path) -> list[str]:
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []

    runtime = ("containerd", "kubelet", "kube-proxy", "coredns")
    return {
        "interfaces": listing(Path("/sys/class/net")),
        "routes": sorted(node.routes()),
        # the node's own mount points (others' come and go on a shared host)
        "mounts": sorted(point for line in Path("/proc/self/mountinfo").read_text().splitlines()
                         if any(part in (point := line.split()[4]) for part in
                                ("sandboxes", "/run/xci-cn", "/run/netns", "/run/containerd", "kubelet"))),
        "iptables": rules("iptables"),
        "ip6tables": rules("ip6tables"),
        "cgroups": sorted(f"{c.name}/{d}" for c in Path("/sys/fs/cgroup").iterdir() if c.is_dir()
                          for d in listing(c) if (c / d).is_dir()),
        "log links": listing(Path("/var/log/containers")),
        "run dirs": listing(Path("/run/xci-cn")),
        "sysctls": [f"{key}={(Path('/proc/sys') / key).read_text().strip()}"
                    for key in (*node.SYSCTLS, *node.NET_SYSCTLS) if (Path("/proc/sys") / key).exists()],
        "processes": sorted(cmd.split()[0].rsplit("/", 1)[-1] for _, cmd in processes_mentioning("/")
                            if cmd.split()[0].rsplit("/", 1)[-1] in runtime
                            or "containerd-shim" in cmd.split()[0]),
    }
