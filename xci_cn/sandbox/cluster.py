"""Sandbox lifecycle: up, down, status, through the Ansible playbooks.

Each sandbox has a name and a directory (``$XCI_CN_SANDBOX_HOME/<name>``,
default ``~/.local/state/xci-cn/sandboxes/<name>``) holding kwokctl's
workdir and the kubeconfig. Called by the CLI (``xci-cn sandbox …``) and by
the ``provision`` stage type.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xci_cn.errors import EnvironmentProblem, InvalidInput, StageFailed
from xci_cn.paths import PLAYBOOKS_DIR
from xci_cn.sandbox.binaries import SandboxBinaries, ensure_binaries, find_kubectl

NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")


def flavor_nodes() -> dict[str, list[dict[str, str]]]:
    """XCI flavor -> nodes, from the same vars file the playbook reads."""
    data = yaml.safe_load((PLAYBOOKS_DIR / "vars" / "flavors.yml").read_text())
    return data["xci_flavor_nodes"]


def sandbox_home() -> Path:
    explicit = os.environ.get("XCI_CN_SANDBOX_HOME")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "xci-cn" / "sandboxes"


@dataclass(frozen=True)
class Sandbox:
    name: str

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
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

    def pids(self) -> dict[str, int]:
        """Component -> pid, as kwokctl (the control plane) and the sandbox
        playbook (the proxy, Prometheus) recorded them."""
        out = {}
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
        return self.kubeconfig.exists() and bool(self.running_components())

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
       kubeconfig_copy: Path | None = None, log: logging.Logger | None = None,
       progress: Any = None, cancel: threading.Event | None = None,
       artifacts_dir: Path | None = None) -> UpResult:
    """Bring the sandbox up (or reuse it when ``reuse`` and it runs with the
    same flavor). Raises InvalidInput for bad names/flavors and a second
    ``up`` without ``reuse``."""
    log = log or logging.getLogger(__name__)
    say = progress or (lambda text: None)
    nodes = flavor_nodes()
    if flavor not in nodes:
        raise InvalidInput(f"unknown flavor {flavor!r} (one of {', '.join(nodes)})")
    sandbox = Sandbox(name)
    notes: list[str] = []
    if sandbox.is_up():
        running_flavor = sandbox.info().get("flavor")
        if reuse and running_flavor == flavor and sandbox.info().get("istio", False) >= istio:
            _copy_kubeconfig(sandbox, kubeconfig_copy)
            return UpResult(sandbox, flavor, sandbox.api_url() or "", True,
                            [f"reused the running sandbox {name!r}"])
        raise InvalidInput(f"sandbox {name!r} is already up (flavor {running_flavor}, API "
                           f"{sandbox.api_url()}); run 'xci-cn sandbox down --name {name}' first")
    if api_port and not port_free(api_port):
        notes.append(f"port {api_port} is taken; kwokctl picks a free one")
        api_port = 0
    binaries = ensure_binaries(progress=say)
    ports = {key: free_port() for key in ("gateway_port", "traefik_metrics_port", "traefik_api_port",
                                          "prometheus_port")}
    say(f"starting sandbox {name!r} (flavor {flavor}, {len(nodes[flavor])} nodes)")
    # kwokctl picks "unused" ports by probing; two sandboxes started at once
    # (two Jenkins executors) would pick the same ones. One start at a time,
    # until the components listen.
    with _exclusive(sandbox_home() / ".start.lock"):
        try:
            _run(binaries, "sandbox-up.yml", sandbox, log, cancel, artifacts_dir, say, {
                "xci_flavor": flavor,
                "sandbox_istio": istio,
                "sandbox_api_port": api_port,
                "sandbox_kubeconfig_copy": str(kubeconfig_copy.resolve()) if kubeconfig_copy else "",
                "sandbox_prometheus": _prometheus(),
                **{f"sandbox_{key}": port for key, port in ports.items()},
            })
        except BaseException:
            # A half-started sandbox stops what it started (its logs stay).
            _run(binaries, "sandbox-down.yml", sandbox, log, None, None, None, {"sandbox_keep_logs": True})
            raise
    sandbox.info_file.write_text(json.dumps({"name": name, "flavor": flavor, "istio": istio,
                                             "versions": binaries.versions.__dict__, **ports}))
    return UpResult(sandbox, flavor, sandbox.api_url() or "", False, notes)


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
         cancel: threading.Event | None = None, artifacts_dir: Path | None = None) -> bool:
    """Remove the sandbox; False when there was none (an error unless ``missing_ok``)."""
    log = log or logging.getLogger(__name__)
    sandbox = Sandbox(name)
    if not sandbox.dir.exists():
        if missing_ok:
            return False
        raise InvalidInput(f"there is no sandbox named {name!r} (sandboxes: "
                           f"{', '.join(list_sandboxes()) or 'none'})")
    binaries = ensure_binaries()
    _run(binaries, "sandbox-down.yml", sandbox, log, cancel, artifacts_dir, None, {})
    return True


def list_sandboxes() -> list[str]:
    home = sandbox_home()
    if not home.is_dir():
        return []
    return sorted(p.name for p in home.iterdir() if p.is_dir() and not p.name.startswith("."))


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
        raise StageFailed(f"{exc}{hint}") from None


def status(name: str) -> dict[str, Any]:
    """What runs in the sandbox, read from its real API server."""
    from xci_cn.k8s.client import connect, translate

    sandbox = Sandbox(name)
    if not sandbox.dir.exists():
        raise InvalidInput(f"there is no sandbox named {name!r} (sandboxes: "
                           f"{', '.join(list_sandboxes()) or 'none'})")
    info = sandbox.info()
    report: dict[str, Any] = {
        "name": name, "flavor": info.get("flavor"), "dir": str(sandbox.dir),
        "gateway_url": _url(info, "gateway_port"), "prometheus_url": _url(info, "prometheus_port"),
        "kubeconfig": str(sandbox.kubeconfig), "api_url": sandbox.api_url(),
        "components": {c: {"pid": pid, "running": pid_alive(pid)} for c, pid in sandbox.pids().items()},
        "up": sandbox.is_up(),
    }
    if not report["up"]:
        return report
    cluster = connect(sandbox.kubeconfig)
    try:
        report["server_version"] = cluster.version()
        try:
            node_list = cluster.core().list_node(_request_timeout=10).items
            crd_list = cluster.apiextensions().list_custom_resource_definition(_request_timeout=10).items
        except Exception as exc:  # noqa: BLE001 - translated
            raise translate(exc, f"sandbox {name} API") from None
        report["nodes"] = [node_summary(node) for node in node_list]
        report["istio_crds"] = [
            {"name": crd.metadata.name, "established": _condition(crd.status.conditions, "Established")}
            for crd in crd_list if crd.spec.group.endswith("istio.io")]
        report["gateway_api_crds"] = [
            {"name": crd.metadata.name, "established": _condition(crd.status.conditions, "Established")}
            for crd in crd_list if crd.spec.group == "gateway.networking.k8s.io"]
    finally:
        cluster.close()
    return report


def _url(info: dict[str, Any], key: str) -> str | None:
    return f"http://127.0.0.1:{info[key]}" if info.get(key) else None


def node_summary(node: Any) -> dict[str, Any]:
    labels = node.metadata.labels or {}
    roles = sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))
    return {"name": node.metadata.name, "roles": roles,
            "ready": _condition(node.status.conditions if node.status else None, "Ready")}


def _condition(conditions: list[Any] | None, kind: str) -> bool:
    return any(c.type == kind and c.status == "True" for c in conditions or [])
