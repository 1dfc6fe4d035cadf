"""The GCP Compute CONTRACT SERVER (tests/gcp_contract.py) plus single instances, for machines.

`instances.insert` bodies are validated with compute_v1.Instance (unknown fields are a 400), and
checked for what the API itself enforces on them (a machine type of the zone, a boot disk, a
network interface); `get`, `stop`, `start` and `delete` move the instance through GCP's
documented statuses (a stopped instance is `TERMINATED`). No process plays these instances: a
machine's SSH is proven on the local driver; here what is proven is the requests.
"""

from __future__ import annotations

import re
from typing import Any

from .gcp_contract import BASE, MACHINE_TYPES, PROJECT, ApiError, ContractServer, validate

NAT_IP = "203.0.113.50"  # a documentation address: never connected to


class MachineContract(ContractServer):
    def __init__(self, *args: Any) -> None:
        self.standalone: dict[str, dict[str, Any]] = {}
        super().__init__(*args)

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.standalone.clear()

    def _zonal(self, method: str, zone: str, rest: str, query: dict[str, list[str]], body: Any) -> Any:
        if rest == "instances" and method == "POST":
            return self._insert(zone, body)
        match = re.fullmatch(r"instances/([^/]+)(?:/(stop|start))?", rest)
        if match and match[1] in self.standalone and self.standalone[match[1]]["zone"].endswith(zone):
            return self._verb(method, zone, match[1], match[2] or "")
        if match and (method == "GET" or match[2]):
            raise ApiError(
                404, f"The resource 'projects/{PROJECT}/zones/{zone}/instances/{match[1]}' was not found"
            )
        return super()._zonal(method, zone, rest, query, body)

    def _insert(self, zone: str, body: Any) -> Any:
        validate("Instance", body)
        machine_type = body.get("machineType", "").rsplit("/", 1)[-1]
        if machine_type not in MACHINE_TYPES:
            raise ApiError(
                400, f"Invalid value for field 'resource.machineType': '{body.get('machineType')}'"
            )
        if not any(disk.get("boot") for disk in body.get("disks", [])) or not body.get("networkInterfaces"):
            raise ApiError(400, "Invalid value for field 'resource': a boot disk and a network interface")
        if body["name"] in self.standalone:
            raise ApiError(
                409, f"The resource 'projects/{PROJECT}/zones/{zone}/instances/{body['name']}' already exists"
            )
        nics = [{**nic, "networkIP": "10.128.0.2", "accessConfigs": [{**c, "natIP": NAT_IP} for c in nic.get("accessConfigs", [])]}
                for nic in body["networkInterfaces"]]  # fmt: skip
        self.standalone[body["name"]] = {**body, "networkInterfaces": nics, "status": "RUNNING",
                                         "zone": f"{self.url}{BASE}{PROJECT}/zones/{zone}", "id": str(next(self._ids))}  # fmt: skip
        return self._operation("insert", f"zones/{zone}/instances/{body['name']}", zone)

    def _verb(self, method: str, zone: str, name: str, verb: str) -> Any:
        instance = self.standalone[name]
        if method == "GET" and not verb:
            return instance
        if method == "DELETE" and not verb:
            del self.standalone[name]
            return self._operation("delete", f"zones/{zone}/instances/{name}", zone)
        if method == "POST" and verb:
            instance["status"] = "TERMINATED" if verb == "stop" else "RUNNING"
            return self._operation(verb, f"zones/{zone}/instances/{name}", zone)
        raise ApiError(400, f"{method} instances/{name}/{verb}: not an operation")
