"""Everything xci-cn takes from its environment, read in one place.

XCI's own job parameters keep their names (``DEPLOY_SCENARIO``,
``XCI_FLAVOR``, ``INSTALLER_TYPE``, ``XCI_DISTRO``), as do ``KUBECONFIG``,
Jenkins' build variables and the Jenkins client's; xci-cn's own settings are
``XCI_CN_*``. Precedence, written once here: a command-line value (given to
``Settings.resolve``) over the environment over the defaults below. Settings
are read anew on each call of ``current()``: a test or an embedding program
that changes the environment sees the change.

No other module reads a setting from ``os.environ``; what still touches the
environment passes it on to child processes (commands, ansible, go) or
scans it for secrets to redact (``secrets.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SCENARIO = "k8-nosdn-istio"
DEFAULT_FLAVOR = "mini"
DEFAULT_DISTRO = "ubuntu"
DEFAULT_SANDBOX = "xci-cn"

# Jenkins' build variables recorded with a run (summary.json, the report).
JENKINS_VARIABLES = ("BUILD_URL", "JOB_NAME", "BUILD_NUMBER", "GERRIT_CHANGE_NUMBER",
                     "GERRIT_PATCHSET_NUMBER", "GERRIT_REFSPEC", "GERRIT_BRANCH", "GERRIT_PROJECT",
                     "GERRIT_TOPIC")


def _env(name: str, default: Any = None, description: str = "") -> Any:
    return Field(default, validation_alias=name, description=description)


class Settings(BaseSettings):
    """xci-cn's settings; field names are what the code uses, aliases (or the
    ``XCI_CN_`` prefix) what the environment says."""

    model_config = SettingsConfigDict(env_prefix="XCI_CN_", extra="ignore", frozen=True,
                                      populate_by_name=True, env_ignore_empty=True)

    # XCI's job parameters.
    scenario: str = _env("DEPLOY_SCENARIO", DEFAULT_SCENARIO, "Bundled scenario name or scenario file.")
    flavor: str = _env("XCI_FLAVOR", DEFAULT_FLAVOR, "XCI flavor: aio, mini, noha, ha.")
    installer: str | None = _env("INSTALLER_TYPE", None, "sandbox, existing or kubespray.")
    distro: str = _env("XCI_DISTRO", DEFAULT_DISTRO)
    kubeconfig: str | None = _env("KUBECONFIG")

    # xci-cn's own (XCI_CN_<NAME>).
    sandbox: str = Field(DEFAULT_SANDBOX, description="Name of the local sandbox cluster.")
    sandbox_pods: Literal["real", "simulated"] = Field(
        "real", description="Who runs the sandbox's pods: a real node (needs root) or kwok alone.")
    sandbox_home: Path | None = Field(None, description="Directory of the sandboxes.")
    cache: Path | None = Field(None, description="Cache of the built sandbox binaries.")
    prometheus_url: str | None = Field(None, description="Prometheus for canary analysis.")
    gateway_url: str | None = Field(None, description="Gateway that traffic and path-only probes go through.")
    traefik_api_url: str | None = Field(None, description="API of the proxy, to wait until it serves a route.")
    kubespray_inventory: str | None = Field(None, description="Ansible inventory of kubespray's hosts.")
    jenkins_conf: Path | None = Field(None, description="Jenkins client config (jenkins_jobs.ini format).")

    # Others' variables xci-cn reads.
    kubespray_dir: str | None = _env("KUBESPRAY_DIR")
    jenkins_url: str | None = _env("JENKINS_URL")
    jenkins_user: str | None = _env("JENKINS_USER")
    jenkins_api_token: str | None = _env("JENKINS_API_TOKEN")
    jenkins_password: str | None = _env("JENKINS_PASSWORD")
    xdg_state_home: Path | None = _env("XDG_STATE_HOME")
    xdg_cache_home: Path | None = _env("XDG_CACHE_HOME")

    build_url: str | None = _env("BUILD_URL")
    job_name: str | None = _env("JOB_NAME")
    build_number: str | None = _env("BUILD_NUMBER")
    gerrit_change_number: str | None = _env("GERRIT_CHANGE_NUMBER")
    gerrit_patchset_number: str | None = _env("GERRIT_PATCHSET_NUMBER")
    gerrit_refspec: str | None = _env("GERRIT_REFSPEC")
    gerrit_branch: str | None = _env("GERRIT_BRANCH")
    gerrit_project: str | None = _env("GERRIT_PROJECT")
    gerrit_topic: str | None = _env("GERRIT_TOPIC")

    @classmethod
    def resolve(cls, **given: Any) -> Settings:
        """The settings with the command line's values (``None``: not given)
        over the environment's."""
        return cls(**{key: value for key, value in given.items() if value is not None})

    def given(self, name: str) -> bool:
        """Whether ``name`` was set (command line or environment), not defaulted."""
        return name in self.model_fields_set

    def jenkins_context(self) -> dict[str, str]:
        """Jenkins' build variables that are set, by their variable names."""
        out = {}
        for variable in JENKINS_VARIABLES:
            value = getattr(self, variable.lower())
            if value:
                out[variable] = value
        return out

    def sandboxes_dir(self) -> Path:
        if self.sandbox_home:
            return self.sandbox_home
        return (self.xdg_state_home or Path.home() / ".local" / "state") / "xci-cn" / "sandboxes"

    def cache_dir(self) -> Path:
        if self.cache:
            return self.cache
        return (self.xdg_cache_home or Path.home() / ".cache") / "xci-cn"


def describe(field: str, text: str = "") -> str:
    """``text`` with the setting's variable and default, for ``--help``."""
    info = Settings.model_fields[field]
    variable = info.validation_alias if isinstance(info.validation_alias, str) else f"XCI_CN_{field.upper()}"
    default = "" if info.default is None else f"; default {info.default}"
    return f"{text} [env {variable}{default}]".lstrip()


def current() -> Settings:
    """The settings as the environment says now."""
    return Settings.resolve()
