"""``provision``: bring up (or check, or tear down) the scenario's cluster.

What it does depends on the run's installer:

* ``sandbox``: the local sandbox (real control plane, one real node and kwok
  nodes, Istio CRDs) through playbooks/sandbox-up.yml; ``action: down``
  removes it. ``pods: simulated`` keeps every node kwok's (no root needed).
* ``existing``: connects to the kubeconfig given (``--kubeconfig`` or
  ``$KUBECONFIG``) and checks it; changes nothing, tears nothing down.
* ``kubespray``: playbooks/kubespray.yml against real hosts (see the docs).

Outputs the kubeconfig path that later stages (deploy, verify) use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from xci_cn.errors import InvalidInput, StageFailed
from xci_cn.pipeline.stage import StageContext, StageOptions


class ProvisionOptions(StageOptions):
    action: Literal["up", "down"] = Field(default="up", description="Bring the cluster up or tear it down.")
    istio: bool = Field(default=True, description="Install (sandbox) or require (existing) Istio's CRDs.")
    reuse: bool = Field(default=True, description="Reuse a running sandbox of the same name and flavor.")
    pods: Literal["real", "simulated"] | None = Field(
        default=None, description="Sandbox: real pods on a real node (needs root) or kwok-simulated pods; "
                                  "default $XCI_CN_SANDBOX_PODS (the Jenkins parameter SANDBOX_PODS), else real.")
    api_port: int = Field(default=0, ge=0, le=65535,
                          description="Preferred API server port of the sandbox (0: any free port).")


class ProvisionStage:
    name: ClassVar[str] = "provision"
    options_model: ClassVar[type[StageOptions]] = ProvisionOptions

    def run(self, ctx: StageContext, options: ProvisionOptions) -> dict[str, Any]:
        installer = ctx.inputs.installer
        if installer == "sandbox":
            return self._sandbox(ctx, options)
        if installer == "existing":
            return self._existing(ctx, options)
        return self._kubespray(ctx, options)

    def still_valid(self, outputs: dict[str, Any]) -> bool:
        """On --resume: a sandbox that was torn down must be brought up again."""
        if outputs.get("installer") != "sandbox" or outputs.get("action") != "up":
            return True
        from xci_cn.sandbox.cluster import Sandbox

        return Sandbox(outputs["sandbox"]).is_up() and Path(outputs.get("kubeconfig", "")).exists()

    # -- installers --------------------------------------------------------------------
    def _sandbox(self, ctx: StageContext, options: ProvisionOptions) -> dict[str, Any]:
        from xci_cn.sandbox import cluster

        name = ctx.inputs.sandbox_name
        artifacts = ctx.results_dir / "ansible" / ctx.stage
        if options.action == "down":
            removed = cluster.down(name, missing_ok=True, log=ctx.log, cancel=ctx.cancel,
                                   artifacts_dir=artifacts)
            (ctx.results_dir / "kubeconfig").unlink(missing_ok=True)
            leftovers = cluster.Sandbox(name).running_components()
            ctx.check("sandbox removed", not leftovers,
                      f"still running: {leftovers}" if leftovers else "no process left")
            return {"installer": "sandbox", "action": "down", "sandbox": name, "removed": removed}
        kubeconfig = ctx.results_dir / "kubeconfig"
        pods = options.pods or os.environ.get("XCI_CN_SANDBOX_PODS") or "real"
        result = cluster.up(name, ctx.inputs.flavor, istio=options.istio, api_port=options.api_port,
                            reuse=options.reuse, pods=pods, kubeconfig_copy=kubeconfig, log=ctx.log,
                            progress=ctx.report_progress, cancel=ctx.cancel, artifacts_dir=artifacts)
        for note in result.notes:
            ctx.log.info("%s", note)
        outputs = self._check_cluster(ctx, kubeconfig, options.istio)
        outputs.update({"installer": "sandbox", "action": "up", "sandbox": name,
                        "reused": result.reused, "sandbox_kubeconfig": str(result.sandbox.kubeconfig)})
        return outputs

    def _existing(self, ctx: StageContext, options: ProvisionOptions) -> dict[str, Any]:
        if options.action == "down":
            ctx.log.info("installer 'existing': the cluster is not ours to tear down")
            return {"installer": "existing", "action": "down"}
        if not ctx.inputs.kubeconfig:
            raise InvalidInput("installer 'existing' needs a kubeconfig: --kubeconfig or $KUBECONFIG")
        outputs = self._check_cluster(ctx, Path(ctx.inputs.kubeconfig), options.istio)
        outputs.update({"installer": "existing", "action": "up"})
        return outputs

    def _kubespray(self, ctx: StageContext, options: ProvisionOptions) -> dict[str, Any]:
        from xci_cn.installers.kubespray import provision

        return provision(ctx, options.action, options.istio)

    # -- shared ------------------------------------------------------------------------
    def _check_cluster(self, ctx: StageContext, kubeconfig: Path, istio: bool) -> dict[str, Any]:
        """Read the cluster back through its API and record checks."""
        from xci_cn.k8s.client import connect, translate
        from xci_cn.sandbox.cluster import node_summary

        cluster = connect(kubeconfig)
        try:
            version = cluster.version()
            try:
                nodes = [node_summary(n) for n in cluster.core().list_node(_request_timeout=15).items]
                crds = cluster.apiextensions().list_custom_resource_definition(_request_timeout=15).items
                namespaces = {n.metadata.name for n in
                              cluster.core().list_namespace(_request_timeout=15).items}
            except Exception as exc:  # noqa: BLE001 - translated
                raise translate(exc, f"cluster {cluster.server}") from None
        finally:
            cluster.close()
        for node in nodes:
            ctx.check(f"node {node['name']} Ready", node["ready"],
                      f"roles: {','.join(node['roles']) or '-'}")
        if not nodes:
            ctx.check("cluster has nodes", False, "the API server lists no nodes")
        istio_crds = [c for c in crds if c.spec.group.endswith("istio.io")]
        if istio:
            established = [c.metadata.name for c in istio_crds
                           if any(k.type == "Established" and k.status == "True"
                                  for k in (c.status.conditions or []))]
            ctx.check("Istio CRDs Established", bool(istio_crds) and len(established) == len(istio_crds),
                      f"{len(established)}/{len(istio_crds)} Established")
            ctx.check("namespace istio-system", "istio-system" in namespaces,
                      "present" if "istio-system" in namespaces else "missing")
        if not all(n["ready"] for n in nodes):
            raise StageFailed(f"nodes not Ready: {', '.join(n['name'] for n in nodes if not n['ready'])}")
        return {"kubeconfig": str(kubeconfig), "api_url": cluster.server, "server_version": version,
                "nodes": nodes, "istio_crds": len(istio_crds)}
