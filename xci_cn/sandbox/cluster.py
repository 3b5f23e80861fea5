"""Sandbox lifecycle: up, down, status, through the Ansible playbooks.

Each sandbox has a name and a directory (``$XCI_CN_SANDBOX_HOME/<name>``,
default ``~/.local/state/xci-cn/sandboxes/<name>``) holding kwokctl's
workdir, the kubeconfig, the real node's state (``node/``) and its record
``sandbox.json`` (written first: a directory without it is not a sandbox and
``down`` leaves it alone). Called by the CLI (``xci-cn sandbox …``) and by
the ``provision`` stage type.

With real pods (the default) the node claims its address slot (the control
plane gets the slot's Service CIDR), the playbook brings up the control plane
while ``node.Node.prepare`` sets up the node's network namespace and
containerd; the node joins as soon as the API server is ready, while the
play goes on.
An ``up`` that fails or is interrupted (SIGINT, SIGTERM, a cancelled stage)
stops what it started, ignoring further signals until it has; a failed one
keeps its directory and logs (state ``failed``) until ``down`` or the next
``up``, an interrupted one removes them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xci_cn import settings
from xci_cn.errors import EnvironmentProblem, Interrupted, InvalidInput, StageFailed, XciCnError
from xci_cn.paths import PLAYBOOKS_DIR
from xci_cn.sandbox import node as real_node
from xci_cn.sandbox.binaries import SandboxBinaries, cache_root, ensure_binaries, find_kubectl

NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?")
PODS = ("real", "simulated")


def flavor_nodes() -> dict[str, list[dict[str, Any]]]:
    """XCI flavor -> nodes, from the same vars file the playbook reads."""
    data = yaml.safe_load((PLAYBOOKS_DIR / "vars" / "flavors.yml").read_text())
    return data["xci_flavor_nodes"]


def real_node_name(flavor: str) -> str:
    """The flavor's node that a real kubelet runs as (marked in flavors.yml)."""
    return next(n["name"] for n in flavor_nodes()[flavor] if n.get("real"))


def sandbox_home() -> Path:
    return settings.current().sandboxes_dir()


@dataclass(frozen=True)
class Sandbox:
    name: str

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise InvalidInput(f"sandbox name {self.name!r}: use lower case letters, digits and '-' "
                               "(at most 40)")

    @property
    def dir(self) -> Path:
        return sandbox_home() / self.name

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig.yaml"

    @property
    def cluster_dir(self) -> Path:
        return self.dir / "kwok" / "clusters" / self.name

    @property
    def info_file(self) -> Path:
        return self.dir / "sandbox.json"

    @property
    def node(self) -> real_node.NodeLayout:
        return real_node.NodeLayout(self.name, self.dir)

    def pids(self) -> dict[str, int]:
        """Component -> pid, as kwokctl, the real node and the sandbox playbook
        (the proxy, Prometheus, the pod discovery ``pod-sd``) recorded them."""
        out = {component: pid for component in real_node.COMPONENTS
               if (pid := real_node.recorded_pid(self.node, component))}
        for pid_file in [*sorted((self.cluster_dir / "pids").glob("*.pid")),
                         *sorted((self.dir / "pids").glob("*.pid"))]:
            try:
                out[pid_file.stem] = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                continue
        return out

    def running_components(self) -> dict[str, int]:
        return {name: pid for name, pid in self.pids().items() if pid_alive(pid)}

    def is_up(self) -> bool:
        return self.kubeconfig.exists() and bool(self.running_components()) \
            and self.info().get("state", "up") == "up"

    def is_sandbox(self) -> bool:
        """Its directory holds xci-cn's own record (anything else is not ours)."""
        return self.dir.is_dir() and self.info().get("name") == self.name

    def info(self) -> dict[str, Any]:
        try:
            return json.loads(self.info_file.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def api_url(self) -> str | None:
        try:
            config = yaml.safe_load(self.kubeconfig.read_text())
            return config["clusters"][0]["cluster"]["server"]
        except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError):
            return None


def pid_alive(pid: int) -> bool:
    """True for a live process (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _prometheus() -> str:
    found = shutil.which("prometheus")
    if not found:
        raise EnvironmentProblem("the sandbox runs Prometheus from the Debian package 'prometheus', which is "
                                 "not installed: run tools/bootstrap.sh --system (as root) or apt-get install "
                                 "prometheus")
    return found


def free_port() -> int:
    """A loopback port nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class UpResult:
    sandbox: Sandbox
    flavor: str
    api_url: str
    reused: bool
    notes: list[str] = field(default_factory=list)


def up(name: str, flavor: str, *, istio: bool = True, api_port: int = 0, reuse: bool = False,
       pods: str = "real", kubeconfig_copy: Path | None = None, log: logging.Logger | None = None,
       progress: Any = None, cancel: threading.Event | None = None,
       artifacts_dir: Path | None = None) -> UpResult:
    """Bring the sandbox up (or reuse it when ``reuse`` and it runs with the
    same flavor and pods). Raises InvalidInput for bad names/flavors and a
    second ``up`` without ``reuse``; EnvironmentProblem when real pods cannot
    run here; Interrupted when a signal stopped it (after cleaning up)."""
    log = log or logging.getLogger(__name__)
    say = progress or (lambda text: None)
    nodes = flavor_nodes()
    if flavor not in nodes:
        raise InvalidInput(f"unknown flavor {flavor!r} (one of {', '.join(nodes)})")
    if pods not in PODS:
        raise InvalidInput(f"pods {pods!r}: one of {', '.join(PODS)}")
    sandbox = Sandbox(name)
    notes: list[str] = []
    if sandbox.dir.exists() and not sandbox.is_sandbox() and not sandbox.dir.is_dir():
        raise InvalidInput(f"{sandbox.dir} exists and is not a sandbox directory; remove it or choose "
                           "another --name")
    if sandbox.is_up():
        info = sandbox.info()
        if reuse and info.get("flavor") == flavor and info.get("istio", False) >= istio \
                and info.get("pods", "simulated") == pods:
            _copy_kubeconfig(sandbox, kubeconfig_copy)
            return UpResult(sandbox, flavor, sandbox.api_url() or "", True,
                            [f"reused the running sandbox {name!r}"])
        raise InvalidInput(f"sandbox {name!r} is already up (flavor {info.get('flavor')}, pods "
                           f"{info.get('pods', 'simulated')}, API {sandbox.api_url()}); run "
                           f"'xci-cn sandbox down --name {name}' first")
    if sandbox.dir.is_dir() and any(sandbox.dir.iterdir()) and not sandbox.is_sandbox():
        raise InvalidInput(f"{sandbox.dir} holds files but no sandbox record; it is not a sandbox: "
                           "remove it or choose another --name")
    if sandbox.info().get("state") == "failed":  # the logs of a failed up, kept for reading
        down(name, missing_ok=True, log=log, artifacts_dir=artifacts_dir)
    if pods == "real":
        real_node.preflight(sandbox.node)
    if api_port and not port_free(api_port):
        notes.append(f"port {api_port} is taken; kwokctl picks a free one")
        api_port = 0
    binaries = ensure_binaries(progress=say)
    cancel = cancel or threading.Event()
    with _signals_cancel(cancel) as caught:
        try:
            _start(sandbox, binaries, flavor, istio, api_port, pods, kubeconfig_copy, log, say, cancel,
                   artifacts_dir)
        except BaseException as exc:
            # A failed start names logs of the sandbox: they stay (with the
            # record, state "failed") until down or the next up. An interrupt,
            # or a host that cannot run it (no free address slot), removes all.
            keep_logs = not caught and isinstance(exc, StageFailed)
            with _signals_ignored():
                say(f"sandbox {name!r} did not come up: removing what was started"
                    + (f"; its logs stay in {sandbox.dir} until 'xci-cn sandbox down --name {name}'"
                       if keep_logs else ""))
                _remove_started(sandbox, artifacts_dir, log, keep_logs)
                if keep_logs and sandbox.dir.is_dir():
                    _write_info(sandbox, {**sandbox.info(), "name": name, "state": "failed"})
            if caught:
                raise Interrupted(caught[0]) from None
            raise
    return UpResult(sandbox, flavor, sandbox.api_url() or "", False, notes)


def _start(sandbox: Sandbox, binaries: SandboxBinaries, flavor: str, istio: bool, api_port: int,
           pods: str, kubeconfig_copy: Path | None, log: logging.Logger, say: Callable[[str], None],
           cancel: threading.Event, artifacts_dir: Path | None) -> None:
    name = sandbox.name
    ports = {key: free_port() for key in ("gateway_port", "traefik_metrics_port", "traefik_api_port",
                                          "prometheus_port", "pod_sd_port")}
    record = {"name": name, "flavor": flavor, "istio": istio, "pods": pods,
              "versions": binaries.versions.__dict__, **ports}
    sandbox.dir.mkdir(parents=True, exist_ok=True)
    _write_info(sandbox, {**record, "state": "starting"})
    say(f"starting sandbox {name!r} (flavor {flavor}, {len(flavor_nodes()[flavor])} nodes, {pods} pods)")
    node = real_node.Node(sandbox.node, binaries, real_node_name(flavor), say) if pods == "real" else None
    # Simulated pods answer on no ClusterIP: the playbook's default range does.
    network = {"sandbox_service_cidr": str(node.claim().service_cidr)} if node else {}
    # kwokctl picks "unused" ports by probing; two sandboxes started at once
    # (two Jenkins executors, two test sessions, whatever their sandbox
    # homes) would pick the same ones. One start at a time per binary cache,
    # until the components listen.
    play_over = threading.Event()
    sandbox.kubeconfig.unlink(missing_ok=True)  # a killed run's: the node must join the new API server
    with _exclusive(_start_lock()), ThreadPoolExecutor(1) as pool:
        # Meanwhile: host, containerd and images, then the node joins as soon
        # as the API server is ready, while the play installs CRDs and daemons.
        prepared = pool.submit(_prepare_and_join, sandbox, node, play_over, cancel) if node else None
        try:
            _run(binaries, "sandbox-up.yml", sandbox, log, cancel, artifacts_dir, say, {
                "xci_flavor": flavor,
                "sandbox_istio": istio,
                "sandbox_pods": pods,
                "sandbox_api_port": api_port,
                "sandbox_kubeconfig_copy": str(kubeconfig_copy.resolve()) if kubeconfig_copy else "",
                "sandbox_prometheus": _prometheus(),
                **{f"sandbox_{key}": port for key, port in ports.items()},
                **network,
            })
        finally:
            play_over.set()
        joined = prepared.result() if prepared else False
    if node:
        if not joined:
            node.join()
        _wait_node_ready(sandbox, node, flavor, cancel, say)
    _write_info(sandbox, {**record, "state": "up"})


def _prepare_and_join(sandbox: Sandbox, node: real_node.Node, play_over: threading.Event,
                      cancel: threading.Event) -> bool:
    """Prepare the node, then join it once the API server is ready; False
    when the play ended first (the caller joins it, or the start failed)."""
    node.prepare()
    while not (play_over.is_set() or cancel.is_set()):
        if _api_ready(sandbox):
            node.join()
            return True
        time.sleep(0.2)
    return False


def _api_ready(sandbox: Sandbox) -> bool:
    """The API server answers /readyz to the sandbox's admin certificate."""
    import requests

    url, pki = sandbox.api_url(), sandbox.cluster_dir / "pki"
    if not url or not (pki / "admin.key").is_file():
        return False
    try:
        return requests.get(f"{url}/readyz", cert=(str(pki / "admin.crt"), str(pki / "admin.key")),
                            verify=str(pki / "ca.crt"), timeout=2).status_code == 200
    except (requests.RequestException, OSError):
        return False


def _remove_started(sandbox: Sandbox, artifacts_dir: Path | None, log: logging.Logger,
                    keep_logs: bool = False) -> None:
    """After a failed or cancelled up: a cancelled playbook's task workers run
    in sessions of their own and outlive it (a 'kwokctl create' may still be
    starting components), so stop them first, then remove the sandbox, then
    whatever they started meanwhile."""
    done: list[str] = []
    private = str(artifacts_dir or (sandbox_home() / ".ansible" / sandbox.name))
    real_node.stop_matching(lambda cmd: private in cmd or f"{sandbox.dir}/kwokctl.yaml" in cmd,
                            "playbook", done)
    down(sandbox.name, missing_ok=True, log=log, artifacts_dir=artifacts_dir, keep_logs=keep_logs)
    real_node.stop_matching(lambda cmd: str(sandbox.dir) + "/" in cmd, "late", done)
    if done:
        log.info("removed after the failed start: %s", "; ".join(done))


def _write_info(sandbox: Sandbox, record: dict[str, Any]) -> None:
    partial = sandbox.info_file.with_suffix(".partial")
    partial.write_text(json.dumps(record))
    partial.replace(sandbox.info_file)


def _wait_node_ready(sandbox: Sandbox, node: real_node.Node, flavor: str, cancel: threading.Event,
                     say: Callable[[str], None], timeout: float = 90) -> None:
    """The real node registered and Ready, labelled like its kwok siblings;
    kube-proxy and CoreDNS answering."""
    from xci_cn.k8s.client import connect
    from xci_cn.k8s.resources import Resources

    role = next(n["role"] for n in flavor_nodes()[flavor] if n.get("real"))
    cluster = connect(sandbox.kubeconfig)
    resources = Resources(cluster, cancel)
    deadline = time.monotonic() + timeout
    labelled = False
    try:
        node_info = resources.lookup("v1", "Node")
        assert node_info is not None
        while True:
            if cancel.is_set():
                raise StageFailed("cancelled while waiting for the real node")
            for component in ("kubelet", "kube-proxy", "coredns"):
                if not real_node.component_alive(sandbox.node, component):
                    raise StageFailed(f"{component} of the real node exited: "
                                      f"{real_node._tail(sandbox.node.logs / (component + '.log'))}")
            try:
                found = resources.get(node_info, node.node_name, None)
            except XciCnError:  # the API server is still starting: ask again
                found = None
            if found is not None and not labelled:
                resources.apply(node_info, {"apiVersion": "v1", "kind": "Node", "metadata": {
                    "name": node.node_name, "labels": {
                        "type": "real", "opnfv.org/xci-flavor": flavor, f"node-role.kubernetes.io/{role}": ""}}})
                labelled = True
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in ((found or {}).get("status") or {}).get("conditions") or [])
            if ready and real_node.services_ready(sandbox.node):
                say(f"real node {node.node_name} Ready")
                return
            if time.monotonic() > deadline:
                raise StageFailed(f"the real node {node.node_name} was not Ready within {timeout:.0f}s "
                                  f"(kubelet log: {sandbox.node.logs / 'kubelet.log'})")
            time.sleep(0.3)
    finally:
        cluster.close()


@contextmanager
def _signals_cancel(cancel: threading.Event) -> Iterator[list[int]]:
    """In the main thread, SIGINT/SIGTERM set ``cancel`` (the playbook and the
    waits stop at their next check) and are recorded, never raised mid-step."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught  # a pipeline stage: the run's own handler sets cancel
        return

    def on_signal(signum: int, _frame: Any) -> None:
        caught.append(signum)
        cancel.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """Clean-up runs to its end: a second Ctrl-C must not leave processes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start_lock() -> Path:
    """In the binary cache, which every sandbox home of this user shares (the
    sandbox home when the cache is read-only)."""
    lock = cache_root() / ".sandbox-start.lock"
    return lock if os.access(cache_root(), os.W_OK) else sandbox_home() / ".start.lock"


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def down(name: str, *, missing_ok: bool = False, log: logging.Logger | None = None,
         cancel: threading.Event | None = None, artifacts_dir: Path | None = None,
         keep_logs: bool = False) -> bool:
    """Remove the sandbox; False when there was none (an error unless
    ``missing_ok``). A path that is not a sandbox is refused, untouched.
    ``keep_logs`` (after a failed up) stops everything but leaves the
    directory and the logs it names."""
    log = log or logging.getLogger(__name__)
    sandbox = Sandbox(name)
    if not sandbox.dir.exists() and not sandbox.node.run_dir.exists():
        if missing_ok:
            return False
        raise InvalidInput(f"there is no sandbox named {name!r} (sandboxes: "
                           f"{', '.join(list_sandboxes()) or 'none'})")
    if sandbox.dir.exists() and not sandbox.is_sandbox():
        what = "a directory" if sandbox.dir.is_dir() else "a file"
        raise InvalidInput(f"{sandbox.dir} is {what} without xci-cn's sandbox record (sandbox.json): not a "
                           "sandbox, left untouched")
    binaries = ensure_binaries()
    # The node and the rest at the same time; the directory goes last, once
    # the node has unmounted what it mounted under it.
    with ThreadPoolExecutor(1) as pool:
        node_cleaned = pool.submit(real_node.cleanup, sandbox.node, log.info)
        try:
            _run(binaries, "sandbox-down.yml", sandbox, log, cancel, artifacts_dir, None,
                 {"sandbox_keep_logs": keep_logs, "sandbox_keep_dir": True})
        finally:
            node_cleaned.result()
    if not keep_logs:
        shutil.rmtree(sandbox.dir, ignore_errors=True)
    return True


def _real_node_of(name: str) -> real_node.Node:
    sandbox = Sandbox(name)
    if not sandbox.is_up():
        raise InvalidInput(f"sandbox {name!r} is not up (sandboxes: {', '.join(list_sandboxes()) or 'none'})")
    if sandbox.info().get("pods") != "real":
        raise InvalidInput(f"sandbox {name!r} runs simulated pods: it has no node to hold images")
    return real_node.Node(sandbox.node, ensure_binaries(), real_node_name(sandbox.info()["flavor"]),
                          lambda text: None)


def load_image(name: str, tarball: Path, image_name: str | None = None) -> list[str]:
    """Import a user's OCI or docker-archive tarball (``kind load
    image-archive``); the tarball is checked before containerd sees it."""
    from xci_cn.sandbox.images import check_tarball

    node = _real_node_of(name)
    names = check_tarball(tarball, image_name)
    node.import_image(tarball, image_name)
    present = {image["name"] for image in images(name)}
    missing = [n for n in names if n not in present]
    if missing:
        raise StageFailed(f"{tarball}: containerd imported the archive but lists no {', '.join(missing)}")
    return names


def images(name: str) -> list[dict[str, str]]:
    """Images in the node's containerd (the CRI's namespace), digests omitted."""
    proc = _real_node_of(name).ctr("images", "ls")
    if proc.returncode != 0:
        raise StageFailed(f"sandbox {name!r}: listing images failed: {proc.stderr.strip()}")
    out = []
    for line in proc.stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 5 and not fields[0].startswith("sha256:"):
            out.append({"name": fields[0], "digest": fields[2], "size": " ".join(fields[3:5])})
    return out


def list_sandboxes() -> list[str]:
    home = sandbox_home()
    if not home.is_dir():
        return []
    return sorted(p.name for p in home.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and NAME.fullmatch(p.name) and Sandbox(p.name).is_sandbox())


def _copy_kubeconfig(sandbox: Sandbox, target: Path | None) -> None:
    if target is None:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(sandbox.kubeconfig.read_text())


def _run(binaries: SandboxBinaries, playbook: str, sandbox: Sandbox, log: logging.Logger,
         cancel: threading.Event | None, artifacts_dir: Path | None, progress: Any,
         extra: dict[str, Any]) -> None:
    from xci_cn.ansible.runner import run_playbook

    sandbox.dir.mkdir(parents=True, exist_ok=True)
    variables = {
        "sandbox_name": sandbox.name,
        "sandbox_dir": str(sandbox.dir),
        "sandbox_bin_dir": str(binaries.bin_dir),
        "sandbox_kubectl": str(find_kubectl()),
        **extra,
    }
    private = artifacts_dir or (sandbox_home() / ".ansible" / sandbox.name)
    try:
        run_playbook(PLAYBOOKS_DIR / playbook, private_data_dir=private, log=log, extravars=variables,
                     cancel=cancel, ident=playbook.removesuffix(".yml"), progress=progress)
    except StageFailed as exc:
        logs = sandbox.cluster_dir / "logs"
        hint = f" (component logs: {logs})" if logs.is_dir() else ""
        raise type(exc)(f"{exc}{hint}", exc.outputs) from None  # same kind: a TemporaryError stays one


def status(name: str) -> dict[str, Any]:
    """What runs in the sandbox, read from its real API server."""
    from xci_cn.k8s import inventory
    from xci_cn.k8s.client import connect
    from xci_cn.k8s.resources import Resources

    sandbox = Sandbox(name)
    if not sandbox.dir.exists():
        raise InvalidInput(f"there is no sandbox named {name!r} (sandboxes: "
                           f"{', '.join(list_sandboxes()) or 'none'})")
    info = sandbox.info()
    report: dict[str, Any] = {
        "name": name, "flavor": info.get("flavor"), "pods": info.get("pods", "simulated"),
        "dir": str(sandbox.dir),
        "gateway_url": _url(info, "gateway_port"), "prometheus_url": _url(info, "prometheus_port"),
        "traefik_api_url": _url(info, "traefik_api_port"),
        "kubeconfig": str(sandbox.kubeconfig), "api_url": sandbox.api_url(),
        "components": {c: {"pid": pid, "running": pid_alive(pid)} for c, pid in sandbox.pids().items()},
        "up": sandbox.is_up(), "state": info.get("state", "up"),
    }
    if not report["up"]:
        return report
    cluster = connect(sandbox.kubeconfig)
    try:
        resources = Resources(cluster)
        report["server_version"] = cluster.version()
        report["nodes"] = inventory.nodes(resources)
        report["istio_crds"] = inventory.istio_crds(resources)
        report["gateway_api_crds"] = inventory.gateway_api_crds(resources)
    finally:
        cluster.close()
    return report


def _url(info: dict[str, Any], key: str) -> str | None:
    return f"http://127.0.0.1:{info[key]}" if info.get(key) else None
