"""``ansible``: run a playbook through ansible-runner."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from xci_cn.ansible.runner import run_playbook
from xci_cn.errors import StageFailed
from xci_cn.paths import PLAYBOOKS_DIR
from xci_cn.pipeline.stage import StageContext, StageOptions, find_kubeconfig


class AnsibleOptions(StageOptions):
    playbook: str = Field(description="Playbook file: absolute, relative to the working directory, "
                                      "or the name of one in playbooks/.")
    extravars: dict[str, Any] = Field(default_factory=dict, description="Extra variables.")
    inventory: str | None = Field(default=None, description="Inventory text or file (default: localhost).")


class AnsibleStage:
    name: ClassVar[str] = "ansible"
    options_model: ClassVar[type[StageOptions]] = AnsibleOptions

    def run(self, ctx: StageContext, options: AnsibleOptions) -> dict[str, Any]:
        from pathlib import Path

        playbook = Path(options.playbook)
        if not playbook.is_absolute() and not playbook.exists():
            playbook = PLAYBOOKS_DIR / options.playbook
        if not playbook.exists():
            raise StageFailed(f"playbook {options.playbook!r} not found (looked in . and {PLAYBOOKS_DIR})")
        extravars = {
            "xci_cn_results_dir": str(ctx.results_dir.resolve()),
            "deploy_scenario": ctx.inputs.scenario,
            "xci_flavor": ctx.inputs.flavor,
            "installer_type": ctx.inputs.installer,
            # Absolute: the playbook does not run in the run's working directory.
            "xci_cn_kubeconfig": str(Path(kubeconfig).resolve()) if (kubeconfig := find_kubeconfig(ctx)) else "",
            "xci_cn_sandbox_dir": sandbox_dir(ctx),
            **options.extravars,
        }
        result = run_playbook(
            playbook, private_data_dir=ctx.results_dir / "ansible" / ctx.stage, log=ctx.log,
            extravars=extravars, inventory=options.inventory, cancel=ctx.cancel,
            ident=f"attempt-{ctx.attempt}",
        )
        return {"playbook": str(playbook), "status": result.status,
                "artifacts": str(result.artifacts_dir)}


def sandbox_dir(ctx: StageContext) -> str:
    if ctx.inputs.installer != "sandbox":
        return ""
    from xci_cn.sandbox.cluster import Sandbox

    return str(Sandbox(ctx.inputs.sandbox_name).dir)
