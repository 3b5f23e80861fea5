"""The one exception tree of xci-cn, and the exit codes the CLI maps it to.

Stages and adapters raise these; only ``xci_cn.cli`` turns them into a
message and an exit code::

    XciCnError                      exit 1
    ├── InvalidInput                exit 2  bad scenario, option, manifest, kubeconfig
    │   └── ScenarioError           exit 2  one or more located scenario problems
    ├── EnvironmentProblem          exit 3  a tool or service the run needs is missing/unreachable
    ├── StageFailed                 exit 1  a stage did not do its job (retried if allowed)
    │   ├── TemporaryError          exit 1  "not yet": worth another attempt
    │   ├── PermanentError          exit 1  retrying cannot help
    │   └── RolloutPaused           exit 1  analysis inconclusive, rollout left paused
    └── Interrupted                 exit 130 (SIGINT) / 143 (SIGTERM)
"""

from __future__ import annotations

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_INVALID_INPUT = 2
EXIT_ENVIRONMENT = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class XciCnError(Exception):
    """Base of every error xci-cn raises on purpose."""

    exit_code = EXIT_FAILED

    def lines(self) -> list[str]:
        """The message as the lines the CLI prints (one per problem)."""
        return [str(self)]


class InvalidInput(XciCnError):
    """Input the user gave is wrong; nothing was run or applied."""

    exit_code = EXIT_INVALID_INPUT


class ScenarioError(InvalidInput):
    """Problems found while loading a scenario, each already located as
    ``file:line: field: message``."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))

    def lines(self) -> list[str]:
        return list(self.problems)


class EnvironmentProblem(XciCnError):
    """Something outside the input is missing: a tool, a binary, a service."""

    exit_code = EXIT_ENVIRONMENT


class StageFailed(XciCnError):
    """A stage failed. The runner retries it while attempts remain.
    ``outputs`` keeps what the stage did before failing (a canary's steps
    up to its rollback) for summary.json and the report."""

    retryable = True

    def __init__(self, message: str, outputs: dict | None = None):
        super().__init__(message)
        self.outputs = outputs or {}


class TemporaryError(StageFailed):
    """The stage may succeed on another attempt (not ready, no data yet)."""

    retryable = True


class PermanentError(StageFailed):
    """Another attempt cannot help (the canary broke its SLO, bad manifest)."""

    retryable = False


class RolloutPaused(StageFailed):
    """Analysis was Inconclusive and its policy is 'pause': the rollout stays
    at its current weights for a person to promote or roll back."""

    retryable = False


class Interrupted(XciCnError):
    """The run was interrupted by a signal (a Jenkins abort)."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        self.exit_code = EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
