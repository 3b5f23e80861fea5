"""``shell``: run a command with bash; a non-zero exit fails the attempt (retried when
the stage has ``retries``)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from xci_cn.errors import TemporaryError
from xci_cn.pipeline.stage import StageContext, StageOptions


class ShellOptions(StageOptions):
    command: str = Field(description="Shell command, run with bash -e -o pipefail.")
    env: dict[str, str] = Field(default_factory=dict, description=(
        "Extra environment variables; the values of names with TOKEN, PASSWORD or SECRET in them and of "
        "those in `secret_env` are redacted from logs, reports and the console."))
    secret_env: list[str] = Field(default_factory=list, description="Names in `env` whose values are secrets "
                                                                   "although their names do not say so.")
    cwd: str | None = Field(default=None, description="Working directory (default: the current one).")


class ShellStage:
    name: ClassVar[str] = "shell"
    options_model: ClassVar[type[StageOptions]] = ShellOptions

    def preflight(self, options: ShellOptions) -> None:
        """Learn the stage's secrets before anything runs or is printed."""
        from xci_cn.secrets import redactor

        unknown = [name for name in options.secret_env if name not in options.env]
        if unknown:
            from xci_cn.errors import InvalidInput

            raise InvalidInput(f"secret_env names {', '.join(unknown)}, which env does not set")
        redactor().add_from_mapping(options.env, options.secret_env)

    def run(self, ctx: StageContext, options: ShellOptions) -> dict[str, Any]:
        self.preflight(options)  # also when run without the CLI's pre-flight step
        env = {
            "XCI_CN_RESULTS_DIR": str(ctx.results_dir),
            "XCI_CN_STAGE": ctx.stage,
            "DEPLOY_SCENARIO": ctx.inputs.scenario,
            "XCI_FLAVOR": ctx.inputs.flavor,
            "INSTALLER_TYPE": ctx.inputs.installer,
            **options.env,
        }
        ctx.log.info("$ %s", options.command)
        code = ctx.run_command(["/bin/bash", "-e", "-o", "pipefail", "-c", options.command],
                               env=env, cwd=options.cwd)
        if code != 0:  # a command may pass on another attempt: retried when the stage has retries
            raise TemporaryError(f"command exited with status {code}: {options.command}")
        return {"exit_code": code}
