"""The one exception tree of xci-cn, and the exit codes the CLI maps it to.

Stages and adapters raise these; only ``xci_cn.cli`` turns them into a
message and an exit code::

    XciCnError                      exit 1
    ├── InvalidInput                exit 2  bad scenario, option, manifest, kubeconfig
    │   └── ScenarioError           exit 2  one or more located scenario problems
    ├── EnvironmentProblem          exit 3  a tool or service the run needs is missing/unreachable
    ├── StageFailed                 exit 1  a stage did not do its job (not retried)
    │   ├── TemporaryError          exit 1  "not yet": the only failure worth another attempt
    │   ├── PermanentError          exit 1  retrying cannot help
    │   ├── RolloutPaused           exit 1  analysis inconclusive, rollout left paused
    │   └── Cancelled               exit 1  the attempt was cancelled (timeout or abort)
    └── Interrupted                 exit 130 (SIGINT) / 143 (SIGTERM)

A failed call to the Kubernetes API is one of these as well, raised where the
request is made (``xci_cn.k8s.resources``); each also is an ``ApiError``
naming what was asked for::

    NotFound (PermanentError)   Conflict (PermanentError)   Forbidden (PermanentError)
    Rejected (InvalidInput)     Unauthorized (InvalidInput)
    Unavailable (EnvironmentProblem)   Overloaded (TemporaryError)   RequestFailed (PermanentError)
"""

from __future__ import annotations

from typing import Protocol

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
    """A stage failed; the runner does not retry it (see ``TemporaryError``).
    ``outputs`` keeps what the stage did before failing (a canary's steps
    up to its rollback) for summary.json and the report."""

    def __init__(self, message: str, outputs: dict | None = None):
        super().__init__(message)
        self.outputs = outputs or {}


class TemporaryError(StageFailed):
    """The stage may succeed on another attempt (not ready, no data yet, a
    command that failed this time). ``delay``: seconds to wait before the
    next attempt, instead of the run's backoff."""

    def __init__(self, message: str, outputs: dict | None = None, *, delay: float | None = None):
        super().__init__(message, outputs)
        self.delay = delay


class PermanentError(StageFailed):
    """Another attempt cannot help (the canary broke its SLO, bad manifest)."""


class RolloutPaused(StageFailed):
    """Analysis was Inconclusive and its policy is 'pause': the rollout stays
    at its current weights for a person to promote or roll back."""


class Cancelled(StageFailed):
    """The attempt was cancelled (its timeout, or the run was aborted). Every
    layer may raise it where it notices its cancel event is set."""


class CancelEvent(Protocol):
    def is_set(self) -> bool: ...


def raise_if_set(cancel: CancelEvent | None) -> None:
    """Raise ``Cancelled`` when ``cancel`` (a threading.Event) is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled")


class ApiError(XciCnError):
    """Mixed into the errors of a failed Kubernetes API call: ``what`` was
    being done, the HTTP ``status`` (0 when no answer came)."""

    what: str = ""
    status: int = 0
    reason: str = ""  # the API server's message
    causes: tuple[dict[str, str], ...] = ()  # the fields a 422 names


class NotFound(ApiError, PermanentError):
    """404: the object (or its kind) does not exist."""


class Conflict(ApiError, PermanentError):
    """409: the object changed or already exists."""


class Forbidden(ApiError, PermanentError):
    """403: the identity lacks a permission; the message names it."""


class Rejected(ApiError, InvalidInput):
    """400/422 (or a typed-patch 500): the API server refused the object
    itself; the message names the field."""


class Unauthorized(ApiError, InvalidInput):
    """401: the kubeconfig's credentials are not accepted."""


class Unavailable(ApiError, EnvironmentProblem):
    """No answer: the API server is unreachable (after retrying)."""


class RequestFailed(ApiError, PermanentError):
    """Any other answer the API server gave (405, 410 …)."""


class Overloaded(ApiError, TemporaryError):
    """429/5xx still answered after retrying: another attempt may pass."""


class Interrupted(XciCnError):
    """The run was interrupted by a signal (a Jenkins abort)."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        self.exit_code = EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
