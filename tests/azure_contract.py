"""A contract server for Azure Resource Manager: no emulator exists, so this answers the
documented REST shapes the backend uses, on 127.0.0.1. It is a contract test, not Azure.

Honest where it can be: every request body is parsed with the SDK's own model class and
refused (400) when it holds a property the model does not declare (azure_models.py); every
request must carry a bearer token; long-running operations answer Succeeded at once; every
call is recorded. It plays the scale set: capacity changes create or remove instances, and each
new instance runs the agent its custom data starts as a local process against Azurite (with
the custom data's exports, `TPI_INSTANCE_ID` and the metadata stand-in); deleting an instance
(the machine's own request) lowers the capacity; `simulateEviction` posts a Scheduled Events
`Preempt`, waits for the agent to leave, and deletes the instance as Spot's Delete policy does.
A container PUT also creates the container in Azurite (the data plane the tests use).
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import re
import shlex
import subprocess
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from . import played
from .aws_moto import agent_command
from .azure_imds import AzureImds
from .azure_models import check

LOCATIONS = ["West US 2", "East US", "North Europe", "West Europe"]
SIZES = {"Standard_B1s": "standardBSFamily", "Standard_F8s_v2": "standardFSv2Family",
         "Standard_NC4as_T4_v3": "standardNCASv3_T4Family", "Standard_NC24ads_A100_v4": "standardNCADSA100v4Family"}  # fmt: skip
AUTHORIZATION = ("roleassignments", "roledefinitions")
SUBSCRIPTION = "00000000-0000-0000-0000-00000000cafe"


def _models() -> dict[str, type]:
    from azure.mgmt.authorization.v2022_04_01 import models as auth
    from azure.mgmt.compute import models as compute
    from azure.mgmt.msi import models as msi
    from azure.mgmt.network import models as network
    from azure.mgmt.resource.resources import models as resource
    from azure.mgmt.storage import models as storage

    return {
        "resourcegroups": resource.ResourceGroup, "storageaccounts": storage.StorageAccountCreateParameters,
        "containers": storage.BlobContainer, "userassignedidentities": msi.Identity,
        "roleassignments": auth.RoleAssignmentCreateParameters, "roledefinitions": auth.RoleDefinition,
        "networksecuritygroups": network.NetworkSecurityGroup, "virtualnetworks": network.VirtualNetwork,
        "virtualmachinescalesets": compute.VirtualMachineScaleSet,
        "virtualmachinescalesets/patch": compute.VirtualMachineScaleSetUpdate,
    }  # fmt: skip


# Azure's default inbound rules of every network security group, after the user's.
DEFAULT_INBOUND = [
    {"name": "AllowVnetInBound", "priority": 65000, "access": "Allow", "source": "VirtualNetwork", "ports": "*"},
    {"name": "AllowAzureLoadBalancerInBound", "priority": 65001, "access": "Allow", "source": "AzureLoadBalancer",
     "ports": "*"},
    {"name": "DenyAllInBound", "priority": 65500, "access": "Deny", "source": "*", "ports": "*"},
]  # fmt: skip


def _in_prefix(address: str, prefix: str, vnet: str) -> bool:
    if prefix == "*":
        return True
    if prefix == "VirtualNetwork":
        return ipaddress.ip_address(address) in ipaddress.ip_network(vnet)
    if prefix in ("AzureLoadBalancer", "Internet"):
        return prefix == "Internet" and not ipaddress.ip_address(address).is_private
    return ipaddress.ip_address(address) in ipaddress.ip_network(prefix)


def _in_ports(port: int, ports: str) -> bool:
    low, _, high = ports.partition("-")
    return ports == "*" or int(low) <= port <= int(high or low)


def inbound_allowed(
    nsg: dict[str, Any], source: str, destination: str, port: int, vnet: str = "10.70.0.0/16"
) -> bool:
    """Whether a TCP connection from `source` reaches `destination`:`port` through the security
    group `nsg` (a PUT body), as Azure decides: inbound rules by priority, the first match wins."""
    found = [
        {"priority": r["properties"]["priority"], "access": r["properties"]["access"],
         "source": r["properties"]["sourceAddressPrefix"], "destination": r["properties"]["destinationAddressPrefix"],
         "ports": r["properties"]["destinationPortRange"], "protocol": r["properties"]["protocol"]}
        for r in nsg["properties"].get("securityRules", []) if r["properties"]["direction"] == "Inbound"
    ]  # fmt: skip
    defaults = [{**rule, "destination": rule["source"] if rule["source"] == "VirtualNetwork" else "*",
                 "protocol": "*"} for rule in DEFAULT_INBOUND]  # fmt: skip
    for rule in sorted(found, key=lambda r: r["priority"]) + defaults:
        if (rule["protocol"] in ("*", "Tcp") and _in_prefix(source, rule["source"], vnet)
                and _in_prefix(destination, rule["destination"], vnet) and _in_ports(port, rule["ports"])):  # fmt: skip
            return bool(rule["access"] == "Allow")
    return False


class Played:
    """One scale set instance played by a local agent process."""

    def __init__(self, name: str, custom_data: str, base: Path, env: dict[str, str]):
        self.name = name
        self.dir = base / name
        self.dir.mkdir(parents=True, exist_ok=True)
        exports = dict(
            shlex.split(line[len("export "):])[0].split("=", 1)
            for line in custom_data.splitlines() if line.startswith("export ")
        )  # fmt: skip
        self.log = base / f"{name}.log"
        self.process = played.spawn(agent_command(custom_data, self.dir),
                                    {**env, **exports, "TPI_INSTANCE_ID": name}, self.log, mark=str(self.dir))  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        played.vanish(self.process, mark=str(self.dir))


class ScaleSet:
    def __init__(self, server: ContractServer, rid: str, body: dict[str, Any]):
        self.server, self.rid, self.body = server, rid, body
        self.name = rid.rsplit("/", 1)[-1]
        self.next_id = 0
        self.instances: dict[str, Played | None] = {}  # instance id -> played machine
        self.provisioning = "succeeded"  # the set's own, in its instance view
        self.states: dict[str, tuple[str, str]] = {}  # instance id -> (provisioning, power) a test sets
        self.custom_data = base64.b64decode(
            body["properties"]["virtualMachineProfile"]["osProfile"]["customData"]
        ).decode()

    @property
    def capacity(self) -> int:
        return int(self.body["sku"].get("capacity", 0))

    def resize(self, count: int) -> None:
        self.body["sku"]["capacity"] = count
        while len(self.instances) < count:
            instance = str(self.next_id)
            self.next_id += 1
            name = f"{self.name}_{instance}"
            self.instances[instance] = (
                Played(name, self.custom_data, self.server.machines, self.server.machine_env)
                if self.server.play
                else None
            )
        while len(self.instances) > count:  # Azure removes the newest first (default scale-in)
            self.remove(max(self.instances, key=int), lower=False)

    def remove(self, instance: str, lower: bool = True) -> None:
        played = self.instances.pop(instance, None)
        if lower:
            self.body["sku"]["capacity"] = max(0, self.capacity - 1)
        if played is not None and played.process.poll() is None:
            played.kill()  # the machine goes with its instance, as on Azure

    def evict(self, instance: str) -> None:
        played = self.instances.get(instance)
        self.server.imds.preempt(f"{self.name}_{instance}")
        if played is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                played.process.wait(timeout=60)
        with self.server.lock:
            self.remove(instance)

    def vms(self, expand: bool = False) -> list[dict[str, Any]]:
        found = []
        for i in sorted(self.instances, key=int):
            properties: dict[str, Any] = {"provisioningState": "Succeeded"}
            if expand:  # `$expand=instanceView`: the documented statuses, by code
                provisioning, power = self.states.get(i, ("succeeded", "running"))
                properties["instanceView"] = {"statuses": [
                    _status(f"ProvisioningState/{provisioning}"), _status(f"PowerState/{power}")]}  # fmt: skip
            found.append({"name": f"{self.name}_{i}", "instanceId": i, "id": f"{self.rid}/virtualMachines/{i}",
                          "properties": properties})  # fmt: skip
        return found

    def instance_view(self) -> dict[str, Any]:
        """GET .../virtualMachineScaleSets/{name}/instanceView."""
        summary: dict[str, int] = {}
        for i in self.instances:
            code = f"ProvisioningState/{self.states.get(i, ('succeeded', 'running'))[0]}"
            summary[code] = summary.get(code, 0) + 1
        return {
            "virtualMachine": {"statusesSummary": [{"code": c, "count": n} for c, n in summary.items()]},
            "statuses": [_status(f"ProvisioningState/{self.provisioning}")],
        }


def _status(code: str) -> dict[str, Any]:
    return {"code": code, "level": "Info", "displayStatus": code.split("/", 1)[1].capitalize(),
            "time": "2026-01-01T00:00:00Z"}  # fmt: skip


class ContractServer:
    def __init__(self, azurite: str, machines: Path, imds: AzureImds, play: bool = True):
        self.azurite, self.machines, self.imds, self.play = azurite, machines, imds, play
        self.resources: dict[str, dict[str, Any]] = {}  # lowercase id -> stored body
        self.scale_sets: dict[str, ScaleSet] = {}
        self.calls: list[tuple[str, str, dict[str, Any] | None]] = []
        self.fail: dict[str, int] = {}  # "PUT virtualnetworks" -> status: a fault to inject
        self.quota_zero = False
        self.lock = threading.RLock()
        self.machine_env: dict[str, str] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                status, answer = server.handle(
                    self.command, self.path, body, self.headers.get("Authorization", "")
                )
                data = json.dumps(answer).encode() if answer is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_PATCH = do_DELETE = do_POST = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    # ------------------------------------------------------------ routing

    def handle(self, method: str, raw_path: str, body: Any, auth: str) -> tuple[int, Any]:
        path = urllib.parse.urlparse(raw_path).path.rstrip("/")
        query = urllib.parse.parse_qs(urllib.parse.urlparse(raw_path).query)
        with self.lock:
            self.calls.append((method, path, body))
        if not auth.startswith("Bearer ") or len(auth) < 12:
            return 401, {"error": {"code": "AuthenticationFailed", "message": "no bearer token"}}
        if "api-version" not in query:
            return 400, {"error": {"code": "MissingApiVersionParameter", "message": "api-version missing"}}
        try:
            with self.lock:
                return self._route(method, path, body, query)
        except Exception as error:  # a body the SDK's model refuses, a shape we do not know
            return 400, {
                "error": {"code": "InvalidRequestContent", "message": f"{error.__class__.__name__}: {error}"}
            }

    def _route(self, method: str, path: str, body: Any, query: dict[str, list[str]]) -> tuple[int, Any]:
        lower = path.lower()
        kind = _kind(lower)
        fault = self.fail.get(f"{method} {kind}")
        if fault:
            return fault, {
                "error": {"code": "InjectedFault", "message": f"{method} {kind} refused by the test"}
            }
        if lower.endswith("/providers/microsoft.compute") and method == "GET":
            return 200, {
                "namespace": "Microsoft.Compute",
                "resourceTypes": [{"resourceType": "virtualMachineScaleSets", "locations": LOCATIONS}],
            }
        if lower.endswith("/providers/microsoft.compute/skus"):
            return 200, {"value": [{"resourceType": "virtualMachines", "name": n, "family": f, "locations": ["westus2"],
                                    "restrictions": []} for n, f in SIZES.items()]}  # fmt: skip
        if "/usages" in lower:
            limit = 0 if self.quota_zero else 100
            names = [*SIZES.values(), "lowPriorityCores"]
            return 200, {"value": [{"name": {"value": n, "localizedValue": n}, "limit": limit, "currentValue": 0,
                                    "unit": "Count"} for n in names]}  # fmt: skip
        if lower.endswith("/resourcegroups") and method == "GET":
            tag = re.search(r"tagName eq '([^']+)'", query.get("$filter", [""])[0])
            groups = [b for rid, b in self.resources.items() if _kind(rid) == "resourcegroups"]
            return 200, {"value": [g for g in groups if not tag or tag.group(1) in (g.get("tags") or {})]}
        if re.search(r"/virtualmachinescalesets/[^/]+/virtualmachines(/|$)", lower):
            return self._instances(method, lower, query)
        if (
            method == "GET"
            and lower.endswith("/instanceview")
            and lower[: -len("/instanceview")] in self.scale_sets
        ):
            return 200, self.scale_sets[lower[: -len("/instanceview")]].instance_view()
        if method == "PUT":
            return self._put(path, kind, body)
        if method == "PATCH" and kind == "virtualmachinescalesets":
            problems = check(body, _models()["virtualmachinescalesets/patch"])
            if problems:
                return 400, {
                    "error": {"code": "InvalidRequestContent", "message": f"unknown properties: {problems}"}
                }
            found = self.scale_sets[lower]
            if "sku" in body and "capacity" in body["sku"]:
                found.resize(int(body["sku"]["capacity"]))
            return 200, self._vmss_view(found)
        if method == "GET":
            if kind == "virtualmachinescalesets" and lower in self.scale_sets:
                return 200, self._vmss_view(self.scale_sets[lower])
            if lower in self.resources:
                return 200, self.resources[lower]
            if re.fullmatch(
                r"/subscriptions/[^/]+/providers/microsoft\.authorization/roleassignments", lower
            ):
                principal = re.search(r"principalId eq '([^']+)'", query.get("$filter", [""])[0])
                found = [b for rid, b in self.resources.items() if _kind(rid) == "roleassignments"]
                return 200, {"value": [b for b in found if not principal
                                       or b["properties"]["principalId"] == principal.group(1)]}  # fmt: skip
            if re.fullmatch(r"/subscriptions/[^/]+/providers/microsoft\.storage/storageaccounts", lower):
                return 200, {
                    "value": [b for rid, b in self.resources.items() if _kind(rid) == "storageaccounts"]
                }
            listed = [body for rid, body in self.resources.items() if rid.rsplit("/", 1)[0] == lower]
            if listed or lower.endswith(("/storageaccounts", "/userassignedidentities")):
                return 200, {"value": listed}
            return 404, {"error": {"code": "ResourceNotFound", "message": f"{path} not found"}}
        if method == "DELETE" and kind == "resourcegroups":
            return self._delete_group(lower)
        if method == "DELETE" and kind in AUTHORIZATION:
            gone = self.resources.pop(lower, None)
            return (200, gone) if gone else (204, None)
        return 404, {"error": {"code": "NoRoute", "message": f"{method} {path} is not part of this contract"}}

    def _put(self, path: str, kind: str, body: Any) -> tuple[int, Any]:
        model = _models().get(kind)
        if model is None:
            return 404, {"error": {"code": "NoRoute", "message": f"PUT {path} is not part of this contract"}}
        problems = check(body, model)
        if problems:
            return 400, {
                "error": {"code": "InvalidRequestContent", "message": f"unknown properties: {problems}"}
            }
        lower = path.lower()
        group = re.search(r"/resourcegroups/([^/]+)", lower)
        if (
            kind not in ("resourcegroups", *AUTHORIZATION)  # role objects may live at the subscription
            and (
                not group
                or f"/subscriptions/{lower.split('/')[2]}/resourcegroups/{group.group(1)}"
                not in self.resources
            )
        ):
            return 404, {"error": {"code": "ResourceGroupNotFound", "message": "resource group not found"}}
        stored = json.loads(json.dumps(body))
        stored.update(id=path, name=path.rsplit("/", 1)[-1])
        properties = stored.setdefault("properties", {})
        properties["provisioningState"] = "Succeeded"
        if kind == "userassignedidentities":
            properties.update(
                clientId=f"client-{stored['name']}",
                principalId=f"principal-{stored['name']}",
                tenantId="tenant",
            )
        if kind == "virtualnetworks":
            for subnet in properties.get("subnets", []):
                subnet["id"] = f"{path}/subnets/{subnet['name']}"
        if kind == "containers":
            self._azurite_container(path.rsplit("/", 1)[-1], create=True)
        created = lower not in self.resources
        self.resources[lower] = stored
        if kind in AUTHORIZATION:  # documented: 201 Created for a new role object
            return (201 if created else 200), stored
        if kind == "virtualmachinescalesets":
            self.scale_sets[lower] = ScaleSet(self, path, stored)
            self.scale_sets[lower].resize(stored["sku"].get("capacity", 0))
            return 200, self._vmss_view(self.scale_sets[lower])
        return 200, stored

    def _vmss_view(self, found: ScaleSet) -> dict[str, Any]:
        return {**found.body, "sku": dict(found.body["sku"])}

    def _instances(self, method: str, lower: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        base, _, rest = lower.rpartition("/virtualmachines")
        found = self.scale_sets.get(base)
        if found is None:
            return 404, {"error": {"code": "ResourceNotFound", "message": "scale set not found"}}
        parts = rest.strip("/").split("/")
        if method == "GET" and parts == [""]:
            expand = query.get("$expand", [""])[0].lower() == "instanceview"
            return 200, {"value": found.vms(expand)}
        instance = parts[0]
        if instance not in found.instances:
            return 404, {"error": {"code": "NotFound", "message": f"instance {instance} not found"}}
        if method == "DELETE":
            found.remove(instance)
            return 200, None
        if method == "POST" and parts[-1] == "simulateeviction":
            threading.Thread(target=found.evict, args=(instance,), daemon=True).start()
            return 204, None
        return 404, {"error": {"code": "NoRoute", "message": lower}}

    def _delete_group(self, lower: str) -> tuple[int, Any]:
        if lower not in self.resources:
            return 404, {"error": {"code": "ResourceGroupNotFound", "message": "not found"}}
        # Role definitions and assignments are the subscription's, not the group's: they stay.
        inside = [r for r in self.resources if r == lower or r.startswith(lower + "/")]
        for rid in [r for r in inside if _kind(r) not in AUTHORIZATION]:
            if rid in self.scale_sets:
                self.scale_sets.pop(rid).resize(0)
            if _kind(rid) == "containers":
                self._azurite_container(rid.rsplit("/", 1)[-1], create=False)
            del self.resources[rid]
        return 200, None

    def _azurite_container(self, name: str, create: bool) -> None:
        from azure.storage.blob import BlobServiceClient

        service = BlobServiceClient.from_connection_string(self.azurite)
        with contextlib.suppress(Exception):
            (service.create_container if create else service.delete_container)(name)

    # ------------------------------------------------------------ for tests

    def tagged(self, task_id: str) -> list[str]:
        with self.lock:
            return [
                rid
                for rid, body in self.resources.items()
                if (body.get("tags") or {}).get("tpi-task") == task_id
            ]

    def authorization_left(self) -> list[str]:
        with self.lock:
            return [rid for rid in self.resources if _kind(rid) in AUTHORIZATION]

    def bodies(self, kind: str) -> list[dict[str, Any]]:
        return [
            body
            for method, path, body in self.calls
            if method in ("PUT", "PATCH") and _kind(path.lower()) == kind and body
        ]

    def user_account(self, account: str, group: str = "users-data") -> str:
        """A storage account that exists before any task (the user's), in a group of its own."""
        rid = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{group}/providers/Microsoft.Storage/storageAccounts/{account}"
        with self.lock:
            self.resources[rid.lower()] = {"id": rid, "name": account, "location": "westus2", "kind": "StorageV2",
                                           "sku": {"name": "Standard_LRS"}, "properties": {}}  # fmt: skip
        return rid

    def user_identity(self, name: str, group: str = "users-ids") -> str:
        """A user-assigned identity that exists before any task (the user's)."""
        rid = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{group}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
        with self.lock:
            self.resources[rid.lower()] = {"id": rid, "name": name, "location": "westus2",
                                           "properties": {"clientId": f"client-{name}", "principalId": f"principal-{name}",
                                                          "tenantId": "tenant"}}  # fmt: skip
        return rid

    def played(self) -> list[Played]:
        with self.lock:
            return [p for s in self.scale_sets.values() for p in s.instances.values() if p is not None]

    def close(self) -> None:
        with self.lock:
            for found in self.scale_sets.values():
                found.resize(0)
        self.httpd.shutdown()
        self.httpd.server_close()


def _kind(lower: str) -> str:
    """The resource kind of an ARM path: the last type segment before a name."""
    parts = [p for p in lower.split("/") if p]
    if len(parts) >= 2 and parts[-2] == "virtualmachinescalesets":
        return "virtualmachinescalesets"
    if len(parts) >= 2:
        return parts[-2]
    return parts[-1] if parts else ""
