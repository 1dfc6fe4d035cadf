"""The Azure Resource Manager CONTRACT SERVER (tests/azure_contract.py) plus single virtual
machines, their public addresses and network interfaces, for `cloud=az` machines.

Bodies are checked with the SDK's own models (unknown properties are a 400), the resource group
must exist, and a VM moves through the documented power states: `deallocate` and `start` are
POSTs, `instanceView` reports `PowerState/...`. No process plays these machines: SSH is proven
on the local driver; here what is proven is the requests.
"""

from __future__ import annotations

import re
from typing import Any

from .azure_contract import ContractServer, _kind
from .azure_models import check

PUBLIC_IP = "203.0.113.60"  # a documentation address: never connected to


def _vm_models() -> dict[str, type]:
    from azure.mgmt.compute import models as compute
    from azure.mgmt.network import models as network

    return {"publicipaddresses": network.PublicIPAddress, "networkinterfaces": network.NetworkInterface,
            "virtualmachines": compute.VirtualMachine}  # fmt: skip


class MachineContract(ContractServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.power: dict[str, str] = {}  # lowercase VM id -> PowerState/...

    def _route(self, method: str, path: str, body: Any, query: dict[str, list[str]]) -> tuple[int, Any]:
        lower = path.lower()
        if self.fail.get(f"{method} {_kind(lower)}"):  # an injected fault, as the base server answers it
            return super()._route(method, path, body, query)
        match = re.fullmatch(r"(.*/providers/microsoft\.compute/virtualmachines/[^/]+)(?:/(\w+))?", lower)
        if match and match[1] in self.resources:
            if match[2] == "instanceview" and method == "GET":
                return 200, {
                    "statuses": [{"code": "ProvisioningState/succeeded"}, {"code": self.power[match[1]]}]
                }
            if match[2] in ("deallocate", "start") and method == "POST":
                self.power[match[1]] = (
                    "PowerState/deallocated" if match[2] == "deallocate" else "PowerState/running"
                )
                return 200, None
        kind = _kind(lower)
        if method == "PUT" and kind in _vm_models():
            problems = check(body, _vm_models()[kind])
            if problems:
                return 400, {
                    "error": {"code": "InvalidRequestContent", "message": f"unknown properties: {problems}"}
                }
            group = re.search(r"^(/subscriptions/[^/]+/resourcegroups/[^/]+)/", lower)
            if not group or group[1] not in self.resources:
                return 404, {
                    "error": {"code": "ResourceGroupNotFound", "message": "resource group not found"}
                }
            stored = {**body, "id": path, "name": path.rsplit("/", 1)[-1]}
            stored["properties"] = {**body.get("properties", {}), "provisioningState": "Succeeded"}
            if kind == "publicipaddresses":
                stored["properties"]["ipAddress"] = PUBLIC_IP
            if kind == "virtualmachines":
                self.power[lower] = "PowerState/running"
            self.resources[lower] = stored
            return 200, stored
        return super()._route(method, path, body, query)
