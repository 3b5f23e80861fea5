"""The sandbox's real node: containerd (with Debian's runc and CNI plugins),
kubelet, kube-proxy (iptables mode) and CoreDNS, started as processes of the
sandbox in a network namespace of the node's own, each stopped by the PID it
recorded.

The namespace holds the node's bridge, its pods' veths and every iptables
chain kubelet, kube-proxy and the CNI plugins add, so several real nodes run
on one host without meeting. A veth pair joins it to the host; host routes
send the node's pod subnet and its sandbox's Service CIDR through it (tests,
Traefik, Prometheus and pod-sd on the host reach pod IPs and ClusterIPs), and
one DNAT rule on the host's end lets the node reach its API server on the
host's loopback. Each node claims an address slot
(``/run/xci-cn/slot-<n>.json``): its pod subnet, Service CIDR, link subnet and
interface names, none routed or in use when it was claimed.

Everything a node changes on the host is recorded first and undone by
``cleanup``, which works from the records alone, so it also clears what a
killed run left: processes (by PID, by cgroup and by network namespace),
mounts under the node's directories (its namespace among them), the host's
end of the veth with its routes, the DNAT rule, the node's cgroups, kubelet's
symlinks in /var/log/containers, and the kernel-wide sysctls kubelet sets
(restored when the host's last real node goes).
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

RUN_ROOT = Path("/run/xci-cn")
CNI_DIRS = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTAINER_LOG_LINKS = Path("/var/log/containers")
# Address slots: slot n has the n-th /24 of the pod subnets, the n-th /20 of
# the Service CIDRs (room for thousands of Services) and the n-th /30 of the
# links between host and node. A slot whose networks the host routes is
# skipped; ClusterIPs are not routed where a cluster handles them in the
# host's own iptables, so the Service CIDRs keep out of 10.96.0.0/12, the
# range of kubeadm, kind and minikube (and of host-namespace nodes of
# earlier xci-cn versions).
SLOTS = 64
POD_SUBNETS = ipaddress.IPv4Network("10.244.0.0/18")
SERVICE_CIDRS = ipaddress.IPv4Network("10.112.0.0/14")
LINK_SUBNETS = ipaddress.IPv4Network("10.243.0.0/24")
# A name in the API server's certificate (kwokctl's): the node reaches the
# server through the host's end of the link, not by that name.
API_SERVER_NAME = "localhost"
# Where the kernel says it has what a real node needs.
KERNEL_FILESYSTEMS = Path("/proc/filesystems")
BRIDGE_NETFILTER = Path("/proc/sys/net/bridge")
# Kernel-wide sysctls kubelet (setupKernelTunables) changes: recorded before
# the host's first real node starts, restored when its last one goes.
SYSCTLS = ("kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory", "vm/panic_on_oom",
           "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
SYSCTL_RECORD = RUN_ROOT / "sysctls.json"
# Per network namespace: set in the node's, the host's are left as they are.
NET_SYSCTLS = ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables",
               "net/ipv4/conf/all/route_localnet")
NEEDED_NET_SYSCTLS = {"net/ipv4/ip_forward": "1", "net/bridge/bridge-nf-call-iptables": "1"}
COMPONENTS = ("coredns", "kube-proxy", "kubelet", "containerd")  # stop order
# An owner this young with no component running yet is starting, not dead.
STARTING_SECONDS = 300
KUBE_PROXY_HEALTHZ, COREDNS_HEALTH, COREDNS_READY = 10256, 18080, 18181


@dataclass(frozen=True)
class NodeNetwork:
    """The addresses and interface names of one address slot."""

    slot: int

    def _nth(self, pool: ipaddress.IPv4Network, prefix: int) -> ipaddress.IPv4Network:
        size = 2 ** (32 - prefix)
        return ipaddress.IPv4Network((int(pool.network_address) + self.slot * size, prefix))

    @property
    def pod_subnet(self) -> ipaddress.IPv4Network:
        return self._nth(POD_SUBNETS, 24)

    @property
    def service_cidr(self) -> ipaddress.IPv4Network:
        return self._nth(SERVICE_CIDRS, 20)

    @property
    def link(self) -> ipaddress.IPv4Network:
        return self._nth(LINK_SUBNETS, 30)

    @property
    def host_ip(self) -> str:
        """The host's end of the link: the node's way to its API server."""
        return str(self.link[1])

    @property
    def node_ip(self) -> str:
        """The node's end of the link: its InternalIP."""
        return str(self.link[2])

    @property
    def gateway(self) -> str:
        """The bridge's address: the pods' gateway and DNS server."""
        return str(self.pod_subnet[1])

    @property
    def bridge(self) -> str:
        return f"xcicn{self.slot}"

    @property
    def host_veth(self) -> str:
        return f"xcicn{self.slot}-host"

    @property
    def node_veth(self) -> str:
        return f"xcicn{self.slot}-node"

    def networks(self) -> dict[str, ipaddress.IPv4Network]:
        return {"pod subnet": self.pod_subnet, "Service CIDR": self.service_cidr, "link": self.link}


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
        return f"{self.sandbox_name}-{self._hash[:8]}"

    @property
    def _hash(self) -> str:
        import hashlib

        return hashlib.sha256(str(self.sandbox_dir).encode()).hexdigest()

    @property
    def preferred_slot(self) -> int:
        """Derived from the sandbox, so that two sandboxes seldom try the same
        slot first; the next free one is taken when it is not free."""
        return int(self._hash[8:16], 16) % SLOTS

    @property
    def run_dir(self) -> Path:
        return RUN_ROOT / self.id

    @property
    def socket(self) -> Path:
        return self.run_dir / "containerd.sock"

    @property
    def netns(self) -> Path:
        """The node's network namespace, bind-mounted here while it lives."""
        return self.run_dir / "netns"

    @property
    def kubeconfig(self) -> Path:
        """The sandbox's admin kubeconfig (kwokctl writes it)."""
        return self.sandbox_dir / "kubeconfig.yaml"

    @property
    def node_kubeconfig(self) -> Path:
        """The admin kubeconfig pointed at the API server through the link,
        for the node's components."""
        return self.dir / "kubeconfig.yaml"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def pod_logs(self) -> Path:
        return self.dir / "pod-logs"

    @property
    def kubelet_root(self) -> Path:
        """Under the runtime dir, not the sandbox's: kubelet makes unix
        sockets in it (pod-resources, device plugins), whose paths must stay
        within 108 bytes however deep the sandbox home is."""
        return self.run_dir / "kubelet"

    @property
    def cgroup_name(self) -> str:
        return f"xci-cn-{self.id}"

    @property
    def network_name(self) -> str:
        return f"xci-cn-{self.id}"

    @property
    def dnat_comment(self) -> str:
        return f"xci-cn-node:{self.id}"

    def pid_file(self, component: str) -> Path:
        return self.dir / "pids" / f"{component}.pid"


def in_netns(layout: NodeLayout, argv: list[str]) -> list[str]:
    """``argv`` run in the node's network namespace. nsenter execs it (same
    PID), entering only the network namespace: kubelet's mounts must stay
    visible to containerd and the host (``ip netns exec`` would remount /sys
    in a mount namespace of its own)."""
    return ["nsenter", f"--net={layout.netns}", "--", *argv]


# -- address slots --------------------------------------------------------------------

def _slot_file(slot: int) -> Path:
    return RUN_ROOT / f"slot-{slot}.json"


def claims() -> dict[int, dict[str, Any]]:
    """Slot -> its claim (name, dir, since) on this host."""
    out: dict[int, dict[str, Any]] = {}
    for path in RUN_ROOT.glob("slot-*.json") if RUN_ROOT.is_dir() else ():
        try:
            out[int(path.stem.removeprefix("slot-"))] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return out


def network_of(layout: NodeLayout) -> NodeNetwork | None:
    """The network of the slot this node claimed (None: it claimed none)."""
    for slot, claim in claims().items():
        if claim.get("dir") == str(layout.sandbox_dir):
            return NodeNetwork(slot)
    return None


@contextmanager
def _host_lock() -> Iterator[None]:
    """One claim or release at a time on the host (two test sessions, two
    Jenkins executors): a lock on the runtime directory itself, so nothing is
    left behind."""
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    fd = os.open(RUN_ROOT, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _clear_dead_claims(layout: NodeLayout) -> None:
    """A killed run of another sandbox: its leftovers go (its slot with them)."""
    for claim in claims().values():
        if claim.get("dir") == str(layout.sandbox_dir):
            continue
        previous = NodeLayout(str(claim.get("name")), Path(str(claim.get("dir"))))
        starting = time.time() - float(claim.get("since", 0)) < STARTING_SECONDS
        if not running(previous) and not starting:
            cleanup(previous)


def _slot_taken(network: NodeNetwork, taken: dict[int, dict[str, Any]], routes: list[str]) -> str:
    """Why the slot cannot be had ('' when it can)."""
    if network.slot in taken:
        return f"claimed by sandbox {taken[network.slot].get('name')!r}"
    for what, subnet in network.networks().items():
        route = _route_overlapping(routes, subnet)
        if route:
            return f"its {what} {subnet} is already routed on this host ({route})"
    for name in (network.host_veth, network.bridge):
        if _link_exists(name):
            return f"a network interface named {name} exists"
    return ""


def free_slot(layout: NodeLayout) -> NodeNetwork:
    """The first free slot from the sandbox's preferred one; EnvironmentProblem
    naming why the preferred one is taken when none is free."""
    taken = claims()
    routes_on_host = routes()
    first = ""
    for step in range(SLOTS):
        network = NodeNetwork((layout.preferred_slot + step) % SLOTS)
        why = _slot_taken(network, taken, routes_on_host)
        if not why:
            return network
        first = first or f"slot {network.slot}: {why}"
    raise EnvironmentProblem(
        f"no address slot is free for a real node on this host (all {SLOTS} of pod subnets {POD_SUBNETS}, "
        f"Service CIDRs {SERVICE_CIDRS}, links {LINK_SUBNETS} taken or routed; {first}); bring a sandbox "
        "down, free the addresses or use --pods simulated")


def _claim(layout: NodeLayout) -> NodeNetwork:
    with _host_lock():
        network = free_slot(layout)
        if not claims():  # the host's first real node: the host's values, before kubelet's
            _record_sysctls()
        RUN_ROOT.joinpath(f"slot-{network.slot}.partial").write_text(json.dumps({
            "name": layout.sandbox_name, "dir": str(layout.sandbox_dir), "id": layout.id,
            "since": time.time()}))
        RUN_ROOT.joinpath(f"slot-{network.slot}.partial").replace(_slot_file(network.slot))
    return network


def _release(layout: NodeLayout, network: NodeNetwork | None, done: list[str]) -> None:
    with _host_lock():
        if network is not None:
            _slot_file(network.slot).unlink(missing_ok=True)
        if not claims():  # the host's last real node went
            _restore_sysctls(done)


# -- pre-flight -----------------------------------------------------------------------

def preflight(layout: NodeLayout) -> None:
    """What a real node needs from the host, each missing part in one line."""
    if os.geteuid() != 0:
        raise EnvironmentProblem(
            "real pods need root (cgroups, mounts, iptables, a network namespace): run 'sandbox up' as root, "
            "or choose simulated pods with 'sandbox up --pods simulated' (scenario/flavor setting "
            "'pods: simulated', Jenkins parameter SANDBOX_PODS=simulated)")
    missing = [tool for tool in ("runc", "iptables", "iptables-save", "ip", "nsenter", "unshare")
               if not shutil.which(tool)]
    cni = cni_bin_dir()
    if cni is None:
        missing.append(f"the CNI plugins {', '.join(CNI_PLUGINS)} (in {' or '.join(map(str, CNI_DIRS))})")
    if missing:
        raise EnvironmentProblem(
            f"real pods need {', '.join(missing)}: install Debian's runc, iptables, iproute2, util-linux and "
            "containernetworking-plugins (tools/bootstrap.sh --system does), or use --pods simulated")
    if "overlay" not in KERNEL_FILESYSTEMS.read_text().split():
        raise EnvironmentProblem(f"real pods need the kernel's overlay filesystem (not in {KERNEL_FILESYSTEMS}); "
                                 "use --pods simulated on this host")
    if not BRIDGE_NETFILTER.is_dir():
        raise EnvironmentProblem(f"real pods need the kernel's bridge netfilter (no {BRIDGE_NETFILTER}: "
                                 "load br_netfilter); use --pods simulated on this host")
    _clear_dead_claims(layout)
    if network_of(layout) is None:  # a killed run of this sandbox gives its own slot back at up
        free_slot(layout)


def cni_bin_dir() -> Path | None:
    for directory in CNI_DIRS:
        if all((directory / plugin).is_file() for plugin in CNI_PLUGINS):
            return directory
    return None


def routes() -> list[str]:
    """The host's IPv4 routes, every table."""
    out = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def _route_overlapping(routes: list[str], network: ipaddress.IPv4Network) -> str:
    for line in routes:
        words = line.split()
        destination = words[1] if words[0] in ("local", "broadcast", "unicast", "blackhole",
                                                "unreachable", "prohibit", "anycast", "multicast",
                                                "throw", "nat") else words[0]
        if destination == "default":
            continue
        try:
            if ipaddress.ip_network(destination, strict=False).overlaps(network):
                return line
        except ValueError:
            continue
    return ""


def _link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


# -- start ----------------------------------------------------------------------------

class Node:
    """Start the node in three steps: ``claim`` (its address slot, after
    clearing a killed run of the same sandbox) comes first, since the
    control plane needs the slot's Service CIDR; ``prepare`` (the namespace,
    containerd, images) needs no API server and runs while the control plane
    starts; ``join`` (kubelet, kube-proxy, CoreDNS) needs it."""

    def __init__(self, layout: NodeLayout, binaries: SandboxBinaries, node_name: str, say: Say):
        self.layout = layout
        self.binaries = binaries
        self.node_name = node_name
        self.say = say
        self._network: NodeNetwork | None = None

    @property
    def network(self) -> NodeNetwork:
        if self._network is None:
            self._network = network_of(self.layout)
        if self._network is None:
            raise StageFailed(f"the real node of sandbox {self.layout.sandbox_name!r} holds no address slot")
        return self._network

    def claim(self) -> NodeNetwork:
        cleanup(self.layout, self.say)  # a killed run of the same name
        _clear_dead_claims(self.layout)
        self._network = _claim(self.layout)
        return self._network

    def prepare(self) -> None:
        layout = self.layout
        for directory in (layout.dir / "pids", layout.logs, layout.pod_logs, layout.kubelet_root,
                          layout.dir / "cni" / "net.d", layout.run_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._namespace()
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
        self._api_server_path()
        self.start("kubelet", [
            str(self.binaries.path("kubelet")), "--config", str(layout.dir / "kubelet.yaml"),
            "--kubeconfig", str(layout.node_kubeconfig), "--root-dir", str(layout.kubelet_root),
            "--hostname-override", self.node_name, "--node-ip", self.network.node_ip,
            "--cert-dir", str(layout.kubelet_root / "pki"), "--v", "1"])
        self.start("kube-proxy", [str(self.binaries.path("kube-proxy")), "--config",
                                  str(layout.dir / "kube-proxy.yaml"), "--hostname-override", self.node_name])
        self.start("coredns", [str(self.binaries.path("coredns")), "-conf", str(layout.dir / "Corefile")])

    def start(self, component: str, argv: list[str]) -> int:
        with open(self.layout.logs / f"{component}.log", "ab") as log:
            proc = subprocess.Popen(in_netns(self.layout, argv), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, cwd=self.layout.dir)
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

    def _namespace(self) -> None:
        """The node's network namespace, the link to the host (the node's end
        holds its InternalIP), the bridge, and the host routes into it."""
        layout, net = self.layout, self.network
        run = _checked
        layout.netns.touch()
        run(["unshare", f"--net={layout.netns}", "true"], "create the node's network namespace")
        run(["ip", "link", "add", net.host_veth, "type", "veth", "peer", "name", net.node_veth,
             "netns", str(layout.netns)], "create the link between the host and the node")
        run(in_netns(layout, ["ip", "-batch", "-"]), "set up the node's network namespace", "\n".join([
            "link set lo up",
            f"addr add {net.node_ip}/{net.link.prefixlen} dev {net.node_veth}",
            f"link set {net.node_veth} up",
            f"route add default via {net.host_ip}",
            f"link add name {net.bridge} type bridge",
            f"addr add {net.gateway}/{net.pod_subnet.prefixlen} dev {net.bridge}",
            f"link set {net.bridge} up", ""]))
        sysctls = "; ".join(f"echo {value} > /proc/sys/{key}" for key, value in NEEDED_NET_SYSCTLS.items())
        run(in_netns(layout, ["sh", "-ec", sysctls]), "set the node's forwarding sysctls")
        run(["ip", "addr", "add", f"{net.host_ip}/{net.link.prefixlen}", "dev", net.host_veth],
            "address the host's end of the link")
        run(["ip", "link", "set", net.host_veth, "up"], "bring the host's end of the link up")
        for subnet in (net.pod_subnet, net.service_cidr):
            run(["ip", "route", "add", str(subnet), "via", net.node_ip, "dev", net.host_veth],
                f"route {subnet} to the node")

    def _api_server_path(self) -> None:
        """The API server listens on the host's loopback: the node reaches it
        at the host's end of the link, DNAT'ed to 127.0.0.1 (which the kernel
        allows with route_localnet, on that interface only). The node's
        kubeconfig asks for a name in the server's certificate."""
        import yaml

        layout, net = self.layout, self.network
        config = yaml.safe_load(layout.kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        server = urllib.parse.urlsplit(cluster["server"])
        port = server.port or 443
        cluster["server"] = f"https://{net.host_ip}:{port}"
        cluster["tls-server-name"] = API_SERVER_NAME
        fd = os.open(layout.node_kubeconfig, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            yaml.safe_dump(config, handle)
        _write_sysctl(f"net/ipv4/conf/{net.host_veth}/route_localnet", "1")
        _checked(["iptables", "-w", "-t", "nat", "-I", "PREROUTING", "-i", net.host_veth, "-d", net.host_ip,
                  "-p", "tcp", "--dport", str(port), "-m", "comment", "--comment", layout.dnat_comment,
                  "-j", "DNAT", "--to-destination", f"127.0.0.1:{port}"],
                 "let the node reach its API server")

    def _cgroups(self) -> None:
        for controller in _cgroup_hierarchies():
            path = controller / self.layout.cgroup_name
            path.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):  # a new cpuset holds no CPU until told
                if (controller / name).exists():
                    (path / name).write_text((controller / name).read_text())

    def _write_configs(self) -> None:
        layout, net = self.layout, self.network
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
                {"type": "bridge", "bridge": net.bridge, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                 # the default route: Service ClusterIPs are reached through the node's namespace
                 "ipam": {"type": "host-local", "dataDir": str(layout.dir / "cni" / "ipam"),
                          "routes": [{"dst": "0.0.0.0/0"}],
                          "ranges": [[{"subnet": str(net.pod_subnet), "gateway": net.gateway}]]}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ]}, indent=2))
        kwok_pki = layout.sandbox_dir / "kwok" / "clusters" / layout.sandbox_name / "pki"
        (layout.dir / "kubelet.yaml").write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": net.node_ip, "port": 10250, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(kwok_pki / "ca.crt")}},
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{layout.cgroup_name}", "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{layout.socket}",
            "podLogsDir": str(layout.pod_logs),
            "clusterDNS": [net.gateway], "clusterDomain": "cluster.local", "resolvConf": "",
            "nodeStatusUpdateFrequency": "2s", "nodeStatusReportFrequency": "10s",
            "syncFrequency": "10s", "fileCheckFrequency": "10s",
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "serializeImagePulls": False, "maxPods": 110,
        }, indent=2))
        (layout.dir / "kube-proxy.yaml").write_text(json.dumps({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "mode": "iptables", "clusterCIDR": str(net.pod_subnet),
            "clientConnection": {"kubeconfig": str(layout.node_kubeconfig)},
            "bindAddress": net.node_ip,
            # on the node's address: up asks from the host whether it synced
            "healthzBindAddress": f"{net.node_ip}:{KUBE_PROXY_HEALTHZ}", "metricsBindAddress": "127.0.0.1:10249",
            "nodePortAddresses": [f"{net.node_ip}/32"],
            # zeros: leave the host's conntrack limits and timeouts as they are
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                          "tcpCloseWaitTimeout": "0s"},
            "iptables": {"syncPeriod": "30s", "minSyncPeriod": "0s"},
        }, indent=2))
        (layout.dir / "Corefile").write_text(f"""cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {net.gateway}
    health {net.node_ip}:{COREDNS_HEALTH}
    ready {net.node_ip}:{COREDNS_READY}
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {layout.node_kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
""")


def _checked(argv: list[str], what: str, stdin: str | None = None) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, input=stdin)
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


def _record_sysctls() -> None:
    """The host's values before its first real node (called with the host
    lock held, no claim on the host); a record left by a killed run is kept:
    the current values may be its kubelet's."""
    if SYSCTL_RECORD.exists():
        return
    values = {}
    for key in SYSCTLS:
        try:
            values[key] = (Path("/proc/sys") / key).read_text().strip()
        except OSError:
            continue
    SYSCTL_RECORD.write_text(json.dumps(values, indent=2))


def _write_sysctl(key: str, value: str) -> None:
    try:
        (Path("/proc/sys") / key).write_text(value)
    except OSError as exc:
        raise EnvironmentProblem(f"could not set sysctl {key.replace('/', '.')}={value}: {exc.strerror}") from None


# -- status ---------------------------------------------------------------------------

def services_ready(layout: NodeLayout) -> bool:
    """kube-proxy synced its rules and CoreDNS its view of the cluster."""
    import http.client

    network = network_of(layout)
    if network is None:
        return False
    for port, path in ((KUBE_PROXY_HEALTHZ, "/healthz"), (COREDNS_READY, "/ready")):
        connection = http.client.HTTPConnection(network.node_ip, port, timeout=2)
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
    network = network_of(layout)
    if not layout.dir.exists() and not layout.run_dir.exists() and network is None:
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
    _kill_namespace_processes(layout, done)
    stop_matching(lambda cmd: str(layout.socket) in cmd or str(layout.run_dir) in cmd, "leftover", done)
    if network is not None:  # while the namespace lives: its end of the link goes with the host's
        _remove_host_network(layout, network, done)
    _unmount_under((layout.dir, layout.run_dir), done)  # the namespace's bind mount too
    _remove_cgroups(layout, done)
    _remove_log_links(layout)
    _release(layout, network, done)
    shutil.rmtree(layout.run_dir, ignore_errors=True)
    if say and done:
        say("node clean-up: " + "; ".join(done))
    return done


def _namespace_id(layout: NodeLayout) -> str | None:
    """``net:[inode]`` of the node's namespace while it is mounted (an
    unmounted placeholder file names no namespace)."""
    try:
        if os.stat(layout.netns).st_dev == os.stat(layout.run_dir).st_dev:
            return None
        return f"net:[{os.stat(layout.netns).st_ino}]"
    except OSError:
        return None


def _kill_namespace_processes(layout: NodeLayout, done: list[str]) -> None:
    """Whatever still runs in the node's network namespace (a CNI plugin, a
    component restarted by hand): it would keep the namespace alive."""
    namespace = _namespace_id(layout)
    if namespace is None:
        return
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if os.readlink(entry / "ns" / "net") == namespace:
                    found.append(int(entry.name))
            except OSError:
                continue
    for pid in found:
        _stop(pid, grace=2)
    if found:
        done.append(f"stopped {len(found)} processes in the node's network namespace")


def _remove_host_network(layout: NodeLayout, network: NodeNetwork, done: list[str]) -> None:
    """The host's end of the link (its routes and the node's end go with it)
    and the DNAT rule to the API server. The namespace itself goes with its
    last process and its bind mount."""
    if _link_exists(network.host_veth):
        subprocess.run(["ip", "link", "del", network.host_veth], capture_output=True)
        done.append(f"deleted {network.host_veth} and its routes")
    listing = subprocess.run(["iptables", "-w", "-t", "nat", "-S", "PREROUTING"], capture_output=True,
                             text=True).stdout
    for line in listing.splitlines():
        parts = shlex.split(line)  # comments may be quoted
        if parts[:1] == ["-A"] and layout.dnat_comment in parts:
            subprocess.run(["iptables", "-w", "-t", "nat", "-D", *parts[1:]], capture_output=True)
            done.append("removed the DNAT rule to the API server")


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


def _restore_sysctls(done: list[str]) -> None:
    """The host's values from before its first real node (called with the
    host lock held, when no node claims a slot any more)."""
    try:
        values = json.loads(SYSCTL_RECORD.read_text())
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
    SYSCTL_RECORD.unlink()
    if changed:
        done.append(f"restored sysctls {', '.join(changed)}")
