"""The sandbox's real node: containerd (with Debian's runc and CNI plugins),
kubelet, kube-proxy (iptables mode) and CoreDNS, started as processes of the
sandbox, each stopped by the PID it recorded.

Everything a node changes on the host is recorded first and undone by
``cleanup``, which works from the records alone, so it also clears what a
killed run left: processes (by PID and by cgroup), mounts under the node's
directories, the bridge and its veths, the iptables chains kubelet,
kube-proxy and the CNI plugins add, the node's cgroups, kubelet's symlinks in
/var/log/containers, and the sysctls kubelet and kube-proxy set.

kube-proxy's and kubelet's iptables chains are host-wide names, so a host
runs one real node at a time; ``/run/xci-cn/real-node.json`` says whose it
is. Other sandboxes run with ``--pods simulated``.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xci_cn.errors import EnvironmentProblem, StageFailed
from xci_cn.sandbox.binaries import SandboxBinaries
from xci_cn.sandbox.images import built_tarballs, pause_image

Say = Callable[[str], None]

# Components started by this process, kept so that they are reaped (and not
# reported as "still running" when a Popen object is collected).
_STARTED: dict[int, subprocess.Popen[bytes]] = {}

HOST_RECORD = Path("/run/xci-cn/real-node.json")
CNI_DIRS = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTAINER_LOG_LINKS = Path("/var/log/containers")
BRIDGE = "xcicn0"
POD_SUBNET = ipaddress.IPv4Network("10.244.0.0/24")
# Where the kernel says it has what a real node needs.
KERNEL_FILESYSTEMS = Path("/proc/filesystems")
BRIDGE_NETFILTER = Path("/proc/sys/net/bridge")
# What kubelet (setupKernelTunables), kube-proxy and the node need changed;
# recorded before the first start and restored by cleanup.
SYSCTLS = ("kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory", "vm/panic_on_oom",
           "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/ip_forward",
           "net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables",
           "net/ipv4/conf/all/route_localnet")
NEEDED_SYSCTLS = {"net/ipv4/ip_forward": "1", "net/bridge/bridge-nf-call-iptables": "1"}
COMPONENTS = ("coredns", "kube-proxy", "kubelet", "containerd")  # stop order
KUBE_CHAIN_PREFIXES = ("KUBE-", "CNI-")
# An owner this young with no component running yet is starting, not dead.
STARTING_SECONDS = 300
KUBE_PROXY_HEALTHZ, COREDNS_HEALTH, COREDNS_READY = 10256, 18080, 18181


@dataclass(frozen=True)
class NodeLayout:
    """Where one sandbox's node keeps its state (under the sandbox's dir) and
    its sockets (a short path: unix sockets are limited to 108 bytes)."""

    sandbox_name: str
    sandbox_dir: Path

    @property
    def dir(self) -> Path:
        return self.sandbox_dir / "node"

    @property
    def id(self) -> str:
        """Name and a hash of the directory: sandboxes of one name in two
        homes (two users, two test sessions) never share host paths."""
        import hashlib

        return f"{self.sandbox_name}-{hashlib.sha256(str(self.sandbox_dir).encode()).hexdigest()[:8]}"

    @property
    def run_dir(self) -> Path:
        return Path("/run/xci-cn") / self.id

    @property
    def socket(self) -> Path:
        return self.run_dir / "containerd.sock"

    @property
    def kubeconfig(self) -> Path:
        """The sandbox's admin kubeconfig (kwokctl writes it; the node's
        components use it too)."""
        return self.sandbox_dir / "kubeconfig.yaml"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def pod_logs(self) -> Path:
        return self.dir / "pod-logs"

    @property
    def kubelet_root(self) -> Path:
        return self.dir / "kubelet"

    @property
    def cgroup_name(self) -> str:
        return f"xci-cn-{self.id}"

    @property
    def gateway(self) -> str:
        return str(next(POD_SUBNET.hosts()))

    @property
    def network_name(self) -> str:
        return f"xci-cn-{self.id}"

    def pid_file(self, component: str) -> Path:
        return self.dir / "pids" / f"{component}.pid"


# -- pre-flight -----------------------------------------------------------------------

def preflight(layout: NodeLayout) -> None:
    """What a real node needs from the host, each missing part in one line."""
    if os.geteuid() != 0:
        raise EnvironmentProblem(
            "real pods need root (cgroups, mounts, iptables, a bridge): run 'sandbox up' as root, or "
            "choose simulated pods with 'sandbox up --pods simulated' (scenario/flavor setting "
            "'pods: simulated', Jenkins parameter SANDBOX_PODS=simulated)")
    missing = [tool for tool in ("runc", "iptables", "iptables-save", "ip") if not shutil.which(tool)]
    cni = cni_bin_dir()
    if cni is None:
        missing.append(f"the CNI plugins {', '.join(CNI_PLUGINS)} (in {' or '.join(map(str, CNI_DIRS))})")
    if missing:
        raise EnvironmentProblem(
            f"real pods need {', '.join(missing)}: install Debian's runc, iptables, iproute2 and "
            "containernetworking-plugins (tools/bootstrap.sh --system does), or use --pods simulated")
    if "overlay" not in KERNEL_FILESYSTEMS.read_text().split():
        raise EnvironmentProblem(f"real pods need the kernel's overlay filesystem (not in {KERNEL_FILESYSTEMS}); "
                                 "use --pods simulated on this host")
    if not BRIDGE_NETFILTER.is_dir():
        raise EnvironmentProblem(f"real pods need the kernel's bridge netfilter (no {BRIDGE_NETFILTER}: "
                                 "load br_netfilter); use --pods simulated on this host")
    owner = host_owner()
    if owner and owner.get("dir") != str(layout.sandbox_dir):
        previous = NodeLayout(str(owner.get("name")), Path(str(owner.get("dir"))))
        starting = time.time() - float(owner.get("since", 0)) < STARTING_SECONDS
        if not running(previous) and not starting:  # a killed run of another sandbox: its leftovers go
            cleanup(previous)
            owner = host_owner()
    if owner and owner.get("dir") != str(layout.sandbox_dir):
        raise EnvironmentProblem(
            f"this host's real node belongs to sandbox {owner.get('name')!r} ({owner.get('dir')}); "
            f"bring it down with 'xci-cn sandbox down --name {owner.get('name')}' or use --pods simulated")
    if not owner:
        taken = _routes_overlapping(POD_SUBNET)
        if taken:
            raise EnvironmentProblem(f"the real node's pod subnet {POD_SUBNET} is already routed on this host "
                                     f"({taken}); free it or use --pods simulated")
        if _link_exists(BRIDGE):
            raise EnvironmentProblem(f"a network interface named {BRIDGE} exists but no sandbox owns it; "
                                     f"remove it ('ip link del {BRIDGE}') or use --pods simulated")


def cni_bin_dir() -> Path | None:
    for directory in CNI_DIRS:
        if all((directory / plugin).is_file() for plugin in CNI_PLUGINS):
            return directory
    return None


def host_owner() -> dict[str, Any] | None:
    try:
        return json.loads(HOST_RECORD.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _routes_overlapping(network: ipaddress.IPv4Network) -> str:
    out = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        destination = line.split()[0]
        if destination == "default":
            continue
        try:
            if ipaddress.ip_network(destination, strict=False).overlaps(network):
                return line.strip()
        except ValueError:
            continue
    return ""


def _link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


# -- start ----------------------------------------------------------------------------

class Node:
    """Start the node's processes in two halves: ``prepare`` (host set-up,
    containerd, images) needs no API server and runs while the control plane
    starts; ``join`` (kubelet, kube-proxy, CoreDNS) needs it."""

    def __init__(self, layout: NodeLayout, binaries: SandboxBinaries, node_name: str, say: Say):
        self.layout = layout
        self.binaries = binaries
        self.node_name = node_name
        self.say = say

    def prepare(self) -> None:
        layout = self.layout
        cleanup(layout, self.say)  # a killed run of the same name
        for directory in (layout.dir / "pids", layout.logs, layout.pod_logs, layout.kubelet_root,
                          layout.dir / "cni" / "net.d", layout.run_dir):
            directory.mkdir(parents=True, exist_ok=True)
        HOST_RECORD.parent.mkdir(parents=True, exist_ok=True)
        HOST_RECORD.write_text(json.dumps({"name": layout.sandbox_name, "dir": str(layout.sandbox_dir),
                                           "since": time.time()}))
        _record_sysctls(layout)
        for key, value in NEEDED_SYSCTLS.items():
            _write_sysctl(key, value)
        self._bridge()
        self._cgroups()
        self._write_configs()
        self.start("containerd", [str(self.binaries.path("containerd")), "--config",
                                  str(layout.dir / "containerd.toml")])
        self._wait(lambda: self.ctr("version").returncode == 0, 20, "containerd",
                   f"containerd did not answer on {layout.socket}")
        for _spec, tarball in built_tarballs(self.binaries):
            self.import_image(tarball)

    def join(self) -> None:
        layout = self.layout
        kubeconfig = layout.kubeconfig
        self.start("kubelet", [
            str(self.binaries.path("kubelet")), "--config", str(layout.dir / "kubelet.yaml"),
            "--kubeconfig", str(kubeconfig), "--root-dir", str(layout.kubelet_root),
            "--hostname-override", self.node_name, "--node-ip", layout.gateway,
            "--cert-dir", str(layout.kubelet_root / "pki"), "--v", "1"])
        self.start("kube-proxy", [str(self.binaries.path("kube-proxy")), "--config",
                                  str(layout.dir / "kube-proxy.yaml"), "--hostname-override", self.node_name])
        self.start("coredns", [str(self.binaries.path("coredns")), "-conf", str(layout.dir / "Corefile")])

    def start(self, component: str, argv: list[str]) -> int:
        with open(self.layout.logs / f"{component}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=self.layout.dir)
        self.layout.pid_file(component).write_text(str(proc.pid))
        _STARTED[proc.pid] = proc
        return proc.pid

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.binaries.path("ctr")), "--address", str(self.layout.socket),
                               "--namespace", "k8s.io", *args], capture_output=True, text=True, timeout=120)

    def import_image(self, tarball: Path, name: str | None = None) -> str:
        args = ["images", "import", "--platform", "linux/amd64"]
        if name:
            args += ["--index-name", name]
        proc = self.ctr(*args, str(tarball))
        if proc.returncode != 0:
            raise StageFailed(f"{tarball}: containerd refused the image: "
                              f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        return proc.stdout

    def _wait(self, ready: Callable[[], bool], seconds: float, component: str, message: str) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if ready():
                return
            if not component_alive(self.layout, component):
                break
            time.sleep(0.2)
        tail = _tail(self.layout.logs / f"{component}.log")
        raise StageFailed(f"{message}; last log line: {tail}")

    def _bridge(self) -> None:
        run = _checked
        run(["ip", "link", "add", "name", BRIDGE, "type", "bridge"], "create the node's bridge")
        run(["ip", "addr", "add", f"{self.layout.gateway}/{POD_SUBNET.prefixlen}", "dev", BRIDGE],
            "address the node's bridge")
        run(["ip", "link", "set", BRIDGE, "up"], "bring the node's bridge up")

    def _cgroups(self) -> None:
        for controller in _cgroup_hierarchies():
            path = controller / self.layout.cgroup_name
            path.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):  # a new cpuset holds no CPU until told
                if (controller / name).exists():
                    (path / name).write_text((controller / name).read_text())

    def _write_configs(self) -> None:
        layout = self.layout
        cni_dir = cni_bin_dir()
        runc = shutil.which("runc")
        (layout.dir / "containerd.toml").write_text(f"""# containerd for sandbox {layout.sandbox_name}
version = 4
root = '{layout.dir}/containerd/root'
state = '{layout.run_dir}/state'
imports = []
oom_score = 0

[plugins.'io.containerd.server.v1.grpc']
  address = '{layout.socket}'
[plugins.'io.containerd.server.v1.ttrpc']
  address = '{layout.socket}.ttrpc'
[plugins.'io.containerd.server.v1.debug']
  address = ''
[plugins.'io.containerd.shim.v1.manager']
  socket_dir = '{layout.run_dir}/s'
[plugins.'io.containerd.nri.v1.nri']
  disable = true
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '{pause_image(self.binaries.versions)}'
[plugins.'io.containerd.cri.v1.runtime']
  # root here lacks CAP_SYS_RESOURCE: without this every pod sandbox fails
  # ("can't get final child's PID from pipe") asking for oom_score_adj -998.
  restrict_oom_score_adj = true
  enable_cdi = false
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['{cni_dir}']
    conf_dir = '{layout.dir}/cni/net.d'
    max_conf_num = 1
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    BinaryName = '{runc}'
    Root = '{layout.run_dir}/runc'
    SystemdCgroup = false
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
""")
        (layout.dir / "cni" / "net.d" / "10-xci-cn.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": layout.network_name,
            "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                 # the default route: Service ClusterIPs are reached through the host
                 "ipam": {"type": "host-local", "dataDir": str(layout.dir / "cni" / "ipam"),
                          "routes": [{"dst": "0.0.0.0/0"}],
                          "ranges": [[{"subnet": str(POD_SUBNET), "gateway": layout.gateway}]]}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ]}, indent=2))
        kwok_pki = layout.sandbox_dir / "kwok" / "clusters" / layout.sandbox_name / "pki"
        (layout.dir / "kubelet.yaml").write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": layout.gateway, "port": 10250, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(kwok_pki / "ca.crt")}},
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{layout.cgroup_name}", "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{layout.socket}",
            "podLogsDir": str(layout.pod_logs),
            "clusterDNS": [layout.gateway], "clusterDomain": "cluster.local", "resolvConf": "",
            "nodeStatusUpdateFrequency": "2s", "nodeStatusReportFrequency": "10s",
            "syncFrequency": "10s", "fileCheckFrequency": "10s",
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "serializeImagePulls": False, "maxPods": 110,
        }, indent=2))
        (layout.dir / "kube-proxy.yaml").write_text(json.dumps({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "mode": "iptables", "clusterCIDR": str(POD_SUBNET),
            "clientConnection": {"kubeconfig": str(layout.kubeconfig)},
            "bindAddress": layout.gateway,
            "healthzBindAddress": f"127.0.0.1:{KUBE_PROXY_HEALTHZ}", "metricsBindAddress": "127.0.0.1:10249",
            "nodePortAddresses": [f"{layout.gateway}/32"],
            # zeros: leave the host's conntrack limits and timeouts as they are
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                          "tcpCloseWaitTimeout": "0s"},
            "iptables": {"syncPeriod": "30s", "minSyncPeriod": "0s"},
        }, indent=2))
        (layout.dir / "Corefile").write_text(f"""cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {layout.gateway}
    health 127.0.0.1:{COREDNS_HEALTH}
    ready 127.0.0.1:{COREDNS_READY}
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {layout.kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
""")


def _checked(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EnvironmentProblem(f"could not {what}: '{' '.join(argv)}': {proc.stderr.strip()}")


def _tail(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"


def _cgroup_hierarchies() -> list[Path]:
    return [p for p in sorted(CGROUP_ROOT.iterdir()) if p.is_dir() and (p / "cgroup.procs").exists()]


def _record_sysctls(layout: NodeLayout) -> None:
    """The host's values before the first start; a re-up after a killed run
    keeps the first record (the current values are the node's own)."""
    record = layout.dir / "sysctls.json"
    if record.exists():
        return
    values = {}
    for key in SYSCTLS:
        try:
            values[key] = (Path("/proc/sys") / key).read_text().strip()
        except OSError:
            continue
    record.write_text(json.dumps(values, indent=2))


def _write_sysctl(key: str, value: str) -> None:
    try:
        (Path("/proc/sys") / key).write_text(value)
    except OSError as exc:
        raise EnvironmentProblem(f"could not set sysctl {key.replace('/', '.')}={value}: {exc.strerror}") from None


# -- status ---------------------------------------------------------------------------

def services_ready(layout: NodeLayout) -> bool:
    """kube-proxy synced its rules and CoreDNS its view of the cluster."""
    import http.client

    for port, path in ((KUBE_PROXY_HEALTHZ, "/healthz"), (COREDNS_READY, "/ready")):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", path)
            if connection.getresponse().status != 200:
                return False
        except OSError:
            return False
        finally:
            connection.close()
    return True


def recorded_pid(layout: NodeLayout, component: str) -> int | None:
    try:
        return int(layout.pid_file(component).read_text().strip())
    except (OSError, ValueError):
        return None


def _is_ours(pid: int, layout: NodeLayout) -> bool:
    """The PID still runs one of this node's processes (not a reused PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    return str(layout.dir) in cmdline or str(layout.run_dir) in cmdline


def component_alive(layout: NodeLayout, component: str) -> bool:
    pid = recorded_pid(layout, component)
    return pid is not None and _is_ours(pid, layout)


def running(layout: NodeLayout) -> dict[str, int]:
    return {c: pid for c in COMPONENTS if (pid := recorded_pid(layout, c)) and _is_ours(pid, layout)}


# -- clean-up -------------------------------------------------------------------------

def cleanup(layout: NodeLayout, say: Say | None = None) -> list[str]:
    """Undo everything a node of this layout did on the host (idempotent);
    returns what was found and removed, for the log."""
    owns_host = (host_owner() or {}).get("dir") == str(layout.sandbox_dir)
    if not layout.dir.exists() and not layout.run_dir.exists() and not owns_host:
        return []
    done: list[str] = []
    for component in COMPONENTS:
        pid = recorded_pid(layout, component)
        if component == "containerd":
            _kill_cgroup_processes(layout, done)
            stop_matching(lambda cmd: str(layout.socket) in cmd, "containerd-shim", done)
        if pid and _is_ours(pid, layout):
            _stop(pid)
            done.append(f"stopped {component} (pid {pid})")
    stop_matching(lambda cmd: str(layout.socket) in cmd or str(layout.run_dir) in cmd, "leftover", done)
    _unmount_under((layout.dir, layout.run_dir), done)
    if owns_host:
        _remove_links(done)
        _remove_chains(done)
        HOST_RECORD.unlink(missing_ok=True)
    _remove_cgroups(layout, done)
    _remove_log_links(layout)
    _restore_sysctls(layout, done)
    shutil.rmtree(layout.run_dir, ignore_errors=True)
    if say and done:
        say("node clean-up: " + "; ".join(done))
    return done


def _stop(pid: int, grace: float = 5.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    started = _STARTED.get(pid)
    if started is not None:  # our own child (started in this process): reap it
        if started.poll() is None:
            return True
        del _STARTED[pid]
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _kill_cgroup_processes(layout: NodeLayout, done: list[str]) -> None:
    """Every container process: whatever runs in the node's cgroup subtree."""
    pids: set[int] = set()
    for controller in _cgroup_hierarchies():
        base = controller / layout.cgroup_name
        if base.is_dir():
            for procs in base.rglob("cgroup.procs"):
                try:
                    pids.update(int(p) for p in procs.read_text().split())
                except OSError:
                    continue
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    if pids:
        done.append(f"killed {len(pids)} container processes")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)


def command_lines() -> Iterator[tuple[int, str]]:
    """(PID, command line) of every other process of the host."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        yield int(entry.name), cmdline


def stop_matching(match: Callable[[str], bool], label: str, done: list[str]) -> None:
    found = [pid for pid, cmdline in command_lines() if match(cmdline)]
    for pid in found:
        _stop(pid, grace=2)
    if found:
        done.append(f"stopped {len(found)} {label} processes")


def _unmount_under(roots: tuple[Path, ...], done: list[str]) -> None:
    """Unmount every mount below ``roots``, deepest first (kubelet's self bind
    mount of its root dir, pod volumes, overlay rootfs, netns files)."""
    prefixes = tuple(str(root) for root in roots)
    for _ in range(5):  # a lazy unmount can uncover a mount below it
        mounts = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if any(point == p or point.startswith(p + "/") for p in prefixes):
                mounts.append(point)
        if not mounts:
            return
        for point in sorted(set(mounts), key=len, reverse=True):
            proc = subprocess.run(["umount", "-l", point], capture_output=True, text=True)
            if proc.returncode == 0:
                done.append(f"unmounted {point}")


def _remove_links(done: list[str]) -> None:
    if not _link_exists(BRIDGE):
        return
    out = subprocess.run(["ip", "-o", "link", "show", "master", BRIDGE], capture_output=True, text=True).stdout
    for line in out.splitlines():
        veth = line.split(":")[1].strip().split("@")[0]
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
    done.append(f"deleted bridge {BRIDGE}")


def _remove_chains(done: list[str]) -> None:
    """kubelet's, kube-proxy's and the CNI plugins' chains, and the jumps to
    them from built-in chains (v4 and v6)."""
    removed = 0
    for tool in ("iptables", "ip6tables"):
        if not shutil.which(tool):
            continue
        for table in ("filter", "nat", "mangle"):
            listing = subprocess.run([tool, "-w", "-t", table, "-S"], capture_output=True, text=True).stdout
            ours = [line.split()[1] for line in listing.splitlines()
                    if line.startswith("-N ") and line.split()[1].startswith(KUBE_CHAIN_PREFIXES)]
            if not ours:
                continue
            for line in listing.splitlines():
                parts = shlex.split(line)  # comments are quoted
                if parts[:1] == ["-A"] and parts[1] not in ours and "-j" in parts \
                        and parts[parts.index("-j") + 1] in ours:
                    subprocess.run([tool, "-w", "-t", table, "-D", *parts[1:]], capture_output=True)
            for chain in ours:
                subprocess.run([tool, "-w", "-t", table, "-F", chain], capture_output=True)
            for chain in ours:
                subprocess.run([tool, "-w", "-t", table, "-X", chain], capture_output=True)
                removed += 1
    if removed:
        done.append(f"removed {removed} iptables chains")


def _remove_cgroups(layout: NodeLayout, done: list[str]) -> None:
    count = 0
    for controller in _cgroup_hierarchies():
        base = controller / layout.cgroup_name
        if not base.is_dir():
            continue
        for directory in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                                reverse=True) + [base]:
            try:
                directory.rmdir()
                count += 1
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    continue
    if count:
        done.append(f"removed {count} cgroups")


def _remove_log_links(layout: NodeLayout) -> None:
    """kubelet links every container's log into /var/log/containers."""
    if not CONTAINER_LOG_LINKS.is_dir():
        return
    for link in CONTAINER_LOG_LINKS.iterdir():
        try:
            if link.is_symlink() and os.readlink(link).startswith(str(layout.pod_logs)):
                link.unlink()
        except OSError:
            continue


def _restore_sysctls(layout: NodeLayout, done: list[str]) -> None:
    record = layout.dir / "sysctls.json"
    try:
        values = json.loads(record.read_text())
    except (OSError, json.JSONDecodeError):
        return
    changed = []
    for key, value in values.items():
        path = Path("/proc/sys") / key
        try:
            if path.read_text().strip() != value:
                path.write_text(value)
                changed.append(key.replace("/", "."))
        except OSError:
            continue
    record.unlink()
    if changed:
        done.append(f"restored sysctls {', '.join(changed)}")
