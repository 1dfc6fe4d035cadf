"""A contract server for GCP Compute (and the IAM and Resource Manager calls the backend makes).

No Compute emulator exists, so this server answers the documented REST shapes of compute/v1
on 127.0.0.1 and **validates every request body with the client library's own message types**
(`compute_v1.<Message>.from_json(body, ignore_unknown_fields=False)`), so a field the API does
not know is a 400 here as it is on Google's side. Long-running operations answer `DONE` at
once. Every call is recorded.

IAM (`serviceAccounts.create`) and Resource Manager (`getIamPolicy`/`setIamPolicy`): the
google-cloud-iam types are not installed, so those bodies are checked against the documented
shapes by hand (exact key sets), and said so in the README.

It plays the managed instance group: a resize creates instances from the group's template;
each instance runs the agent its startup script starts (the unit's `ExecStart` and
`Environment=` lines) as a local process against fake-gcs-server, with its own metadata
stand-in (tests/gcp_metadata.py); an instance whose process ends without `deleteInstances` is
recreated (a machine that died), `deleteInstances` removes instances and lowers the target
size, and `preempt(name)` raises the instance's `instance/preempted` notice and then reclaims it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from google.cloud import compute_v1

from . import played
from .gcp_metadata import Metadata

PROJECT = "tpi-test-project"
ZONES = {"us-east1-c": "us-east1", "us-west1-b": "us-west1", "europe-west1-d": "europe-west1"}
MACHINE_TYPES = {"e2-small", "e2-custom-8-32768", "e2-custom-32-131072", "n2-custom-64-262144",
                 "n1-standard-4", "n1-highmem-8", "n1-highmem-16", "n1-highmem-32"}  # fmt: skip
ACCELERATORS = {"us-east1-c": {"nvidia-tesla-t4"}, "us-west1-b": {"nvidia-tesla-t4", "nvidia-tesla-v100"}}
FAMILIES = {
    ("ubuntu-os-cloud", "ubuntu-2404-lts-amd64"),
    ("deeplearning-platform-release", "common-cu124-ubuntu-2204-py310"),
}
BASE = "/compute/v1/projects/"


class ApiError(Exception):
    def __init__(self, code: int, message: str, reason: str = ""):
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason or {400: "invalid", 403: "forbidden", 404: "notFound", 409: "alreadyExists"}.get(code, "error")  # fmt: skip


def validate(kind: str, body: dict[str, Any]) -> Any:
    """The body as the client library's message type; unknown fields are a 400."""
    try:
        return getattr(compute_v1, kind).from_json(json.dumps(body), ignore_unknown_fields=False)
    except Exception as error:
        raise ApiError(400, f"Invalid JSON payload for {kind}: {error}") from None


def exact_keys(what: str, body: dict[str, Any], allowed: set[str], required: set[str]) -> None:
    """Hand validation against the documented shape (no client library types installed)."""
    unknown, missing = set(body) - allowed, required - set(body)
    if unknown or missing:
        raise ApiError(
            400, f"Invalid JSON payload for {what}: unknown {sorted(unknown)}, missing {sorted(missing)}"
        )


def check_firewall(body: dict[str, Any]) -> None:
    """What the Firewall type leaves to the API: one of allowed/denied, priority 0-65535."""
    if ("allowed" in body) == ("denied" in body):
        raise ApiError(400, "Invalid value for field 'resource': exactly one of allowed or denied")
    if not 0 <= int(body.get("priority", 1000)) <= 65535:
        raise ApiError(400, f"Invalid value for field 'resource.priority': {body['priority']}")
    for cidr in body.get("sourceRanges", []):
        ipaddress.ip_network(cidr)  # a ValueError is a 500 here: the backend sent a bad range


# The default network's own rules: default-allow-ssh, then the implied deny of all ingress.
DEFAULT_RULES = [
    {"name": "default-allow-ssh", "priority": 65534, "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}],
     "sourceRanges": ["0.0.0.0/0"]},
    {"name": "implied-deny-ingress", "priority": 65535, "denied": [{"IPProtocol": "all"}],
     "sourceRanges": ["0.0.0.0/0"]},
]  # fmt: skip


def _matches(rule: dict[str, Any], source: str, port: int, tag: str, source_tag: str = "") -> bool:
    if rule.get("direction", "INGRESS") != "INGRESS" or (
        "targetTags" in rule and tag not in rule["targetTags"]
    ):
        return False
    # GCP: a source matches by range or, for a VM of the same network, by its network tag.
    # With no source at all, GCP applies the rule to every source (0.0.0.0/0).
    sources = ("sourceRanges", "sourceTags", "sourceServiceAccounts")
    ranges = rule.get("sourceRanges") or ([] if any(rule.get(key) for key in sources) else ["0.0.0.0/0"])
    by_range = any(ipaddress.ip_address(source) in ipaddress.ip_network(r) for r in ranges)
    if not by_range and not (source_tag and source_tag in rule.get("sourceTags", [])):
        return False
    entries = rule.get("allowed") or rule.get("denied") or []
    return any(
        e["IPProtocol"] == "all"
        or (e["IPProtocol"] == "tcp" and (not e.get("ports") or str(port) in e["ports"]))
        for e in entries
    )


def check_policy(policy: dict[str, Any]) -> None:
    for binding in policy["bindings"]:
        exact_keys("Binding", binding, {"role", "members", "condition"}, {"role", "members"})
        if "condition" in binding:
            exact_keys("Expr", binding["condition"], {"title", "expression", "description"}, {"expression"})
            if policy.get("version") != 3:
                raise ApiError(400, "conditional bindings need policy version 3")


@dataclass
class Instance:
    name: str
    metadata: Metadata
    process: subprocess.Popen[bytes] | None
    log: Path
    released: bool = False
    preempted: bool = False
    finished: bool = False
    status: str = "RUNNING"


@dataclass
class Group:
    name: str
    zone: str
    template: str
    body: dict[str, Any]
    target: int = 0
    instances: dict[str, Instance] = field(default_factory=dict)
    created: int = 0  # instances ever made (names and the test's counts)
    errors: list[dict[str, Any]] = field(default_factory=list)  # what listErrors answers

    def fail(self, code: str, message: str, when: str) -> None:
        """An error the group met (a stockout, a quota), as listErrors documents it."""
        error = {"error": {"code": code, "message": message}, "timestamp": when,
                 "instanceActionDetails": {"action": "CREATING"}}  # fmt: skip
        validate("InstanceManagedByIgmError", error)
        self.errors.append(error)


class ContractServer:
    """The server and the group player; `env()` is what clients and machines need to reach it."""

    def __init__(self, storage_url: str, machines: Path, credentials_file: Path, pubsub: str = ""):
        self.storage_url, self.machines, self.credentials_file = storage_url, machines, credentials_file
        self.pubsub = pubsub  # pstest's host:port: map runs' queues, and what sweep lists
        self.calls: list[tuple[str, str, Any]] = []  # (method, path, body)
        self.templates: dict[str, dict[str, Any]] = {}
        self.firewalls: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, Group] = {}
        self.accounts: dict[str, dict[str, Any]] = {}
        self.policy: dict[str, Any] = {"version": 1, "etag": "BwY0", "bindings": []}
        self.bucket_policies: dict[str, dict[str, Any]] = {}  # fake-gcs-server has no bucket IAM
        self.quotas: dict[str, float] = {"NVIDIA_T4_GPUS": 4, "PREEMPTIBLE_NVIDIA_T4_GPUS": 4}
        self.compute_disabled = False
        self.fail_on: str = ""  # a path fragment whose POST answers 500 (rollback tests)
        self.ended: list[tuple[str, int | None]] = []  # (instance, exit code) of every played machine
        self._leaving: list[Instance] = []  # released instances in their grace period
        self._lock = threading.RLock()
        self._end_lock = threading.Lock()
        self._ids = itertools.count(1000)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._stop = threading.Event()
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def env(self) -> dict[str, str]:
        return {"TPI_GCP_COMPUTE_ENDPOINT": self.url, "TPI_GCP_IAM_ENDPOINT": self.url,
                "TPI_GCP_CRM_ENDPOINT": self.url, "TPI_GCP_STORAGE_IAM_ENDPOINT": self.url,
                "GOOGLE_CLOUD_PROJECT": PROJECT,
                "GOOGLE_APPLICATION_CREDENTIALS": str(self.credentials_file),
                "STORAGE_EMULATOR_HOST": self.storage_url,
                **({"PUBSUB_EMULATOR_HOST": self.pubsub} if self.pubsub else {})}  # fmt: skip

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            for group in list(self.groups.values()):
                for instance in list(group.instances.values()):
                    self._end(instance)
            self.groups.clear()
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        """Between tests: no machine of an earlier test may still run and call in."""
        with self._lock:
            for instance in self._leaving:
                self._end(instance)
            self._leaving.clear()
            for group in list(self.groups.values()):
                for instance in list(group.instances.values()):
                    self._end(instance)
            self.groups.clear()
            self.templates.clear()
            self.firewalls.clear()
            self.accounts.clear()
            self.calls.clear()
            self.ended.clear()
            self.policy = {"version": 1, "etag": "BwY0", "bindings": []}
            self.bucket_policies.clear()
            self.compute_disabled, self.fail_on = False, ""

    # ------------------------------------------------------------ machines

    def _agent(self, group: Group, name: str, metadata: Metadata) -> tuple[list[str], dict[str, str]]:
        """The agent command and environment that the template's startup script starts."""
        script = next(item["value"] for item in self.templates[group.template]["properties"]["metadata"]["items"]
                      if item["key"] == "startup-script")  # fmt: skip
        unit = dict(line.removeprefix("Environment=").split("=", 1) for line in script.splitlines()
                    if line.startswith("Environment="))  # fmt: skip
        start = next(line for line in script.splitlines() if line.startswith("ExecStart="))
        machine_dir = self.machines / name
        machine_dir.mkdir(parents=True, exist_ok=True)
        words = [
            sys.executable if w == "$TPI_PY" else w for w in shlex.split(start.removeprefix("ExecStart="))
        ]
        words = [str(machine_dir) if w == "${TPI_ROOT}/machine" else str(machine_dir / "boot.log")
                 if w == "${TPI_BOOT_LOG}" else w for w in words]  # fmt: skip
        unit.pop("HOME", None)
        env = {**os.environ, **unit, "TPI_INSTANCE_ID": name, "GCE_METADATA_HOST": metadata.host}
        return words, env

    def _spawn(self, group: Group) -> None:
        group.created += 1
        name = f"{group.name}-{next(self._ids)}"
        metadata = Metadata(name, group.zone, PROJECT)
        command, env = self._agent(group, name, metadata)
        log = self.machines / f"{name}.log"
        process = played.spawn(command, env, log, mark=str(self.machines / name))
        group.instances[name] = Instance(name, metadata, process, log)

    def _end(self, instance: Instance, grace: float = 0.0) -> None:
        """The machine goes: after `grace` seconds to leave by itself, killed. Once per instance
        (a released machine's grace thread and a reset may both get here)."""
        process = instance.process
        if process is not None and grace:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=grace)
        with self._end_lock:
            if instance.finished:
                return
            instance.finished = True
        if process is not None:
            # The machine vanishes whole: the agent, the script it runs in a session of its own,
            # and whatever that left behind.
            played.vanish(process, mark=str(self.machines / instance.name))
            self.ended.append((instance.name, process.returncode))
        instance.process = None
        instance.metadata.close()

    def _scale(self, group: Group) -> None:
        while len(group.instances) < group.target:
            self._spawn(group)

    def _watch(self) -> None:
        """A machine whose process ended without being deleted died: the group recreates it."""
        while not self._stop.wait(0.2):
            with self._lock:
                for group in list(self.groups.values()):
                    for instance in list(group.instances.values()):
                        if instance.process is not None and instance.process.poll() is not None:
                            self._end(instance)
                            del group.instances[instance.name]
                    self._scale(group)

    def preempt(self, name: str, grace: float = 30.0) -> None:
        """GCE reclaims a Spot VM: the notice first, the machine gone 30 s later at most (the
        watcher then sees it died without deleteInstances, and the group recreates it)."""
        with self._lock:
            group = next(g for g in self.groups.values() if name in g.instances)
            instance = group.instances[name]
            instance.preempted = True
            instance.metadata.preempt()
        process = instance.process
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=grace)
            if process.poll() is None:
                played.vanish(process, mark=str(self.machines / name))

    def ingress_allowed(self, source: str, port: int, tag: str, source_tag: str = "") -> bool:
        """Whether a TCP connection reaches a VM with network tag `tag`, as GCP decides: the
        matching rule of lowest priority number wins, and on a tie a deny beats an allow."""
        with self._lock:
            rules = [*self.firewalls.values(), *DEFAULT_RULES]
        found = [r for r in rules if _matches(r, source, port, tag, source_tag)]
        best = min(found, key=lambda r: (int(r.get("priority", 1000)), "allowed" in r))
        return "allowed" in best

    def instances(self, group: str) -> list[str]:
        with self._lock:
            found = self.groups.get(group)
            return sorted(found.instances) if found else []

    def log_of(self, name: str) -> str:
        path = self.machines / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ------------------------------------------------------------ REST

    def _operation(self, kind: str, target: str, zone: str = "") -> dict[str, Any]:
        scope = f"zones/{zone}" if zone else "global"
        name = f"operation-{next(self._ids)}"
        return {"kind": "compute#operation", "id": str(next(self._ids)), "name": name, "operationType": kind,
                "status": "DONE", "progress": 100, "targetLink": f"{self.url}{BASE}{PROJECT}/{target}",
                "selfLink": f"{self.url}{BASE}{PROJECT}/{scope}/operations/{name}",
                **({"zone": f"{self.url}{BASE}{PROJECT}/zones/{zone}"} if zone else {})}  # fmt: skip

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Any:
        self.calls.append((method, path, body))
        if path == "/token":
            return {"access_token": "ya29.contract-test-token", "expires_in": 3600, "token_type": "Bearer"}
        if self.fail_on and method == "POST" and self.fail_on in path:
            raise ApiError(500, f"injected failure on {path}", "backendError")
        if path.startswith(BASE):
            if self.compute_disabled:
                raise ApiError(403, "Compute Engine API has not been used in project before or it is disabled. "
                               "SERVICE_DISABLED", "accessNotConfigured")  # fmt: skip
            return self._compute(method, path[len(BASE) :], query, body)
        return self._iam(method, path, body)

    def _iam(self, method: str, path: str, body: Any) -> Any:
        with self._lock:
            if match := re.fullmatch(rf"/v1/projects/{PROJECT}/serviceAccounts", path):
                exact_keys(
                    "CreateServiceAccountRequest", body, {"accountId", "serviceAccount"}, {"accountId"}
                )
                exact_keys(
                    "ServiceAccount", body.get("serviceAccount", {}), {"displayName", "description"}, set()
                )
                email = f"{body['accountId']}@{PROJECT}.iam.gserviceaccount.com"
                if email in self.accounts:
                    raise ApiError(409, f"Service account {email} already exists")
                self.accounts[email] = {"email": email, "name": f"projects/{PROJECT}/serviceAccounts/{email}",
                                        "projectId": PROJECT, **body.get("serviceAccount", {})}  # fmt: skip
                return self.accounts[email]
            match = re.fullmatch(rf"/v1/projects/{PROJECT}/serviceAccounts/([^/]+)", path)
            if match and method == "DELETE":
                if self.accounts.pop(match[1], None) is None:
                    raise ApiError(404, f"Service account {match[1]} does not exist")
                return {}
            if path == f"/v1/projects/{PROJECT}:getIamPolicy":
                exact_keys("GetIamPolicyRequest", body, {"options"}, set())
                return self.policy
            if match := re.fullmatch(r"/storage/v1/b/([^/]+)/iam", path):
                current = self.bucket_policies.setdefault(match[1], {"kind": "storage#policy", "version": 1,
                                                                     "etag": "CAE=", "bindings": []})  # fmt: skip
                if method == "GET":
                    return current
                exact_keys(
                    "storage#policy",
                    body,
                    {"kind", "resourceId", "version", "etag", "bindings"},
                    {"bindings"},
                )
                check_policy(body)
                self.bucket_policies[match[1]] = {**body, "etag": f"CA{next(self._ids)}="}
                return self.bucket_policies[match[1]]
            if path == f"/v1/projects/{PROJECT}:setIamPolicy":
                exact_keys("SetIamPolicyRequest", body, {"policy", "updateMask"}, {"policy"})
                policy = body["policy"]
                exact_keys("Policy", policy, {"version", "etag", "bindings", "auditConfigs"}, {"bindings"})
                check_policy(policy)
                if policy.get("etag") != self.policy["etag"]:
                    raise ApiError(409, "There were concurrent policy changes")
                self.policy = {**policy, "etag": f"BwY{next(self._ids)}"}
                return self.policy
        raise ApiError(404, f"no such IAM path {path}")

    def _compute(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Any:
        project, _, rest = path.partition("/")
        with self._lock:
            if match := re.fullmatch(r"global/images/family/([^/]+)", rest):
                if (project, match[1]) not in FAMILIES:
                    raise ApiError(
                        404,
                        f"The resource 'projects/{project}/global/images/family/{match[1]}' was not found",
                    )
                return {"name": f"{match[1]}-v20261101", "family": match[1], "status": "READY",
                        "selfLink": f"https://www.googleapis.com/compute/v1/projects/{project}/global/images/{match[1]}-v20261101"}  # fmt: skip
            if project != PROJECT:
                raise ApiError(404, f"The resource 'projects/{project}' was not found")
            if rest == "global/firewalls" and method == "POST":
                validate("Firewall", body)
                check_firewall(body)
                if body["name"] in self.firewalls:
                    raise ApiError(409, f"The resource 'firewalls/{body['name']}' already exists")
                self.firewalls[body["name"]] = body
                return self._operation("insert", f"global/firewalls/{body['name']}")
            if (match := re.fullmatch(r"global/firewalls/([^/]+)", rest)) and method == "DELETE":
                if self.firewalls.pop(match[1], None) is None:
                    raise ApiError(
                        404, f"The resource 'projects/{PROJECT}/global/firewalls/{match[1]}' was not found"
                    )
                return self._operation("delete", f"global/firewalls/{match[1]}")
            if rest == "global/instanceTemplates":
                return self._templates(method, body)
            if match := re.fullmatch(r"global/instanceTemplates/([^/]+)", rest):
                return self._template(method, match[1])
            if match := re.fullmatch(r"aggregated/instanceGroupManagers", rest):
                items: dict[str, Any] = {}
                for group in self.groups.values():
                    items.setdefault(f"zones/{group.zone}", {"instanceGroupManagers": []})[
                        "instanceGroupManagers"
                    ].append(group.body)
                return {"items": items}
            if match := re.fullmatch(r"regions/([^/]+)", rest):
                return {"name": match[1], "status": "UP", "quotas": [
                    {"metric": metric, "limit": limit, "usage": 0} for metric, limit in self.quotas.items()]}  # fmt: skip
            match = re.fullmatch(r"zones/([^/]+)(?:/(.*))?", rest)
            if not match or match[1] not in ZONES:
                raise ApiError(404, f"The resource 'projects/{project}/{rest}' was not found")
            return self._zonal(method, match[1], match[2] or "", query, body)

    def _templates(self, method: str, body: Any) -> Any:
        if method == "GET":
            return {"items": list(self.templates.values())}
        validate("InstanceTemplate", body)
        if body["name"] in self.templates:
            raise ApiError(409, f"The resource 'instanceTemplates/{body['name']}' already exists")
        self.templates[body["name"]] = {**body, "kind": "compute#instanceTemplate", "id": str(next(self._ids)),
                                        "selfLink": f"{self.url}{BASE}{PROJECT}/global/instanceTemplates/{body['name']}"}  # fmt: skip
        return self._operation("insert", f"global/instanceTemplates/{body['name']}")

    def _template(self, method: str, name: str) -> Any:
        if name not in self.templates:
            raise ApiError(
                404, f"The resource 'projects/{PROJECT}/global/instanceTemplates/{name}' was not found"
            )
        if method == "DELETE":
            if any(g.template == name for g in self.groups.values()):
                raise ApiError(
                    400,
                    f"The instance_template resource '{name}' is already being used",
                    "resourceInUseByAnotherResource",
                )
            del self.templates[name]
            return self._operation("delete", f"global/instanceTemplates/{name}")
        return self.templates[name]

    def _zonal(self, method: str, zone: str, rest: str, query: dict[str, list[str]], body: Any) -> Any:
        if not rest:
            return {
                "name": zone,
                "status": "UP",
                "region": f"{self.url}{BASE}{PROJECT}/regions/{ZONES[zone]}",
            }
        if match := re.fullmatch(r"machineTypes/([^/]+)", rest):
            if match[1] not in MACHINE_TYPES:
                raise ApiError(
                    404,
                    f"The resource 'projects/{PROJECT}/zones/{zone}/machineTypes/{match[1]}' was not found",
                )
            return {"name": match[1], "zone": zone}
        if match := re.fullmatch(r"acceleratorTypes/([^/]+)", rest):
            if match[1] not in ACCELERATORS.get(zone, set()):
                raise ApiError(
                    404,
                    f"The resource 'projects/{PROJECT}/zones/{zone}/acceleratorTypes/{match[1]}' was not found",
                )
            return {"name": match[1], "zone": zone, "maximumCardsPerInstance": 4}
        if match := re.fullmatch(r"instances/([^/]+)", rest):
            return self._delete_instance(zone, match[1])
        if rest == "instanceGroupManagers":
            return self._insert_group(zone, body)
        match = re.fullmatch(r"instanceGroupManagers/([^/]+)(?:/(\w+))?", rest)
        if not match:
            raise ApiError(404, f"no such path zones/{zone}/{rest}")
        group = self.groups.get(match[1])
        if group is None or group.zone != zone:
            raise ApiError(
                404,
                f"The resource 'projects/{PROJECT}/zones/{zone}/instanceGroupManagers/{match[1]}' was not found",
            )
        return self._group_verb(method, group, match[2] or "", query, body)

    def _insert_group(self, zone: str, body: Any) -> Any:
        validate("InstanceGroupManager", body)
        template = body["instanceTemplate"].rsplit("/", 1)[-1]
        if template not in self.templates:
            raise ApiError(
                400, f"Invalid value for field 'resource.instanceTemplate': '{body['instanceTemplate']}'"
            )
        if body["name"] in self.groups:
            raise ApiError(409, f"The resource 'instanceGroupManagers/{body['name']}' already exists")
        self.groups[body["name"]] = Group(body["name"], zone, template, {**body, "zone": zone},
                                          target=int(body.get("targetSize", 0)))  # fmt: skip
        self._scale(self.groups[body["name"]])
        return self._operation("insert", f"zones/{zone}/instanceGroupManagers/{body['name']}", zone)

    def _group_verb(
        self, method: str, group: Group, verb: str, query: dict[str, list[str]], body: Any
    ) -> Any:
        target = f"zones/{group.zone}/instanceGroupManagers/{group.name}"
        if verb == "" and method == "GET":
            busy = sum(i.status != "RUNNING" for i in group.instances.values())
            return {**group.body, "targetSize": group.target, "status": {"isStable": busy == 0},
                    "currentActions": {"none": len(group.instances) - busy, "creating": busy}}  # fmt: skip
        if verb == "" and method == "DELETE":
            for instance in list(group.instances.values()):
                self._end(instance)
            del self.groups[group.name]
            return self._operation("delete", target, group.zone)
        if verb == "resize":
            group.target = int(query["size"][0])
            while len(group.instances) > group.target:
                self._end(group.instances.pop(sorted(group.instances)[-1]))
            self._scale(group)
            return self._operation("resize", target, group.zone)
        if verb == "deleteInstances":
            request = validate("InstanceGroupManagersDeleteInstancesRequest", body)
            for url in request.instances:
                name = url.rsplit("/", 1)[-1]
                if name in group.instances:
                    instance = group.instances.pop(name)
                    instance.released = True
                    group.target -= 1
                    self._leaving.append(instance)
                    threading.Thread(target=self._end, args=(instance, 30.0), daemon=True).start()
                elif not request.skip_instances_on_validation_error:
                    raise ApiError(400, f"instance {name} is not in group {group.name}")
            return self._operation("deleteInstances", target, group.zone)
        if verb == "listManagedInstances":
            return {"managedInstances": [
                {"instance": f"{self.url}{BASE}{PROJECT}/zones/{group.zone}/instances/{i.name}",
                 "instanceStatus": i.status,
                 "currentAction": "NONE" if i.status == "RUNNING" else "CREATING", "id": str(abs(hash(i.name)) % 10**12)}
                for i in group.instances.values()]}  # fmt: skip
        if verb == "listErrors":
            return {"items": group.errors}
        raise ApiError(404, f"no such verb {verb}")

    def _delete_instance(self, zone: str, name: str) -> Any:
        for group in self.groups.values():
            if name in group.instances and group.zone == zone:
                self._end(group.instances.pop(name))  # not released: the group recreates it
                return self._operation("delete", f"zones/{zone}/instances/{name}", zone)
        raise ApiError(404, f"The resource 'projects/{PROJECT}/zones/{zone}/instances/{name}' was not found")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self, method: str) -> None:
                parsed = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body: Any = None
                if raw:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = parse_qs(raw.decode())  # the OAuth token form
                try:
                    code, answer = 200, owner.handle(method, parsed.path, parse_qs(parsed.query), body or {})
                except ApiError as error:
                    code, answer = error.code, {"error": {"code": error.code, "message": error.message,
                                                          "errors": [{"reason": error.reason, "message": error.message}]}}  # fmt: skip
                data = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

            def do_PUT(self) -> None:
                self._serve("PUT")

        return Handler


def credentials_file(path: Path, token_uri: str) -> Path:
    """Application Default Credentials of the service_account kind with a fresh RSA key, whose
    token_uri is the contract server's /token: google-auth's real JWT-grant refresh, on loopback
    (an authorized_user file would ignore token_uri and go to oauth2.googleapis.com)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()  # fmt: skip
    path.write_text(json.dumps({"type": "service_account", "project_id": PROJECT, "private_key_id": "test",
                                "private_key": pem, "client_email": f"tester@{PROJECT}.iam.gserviceaccount.com",
                                "client_id": "1", "token_uri": token_uri}))  # fmt: skip
    path.chmod(0o600)
    return path


def wait_until(predicate: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout} s")
