"""The client's view of a PersistentVolumeClaim remote: an fsspec filesystem over the transfer
pod's file server (transfer.py), reached through the API server's pod proxy
(`/api/v1/namespaces/NS/pods/NAME:PORT/proxy/...`) with the kubeconfig's credentials.

So the syncer, the status reader and `pull` use the PVC as they use a bucket, and nothing but
the Kubernetes API is needed (no kubectl, no port-forward, no bucket). Paths are keys below the
remote's root ("" is the root). `pipe_file(..., mode="create")` is an exclusive create.

The remote's URL, `tpi-k8s-pvc://<context>@<namespace>/<task id>` (the context percent-encoded),
names all the client needs: the transfer pod and the Secret holding its token are named after
the task. The backend registers the protocol with fsspec, so task.py opens it as any remote.
"""

from __future__ import annotations

import io
import json
from typing import Any
from urllib.parse import quote, unquote

from fsspec.spec import AbstractFileSystem
from urllib3.exceptions import HTTPError

from . import proxy_retry
from .manifests import PROTOCOL, TRANSFER_KEY, TRANSFER_PORT, transfer_name
from .transfer import FILE, LIST, TOKEN_HEADER

MISSING = 404
EXISTS = 412


def remote_url(context: str, namespace: str, task_id: str) -> str:
    return f"{PROTOCOL}://{quote(context, safe='')}@{namespace}/{task_id}"


def parse_url(url: str) -> tuple[str, str, str]:
    """(context, namespace, key) of a remote URL."""
    place, _, key = url.removeprefix(f"{PROTOCOL}://").partition("/")
    context, _, namespace = place.rpartition("@")
    return unquote(context), namespace, key.strip("/")


def connect(context: str, namespace: str, task_id: str) -> dict[str, Any]:
    """The proxy's base URL, connection pool, auth headers and token, from the kubeconfig."""
    import base64

    from kubernetes import client

    from .config import connect as connect_cluster

    cluster = connect_cluster(context, namespace)
    configuration = cluster.api.configuration
    headers = {}
    if configuration.api_key.get("authorization"):  # a bearer token (else a client certificate)
        headers["Authorization"] = str(configuration.api_key["authorization"])
    secret = client.CoreV1Api(cluster.api).read_namespaced_secret(task_id, cluster.namespace)
    token = base64.b64decode((secret.data or {}).get(TRANSFER_KEY, "")).decode()
    return {"base": proxy_base(configuration.host, cluster.namespace, transfer_name(task_id), TRANSFER_PORT),
            "pool": cluster.api.rest_client.pool_manager, "headers": headers, "token": token}  # fmt: skip


def proxy_base(host: str, namespace: str, pod: str, port: int) -> str:
    return f"{host.rstrip('/')}/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy"


class _Upload(io.BytesIO):
    """A file opened for writing: sent whole on close (the server renames it into place)."""

    def __init__(self, fs: ProxyFileSystem, path: str) -> None:
        super().__init__()
        self.fs, self.path = fs, path

    def close(self) -> None:
        if not self.closed:
            self.fs.pipe_file(self.path, self.getvalue())
        super().close()


class ProxyFileSystem(AbstractFileSystem):  # type: ignore[misc]  # fsspec is untyped
    protocol = PROTOCOL
    cachable = False  # one per transfer pod; never shared through fsspec's instance cache

    def __init__(self, base: str = "", pool: Any = None, headers: dict[str, str] | None = None, token: str = "",
                 context: str = "", namespace: str = "", task: str = "", patient: bool = True,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__()
        self.patient = patient  # False: one attempt per request (create's readiness probe polls itself)
        if not base:  # opened from a URL: the kubeconfig says how to reach the API server
            found = connect(context, namespace, task)
            base, pool, headers, token = found["base"], found["pool"], found["headers"], found["token"]
        self.base, self.pool = base.rstrip("/"), pool
        self.headers = {**(headers or {}), **({TOKEN_HEADER: token} if token else {})}

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(each) for each in path]
        text = str(path)
        return parse_url(text)[2] if text.startswith(f"{PROTOCOL}://") else text.strip("/")

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        context, namespace, key = parse_url(path)
        return {"context": context, "namespace": namespace, "task": key.split("/")[0]}

    def _request(self, method: str, route: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None, query: str = "") -> Any:  # fmt: skip
        url = f"{self.base}{route}{quote(self._strip_protocol(path).strip('/'))}{query}"
        headers = {**self.headers, **(headers or {})}
        try:
            response = self.pool.request(method, url, body=body, headers=headers, preload_content=True,
                                         retries=proxy_retry.policy("If-None-Match" in headers, self.patient),
                                         timeout=proxy_retry.TIMEOUT)  # fmt: skip
        except HTTPError as error:  # out of retries: one line, without the proxy's URL
            raise OSError(f"transfer pod: {method} {path}: {proxy_retry.reason(error)}") from None
        if response.status == MISSING and method == "DELETE" and proxy_retry.retried(response):
            return response  # an earlier attempt deleted it; its answer was lost
        if response.status == MISSING:
            raise FileNotFoundError(path)
        if response.status == EXISTS:
            raise FileExistsError(path)
        if response.status >= 300:
            text = proxy_retry.answer_text(response.data)
            raise OSError(f"transfer pod: {method} {path}: {response.status} {text}")
        return response

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        found = json.loads(self._request("GET", LIST, path).data)
        if not detail:
            return [item["name"] for item in found]
        return list(found)

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        key = self._strip_protocol(path).strip("/")
        found = json.loads(self._request("GET", LIST, key).data)
        if len(found) == 1 and found[0]["name"] == key and found[0]["type"] == "file":
            return dict(found[0])
        return {"name": key, "type": "directory", "size": 0}

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        data = bytes(self._request("GET", FILE, path).data)
        return data[start:end]

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        self._request("PUT", FILE, path, body=bytes(value),
                      headers={"If-None-Match": "*"} if mode == "create" else None)  # fmt: skip

    def rm_file(self, path: str) -> None:
        self._request("DELETE", FILE, path)

    def rm(self, path: str | list[str], recursive: bool = False, maxdepth: int | None = None) -> None:
        for each in [path] if isinstance(path, str) else path:
            self._request("DELETE", FILE, each, query="?recursive=1" if recursive else "")

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        return  # directories exist by their files, as in a bucket

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        return

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "r" in mode:
            return io.BytesIO(self.cat_file(path))
        return _Upload(self, path)
