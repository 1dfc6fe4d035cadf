"""The GCP backend: a zonal managed instance group of Spot (or standard) VMs per task, its
bucket, its service account.

`create` checks first (preflight.py: credentials and project, Compute API, zone, machine type,
accelerator and its quota, image family), then makes, concurrently where independent:

1. a private GCS bucket (uniform access, public access prevented, labelled) or a prefix of the
   user's `container` (storage.py), and a service account for the task (identity.py);
2. its grants (this bucket prefix; deleteInstances on its own group), the agent wheel and its
   lock in the bucket, and an instance template whose startup script holds no secret (template.py);
3. a managed instance group at size 0 (group.py), resized to `parallelism` by `start`.

Everything carries the labels `tpi-task`, `tpi-creator` and the user's `tags`; `sweep`
(sweep.py) finds what is left of tasks that are gone. `TPI_GCP_COMPUTE_ENDPOINT` points the
Compute clients at another endpoint (the tests' contract server, tests/gcp_contract.py).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from ... import layout, ranks
from ...agent_watch import STOP_KEY
from ...fanout.pubsub import delete_names as delete_queue_names
from ...spec import TaskSpec
from ...sync import filesystem
from ..base import Capabilities, GroupState, Timing, pricing_text
from ..kit import boot_failures, wheel
from ..kit.steps import Steps
from ..kit.sweep import Orphan
from . import cluster, group, identity, network, storage
from . import sweep as gcp_sweep
from . import template as gcp_template
from .boot import startup_script
from .common import ENDPOINT_VARIABLE, Clients, GcpState, base_name, describe, labels, not_found
from .intent import record_names
from .preflight import preflight

MACHINE_EXTRA = "gcp"


class GcpBackend:
    name = "gcp"
    state_type = GcpState
    capabilities = Capabilities(
        preemption=True, sweep=True, ranks="claims", prices=True, poll_interval=3.0,
        env_protection="an object in the task's private bucket (uniform access, public access prevented), "
        "readable by the task's service account only",
        timing=Timing(log_interval=2.0, heartbeat_interval=10.0, sync_interval=30.0),
    )  # fmt: skip
    STOP_WAIT = 180.0
    POLL = 5.0

    def __init__(self) -> None:
        self.clients = Clients()
        self._claims: dict[str, str] = {}
        self._gave_up = False

    def new_state(self, spec: TaskSpec, deadline: float) -> GcpState:
        return GcpState(deadline=deadline, name=base_name(spec.id))

    def remote_url(self, spec: TaskSpec, state: GcpState) -> str:
        bucket, prefix = storage.location(spec, state)
        return f"gs://{bucket}/{prefix}"

    def plan(self, spec: TaskSpec, state: GcpState) -> list[str]:
        cluster.check(spec)
        base, zone, machine = state.name or base_name(spec.id), spec.native_region, spec.native_machine
        label_text = ", ".join(f"{k}={v}" for k, v in labels(spec, "<your account>").items())
        storage_line = (
            f"storage: your bucket {self.remote_url(spec, state)} (objects under the task prefix only)"
            if spec.container
            else f"storage: a private GCS bucket {storage.location(spec, state)[0]} (uniform access, "
            "public access prevented)"
        )
        account = (
            f"permissions: your service account {spec.permission_set}"
            if spec.permission_set
            else f"permissions: service account {base}, objects under the task prefix, and deleteInstances "
            "on its own group only"
        )
        return [
            f"checks first: credentials (ADC), project, zone {zone}, {machine} offered there, image {spec.native_image}",
            storage_line,
            account,
            network_line(base),
            *cluster.plan(spec, state, base),
            f"instance template {base}: {machine}, startup script installs this tpi-jupyter's agent (locked "
            "versions), no secret in metadata, terminated at the deadline",
            f"machines: managed instance group {base} in {zone}, 0 then {spec.parallelism} x {machine}, "
            f"{pricing_text(spec.spot)}, recreated when preempted",
            f"labels: {label_text}",
        ]

    def plan_requests(self, spec: TaskSpec, state: GcpState) -> list[dict[str, Any]]:
        """`--dry-run --json`: each create request with its body (nothing is asked of the cloud)."""
        from .plan import requests

        return requests(spec, state.deadline)

    # ------------------------------------------------------------ create / start

    def create(self, spec: TaskSpec, state: GcpState, steps: Steps) -> None:
        cluster.check(spec)
        preflight(self.clients, spec, state)  # SpecError before anything exists
        storage.choose(spec, state)
        shipped = wheel.keys(MACHINE_EXTRA)
        state.wheel_key, state.lock_key = (
            f"{state.prefix}/{shipped.wheel_key}",
            f"{state.prefix}/{shipped.lock_key}",
        )
        found = labels(spec, state.creator)
        steps.explain = describe
        record_names(spec, state)  # saved before the first request: a crash leaves them named
        steps.checkpoint()
        parallel: dict[str, Callable[[], object]] = {
            "bucket": lambda: storage.create_bucket(state, found),
            "firewall rule": lambda: network.create_firewall(self.clients, state, spec.id),
            "firewall rule for the task's own machines": lambda: cluster.create_rule(
                self.clients, spec, state
            ),
        }
        if spec.permission_set:
            state.service_account = spec.permission_set.split(",", 1)[0]
        else:
            parallel["service account"] = lambda: identity.create_account(self.clients, state, spec.id)
        steps.together(parallel)
        if not spec.permission_set:
            steps.run("service account grants", lambda: identity.grant(self.clients, state))
        script = startup_script(spec.id, self.remote_url(spec, state), state, _gcsfs_version(), spec.parallelism,
                                os.environ.get(ENDPOINT_VARIABLE, ""))  # fmt: skip
        body = gcp_template.body(spec, state, found, script)
        steps.together({
            "agent wheel upload": lambda: wheel.ship(lambda key, data: storage.put(state, key, data), MACHINE_EXTRA),
            "instance template": lambda: group.create_template(self.clients, state, body),
        })  # fmt: skip
        steps.run("managed instance group", lambda: group.create_group(self.clients, state))

    def start(self, spec: TaskSpec, state: GcpState) -> None:
        group.resize(self.clients, state, spec.parallelism)

    # ------------------------------------------------------------ read / stop / preempt

    def _owners(self, spec: TaskSpec, state: GcpState) -> dict[str, tuple[int, int]]:
        fs, root = filesystem(self.remote_url(spec, state))
        return {owner: key for key, owner in sorted(ranks.read_claims(fs, root, self._claims).items())}

    def read(self, spec: TaskSpec, state: GcpState) -> GroupState:
        if not state.group:
            return GroupState(exists=False)
        if not self._gave_up and not state.stopped:
            fs, root = filesystem(self.remote_url(spec, state))
            if boot_failures.give_up(fs, root, spec.parallelism) is not None:
                self._gave_up = True
                group.resize(self.clients, state, 0)
        return group.read(self.clients, state, self._owners(spec, state))

    def stop(self, spec: TaskSpec, state: GcpState) -> None:
        """Through the remote: agents see the key, sync back, report and release themselves;
        what is left after STOP_WAIT is resized away."""
        if not state.group:
            return
        fs, root = filesystem(self.remote_url(spec, state))
        with contextlib.suppress(OSError):
            fs.pipe_file(layout.join(root, STOP_KEY), layout.timestamp().encode())
        limit = time.monotonic() + self.STOP_WAIT
        while time.monotonic() < limit and any(
            m.alive and m.rank >= 0 for m in self.read(spec, state).machines
        ):
            time.sleep(self.POLL)
        with contextlib.suppress(Exception):
            group.resize(self.clients, state, 0)
        state.stopped = True

    def preempt(self, spec: TaskSpec, state: GcpState, rank: int) -> None:
        """Delete the rank's instance without touching the group's size: it is recreated."""
        owners = self._owners(spec, state)
        newest = {r: name for name, (r, _) in sorted(owners.items(), key=lambda item: item[1])}
        if rank in newest:
            group.delete_instance(self.clients, state, newest[rank])

    def cost(self, spec: TaskSpec, state: GcpState, seconds: float) -> str:
        from ...prices.estimate import cost_text  # the catalogue x machine-seconds (issue 17)

        return cost_text(spec, seconds)

    # ------------------------------------------------------------ delete and sweep

    def delete(self, spec: TaskSpec, state: GcpState) -> None:
        self._delete(state, spec.id)

    def _delete(self, state: GcpState, task_id: str) -> None:
        """Group, template, firewall rule, service account and its grants, bucket; what is missing counts as deleted."""
        failures: list[str] = []
        actions: list[tuple[str, Callable[[], object]]] = [
            ("managed instance group", lambda: group.delete_group(self.clients, state)),
            ("instance template", lambda: group.delete_template(self.clients, state)),
            ("firewall rule", lambda: network.delete_firewall(self.clients, state)),
            ("firewall rule for the task's own machines", lambda: cluster.delete_rule(self.clients, state)),
            ("service account", lambda: identity.delete_account(self.clients, state)),
            ("Pub/Sub queue", lambda: _delete_queue(state)),
            ("bucket", lambda: storage.delete_storage(state)),
        ]
        for label, action in actions:
            if not state.project:
                break  # nothing in the cloud was made
            try:
                action()
            except Exception as error:
                if not not_found(error):
                    failures.append(f"{label}: {describe(error)}")
                    if label == "managed instance group":
                        break  # machines may still run: keep their account and bucket
        if failures:
            raise RuntimeError(
                f"gcp: task {task_id} could not be fully deleted ({'; '.join(failures)}); "
                "destroy again, or `tpi sweep gcp --yes` later"
            )

    def caller(self) -> str:
        from .preflight import creator

        return creator(self.clients)

    def orphans(self, region: str | None) -> list[Orphan]:
        return gcp_sweep.orphans(self.clients, region)

    def delete_orphan(self, orphan: Orphan) -> None:
        known = {item.name for item in fields(GcpState)}
        self._delete(GcpState(**{k: v for k, v in orphan.handle.items() if k in known}), orphan.task_id)


def _delete_queue(state: GcpState) -> None:
    """Only sweep knows a queue: a run's own destroy deletes it by its record (fanout/run.py)."""
    if state.queue:
        delete_queue_names(state.project, state.queue)


def network_line(base: str) -> str:
    cidr = network.ssh_cidr()
    ssh = f"; rule {base}-ssh allows tcp:22 from {cidr} only ({network.SSH_ENV})" if cidr else " (no SSH)"
    return f"network: firewall rule {base} denies all ingress to the task's machines{ssh}"


def _gcsfs_version() -> str:
    import gcsfs

    return str(gcsfs.__version__)


__all__ = ["GcpBackend", "GcpState"]
