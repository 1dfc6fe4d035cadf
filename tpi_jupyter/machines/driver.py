"""The per-cloud machine contract, next to the task backend's (`backends/base.py`).

A driver makes ONE long-lived machine (not a scaling group) with SSH access for its own key,
and stops, starts and deletes it. It gets a validated `MachineSpec` and its own typed state,
which `lifecycle` persists after every create step; it never writes the registry. Drivers are
found by entry point (`tpi_jupyter.machine_drivers`): a new cloud is one module and one line.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..spec import CLOUDS, SpecError, TaskSpec, check_name, parse_assignments

if TYPE_CHECKING:
    from ..backends.kit.steps import Steps

ENTRY_POINT_GROUP = "tpi_jupyter.machine_drivers"
# The task vocabulary a single machine understands (parallelism, storage and timeouts are a task's).
MACHINE_KEYS = ("cloud", "machine", "image", "region", "disk_size", "spot", "tags", "permission_set")


@dataclass(frozen=True)
class MachineSpec:
    task: TaskSpec  # the validated vocabulary, named: the id and tags come from it
    startup_script: str = ""  # run once at first boot, as the machine's user
    ssh_from: str = ""  # the address range allowed to reach port 22 (clouds with a firewall)
    kind: str = "machine"  # or "runner": the machine releases itself when its runner ends
    labels: Mapping[str, str] = field(default_factory=dict)  # extra tags (a runner's forge and repo)

    @property
    def id(self) -> str:
        return self.task.id

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def cloud(self) -> str:
        return self.task.cloud


def machine_spec(name: str, assignments: Sequence[str], defaults: Mapping[str, Any] | None = None,
                 **extra: Any) -> MachineSpec:  # fmt: skip
    """Validate NAME and key=value words with the task vocabulary; one SpecError line on a refusal."""
    check_name(name, key="NAME")
    if not name:
        raise SpecError("NAME: empty; accepted: a machine name such as gpu-box")
    raw = dict(defaults or {})
    raw.update(parse_assignments(assignments))
    unknown = [key for key in raw if key not in MACHINE_KEYS]
    if unknown:
        raise SpecError(f"{unknown[0]}: not an argument of a machine; accepted: {', '.join(MACHINE_KEYS)}")
    return MachineSpec(task=TaskSpec.from_args({**raw, "name": name}), **extra)


def ssh_range(spec: MachineSpec, variable: str) -> str:
    """Who may reach port 22 on a cloud: stated by the caller, never a silent 0.0.0.0/0."""
    from ..backends.kit.network import ssh_cidr

    if spec.ssh_from:
        try:
            return str(ipaddress.ip_network(spec.ssh_from, strict=True))
        except ValueError:
            raise SpecError(f"--ssh-from: {spec.ssh_from!r} is not an address range; accepted: a CIDR "
                            "such as 203.0.113.7/32") from None  # fmt: skip
    found = ssh_cidr(variable)
    if not found:
        raise SpecError(f"--ssh-from: no range may reach port 22; accepted: --ssh-from CIDR or {variable}=CIDR "
                        "(your address/32; 0.0.0.0/0 only if you mean everyone)")  # fmt: skip
    return found


@dataclass
class Status:
    """What the cloud says about the machine now."""

    state: str  # running | stopped | released (it ended itself) | gone (missing in the cloud)
    address: str = ""


@dataclass(frozen=True)
class SshTarget:
    user: str
    host: str
    port: int
    key_file: str
    known_hosts: str  # the machine's own known-hosts file (the user's ~/.ssh is left alone)
    pinned: bool = False  # the file holds the host key already; else the first one is trusted

    def command(self, remote: Sequence[str] = ()) -> list[str]:
        """`ssh` with the machine's own key only; the key's path, never its content."""
        check = "yes" if self.pinned else "accept-new"  # a cloud's host key is learnt on first use
        options = ["-i", self.key_file, "-o", "IdentitiesOnly=yes", "-p", str(self.port),
                   "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", f"StrictHostKeyChecking={check}"]  # fmt: skip
        return ["ssh", *options, f"{self.user}@{self.host}", *remote]

    def text(self, remote: Sequence[str] = ()) -> str:
        return shlex.join(self.command(remote))


class Connect(Protocol):
    """How to reach a machine: `ssh` with its key, or a cluster's own `kubectl exec`."""

    def command(self, remote: Sequence[str] = ()) -> list[str]: ...

    def text(self, remote: Sequence[str] = ()) -> str: ...


S = TypeVar("S")


class MachineDriver(Protocol[S]):
    name: str
    state_type: type[S]
    stop_verb: str  # how the cloud stops a machine and keeps its disk ("" when it cannot)
    release_command: str  # a shell line with which the machine releases itself (runners)

    def new_state(self, spec: MachineSpec) -> S: ...

    def plan(self, spec: MachineSpec) -> list[str]:
        """What create would make, one line per resource."""

    def create(self, spec: MachineSpec, state: S, steps: Steps) -> None:
        """Checks first (SpecError, nothing made), then each resource as a step recorded in state."""

    def read(self, spec: MachineSpec, state: S) -> Status: ...

    def ssh(self, spec: MachineSpec, state: S) -> Connect: ...

    def stop(self, spec: MachineSpec, state: S) -> None: ...

    def start(self, spec: MachineSpec, state: S) -> None: ...

    def delete(self, spec: MachineSpec, state: S) -> None:
        """Remove every resource and the key file; idempotent (what is missing counts as deleted)."""


def available() -> list[str]:
    from importlib.metadata import entry_points

    return sorted(entry.name for entry in entry_points(group=ENTRY_POINT_GROUP))


def get_driver(cloud: str) -> MachineDriver[Any]:
    from importlib.metadata import entry_points

    found = {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP)}
    if cloud not in found:
        why = "machines are not built for it yet" if cloud in CLOUDS else "not a cloud"
        raise SpecError(f"cloud: {cloud!r}: {why}; accepted for machines: {', '.join(sorted(found))}")
    driver: MachineDriver[Any] = found[cloud].load()()
    return driver
