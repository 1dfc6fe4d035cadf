"""A container's environment as the kubelet builds it, for the kubelet stand-in.

Order as the kubelet's: service variables, then `envFrom`, then `env` (each may use $(VAR) of
those before it), downward API `fieldRef`/`resourceFieldRef`, `secretKeyRef`/`configMapKeyRef`.
Works on plain API dicts (camelCase, as the API serves them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

# What an image usually sets; the stand-in runs no image, so it supplies these.
IMAGE_DEFAULTS = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}

# Look up one key of a Secret or ConfigMap: (kind, namespace, name) -> data, or None when missing.
Lookup = Callable[[str, str, str], "dict[str, str] | None"]

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class EnvError(ValueError):
    """A variable cannot be resolved (a missing, non-optional Secret or ConfigMap key)."""


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: unknown references stay as written, $$ escapes a dollar."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REF.sub(sub, text)


def field(pod: dict[str, Any], path: str) -> str:
    """The value of a downward-API fieldRef.fieldPath."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    subscript = _SUBSCRIPT.match(path)
    if subscript:
        return str((meta.get(subscript.group(1)) or {}).get(subscript.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
        "status.hostIPs": ",".join(ip["ip"] for ip in status.get("hostIPs") or []),
        "status.podIPs": ",".join(ip["ip"] for ip in status.get("podIPs") or []),
    }
    if path == "metadata.labels" or path == "metadata.annotations":
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    if path not in simple:
        raise EnvError(f"fieldRef {path!r} is not supported by the kubelet")
    return str(simple[path] or "")


def resource(container: dict[str, Any], ref: dict[str, Any], allocatable: dict[str, str]) -> str:
    """A resourceFieldRef: the container's limit (or request), else the node's allocatable."""
    kind, _, name = ref["resource"].partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(name) or allocatable.get(name, "0")
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(math.ceil(Decimal(parse_quantity(value)) / Decimal(divisor)))


def _from_source(lookup: Lookup, kind: str, ns: str, ref: dict[str, Any]) -> dict[str, str] | None:
    data = lookup(kind, ns, ref["name"])
    if data is None and not ref.get("optional"):
        raise EnvError(f"{kind} {ns}/{ref['name']} not found")
    return data


def environment(
    pod: dict[str, Any],
    container: dict[str, Any],
    service_env: dict[str, str],
    lookup: Lookup,
    allocatable: dict[str, str],
) -> dict[str, str]:
    ns = pod["metadata"]["namespace"]
    env = dict(IMAGE_DEFAULTS)
    env["HOSTNAME"] = pod["metadata"]["name"]
    env.update(service_env)
    for source in container.get("envFrom") or []:
        kind = "secret" if "secretRef" in source else "configmap"
        data = _from_source(lookup, kind, ns, source.get("secretRef") or source["configMapRef"]) or {}
        env.update({source.get("prefix", "") + k: v for k, v in data.items()})
    for var in container.get("env") or []:
        env[var["name"]] = _value(pod, container, var, env, lookup, allocatable)
    return env


def _value(
    pod: dict[str, Any],
    container: dict[str, Any],
    var: dict[str, Any],
    env: dict[str, str],
    lookup: Lookup,
    allocatable: dict[str, str],
) -> str:
    if "valueFrom" not in var:
        return expand(var.get("value", ""), env)
    source = var["valueFrom"]
    if "fieldRef" in source:
        return field(pod, source["fieldRef"]["fieldPath"])
    if "resourceFieldRef" in source:
        return resource(container, source["resourceFieldRef"], allocatable)
    kind, ref = (
        ("secret", source["secretKeyRef"])
        if "secretKeyRef" in source
        else ("configmap", source["configMapKeyRef"])
    )
    data = _from_source(lookup, kind, pod["metadata"]["namespace"], ref)
    if data is None:
        return ""
    if ref["key"] not in data and not ref.get("optional"):
        raise EnvError(f"key {ref['key']!r} not in {kind} {ref['name']}")
    return data.get(ref["key"], "")


def argv(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    """command + args, expanded. With no image there is no entrypoint to fall back on."""
    words = [*(container.get("command") or []), *(container.get("args") or [])]
    if not container.get("command"):
        raise EnvError(
            "the stand-in runs no images, so a container needs `command` (the image's entrypoint is unknown)"
        )
    return [expand(w, env) for w in words]
