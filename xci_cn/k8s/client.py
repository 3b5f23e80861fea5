"""The one door to the Kubernetes API.

Loads a kubeconfig into an isolated ApiClient (never the process-global
default, never ~/.kube/config by accident). ``api_error`` translates the
client's exceptions into xci-cn's errors (``xci_cn.errors.ApiError``: not
found, conflict, forbidden, rejected with the fields, unavailable); it is
called where requests are made, in ``Cluster`` and ``Resources.request``,
and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from xci_cn.errors import (
    ApiError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    Overloaded,
    Rejected,
    RequestFailed,
    Unauthorized,
    Unavailable,
    XciCnError,
)

__all__ = ["FOREIGN_ERRORS", "Cluster", "api_error", "connect", "is_transient"]


@dataclass
class Cluster:
    """A connected API client plus what it points at."""

    api: k8s.ApiClient
    kubeconfig: Path
    server: str

    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.api)

    def apiextensions(self) -> k8s.ApiextensionsV1Api:
        return k8s.ApiextensionsV1Api(self.api)

    def version(self) -> str:
        try:
            info = k8s.VersionApi(self.api).get_code(_request_timeout=10)
        except FOREIGN_ERRORS as exc:
            raise api_error(exc, f"API server {self.server}") from None
        return str(info.git_version)

    def close(self) -> None:
        self.api.close()


def connect(kubeconfig: str | Path, context: str | None = None) -> Cluster:
    """An ApiClient for ``kubeconfig``; bad files are InvalidInput naming them."""
    path = Path(kubeconfig)
    if not path.is_file():
        raise InvalidInput(f"kubeconfig {path}: no such file")
    from xci_cn.config.loader import check_nesting
    from xci_cn.errors import ScenarioError

    try:  # the client's loader recurses: refuse a bomb of a file before it reads it
        check_nesting(path)
    except ScenarioError as exc:
        raise InvalidInput(f"kubeconfig {exc.lines()[0]}") from None
    remember_secrets(path)
    configuration = k8s.Configuration()
    try:
        k8s_config.load_kube_config(config_file=str(path), context=context,
                                    client_configuration=configuration, persist_config=False)
    except ConfigException as exc:
        raise InvalidInput(f"kubeconfig {path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise InvalidInput(f"kubeconfig {path}{where}: not valid YAML "
                           f"({getattr(exc, 'problem', None) or type(exc).__name__})") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InvalidInput(f"kubeconfig {path}: not a usable kubeconfig ({type(exc).__name__}: {exc})") \
            from None
    except OSError as exc:
        raise InvalidInput(f"kubeconfig {path}: {exc.strerror or exc}") from None
    configuration.retries = False
    # Deploys apply and watch from several threads: keep a connection per
    # thread alive instead of a new TLS handshake per request (default pool: 4).
    configuration.connection_pool_maxsize = 32
    return Cluster(k8s.ApiClient(configuration), path, configuration.host)


TRANSIENT_STATUS = (429, 500, 502, 503, 504)


# What the API server says, with a 500, when it cannot turn the submitted
# object into its type (a wrongly typed value; invalid base64 in a Secret's
# data): the object's fault, not the server's. Kubernetes gives these no
# reason or status of their own, so its message decides.
_OBJECT_NOT_DECODABLE = ("failed to create typed patch object", "failed to convert new object",
                         "unable to convert unstructured object", "error decoding from json")


def object_not_decodable(exc: BaseException) -> bool:
    """A 500 that is the request's object, not the server: never retried."""
    return isinstance(exc, ApiException) and exc.status == 500 and \
        any(text in (exc.body or "") for text in _OBJECT_NOT_DECODABLE)


def is_transient(exc: BaseException) -> bool:
    """Worth another try: the API server (or etcd behind it) is restarting,
    overloaded or briefly unreachable — not a refusal of the request itself."""
    if isinstance(exc, ApiException):
        if object_not_decodable(exc):
            return False
        return exc.status in TRANSIENT_STATUS or exc.status == 0
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


SECRET_FIELDS = ("token", "password", "client-key-data", "access-token", "id-token", "refresh-token",
                 "client-secret")


def remember_secrets(path: Path) -> None:
    """Teach the redactor every credential in a kubeconfig (tokens, client
    keys, passwords), so that none reaches a log, report or artifact."""
    from xci_cn.secrets import redactor

    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return  # load_kube_config reports the problem

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in SECRET_FIELDS and isinstance(value, str):
                    redactor().add(value)
                    if key == "client-key-data":
                        import base64
                        import binascii

                        try:  # the decoded PEM, too, line by line
                            for line in base64.b64decode(value).decode().splitlines():
                                redactor().add(line.strip())
                        except (binascii.Error, UnicodeDecodeError, ValueError):
                            pass
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    if isinstance(config, dict):
        walk(config.get("users"))


_ERRORS: dict[int, type[ApiError]] = {401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
                                      400: Rejected, 422: Rejected}


def api_error(exc: BaseException, what: str) -> XciCnError:
    """The project's error for a failed call of the Kubernetes client, made
    once, where requests are made (``Resources.request``, ``Cluster``)."""
    if isinstance(exc, ApiException):
        status = exc.status or 0
        reason = _api_message(exc)
        if object_not_decodable(exc):
            status = 422  # a wrongly typed value or undecodable data: a 500, but the object's fault
        kind: type[ApiError]
        if status == 401:
            kind, text = Unauthorized, f"{what}: unauthorized (401): check the kubeconfig's credentials"
        elif status in _ERRORS:
            kind, text = _ERRORS[status], f"{what}: {_WORDS[status]} ({status}): {reason}"
        elif status in TRANSIENT_STATUS:
            kind, text = Overloaded, f"{what}: API server answered {status}: {reason}"
        elif status == 0:
            kind, text = Unavailable, f"{what}: unreachable ({reason or 'no answer'})"
        else:
            kind, text = RequestFailed, f"{what}: {status} {reason}"
        error: ApiError = kind(text)
        error.what, error.status, error.reason = what, status, reason
        error.causes = tuple(_causes(exc))
        return error
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        unavailable = Unavailable(f"{what}: unreachable ({type(exc).__name__}: {_short(exc)})")
        unavailable.what, unavailable.reason = what, _short(exc)
        return unavailable
    raise TypeError(f"not an error of the Kubernetes client: {type(exc).__name__}")  # a bug of the caller


FOREIGN_ERRORS = (ApiException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)
_WORDS = {403: "forbidden", 404: "not found", 409: "conflict", 400: "rejected", 422: "rejected"}


def _causes(exc: ApiException) -> list[dict[str, str]]:
    """The fields a 422 names (``details.causes``)."""
    import json

    try:
        details = json.loads(exc.body or "{}").get("details") or {}
    except (ValueError, AttributeError):
        return []
    return [c for c in details.get("causes") or [] if isinstance(c, dict)]


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "…"


def _api_message(exc: ApiException) -> str:
    import json

    try:
        body: Any = json.loads(exc.body or "{}")
        message = body.get("message") or exc.reason or ""
    except (ValueError, AttributeError):
        message = exc.reason or ""
    return " ".join(str(message).split())
