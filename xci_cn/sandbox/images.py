"""Container images without a registry: OCI image tarballs written from the
sandbox's static binaries, and checks of a user's own tarballs before they
are imported into the node's containerd.

An image here is one uncompressed layer holding one static binary, a config
(entrypoint, user, ``rootfs.diff_ids``), a manifest and an index naming the
image (``io.containerd.image.name``), in the OCI image layout that
``ctr images import`` reads. The writer is deterministic (mtime 0, sorted
JSON): the same binary gives the same digests, so a tarball is built once per
binary and cached next to it.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xci_cn.errors import InvalidInput
from xci_cn.sandbox.binaries import SandboxBinaries, Versions, sha256

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
PLATFORM = ("linux", "amd64")
NON_ROOT = "65532:65532"  # the "nonroot" user of distroless images


@dataclass(frozen=True)
class ImageSpec:
    """An image the sandbox builds: ``binary`` at ``/<binary>``, run as ``user``."""

    name: str
    binary: str
    entrypoint: tuple[str, ...]
    user: str = NON_ROOT


def sandbox_images(versions: Versions) -> tuple[ImageSpec, ...]:
    """The images every sandbox node has: the pod sandbox (pause) image, the
    SDC sample's image and agnhost for tests."""
    return (
        ImageSpec(pause_image(versions), "agnhost", ("/agnhost", "pause")),
        ImageSpec(f"xci-cn.local/sdc-app:{sdc_app_tag()}", "sdc-app", ("/sdc-app",)),
        ImageSpec(f"xci-cn.local/agnhost:{versions.kubernetes}", "agnhost", ("/agnhost",)),
    )


def pause_image(versions: Versions) -> str:
    return f"xci-cn.local/pause:{versions.kubernetes}"


def sdc_app_tag() -> str:
    """The version constant of tools/images/sdc-app (the image's tag)."""
    from xci_cn.sandbox.binaries import IMAGE_SOURCES

    for line in (IMAGE_SOURCES / "sdc-app" / "main.go").read_text().splitlines():
        if line.startswith("const Version = "):
            return line.split('"')[1]
    raise RuntimeError("tools/images/sdc-app/main.go has no 'const Version'")


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    archive.addfile(info, io.BytesIO(data))


def write_oci_tarball(spec: ImageSpec, binary: Path, target: Path) -> Path:
    """Write ``spec`` as an OCI layout tarball at ``target`` (atomically)."""
    layer_buffer = io.BytesIO()
    with tarfile.open(fileobj=layer_buffer, mode="w", format=tarfile.PAX_FORMAT) as layer:
        info = tarfile.TarInfo(spec.binary)
        info.size, info.mtime, info.mode = binary.stat().st_size, 0, 0o755
        with open(binary, "rb") as handle:
            layer.addfile(info, handle)
    layer_digest, layer_data = _blob(layer_buffer.getvalue())
    config_digest, config_data = _blob(_json({
        "architecture": PLATFORM[1], "os": PLATFORM[0],
        "config": {"Entrypoint": list(spec.entrypoint), "User": spec.user,
                   "Labels": {"org.opencontainers.image.title": spec.name}},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))
    manifest_digest, manifest_data = _blob(_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_data)},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer_data)}],
    }))
    index = _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest_data),
        "platform": {"os": PLATFORM[0], "architecture": PLATFORM[1]},
        "annotations": {"io.containerd.image.name": spec.name,
                        "org.opencontainers.image.ref.name": spec.name.rsplit(":", 1)[1]}}]})
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
        _add(archive, "oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
        _add(archive, "index.json", index)
        for digest, data in ((layer_digest, layer_data), (config_digest, config_data),
                             (manifest_digest, manifest_data)):
            _add(archive, f"blobs/sha256/{digest.split(':')[1]}", data)
    partial.replace(target)
    return target


def built_tarballs(binaries: SandboxBinaries) -> list[tuple[ImageSpec, Path]]:
    """Every sandbox image as a cached tarball, written when its binary changed."""
    out = []
    for spec in sandbox_images(binaries.versions):
        binary = binaries.path(spec.binary)
        key = hashlib.sha256(f"{spec}{sha256(binary)}".encode()).hexdigest()[:16]
        safe = spec.name.replace("/", "_").replace(":", "_")
        target = binaries.bin_dir.parent / "images" / f"{safe}-{key}.tar"
        if not target.is_file():
            write_oci_tarball(spec, binary, target)
        out.append((spec, target))
    return out


def check_tarball(path: Path, name: str | None = None) -> list[str]:
    """The image names a user's tarball (OCI layout or docker-archive) holds,
    after checking it is an image for linux/amd64 whose blobs match their
    digests. Raises InvalidInput naming the file and what is wrong."""
    where = str(path)
    try:
        archive = tarfile.open(path)
    except OSError as exc:
        raise InvalidInput(f"{where}: {exc.strerror or exc}") from None
    except tarfile.TarError:
        raise InvalidInput(f"{where}: not a tar archive of an image (plain, gzip, bzip2 or xz)") from None
    with archive:
        try:
            members = {m.name.removeprefix("./"): m for m in archive.getmembers() if m.isfile()}
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise InvalidInput(f"{where}: the archive is truncated or corrupt ({exc})") from None

        def read(member: str) -> bytes:
            if member not in members:
                raise InvalidInput(f"{where}: {member} is missing: the image is incomplete")
            handle = archive.extractfile(members[member])
            assert handle is not None
            return handle.read()

        def read_json(member: str) -> Any:
            try:
                return json.loads(read(member))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise InvalidInput(f"{where}: {member} is not JSON") from None

        def blob(digest: str) -> bytes:
            algorithm, _, hexdigest = str(digest).partition(":")
            data = read(f"blobs/{algorithm}/{hexdigest}")
            if algorithm != "sha256" or hashlib.sha256(data).hexdigest() != hexdigest:
                raise InvalidInput(f"{where}: blob {digest} does not match its digest: the image is corrupt")
            return data

        def check_platform(config: Any, label: str) -> None:
            platform = (config.get("os"), config.get("architecture")) if isinstance(config, dict) else None
            if platform != PLATFORM:
                shown = "/".join(str(p) for p in platform) if platform else "unknown"
                raise InvalidInput(f"{where}: image {label} is for {shown}; the sandbox's node runs "
                                   f"{'/'.join(PLATFORM)}")

        if "index.json" in members:
            return _check_oci(read_json("index.json"), blob, check_platform, where, name)
        if "manifest.json" in members:
            return _check_docker(read_json("manifest.json"), read, read_json, check_platform, where, name)
        raise InvalidInput(f"{where}: neither an OCI image layout (index.json) nor a docker archive "
                           "(manifest.json)")


def _check_oci(index: Any, blob: Any, check_platform: Any, where: str, name: str | None) -> list[str]:
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list) or not index["manifests"]:
        raise InvalidInput(f"{where}: index.json lists no manifests")
    names = []
    for entry in index["manifests"]:
        annotations = entry.get("annotations") or {}
        label = annotations.get("io.containerd.image.name") or name or entry.get("digest")
        manifest = json.loads(blob(entry.get("digest")))
        if manifest.get("mediaType") == OCI_INDEX or "manifests" in manifest:
            amd64 = [m for m in manifest.get("manifests", [])
                     if (m.get("platform") or {}).get("architecture") == PLATFORM[1]]
            if not amd64:
                check_platform({}, label)
            manifest = json.loads(blob(amd64[0]["digest"]))
        check_platform(json.loads(blob(manifest["config"]["digest"])), label)
        for layer in manifest.get("layers", []):
            blob(layer["digest"])
        if annotations.get("io.containerd.image.name"):
            names.append(annotations["io.containerd.image.name"])
    if name:
        return [name]
    if not names:
        raise InvalidInput(f"{where}: the image names no reference (no io.containerd.image.name "
                           "annotation); give --name")
    return names


def _check_docker(manifest: Any, read: Any, read_json: Any, check_platform: Any, where: str,
                  name: str | None) -> list[str]:
    if not isinstance(manifest, list) or not manifest:
        raise InvalidInput(f"{where}: manifest.json lists no images")
    names = []
    for entry in manifest:
        tags = entry.get("RepoTags") or []
        check_platform(read_json(entry["Config"]), tags[0] if tags else entry["Config"])
        for layer in entry.get("Layers", []):
            read(layer)
        names.extend(tags)
    if name:
        return [name]
    if not names:
        raise InvalidInput(f"{where}: the docker archive has no RepoTags; give --name")
    return names
