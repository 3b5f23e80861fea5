"""The sandbox against its real components: bring-up, status, bad input,
leaks, and the binary cache's verification."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.helpers import XCI_CN, cli
from tests.leaks import port_listening, processes_mentioning
from xci_cn.sandbox import binaries


def test_session_sandbox_is_a_real_api_server(sandbox: dict) -> None:
    proc = cli("sandbox", "status", "--name", sandbox["name"], "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["up"] and report["server_version"] == "v1.36.3"
    nodes = {n["name"]: n for n in report["nodes"]}
    assert set(nodes) == {"opnfv", "master1", "node1"}
    assert all(n["ready"] for n in nodes.values())
    assert nodes["node1"]["roles"] == ["worker"] and nodes["master1"]["roles"] == ["control-plane"]
    assert len(report["istio_crds"]) >= 10 and all(c["established"] for c in report["istio_crds"])
    assert {c["name"] for c in report["istio_crds"]} >= {
        "virtualservices.networking.istio.io", "destinationrules.networking.istio.io",
        "gateways.networking.istio.io"}
    assert urlparse(report["api_url"]).hostname == "127.0.0.1"
    printed = cli("sandbox", "kubeconfig", "--name", sandbox["name"]).stdout.strip()
    assert printed == str(sandbox["kubeconfig"])


def test_every_component_listens_on_loopback_or_the_nodes_own_addresses_only(sandbox: dict) -> None:
    from xci_cn.sandbox import node
    from xci_cn.sandbox.cluster import Sandbox

    running = Sandbox(sandbox["name"]).running_components()
    assert set(running) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
                            "kwok-controller", "containerd", "kubelet", "kube-proxy", "coredns",
                            "traefik", "prometheus", "pod-sd"}
    listening = _listening_sockets_of(set(running.values()))
    assert listening, "no listening sockets found for the sandbox's processes"
    # The node's components listen in its network namespace: its loopback,
    # its end of the link, its bridge.
    network = node.network_of(Sandbox(sandbox["name"]).node)
    assert network is not None
    assert all(addr in ("127.0.0.1", network.node_ip, network.gateway) for addr, _ in listening), listening
    assert (network.node_ip, 10250) in listening and (network.gateway, 53) in listening  # kubelet, CoreDNS


def test_istio_schema_is_enforced_by_the_real_api_server(sandbox: dict) -> None:
    from xci_cn.k8s.client import ApiException, connect, k8s

    cluster = connect(sandbox["kubeconfig"])
    try:
        api = k8s.CustomObjectsApi(cluster.api)
        bad = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "bad"}, "spec": {"hosts": "not-a-list"}}
        with pytest.raises(ApiException) as caught:
            api.create_namespaced_custom_object("networking.istio.io", "v1", "default",
                                                "virtualservices", bad, dry_run="All")
        assert caught.value.status == 422 and "spec.hosts" in caught.value.body
    finally:
        cluster.close()


def test_second_sandbox_up_down_leaves_nothing(sandbox: dict, isolated_sandbox_home: Path) -> None:
    up = cli("sandbox", "up", "--name", "second", "--flavor", "aio", "--pods", "simulated", "-q")
    assert up.returncode == 0, up.stderr
    status = json.loads(cli("sandbox", "status", "--name", "second", "--json").stdout)
    assert [n["name"] for n in status["nodes"]] == ["opnfv"]
    port = urlparse(status["api_url"]).port
    assert port != urlparse(sandbox["api_url"]).port
    again = cli("sandbox", "up", "--name", "second", "--flavor", "aio", "--pods", "simulated")
    assert again.returncode == 2
    assert again.stderr.strip().startswith("xci-cn: sandbox 'second' is already up (flavor aio")
    down = cli("sandbox", "down", "--name", "second")
    assert down.returncode == 0, down.stderr
    assert processes_mentioning(str(isolated_sandbox_home / "second")) == []
    assert not port_listening(port)
    assert not (isolated_sandbox_home / "second").exists()
    gone = cli("sandbox", "down", "--name", "second")
    assert gone.returncode == 2 and "there is no sandbox named 'second'" in gone.stderr
    # The session sandbox was not touched.
    assert json.loads(cli("sandbox", "status", "--name", sandbox["name"], "--json").stdout)["up"]


def test_taken_port_is_replaced_by_a_free_one(sandbox: dict) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        taken = blocker.getsockname()[1]
        up = cli("sandbox", "up", "--name", "ported", "--flavor", "aio", "--api-port", str(taken),
                 "--pods", "simulated", "-q")
        try:
            assert up.returncode == 0, up.stderr
            assert f"port {taken} is taken" in up.stderr
            status = json.loads(cli("sandbox", "status", "--name", "ported", "--json").stdout)
            assert status["up"] and urlparse(status["api_url"]).port != taken
        finally:
            cli("sandbox", "down", "--name", "ported")


def test_bad_input_is_one_line(sandbox: dict) -> None:
    for args, text in [
        (["sandbox", "up", "--flavor", "tiny", "--name", "x1"], "unknown flavor 'tiny'"),
        (["sandbox", "up", "--name", "Bad_Name"], "sandbox name 'Bad_Name'"),
        (["sandbox", "status", "--name", "nosuch"], "there is no sandbox named 'nosuch'"),
        (["sandbox", "kubeconfig", "--name", "nosuch"], "there is no sandbox named 'nosuch'"),
    ]:
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0] and "Traceback" not in proc.stderr


def test_corrupt_cached_binary_is_detected_and_rebuilt(tmp_path: Path, monkeypatch) -> None:
    real = binaries.ensure_binaries()
    cache = tmp_path / "cache"
    copy = cache / "sandbox" / real.versions.key / "bin"
    copy.mkdir(parents=True)
    for item in real.bin_dir.iterdir():
        if item.is_file():
            shutil.copy2(item, copy / item.name)
    monkeypatch.setenv("XCI_CN_CACHE", str(cache))
    assert binaries.verify(copy) == []
    with open(copy / "etcd", "r+b") as handle:  # truncate: a download or disk that gave up
        handle.truncate(1024)
    with open(copy / "kwokctl", "r+b") as handle:  # same size, flipped bytes
        handle.seek(4096)
        handle.write(b"\0garbage\0")
    assert binaries.verify(copy) == ["etcd", "kwokctl"]
    said: list[str] = []
    rebuilt = binaries.ensure_binaries(progress=said.append)
    assert rebuilt.bin_dir == copy
    assert binaries.verify(copy) == []
    assert any("building etcd" in line for line in said)
    assert any("building kwok" in line for line in said)
    assert not any("building kube-apiserver" in line for line in said)


def _listening_sockets_of(pids: set[int]) -> list[tuple[str, int]]:
    inodes: dict[str, int] = {}
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                target = fd.readlink()
            except OSError:
                continue
            if str(target).startswith("socket:["):
                inodes[str(target)[8:-1]] = pid
    out = set()
    for pid in pids:  # each process's own network namespace's tables
        for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and inode in inodes:  # LISTEN
                    host_hex, port_hex = local.split(":")
                    out.add((_decode_host(host_hex), int(port_hex, 16)))
    return sorted(out)


def _decode_host(host_hex: str) -> str:
    if len(host_hex) == 8:
        return socket.inet_ntoa(bytes.fromhex(host_hex)[::-1])
    raw = bytes.fromhex(host_hex)
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


@pytest.mark.parametrize("signals,code", [((signal.SIGINT, signal.SIGINT), 130), ((signal.SIGTERM,), 143)])
def test_interrupted_up_stops_what_it_started(isolated_sandbox_home: Path, signals: tuple, code: int) -> None:
    directory = isolated_sandbox_home / "interrupted"
    proc = subprocess.Popen([*XCI_CN, "sandbox", "up", "--name", "interrupted", "--flavor", "aio",
                             "--pods", "simulated"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any("kube-apiserver" in cmd for _, cmd in processes_mentioning(str(directory))):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    for sig in signals:  # a second Ctrl-C must not skip the clean-up
        proc.send_signal(sig)
        time.sleep(0.2)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert stderr.strip().splitlines()[-1] == f"xci-cn: interrupted by {signal.Signals(signals[0]).name}"
    assert processes_mentioning(str(directory)) == []
    assert not directory.exists()
    assert cli("sandbox", "status", "--name", "interrupted").returncode == 2


def test_down_refuses_what_is_not_a_sandbox(isolated_sandbox_home: Path) -> None:
    plain = isolated_sandbox_home / "photos"
    plain.mkdir()
    (plain / "keep.jpg").write_text("mine")
    (isolated_sandbox_home / "notes").write_text("mine too")
    (isolated_sandbox_home / "empty").mkdir()
    for name, what in (("photos", "a directory"), ("notes", "a file"), ("empty", "a directory")):
        proc = cli("sandbox", "down", "--name", name)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0] == (f"xci-cn: {isolated_sandbox_home / name} is {what} without xci-cn's sandbox "
                            "record (sandbox.json): not a sandbox, left untouched")
    assert (plain / "keep.jpg").read_text() == "mine" and (isolated_sandbox_home / "notes").exists()
    assert (isolated_sandbox_home / "empty").is_dir()
    up = cli("sandbox", "up", "--name", "photos", "--pods", "simulated")
    assert up.returncode == 2 and "holds files but no sandbox record" in up.stderr
    assert (plain / "keep.jpg").read_text() == "mine"
    for path in (plain / "keep.jpg", isolated_sandbox_home / "notes"):
        path.unlink()
    plain.rmdir()
    (isolated_sandbox_home / "empty").rmdir()


def test_a_daemon_that_cannot_start_fails_up_in_one_line_and_keeps_the_log_it_names(
        isolated_sandbox_home: Path, tmp_path: Path) -> None:
    """Prometheus that exits at once (a binary refusing its flags): up fails
    naming it and its log; everything is stopped, the log stays readable
    until down, and status says so."""
    import os
    import re

    fake = tmp_path / "bin" / "prometheus"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'unknown flag --storage.tsdb.path' >&2\nexit 1\n")
    fake.chmod(0o755)
    directory = isolated_sandbox_home / "nodaemon"
    up = cli("sandbox", "up", "--name", "nodaemon", "--flavor", "aio", "--pods", "simulated", "-q",
             env={"PATH": f"{fake.parent}:{os.environ['PATH']}"})
    lines = up.stderr.strip().splitlines()
    assert up.returncode == 1, up.stderr
    assert re.fullmatch(r"xci-cn: sandbox-up\.yml: task 'Check that traefik, prometheus, pod-sd run' failed "
                        r"on host 'localhost': prometheus exited: unknown flag --storage\.tsdb\.path +"
                        rf"\(log: {directory}/logs/prometheus\.log\) \(component logs: "
                        rf"{directory}/kwok/clusters/nodaemon/logs\)", lines[-1]), lines
    assert (directory / "logs" / "prometheus.log").read_text() == "unknown flag --storage.tsdb.path\n"
    assert "etcd" in (directory / "kwok" / "clusters" / "nodaemon" / "logs" / "etcd.log").read_text()
    assert processes_mentioning(str(directory)) == []
    status = cli("sandbox", "status", "--name", "nodaemon")
    assert status.stdout.splitlines()[0] == (f"sandbox nodaemon: FAILED to come up: its logs are kept in "
                                             f"{directory} (flavor aio)"), status.stdout
    assert cli("sandbox", "down", "--name", "nodaemon").returncode == 0
    assert not directory.exists() and processes_mentioning(str(directory)) == []
