"""The sandbox's real node: the SDC sample running as real processes, answers
by pod IP, ClusterIP and Service name, health rules against what a real
kubelet reports, images loaded without a registry."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import subprocess
import tarfile
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.helpers import cli, deploy_scenario, kubectl, run_on_cluster, sdc_copy, until
from xci_cn.sandbox import images as oci
from xci_cn.sandbox.binaries import ensure_binaries


def http_get(ip: str, port: int, path: str = "/", settle: float = 10) -> tuple[int, dict[str, str], str]:
    """GET, retried while kube-proxy is still programming a new Service
    (Ready pods come before their endpoints' rules, as on any cluster)."""
    deadline = time.monotonic() + settle
    while True:
        answer = _http_get_once(ip, port, path)
        if answer[0] not in (0, 502) or time.monotonic() > deadline:
            return answer
        time.sleep(0.3)


def _http_get_once(ip: str, port: int, path: str) -> tuple[int, dict[str, str], str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{ip}:{port}{path}", timeout=5) as reply:
            return reply.status, dict(reply.headers), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()
    except OSError as exc:
        return 0, {}, str(exc)


def resp(ip: str, port: int, *commands: bytes) -> bytes:
    deadline = time.monotonic() + 10
    while True:
        try:
            conn = socket.create_connection((ip, port), timeout=5)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    with conn:
        conn.sendall(b"".join(commands))
        time.sleep(0.2)
        return conn.recv(4096)


def test_real_node_and_tainted_kwok_nodes(sandbox: dict) -> None:
    status = json.loads(cli("sandbox", "status", "--name", sandbox["name"], "--json").stdout)
    nodes = {n["name"]: n for n in status["nodes"]}
    assert status["pods"] == "real"
    assert nodes["node1"]["type"] == "real" and nodes["node1"]["ready"] and nodes["node1"]["roles"] == ["worker"]
    assert {nodes[n]["type"] for n in ("opnfv", "master1")} == {"kwok"}
    kwok_node = json.loads(kubectl(sandbox, "get", "node", "master1", "-o", "json"))
    assert kwok_node["spec"]["taints"] == [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]
    real = json.loads(kubectl(sandbox, "get", "node", "node1", "-o", "json"))
    assert real["status"]["nodeInfo"]["kubeletVersion"] == "v1.36.3"
    assert real["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://2.3")
    # The API server reaches the kubelet (logs, exec and stats go through it).
    assert kubectl(sandbox, "get", "--raw", "/api/v1/nodes/node1/proxy/healthz") == "ok"
    listed = json.loads(cli("sandbox", "images", "--name", sandbox["name"], "--json").stdout)
    names = {image["name"] for image in listed}
    assert {"xci-cn.local/pause:1.36.3", f"xci-cn.local/sdc-app:{oci.sdc_app_tag()}"} <= names


def test_sdc_sample_runs_for_real_and_answers(sandbox: dict, tmp_path: Path) -> None:
    manifests, namespace = sdc_copy(tmp_path)
    code, summary, out = run_on_cluster(tmp_path, sandbox, deploy_scenario(manifests, namespace))
    assert code == 0, out
    pods = json.loads(kubectl(sandbox, "get", "pods", "-n", namespace, "-o", "json"))["items"]
    assert len(pods) == 11
    for pod in pods:
        assert pod["spec"]["nodeName"] == "node1"
        status = pod["status"]["containerStatuses"][0]
        assert status["ready"] and status["state"].get("running") and status["containerID"].startswith("containerd://")
    by_app = {}
    for pod in pods:
        by_app.setdefault(pod["metadata"]["labels"]["app"], []).append(pod)
    # Each pod answers from the host on its own IP.
    for pod in by_app["clover-server1"] + by_app["http-lb"]:
        code_, headers, body = http_get(pod["status"]["podIP"], 9180)
        assert code_ == 200 and pod["metadata"]["name"] in body, body
    version_of = {p["metadata"]["name"]: p["metadata"]["labels"].get("version") for p in by_app["http-lb"]}
    for pod in by_app["http-lb"]:
        assert http_get(pod["status"]["podIP"], 9180)[1]["X-Version"] == version_of[pod["metadata"]["name"]]
    services = {s["metadata"]["name"]: s for s in
                json.loads(kubectl(sandbox, "get", "svc", "-n", namespace, "-o", "json"))["items"]}
    # ClusterIPs through kube-proxy; the proxy reaches http-lb and http-lb the
    # servers by Service name (CoreDNS).
    proxy = services["proxy-access-control"]["spec"]["clusterIP"]
    code_, _, body = http_get(proxy, 9180, "/edge")
    assert code_ == 200, body
    assert body.startswith("proxy-access-control v1") and "via http-lb v" in body and "via clover-server" in body
    assert http_get(services["snort-ids"]["spec"]["clusterIP"], 80)[0] == 200
    redis = services["redis"]["spec"]["clusterIP"]
    assert resp(redis, 6379, b"*1\r\n$4\r\nPING\r\n") == b"+PONG\r\n"
    assert resp(redis, 6379, b"SET k v\r\n", b"GET k\r\n") == b"+OK\r\n$1\r\nv\r\n"
    # The kubelet really runs the probes: the redis readiness probe is an exec.
    assert by_app["redis"][0]["spec"]["containers"][0]["readinessProbe"]["exec"]
    logs = kubectl(sandbox, "logs", "-n", namespace, by_app["redis"][0]["metadata"]["name"])
    assert "resp (sdc-app" in logs


BROKEN = {
    # name: (container args, image, memory limit, the one line expected)
    "crash": (["no-such-command"], None, "32Mi", "container app: CrashLoop: exited with code 1 (Error)"),
    "never-pull": (["http"], "xci-cn.local/not-there:1", "32Mi",
                   "container app: ErrImageNeverPull"),
    "oom": (["http", "--hog-mib=96"], None, "32Mi", "container app: OOMKilled: exceeded its memory limit"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_terminal_container_states_fail_the_deploy_promptly(sandbox: dict, tmp_path: Path, case: str) -> None:
    args, image, memory, expected = BROKEN[case]
    namespace = f"{case}-{uuid.uuid4().hex[:6]}"
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "app.yaml").write_text(broken_deployment(namespace, args, image, memory))
    started = time.monotonic()
    code, summary, out = run_on_cluster(tmp_path, sandbox, deploy_scenario(manifests, namespace, timeout="3m"))
    elapsed = time.monotonic() - started
    assert code == 1, out
    error = summary["stages"][0]["error"]
    assert "Deployment " + namespace + "/broken" in error and expected in error, error
    assert "pod broken-" in error
    if case == "crash":  # the container's last output, next to the failure
        assert 'last output: sdc-app: unknown command "no-such-command"' in error, error
    assert elapsed < 90, f"took {elapsed:.0f}s: a terminal state must not wait for the 3m deadline"


def test_failing_readiness_is_named_at_the_deadline(sandbox: dict, tmp_path: Path) -> None:
    namespace = f"unready-{uuid.uuid4().hex[:6]}"
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "app.yaml").write_text(broken_deployment(namespace, ["http", "--never-ready"], None, "32Mi"))
    code, summary, out = run_on_cluster(tmp_path, sandbox, deploy_scenario(manifests, namespace, timeout="15s"))
    assert code == 1, out
    error = summary["stages"][0]["error"]
    assert "Deployment " + namespace + "/broken" in error and "0 of 1 updated replicas available" in error
    assert "event Unhealthy: Readiness probe failed: HTTP probe failed with statuscode: 503" in error, error


def broken_deployment(namespace: str, args: list[str], image: str | None, memory: str) -> str:
    return f"""apiVersion: v1
kind: Namespace
metadata: {{name: {namespace}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: broken, namespace: {namespace}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: broken}}}}
  template:
    metadata: {{labels: {{app: broken}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: app
          image: {image or 'xci-cn.local/sdc-app:' + oci.sdc_app_tag()}
          imagePullPolicy: Never
          args: {json.dumps(args)}
          ports: [{{name: http, containerPort: 8080}}]
          readinessProbe: {{httpGet: {{path: /readyz, port: http}}, periodSeconds: 1}}
          resources: {{limits: {{memory: {memory}, cpu: 200m}}}}
"""


def test_load_image_runs_a_users_image(sandbox: dict, tmp_path: Path) -> None:
    binaries = ensure_binaries()
    tarball = oci.write_oci_tarball(oci.ImageSpec("example.org/netexec:1.0", "agnhost", ("/agnhost",)),
                                    binaries.path("agnhost"), tmp_path / "netexec.tar")
    loaded = cli("sandbox", "load-image", str(tarball), "--sandbox", sandbox["name"])
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "loaded example.org/netexec:1.0"
    renamed = cli("sandbox", "load-image", str(tarball), "--name", "example.org/renamed:2",
                  "--sandbox", sandbox["name"])
    assert renamed.returncode == 0, renamed.stderr
    names = {i["name"] for i in json.loads(cli("sandbox", "images", "--name", sandbox["name"], "--json").stdout)}
    assert {"example.org/netexec:1.0", "example.org/renamed:2"} <= names
    namespace = f"load-{uuid.uuid4().hex[:6]}"
    kubectl(sandbox, "create", "namespace", namespace)
    kubectl(sandbox, "run", "netexec", "-n", namespace, "--image", "example.org/renamed:2",
            "--image-pull-policy", "Never", "--port", "8080", "--", "netexec", "--http-port=8080")
    kubectl(sandbox, "wait", "-n", namespace, "--for", "condition=Ready", "pod/netexec", "--timeout", "60s")
    pod = json.loads(kubectl(sandbox, "get", "pod", "netexec", "-n", namespace, "-o", "json"))
    assert http_get(pod["status"]["podIP"], 8080, "/hostname")[2] == "netexec"


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _arm64_image(tmp_path: Path) -> Path:
    config = json.dumps({"architecture": "arm64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
                        ).encode()
    digest = hashlib.sha256(config).hexdigest()
    manifest = json.dumps({"schemaVersion": 2, "config": {"digest": f"sha256:{digest}", "size": len(config)},
                           "layers": []}).encode()
    mdigest = hashlib.sha256(manifest).hexdigest()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "digest": f"sha256:{mdigest}", "size": len(manifest),
        "annotations": {"io.containerd.image.name": "example.org/arm:1"}}]}).encode()
    return _tar(tmp_path / "arm.tar", {"index.json": index, f"blobs/sha256/{digest}": config,
                                       f"blobs/sha256/{mdigest}": manifest})


def _corrupt_image(tmp_path: Path) -> Path:
    good = oci.write_oci_tarball(oci.ImageSpec("example.org/c:1", "sdc-app", ("/sdc-app",)),
                                 ensure_binaries().path("sdc-app"), tmp_path / "good.tar")
    with tarfile.open(good) as archive:
        files = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
    layer = max((n for n in files if n.startswith("blobs/")), key=lambda n: len(files[n]))
    files[layer] = files[layer][:-10] + b"0123456789"
    return _tar(tmp_path / "corrupt.tar", files)


@pytest.mark.parametrize("make,message", [
    (lambda tmp: tmp.joinpath("x.tar").write_text("not a tarball") and tmp / "x.tar", "not a tar archive"),
    (lambda tmp: _tar(tmp / "empty.tar", {"README": b"hi"}), "neither an OCI image layout"),
    (_corrupt_image, "does not match its digest: the image is corrupt"),
    (_arm64_image, "image example.org/arm:1 is for linux/arm64; the sandbox's node runs linux/amd64"),
])
def test_bad_image_tarballs_are_one_line_exit_2(sandbox: dict, tmp_path: Path, make, message: str) -> None:
    tarball = make(tmp_path)
    proc = cli("sandbox", "load-image", str(tarball), "--sandbox", sandbox["name"])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"xci-cn: {tarball}: ") and message in lines[0]


def test_up_without_root_exits_3_naming_the_choice() -> None:
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="xci-cn-nonroot-"))  # outside pytest's root-only tmp
    home.chmod(0o777)
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           *cli_argv("sandbox", "up", "--name", "nonroot")],
                          capture_output=True, text=True, timeout=60,
                          env={"XCI_CN_SANDBOX_HOME": str(home), "PATH": "/usr/bin:/bin", "HOME": str(home)})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 3 and len(lines) == 1, proc.stderr
    assert "real pods need root" in lines[0] and "--pods simulated" in lines[0]
    assert list(home.iterdir()) == []
    home.rmdir()


def cli_argv(*args: str) -> list[str]:
    from tests.helpers import XCI_CN

    return [*XCI_CN, *args]


def _marks(*sandboxes: object) -> list[str]:
    """What names a sandbox's traces on the host: its directory, its node's
    id (mounts, cgroups, runtime dir, the DNAT rule's comment), its slot's
    claim and the host's end of its link (interface, routes)."""
    from xci_cn.sandbox import node
    from xci_cn.sandbox.cluster import Sandbox

    marks = []
    for sandbox in sandboxes:
        assert isinstance(sandbox, Sandbox)
        marks += [str(sandbox.dir), sandbox.node.id]
        network = node.network_of(sandbox.node)
        if network is not None:
            marks += [network.host_veth, f"slot-{network.slot}.json", f"{network.pod_subnet} ",
                      f"{network.service_cidr} "]
    return marks


def _host_network_of(sandbox: object) -> dict[str, object]:
    """The host's view of a node's network: its namespace's mount, the
    host's end of its link, the routes through it, the DNAT rule."""
    from xci_cn.sandbox import node
    from xci_cn.sandbox.cluster import Sandbox

    assert isinstance(sandbox, Sandbox)
    network = node.network_of(sandbox.node)
    assert network is not None
    routes = subprocess.run(["ip", "-4", "route", "show", "dev", network.host_veth], capture_output=True,
                            text=True).stdout if Path(f"/sys/class/net/{network.host_veth}").exists() else ""
    return {
        "netns mounted": str(sandbox.node.netns) in Path("/proc/self/mountinfo").read_text(),
        "veth": Path(f"/sys/class/net/{network.host_veth}").exists(),
        "routes": sorted(line.split()[0] for line in routes.splitlines() if " via " in line),
        "dnat": sandbox.node.dnat_comment in subprocess.run(["iptables-save", "-t", "nat"], capture_output=True,
                                                            text=True).stdout,
    }


def test_down_and_a_killed_run_leave_nothing_on_the_host(session_sandbox_down: None, tmp_path: Path) -> None:
    import os
    import signal as signals

    from tests.leaks import host_state, ours, processes_mentioning
    from xci_cn.sandbox import node
    from xci_cn.sandbox.cluster import Sandbox

    before = _host_state_then_up("leaks")
    sandbox = Sandbox("leaks")
    leaks = {"name": "leaks", "kubeconfig": sandbox.kubeconfig}

    def run_a_pod() -> None:
        kubectl(leaks, "run", "web", "--image", f"xci-cn.local/sdc-app:{oci.sdc_app_tag()}",
                "--image-pull-policy", "Never", "--", "http")
        kubectl(leaks, "wait", "--for", "condition=Ready", "pod/web", "--timeout", "60s")

    run_a_pod()
    marks = _marks(sandbox)
    during = host_state()
    network = node.network_of(sandbox.node)
    assert network is not None

    def alive() -> dict[str, object]:
        now = node.network_of(sandbox.node)
        assert now is not None
        return {"netns mounted": True, "veth": True, "routes": sorted([str(now.pod_subnet), str(now.service_cidr)]),
                "dnat": True}

    assert _host_network_of(sandbox) == alive()
    assert network.host_veth in during["interfaces"] and len(during["mounts"]) > len(before["mounts"])
    # kube-proxy's and kubelet's chains are in the node's namespace, not the host's.
    inside = subprocess.run(node.in_netns(sandbox.node, ["iptables-save"]), capture_output=True, text=True).stdout
    assert "KUBE-SERVICES" in inside and "KUBE-POSTROUTING" in inside
    # On the host: one DNAT rule, from the node's link to the API server on loopback.
    port = urllib.parse.urlsplit(sandbox.api_url() or "").port
    dnat = [rule for rule in during["iptables"] if sandbox.node.id in rule]
    assert len(dnat) == 1 and dnat[0].startswith(f"-A PREROUTING -d {network.host_ip}/32 -i {network.host_veth} ")
    assert f"--dport {port} " in dnat[0] and dnat[0].endswith(f"-j DNAT --to-destination 127.0.0.1:{port}"), dnat

    def kill_every_process() -> list[int]:
        """A killed run: every process of the sandbox gets SIGKILL; shims and
        containers survive their containerd, the namespace its processes."""
        shims = [pid for pid, cmd in processes_mentioning(str(sandbox.node.socket)) if "containerd-shim" in cmd]
        assert shims
        for pid in sandbox.running_components().values():
            os.kill(pid, signals.SIGKILL)
        time.sleep(0.5)
        assert _host_network_of(sandbox) == alive()  # the leftovers the next up or down must clear
        return shims

    shims = kill_every_process()
    again = cli("sandbox", "up", "--name", "leaks", "--flavor", "aio", timeout=300)
    assert again.returncode == 0, again.stderr
    assert "node clean-up: " in again.stderr and "killed" in again.stderr
    assert f"deleted {network.host_veth} and its routes" in again.stderr, again.stderr
    assert "removed the DNAT rule to the API server" in again.stderr
    assert not any(Path(f"/proc/{pid}").exists() for pid in shims)
    run_a_pod()  # in a new cluster: the killed one's went with it
    marks += _marks(sandbox)  # the slot of this up
    kill_every_process()
    down = cli("sandbox", "down", "--name", "leaks", timeout=120)
    assert down.returncode == 0, down.stderr
    after = host_state()
    assert processes_mentioning(str(sandbox.dir)) == []
    assert ours(after, marks) == ours(before, marks), ours(after, marks)
    # The rest of the host as it was, but for other sandboxes' changes on a shared host.
    others = set(processes_mentioning("kubelet")) - {(pid, cmd) for pid, cmd in processes_mentioning(str(sandbox.dir))}
    if not others:
        assert {k: v for k, v in after.items() if v != before[k]} == {}, \
            {k: sorted(set(after[k]) ^ set(before[k])) for k in after if after[k] != before[k]}


def test_verify_http_checks_reach_services_by_name_through_their_cluster_ip(sandbox: dict, tmp_path: Path
                                                                           ) -> None:
    manifests, namespace = sdc_copy(tmp_path)
    text = deploy_scenario(manifests, namespace) + f"""  - name: verify
    type: verify
    needs: [deploy]
    with:
      namespace: {namespace}
      checks:
        - {{type: http, url: "http://proxy-access-control.{namespace}.svc:9180/edge",
           expect_body: "(?s)via http-lb v[12] .* via clover-server[123] v1", retries: 10}}
        - {{type: http, url: "http://snort-ids.{namespace}.svc.cluster.local/", expect_body: "snort-ids v1",
           retries: 10}}
        - {{type: http, url: "http://nothing.{namespace}.svc/"}}
"""
    code, summary, out = run_on_cluster(tmp_path, sandbox, text)
    checks = {c["name"]: c for c in summary["stages"][1]["checks"]}
    assert checks[f"http GET http://proxy-access-control.{namespace}.svc:9180/edge"]["passed"], checks
    assert checks[f"http GET http://snort-ids.{namespace}.svc.cluster.local/"]["passed"], checks
    assert code == 1 and f"Service {namespace}/nothing has no ClusterIP" in summary["stages"][1]["error"], out


def _host_state_then_up(name: str) -> dict[str, list[str]]:
    """The host's state, then ``up`` of a real sandbox."""
    from tests.leaks import host_state

    before = host_state()
    up = cli("sandbox", "up", "--name", name, "--flavor", "aio", "-q", timeout=300)
    assert up.returncode == 0, up.stderr
    return before


def test_containerd_restart_keeps_running_pods(sandbox: dict) -> None:
    from tests.faults import restart_component

    namespace = f"ctrd-{uuid.uuid4().hex[:6]}"
    kubectl(sandbox, "create", "namespace", namespace)
    image = f"xci-cn.local/sdc-app:{oci.sdc_app_tag()}"
    kubectl(sandbox, "run", "web", "-n", namespace, "--image", image, "--image-pull-policy", "Never",
            "--", "http", "--name=web")
    kubectl(sandbox, "wait", "-n", namespace, "--for", "condition=Ready", "pod/web", "--timeout", "60s")
    ip = json.loads(kubectl(sandbox, "get", "pod", "web", "-n", namespace, "-o", "json"))["status"]["podIP"]
    assert "web v1" in http_get(ip, 8080)[2]
    restart_component(sandbox["name"], "containerd", 2, node=True)
    assert "web v1" in http_get(ip, 8080)[2]  # the container outlived its runtime's restart
    kubectl(sandbox, "run", "after", "-n", namespace, "--image", image, "--image-pull-policy", "Never",
            "--", "http")
    kubectl(sandbox, "wait", "-n", namespace, "--for", "condition=Ready", "pod/after", "--timeout", "60s")
    pod = json.loads(kubectl(sandbox, "get", "pod", "web", "-n", namespace, "-o", "json"))
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    kubectl(sandbox, "delete", "namespace", namespace, "--wait=false")


def test_deploy_rides_out_a_kubelet_stopped_for_10s(sandbox: dict, tmp_path: Path) -> None:
    import threading

    from tests.faults import restart_component

    manifests, namespace = sdc_copy(tmp_path)
    stopper = threading.Timer(1.0, restart_component, (sandbox["name"], "kubelet", 10), {"node": True})
    stopper.start()
    started = time.monotonic()
    code, summary, out = run_on_cluster(tmp_path, sandbox, deploy_scenario(manifests, namespace, timeout="3m"))
    stopper.join()
    assert code == 0, out
    assert summary["stages"][0]["outputs"]["counts"]["created"] == 20
    assert time.monotonic() - started < 180
    nodes = json.loads(cli("sandbox", "status", "--name", sandbox["name"], "--json").stdout)["nodes"]
    assert next(n for n in nodes if n["name"] == "node1")["ready"]



def test_a_deleted_pod_is_replaced_and_the_health_watch_sees_it_ready_again(sandbox: dict, tmp_path: Path
                                                                          ) -> None:
    """The deploy stage's health watch (k8s.health.wait_healthy) on a
    Deployment that lost a pod: it reports the gap from what the real kubelet
    and controllers report, and settles Healthy only once the replacement
    pod is Ready."""
    from xci_cn.k8s.client import connect
    from xci_cn.k8s.health import HEALTHY, PROGRESSING, Target, wait_healthy
    from xci_cn.k8s.resources import Resources

    manifests, namespace = sdc_copy(tmp_path)
    code, _, out = run_on_cluster(tmp_path, sandbox, deploy_scenario(manifests, namespace))
    assert code == 0, out

    def pods() -> dict[str, bool]:
        listed = json.loads(kubectl(sandbox, "get", "pods", "-n", namespace, "-l", "app=http-lb,version=v1",
                                    "-o", "json"))["items"]
        return {p["metadata"]["name"]: any(c["type"] == "Ready" and c["status"] == "True"
                                           for c in p["status"].get("conditions") or [])
                for p in listed if not p["metadata"].get("deletionTimestamp")}

    before = pods()
    assert len(before) == 2 and all(before.values()), before
    victim = sorted(before)[0]
    kubectl(sandbox, "delete", "pod", victim, "-n", namespace, "--wait=false")

    def short_of_a_replica() -> bool:
        status = json.loads(kubectl(sandbox, "get", "deployment", "http-lb-v1", "-n", namespace,
                                    "-o", "json"))["status"]
        return status.get("availableReplicas", 0) < 2
    until("http-lb-v1 to miss its deleted pod", short_of_a_replica, 15, every=0.05)

    cluster = connect(sandbox["kubeconfig"])
    try:
        resources = Resources(cluster)
        info = resources.lookup("apps/v1", "Deployment")
        assert info is not None
        stored = resources.get(info, "http-lb-v1", namespace)
        assert stored is not None
        target = Target(info, namespace, "http-lb-v1")
        target.mark_applied(stored["metadata"]["generation"])
        seen: list[tuple[str, str]] = []
        observe = target.observe

        def recording(obj: dict | None) -> None:
            observe(obj)
            seen.append((target.health.status, target.health.message))
        target.observe = recording  # type: ignore[method-assign]
        result = wait_healthy(resources, [target], time.monotonic() + 60)
    finally:
        cluster.close()
    after = pods()
    assert result.not_healthy == [] and target.health.status == HEALTHY, seen
    assert seen[0][0] == PROGRESSING and "of 2 updated replicas available" in seen[0][1], seen
    assert seen[-1] == (HEALTHY, "2/2 available"), seen
    assert victim not in after and len(after) == 2 and all(after.values()), after
    assert set(after) - set(before), "no replacement pod"
    kubectl(sandbox, "delete", "namespace", namespace, "--wait=false")

# -- what the host lacks: one line each, exit 3, nothing started ---------------------------------
def _up_refused(name: str) -> str:
    """``sandbox up`` through the CLI's border, in this process (so that a
    test can point the kernel probes elsewhere): its one line, after checking
    that nothing of the sandbox runs or was made."""
    from click.testing import CliRunner

    from tests.leaks import processes_mentioning
    from xci_cn.cli import main
    from xci_cn.errors import EXIT_ENVIRONMENT
    from xci_cn.sandbox import cluster

    result = CliRunner().invoke(main, ["sandbox", "up", "--name", name, "--flavor", "aio", "-q"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == EXIT_ENVIRONMENT and len(lines) == 1, result.output
    sandbox = cluster.Sandbox(name)
    assert not sandbox.is_up() and processes_mentioning(str(sandbox.dir)) == []
    assert not sandbox.node.dir.exists()
    return lines[0]


def test_a_kernel_without_overlayfs_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xci_cn.sandbox import node

    without = tmp_path / "filesystems"
    without.write_text("\n".join(line for line in node.KERNEL_FILESYSTEMS.read_text().splitlines()
                                 if "overlay" not in line) + "\n")
    monkeypatch.setattr(node, "KERNEL_FILESYSTEMS", without)
    assert _up_refused("no-overlay") == (f"xci-cn: real pods need the kernel's overlay filesystem (not in "
                                         f"{without}); use --pods simulated on this host")


def test_a_kernel_without_bridge_netfilter_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xci_cn.sandbox import node

    monkeypatch.setattr(node, "BRIDGE_NETFILTER", tmp_path / "no-bridge")
    line = _up_refused("no-bridge")
    assert "real pods need the kernel's bridge netfilter" in line and "load br_netfilter" in line


class _RoutedLink:
    """A link of the test's own with routes into the node's address ranges
    (a bridge: there is no dummy module here); gone at exit."""

    def __init__(self, *subnets: str) -> None:
        self.name = f"xcit{uuid.uuid4().hex[:6]}"
        self.subnets = subnets

    def __enter__(self) -> str:
        subprocess.run(["ip", "link", "add", self.name, "type", "bridge"], check=True)
        subprocess.run(["ip", "link", "set", self.name, "up"], check=True)
        for subnet in self.subnets:
            subprocess.run(["ip", "route", "add", subnet, "dev", self.name], check=True)
        return self.name

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "link", "del", self.name], check=True)


def test_a_slot_whose_subnet_is_routed_is_passed_over() -> None:
    from xci_cn.sandbox import cluster, node

    layout = cluster.Sandbox("routed").node
    preferred = node.NodeNetwork(layout.preferred_slot)
    for subnet in (preferred.pod_subnet, preferred.service_cidr, preferred.link):
        with _RoutedLink(str(subnet)):
            chosen = node.free_slot(layout)
            assert chosen.slot != preferred.slot
            assert not any(mine.overlaps(subnet) for mine in chosen.networks().values())


def test_no_free_address_slot_is_one_line() -> None:
    """Every pod subnet routed elsewhere: one line, exit 3; the host is as it
    was, apart from the test's link, until it goes."""
    from tests.leaks import host_state
    from xci_cn.sandbox import node

    with _RoutedLink(str(node.POD_SUBNETS)) as link:
        before = host_state()
        line = _up_refused("all-taken")
        assert line.startswith("xci-cn: no address slot is free for a real node on this host (all 64 of pod "
                               "subnets 10.244.0.0/18"), line
        assert f"is already routed on this host (10.244.0.0/18 dev {link}" in line, line
        assert line.endswith("bring a sandbox down, free the addresses or use --pods simulated")
        after = host_state()
        # The session's own sandbox may be running: its pods' shims and mounts come and go.
        churn = ("processes", "mounts", "log links")
        assert {k: v for k, v in after.items() if k not in churn} == {k: v for k, v in before.items()
                                                                      if k not in churn}
        assert [x for k in churn for x in after[k] if "all-taken" in x] == []


def test_two_real_sandboxes_run_at_once_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two real nodes on one host, brought up at once: each its own
    namespace, bridge, pod subnet, Service CIDR and iptables; each answers
    by pod IP and ClusterIP from the host; neither sees the other's pods, nor
    is disturbed when the other goes; down leaves nothing of either."""
    import ipaddress
    import os

    from tests.leaks import host_state, ours, processes_mentioning
    from xci_cn.sandbox import node
    from xci_cn.sandbox.cluster import Sandbox

    home = tmp_path / "home"
    monkeypatch.setenv("XCI_CN_SANDBOX_HOME", str(home))
    names = ("nn-one", "nn-two")
    sandboxes = [Sandbox(name) for name in names]
    before = host_state()
    marks: list[str] = []
    ups = [subprocess.Popen(cli_argv("sandbox", "up", "--name", name, "--flavor", "mini", "-q"), env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in names]
    try:
        for up in ups:
            _, err = up.communicate(timeout=400)
            assert up.returncode == 0, err
        marks = _marks(*sandboxes)
        networks = [node.network_of(sandbox.node) for sandbox in sandboxes]
        boxes = [{"name": s.name, "kubeconfig": s.kubeconfig} for s in sandboxes]
        one, two = networks
        assert one is not None and two is not None
        assert one.slot != two.slot and one.bridge != two.bridge and one.node_ip != two.node_ip
        assert not one.pod_subnet.overlaps(two.pod_subnet) and not one.service_cidr.overlaps(two.service_cidr)
        image = f"xci-cn.local/sdc-app:{oci.sdc_app_tag()}"
        spaces = ("one", "two")
        for box, space in zip(boxes, spaces, strict=True):
            kubectl(box, "create", "namespace", space)
            kubectl(box, "run", "web", "-n", space, "--image", image, "--image-pull-policy", "Never",
                    "--port", "8080", "--", "http", f"--name={space}")
            kubectl(box, "expose", "pod", "web", "-n", space, "--port", "8080")
        answers = []
        for box, space, network in zip(boxes, spaces, (one, two), strict=True):
            kubectl(box, "wait", "-n", space, "--for", "condition=Ready", "pod/web", "--timeout", "90s")
            pod_ip = json.loads(kubectl(box, "get", "pod", "web", "-n", space, "-o", "json"))["status"]["podIP"]
            cluster_ip = json.loads(kubectl(box, "get", "svc", "web", "-n", space, "-o", "json"))["spec"]["clusterIP"]
            assert ipaddress.ip_address(pod_ip) in network.pod_subnet
            assert ipaddress.ip_address(cluster_ip) in network.service_cidr
            answers.append((space, pod_ip, cluster_ip))
        for space, pod_ip, cluster_ip in answers:  # from the host
            assert f"{space} v1" in http_get(pod_ip, 8080)[2]
            assert f"{space} v1" in http_get(cluster_ip, 8080)[2]
        # Each API server knows its own pods and its own node only.
        for box, network, theirs in ((boxes[0], one, answers[1]), (boxes[1], two, answers[0])):
            pods = json.loads(kubectl(box, "get", "pods", "-A", "-o", "json"))["items"]
            assert theirs[1] not in {p["status"].get("podIP") for p in pods}
            assert theirs[0] not in {p["metadata"]["namespace"] for p in pods}
            real = json.loads(kubectl(box, "get", "node", "node1", "-o", "json"))
            addresses = {a["type"]: a["address"] for a in real["status"]["addresses"]}
            assert addresses["InternalIP"] == network.node_ip
        # The first one goes; the second answers as before.
        down = cli("sandbox", "down", "--name", names[0], timeout=120)
        assert down.returncode == 0, down.stderr
        space, pod_ip, cluster_ip = answers[1]
        assert f"{space} v1" in http_get(pod_ip, 8080)[2] and f"{space} v1" in http_get(cluster_ip, 8080)[2]
        # Its pod subnet is routed nowhere near a node now (the host's default route may answer).
        route = subprocess.run(["ip", "-4", "route", "get", answers[0][1]], capture_output=True, text=True).stdout
        assert one.host_veth not in route and "xcicn" not in route, route
        assert "one v1" not in http_get(answers[0][1], 8080, settle=0)[2]
    finally:
        for up in ups:
            if up.poll() is None:
                up.kill()
            up.communicate()  # and its pipes closed
        for name in names:
            cli("sandbox", "down", "--name", name, timeout=120)
    after = host_state()
    assert processes_mentioning(str(home)) == []
    assert marks and ours(after, marks) == ours(before, marks), ours(after, marks)
