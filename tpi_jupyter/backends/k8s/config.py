"""Where the backend talks to and what the pods run: the kubeconfig and the settings.

Credentials come from the kubeconfig as kubectl finds it (`KUBECONFIG`, else `~/.kube/config`,
its current context), or from the pod's service account when the client itself runs in a pod
(no kubeconfig, `KUBERNETES_SERVICE_HOST` set). The namespace is the context's (`default`
without one); `TPI_K8S_NAMESPACE` overrides it. Settings are environment variables, read when a
task is created and kept in its state, so a later read or destroy talks to the same place.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import __version__

NAMESPACE_ENV = "TPI_K8S_NAMESPACE"
CONTEXT_ENV = "TPI_K8S_CONTEXT"  # a kubeconfig context other than the current one
AGENT_IMAGE_ENV = "TPI_K8S_AGENT_IMAGE"  # the image that brings the agent's runtime
AGENT_RUNTIME_ENV = "TPI_K8S_AGENT_RUNTIME"  # where that runtime is inside that image
STORAGE_CREDENTIALS_ENV = "TPI_K8S_STORAGE_CREDENTIALS"  # "none": the service account has access
STORAGE_ENDPOINT_ENV = "TPI_K8S_STORAGE_ENDPOINT"  # the store's endpoint as pods reach it, if not as here
DEFAULT_AGENT_IMAGE = f"tpi-jupyter-agent:{__version__}"
DEFAULT_AGENT_RUNTIME = "/opt/tpi"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ConfigError(RuntimeError):
    """No usable cluster configuration; the message is one line."""


@dataclass(frozen=True)
class Settings:
    agent_image: str
    agent_runtime: str
    forward_storage_credentials: bool
    storage_endpoint: str = ""

    @classmethod
    def from_environment(cls) -> Settings:
        return cls(
            agent_image=os.environ.get(AGENT_IMAGE_ENV) or DEFAULT_AGENT_IMAGE,
            agent_runtime=os.environ.get(AGENT_RUNTIME_ENV) or DEFAULT_AGENT_RUNTIME,
            forward_storage_credentials=os.environ.get(STORAGE_CREDENTIALS_ENV, "").lower() != "none",
            storage_endpoint=os.environ.get(STORAGE_ENDPOINT_ENV, ""),
        )


@dataclass(frozen=True)
class Cluster:
    api: Any  # kubernetes.client.ApiClient
    namespace: str
    user: str  # who asks: the context's user, or the pod's service account
    context: str


def _kubeconfig_path() -> str | None:
    found = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    first = found.split(os.pathsep)[0]
    return first if first and os.path.exists(first) else None


def _service_account(namespace: str) -> str:
    """Who the pod is: its token's subject (`system:serviceaccount:NS:NAME`), read, not verified
    (the API server verifies it); the namespace when the token says nothing."""
    with contextlib.suppress(OSError, ValueError, IndexError, TypeError):
        payload = (SERVICE_ACCOUNT_DIR / "token").read_text().split(".")[1]
        subject = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]
        if isinstance(subject, str) and subject:
            return subject
    return f"serviceaccount:{namespace}"


def connect(context: str = "", namespace: str = "") -> Cluster:
    """The cluster of the kubeconfig's context (or the pod's own), and the task's namespace."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    # Here, not at the top: the transfer pod imports this package from a runtime without urllib3.
    from .proxy_retry import API_POLICY

    path = _kubeconfig_path()
    namespace = namespace or os.environ.get(NAMESPACE_ENV, "")
    settings = client.Configuration()
    settings.retries = API_POLICY  # dropped connections and 429/503/504 (kubernetes' default: 3, GET only)
    if path is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=settings)
        own = (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip()
        return Cluster(client.ApiClient(settings), namespace or own, _service_account(own), "in-cluster")
    if path is None:
        raise ConfigError(
            "k8s: no kubeconfig (KUBECONFIG unset and ~/.kube/config missing) and not in a pod; "
            "accepted: KUBECONFIG=<file> with a current context"
        )
    try:
        contexts, current = config.list_kube_config_contexts(config_file=path)
        chosen = context or os.environ.get(CONTEXT_ENV, "") or current["name"]
        found = next((item for item in contexts if item["name"] == chosen), None)
        if found is None:
            names = ", ".join(item["name"] for item in contexts)
            raise ConfigError(f"k8s: context {chosen!r} is not in {path}; accepted: {names}")
        api = config.new_client_from_config(config_file=path, context=chosen, client_configuration=settings)
    except ConfigException as error:
        raise ConfigError(f"k8s: kubeconfig {path}: {' '.join(str(error).split())}") from None
    details = found.get("context") or {}
    return Cluster(
        api, namespace or details.get("namespace") or "default", str(details.get("user", "")), chosen
    )
