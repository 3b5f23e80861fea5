"""The ``kubespray`` installer: XCI's way, on real hosts.

Runs playbooks/kubespray.yml, which wraps a kubespray checkout
(``$KUBESPRAY_DIR``) with the scenario's cluster vars
(playbooks/vars/scenarios/<scenario>.yml; ``istio_enabled: true`` for
k8-nosdn-istio) and an inventory of real hosts
(``$XCI_CN_KUBESPRAY_INVENTORY``), then copies the admin kubeconfig into the
results dir. It needs real hosts: it cannot run on a CI machine without them.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from xci_cn import settings
from xci_cn.ansible.runner import run_playbook
from xci_cn.errors import InvalidInput
from xci_cn.paths import PLAYBOOKS_DIR


def scenario_vars_file(scenario: str) -> Path:
    return PLAYBOOKS_DIR / "vars" / "scenarios" / f"{scenario}.yml"


def install(scenario: str, flavor: str, kubernetes_version: str | None, *, kubeconfig: Path,
            private_data_dir: Path, ident: str, log: logging.Logger,
            cancel: threading.Event | None = None) -> Path:
    """Run kubespray against the inventory's hosts; it copies the admin
    kubeconfig back to ``kubeconfig``, which is returned."""
    kubespray_dir = settings.current().kubespray_dir or ""
    inventory = settings.current().kubespray_inventory or ""
    if not kubespray_dir or not (Path(kubespray_dir) / "cluster.yml").is_file():
        raise InvalidInput("installer 'kubespray' needs a kubespray checkout: set KUBESPRAY_DIR "
                           f"(now {kubespray_dir or 'unset'}) to a directory with cluster.yml")
    if not inventory or not Path(inventory).exists():
        raise InvalidInput("installer 'kubespray' needs real hosts: set XCI_CN_KUBESPRAY_INVENTORY "
                           f"to an Ansible inventory of them (now {inventory or 'unset'})")
    vars_file = scenario_vars_file(scenario)
    if not vars_file.is_file():
        raise InvalidInput(f"installer 'kubespray' has no cluster vars for scenario "
                           f"{scenario!r} ({vars_file} is missing)")
    run_playbook(
        PLAYBOOKS_DIR / "kubespray.yml", private_data_dir=private_data_dir, log=log, cancel=cancel, ident=ident,
        extravars={"kubespray_dir": kubespray_dir, "kubespray_inventory": inventory,
                   "scenario_vars_file": str(vars_file), "xci_flavor": flavor,
                   "kubeconfig_dest": str(kubeconfig.resolve()),
                   "kube_version": f"v{kubernetes_version or '1.36.3'}"},
    )
    return kubeconfig
