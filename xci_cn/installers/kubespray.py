"""The ``kubespray`` installer: XCI's way, on real hosts.

Runs playbooks/kubespray.yml, which wraps a kubespray checkout
(``$KUBESPRAY_DIR``) with the scenario's cluster vars
(playbooks/vars/scenarios/<scenario>.yml; ``istio_enabled: true`` for
k8-nosdn-istio) and an inventory of real hosts
(``$XCI_CN_KUBESPRAY_INVENTORY``), then copies the admin kubeconfig into the
results dir. It needs real hosts: it cannot run on a CI machine without them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from xci_cn.ansible.runner import run_playbook
from xci_cn.errors import InvalidInput
from xci_cn.paths import PLAYBOOKS_DIR
from xci_cn.pipeline.stage import StageContext


def scenario_vars_file(scenario: str) -> Path:
    return PLAYBOOKS_DIR / "vars" / "scenarios" / f"{scenario}.yml"


def provision(ctx: StageContext, action: str, istio: bool) -> dict[str, Any]:
    if action == "down":
        ctx.log.info("installer 'kubespray': hosts are left as they are (XCI cleans its VMs itself)")
        return {"installer": "kubespray", "action": "down"}
    kubespray_dir = os.environ.get("KUBESPRAY_DIR", "")
    inventory = os.environ.get("XCI_CN_KUBESPRAY_INVENTORY", "")
    if not kubespray_dir or not (Path(kubespray_dir) / "cluster.yml").is_file():
        raise InvalidInput("installer 'kubespray' needs a kubespray checkout: set KUBESPRAY_DIR "
                           f"(now {kubespray_dir or 'unset'}) to a directory with cluster.yml")
    if not inventory or not Path(inventory).exists():
        raise InvalidInput("installer 'kubespray' needs real hosts: set XCI_CN_KUBESPRAY_INVENTORY "
                           f"to an Ansible inventory of them (now {inventory or 'unset'})")
    vars_file = scenario_vars_file(ctx.inputs.scenario)
    if not vars_file.is_file():
        raise InvalidInput(f"installer 'kubespray' has no cluster vars for scenario "
                           f"{ctx.inputs.scenario!r} ({vars_file} is missing)")
    kubeconfig = ctx.results_dir / "kubeconfig"
    run_playbook(
        PLAYBOOKS_DIR / "kubespray.yml", private_data_dir=ctx.results_dir / "ansible" / ctx.stage,
        log=ctx.log, cancel=ctx.cancel, ident=f"attempt-{ctx.attempt}",
        extravars={"kubespray_dir": kubespray_dir, "kubespray_inventory": inventory,
                   "scenario_vars_file": str(vars_file), "xci_flavor": ctx.inputs.flavor,
                   "kubeconfig_dest": str(kubeconfig.resolve()),
                   "kube_version": f"v{ctx.scenario.versions.kubernetes or '1.36.3'}"},
    )
    from xci_cn.stages.provision import ProvisionStage

    outputs = ProvisionStage()._check_cluster(ctx, kubeconfig, istio)
    outputs.update({"installer": "kubespray", "action": "up"})
    return outputs
