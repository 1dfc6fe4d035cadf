"""The Azure backend: a Spot (or regular) Uniform scale set per task, in a resource group of its own.

`create` checks first (preflight.py: credentials, subscription, region, size, quota), then makes
one resource group tagged `tpi-task` and `tpi-creator`, holding, concurrently where independent:

1. a storage account without shared keys and a private container, or a prefix of the user's
   `container` (storage.py); a user-assigned managed identity (identity.py); a virtual network
   whose security group has no inbound rule (network.py); a fresh SSH key;
2. role assignments: Storage Blob Data Contributor on the task's container only; the agent wheel
   and its lock in the container;
3. a scale set at capacity 0 whose custom data is the kit's boot script (boot.py), then the
   right to manage that scale set's instances (each machine deletes only its own).

`start` scales the set to `parallelism` after the upload. `delete` deletes the resource group
(everything in it goes with it). Machines: machine.py (`--release az`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import fields
from typing import Any

from ... import layout, ranks
from ...agent_watch import STOP_KEY
from ...spec import TaskSpec
from ...sync import filesystem
from ..base import Capabilities, GroupState, Timing, pricing_text
from ..kit import boot_failures, wheel
from ..kit.steps import Steps
from ..kit.sweep import Orphan
from . import cluster, identity, network, requests, scaleset, storage
from . import sweep as az_sweep
from .boot import bootstrap_versions, custom_data
from .clients import Clients
from .common import AzState, base_name, describe, not_found, tags
from .preflight import caller, preflight

MACHINE_EXTRA = "az"


class AzureBackend:
    name = "az"
    state_type = AzState
    capabilities = Capabilities(
        preemption=True, sweep=True, ranks="claims", prices=True, poll_interval=3.0,
        env_protection="a blob in the task's private container (no shared keys), readable by its managed identity only",
        timing=Timing(log_interval=2.0, heartbeat_interval=10.0, sync_interval=30.0),
    )  # fmt: skip
    STOP_WAIT = 180.0
    ROLE_PROPAGATION = 300.0  # a new role assignment can take minutes to apply
    POLL = 5.0

    def __init__(self) -> None:
        self.clients = Clients()
        self._claims: dict[str, str] = {}
        self._gave_up = False

    # ------------------------------------------------------------ names and plan

    def new_state(self, spec: TaskSpec, deadline: float) -> AzState:
        return AzState(deadline=deadline, name=base_name(spec.id), group=base_name(spec.id))

    def remote_url(self, spec: TaskSpec, state: AzState) -> str:
        if not state.account:
            storage.choose(spec, state)
        return storage.url(state)

    def plan(self, spec: TaskSpec, state: AzState) -> list[str]:
        cluster.check(spec)
        base, region, size = state.name or base_name(spec.id), spec.native_region, spec.native_machine
        cidr = network.ssh_cidr()
        inbound = (
            f"one inbound rule: tcp/22 from {cidr} only ({network.SSH_ENV})"
            if cidr
            else "without inbound rules"
        )
        tag_text = ", ".join(f"{key}={value}" for key, value in tags(spec, "<your object id>").items())
        remote = self.remote_url(spec, state)
        return [
            f"checks first: credentials, subscription, region {region}, {size} offered there, vCPU quota above 0",
            f"resource group {base} in {region}: everything below lives in it and goes with it",
            f"storage: {'your container' if spec.container else 'a storage account without shared keys, private container'} {remote}",
            f"identity: managed identity {base}, Storage Blob Data Contributor on the task's container only, "
            "and the right to delete instances of its own scale set only",
            f"network: virtual network {base}, security group {inbound}, no public address",
            f"machines: Uniform scale set {base}, 0 then {spec.parallelism} x {size}, {pricing_text(spec.spot)}, "
            "no overprovisioning, custom data installs this tpi-jupyter's agent (locked versions, no secret)",
            *cluster.plan(spec),
            f"tags: {tag_text}",
            *requests.lines(spec, state),
        ]

    def plan_requests(self, spec: TaskSpec, state: AzState) -> list[dict[str, Any]]:
        """`--dry-run --json`: each create request with its body (nothing is asked of Azure)."""
        return requests.as_json(spec, state)

    # ------------------------------------------------------------ create / start

    def create(self, spec: TaskSpec, state: AzState, steps: Steps) -> None:
        cluster.check(spec)
        preflight(self.clients, spec, state)  # SpecError before anything exists
        state.ranks_prefix = cluster.ranks_prefix(spec)
        if not state.account:
            storage.choose(spec, state)
        shipped = wheel.keys(MACHINE_EXTRA)
        state.wheel_key, state.lock_key = shipped.wheel_key, shipped.lock_key
        labels = tags(spec, state.creator)
        for service in ("resource", "storage", "msi", "network", "compute", "authorization"):
            self.clients(service)  # made before the threads share them
        steps.explain = describe
        steps.run("resource group", lambda: self._create_group(state, labels))
        parts: dict[str, Any] = {
            "managed identity": lambda: identity.create_identity(self.clients, state, labels),
            "network": lambda: network.create(self.clients, state, labels),
            "ssh key": lambda: identity.create_key(spec.id, state),
        }
        if not spec.container:
            parts["storage account and container"] = lambda: storage.create(self.clients, state, labels)
        steps.together(parts)
        remote = self.remote_url(spec, state)
        steps.run("storage role assignments", lambda: self._storage_roles(state))
        steps.run("agent wheel upload", lambda: self._ship(remote, wait=not state.user_container))
        boot_script = custom_data(spec.id, remote, state, bootstrap_versions(), spec.parallelism)
        steps.run("scale set", lambda: scaleset.create(self.clients, spec, state, labels, boot_script))
        steps.run("release role", lambda: identity.create_release_role(
            self.clients, state, scaleset.scale_set_id(state)))  # fmt: skip

    def _storage_roles(self, state: AzState) -> None:
        """The machines' identity and the caller both read and write the container with Entra ID
        (shared keys are off): Storage Blob Data Contributor on this container only."""
        scope = storage.container_id(state)
        queue = identity.queue_scope(scope, state.name)  # a map run's queue: made later, by the run
        identity.assign(self.clients, state, scope, identity.BLOB_DATA_CONTRIBUTOR)
        identity.assign(self.clients, state, queue, identity.QUEUE_DATA_CONTRIBUTOR)
        if state.creator != "unknown" and not state.user_container:  # the user reaches their own already
            identity.assign(
                self.clients, state, scope, identity.BLOB_DATA_CONTRIBUTOR, principal=state.creator
            )
            identity.assign(
                self.clients, state, queue, identity.QUEUE_DATA_CONTRIBUTOR, principal=state.creator
            )

    def _ship(self, remote: str, wait: bool = True) -> None:
        """The wheel, once the caller's new role works (assignments take a while to apply); in the
        user's own container no role is new, so a refusal is final at once."""
        limit = time.monotonic() + (self.ROLE_PROPAGATION if wait else 0.0)
        while True:
            try:
                _put(remote, ".tpi/probe", b"")
                break
            except Exception as error:  # 403 AuthorizationPermissionMismatch until the role applies
                denied = isinstance(error, PermissionError) or getattr(error, "status_code", None) == 403
                if not denied or time.monotonic() > limit:
                    raise
                time.sleep(self.POLL)
        wheel.ship(lambda key, data: _put(remote, key, data), MACHINE_EXTRA)

    def _create_group(self, state: AzState, labels: dict[str, str]) -> None:
        from azure.mgmt.resource.resources import models

        state.group_asked = True
        self.clients("resource").resource_groups.create_or_update(
            state.group, models.ResourceGroup(location=state.region, tags=labels)
        )

    def start(self, spec: TaskSpec, state: AzState) -> None:
        scaleset.set_capacity(self.clients, state, spec.parallelism)

    # ------------------------------------------------------------ read / stop / preempt

    def _owners(self, spec: TaskSpec, state: AzState) -> dict[str, tuple[int, int]]:
        """instance name -> (rank, boot) from the claims (the newest boot wins)."""
        fs, root = filesystem(self.remote_url(spec, state))
        return {owner: key for key, owner in sorted(ranks.read_claims(fs, root, self._claims).items())}

    def read(self, spec: TaskSpec, state: AzState) -> GroupState:
        if not state.scale_set:
            return GroupState(exists=False)
        fs, root = filesystem(self.remote_url(spec, state))
        if not self._gave_up and not state.stopped:
            if boot_failures.give_up(fs, root, spec.parallelism) is not None:
                self._gave_up = True
                scaleset.set_capacity(self.clients, state, 0)
            else:
                self._restore(spec, state, fs, root)
        return scaleset.read(self.clients, state, self._owners(spec, state))

    def _restore(self, spec: TaskSpec, state: AzState, fs: Any, root: str) -> None:
        """An evicted Spot instance is deleted and lowers the capacity: raise it back to the ranks
        still without a status (never lower it: that could remove a running rank's machine)."""
        statuses = {layout.join(root, layout.status(rank)) for rank in range(spec.parallelism)}
        reported = len(statuses & {path.rstrip("/") for path in fs.find(layout.join(root, "reports"))})
        wanted = spec.parallelism - reported
        if wanted > 0 and scaleset.capacity(self.clients, state) < wanted:
            scaleset.set_capacity(self.clients, state, wanted)

    def stop(self, spec: TaskSpec, state: AzState) -> None:
        """Through the remote: agents stop the script, sync back, report and delete their own
        instance; what is still there after STOP_WAIT is scaled away."""
        if not state.scale_set:
            return
        fs, root = filesystem(self.remote_url(spec, state))
        with contextlib.suppress(OSError):
            fs.pipe_file(layout.join(root, STOP_KEY), layout.timestamp().encode())
        state.stopped = True
        limit = time.monotonic() + self.STOP_WAIT
        while time.monotonic() < limit and set(scaleset.instances(self.clients, state)) & set(
            self._owners(spec, state)
        ):
            time.sleep(self.POLL)
        with contextlib.suppress(Exception):
            scaleset.set_capacity(self.clients, state, 0)

    def preempt(self, spec: TaskSpec, state: AzState, rank: int) -> None:
        """Azure's own eviction drill: `simulateEviction` on the rank's Spot instance."""
        live = scaleset.instances(self.clients, state)
        for name, (owned, _) in self._owners(spec, state).items():
            if owned == rank and name in live:
                self.clients("compute").virtual_machine_scale_set_vms.simulate_eviction(
                    state.group, state.scale_set, live[name]
                )

    def cost(self, spec: TaskSpec, state: AzState, seconds: float) -> str:
        from ...prices.estimate import cost_text  # the catalogue x machine-seconds (issue 17)

        return cost_text(spec, seconds)

    # ------------------------------------------------------------ delete and sweep

    def delete(self, spec: TaskSpec, state: AzState) -> None:
        self._delete(state, spec.id, spec)

    def _delete(self, state: AzState, task_id: str, spec: TaskSpec | None = None) -> None:
        """The resource group (everything in it); our prefix of a user's container. Idempotent."""
        try:
            if spec is not None and state.group_asked and state.account:  # a destroy, not a sweep
                identity.complete(
                    self.clients, state, storage.container_id(state), scaleset.scale_set_id(state)
                )
            if state.user_container and spec is not None:
                fs, root = filesystem(self.remote_url(spec, state))
                with contextlib.suppress(FileNotFoundError):
                    fs.rm(root, recursive=True)
            if state.group_asked:
                identity.delete_assignments(self.clients, state)
                identity.delete_release_role(self.clients, state)  # while its assignable group exists
                try:
                    self.clients("resource").resource_groups.begin_delete(state.group).result()
                except Exception as error:
                    if not not_found(error):
                        raise
        except Exception as error:
            raise RuntimeError(
                f"az: task {task_id} could not be fully deleted ({describe(error)}); "
                "destroy again, or `tpi sweep az --yes` later"
            ) from None
        identity.remove_key(state)

    def caller(self) -> str:
        return caller(self.clients)

    def orphans(self, region: str | None) -> list[Orphan]:
        return az_sweep.orphans(self.clients, region)

    def delete_orphan(self, orphan: Orphan) -> None:
        known = {item.name for item in fields(AzState)}
        found = AzState(**{k: v for k, v in orphan.handle.items() if k in known})
        found.name = found.scale_set = found.group
        found.account, found.container = az_sweep.storage_of(self.clients, found)
        identity.recover(self.clients, found, storage.container_id(found), scaleset.scale_set_id(found))
        self._delete(found, orphan.task_id)


def _put(remote: str, key: str, data: bytes) -> None:
    fs, root = filesystem(remote)
    fs.pipe_file(layout.join(root, key), data)


__all__ = ["AzState", "AzureBackend"]
