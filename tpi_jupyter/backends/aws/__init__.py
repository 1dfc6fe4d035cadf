"""The AWS backend: a spot (or on-demand) Auto Scaling Group per task, its bucket, its role.

`create` checks first (preflight.py: credentials, region, instance type, image), then makes,
concurrently where independent:

1. a private S3 bucket or a prefix of the user's `container` (storage.py); a key pair from a
   fresh ed25519 key and an IAM role + instance profile limited to this task (identity.py); a
   security group without inbound rules (network.py);
2. the agent wheel and its lock in the bucket, and a launch template whose user data is a short
   boot script (boot.py) without any secret;
3. an Auto Scaling Group at size 0 across the default VPC's subnets (group.py).

Multi-node tasks (cluster.py) get one availability zone, a cluster placement group when asked
(`placement=cluster`) and a security group that admits traffic from its own members.

`start` scales the group to `parallelism` once task.py uploaded the workdir. Everything carries
`tpi-task=<id>`, `tpi-creator=<caller ARN>` and the user's `tags`; `sweep` (sweep.py) finds what
is left of tasks that are gone. Credentials come from boto3's standard chain, one session per
task; `AWS_ENDPOINT_URL` points every client at another endpoint (moto in the tests).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from ... import layout, ranks
from ...agent_watch import STOP_KEY
from ...fanout.sqs import delete_queue
from ...spec import TaskSpec
from ...sync import filesystem
from ..base import Capabilities, GroupState, Timing, pricing_text
from ..kit import boot_failures, wheel
from ..kit.steps import Steps
from ..kit.sweep import Orphan
from . import checks, cluster, group, identity, network, storage
from . import sweep as aws_sweep
from .boot import user_data
from .common import AwsState, Clients, base_name, describe, not_found, tags
from .preflight import caller_identity, preflight

MACHINE_EXTRA = "aws"


class AwsBackend:
    name = "aws"
    state_type = AwsState
    capabilities = Capabilities(
        preemption=True, sweep=True, ranks="claims", prices=True, poll_interval=3.0,
        env_protection="an SSE-S3 encrypted object in the task's private bucket prefix, readable by its role only",
        timing=Timing(log_interval=2.0, heartbeat_interval=10.0, sync_interval=30.0),
    )  # fmt: skip
    # Seconds to wait for AWS to settle; the tests against moto never wait.
    PROFILE_PROPAGATION = 120.0  # a new instance profile takes a while to be usable by Auto Scaling
    GROUP_DELETE_WAIT = 900.0
    DEPENDENCY_WAIT = 600.0  # a security group stays in use until the instances' interfaces go
    STOP_WAIT = 180.0
    POLL = 5.0

    def __init__(self) -> None:
        self.clients = Clients()  # one boto3 session per task (a Task holds one backend)
        self._claims: dict[str, str] = {}
        self._events = group.EventCache()
        self._gave_up = False

    # ------------------------------------------------------------ names and plan

    def new_state(self, spec: TaskSpec, deadline: float) -> AwsState:
        return AwsState(deadline=deadline, name=base_name(spec.id))

    def remote_url(self, spec: TaskSpec, state: AwsState) -> str:
        bucket, prefix = storage.location(spec, state)
        return f"s3://{bucket}/{prefix}"

    def plan(self, spec: TaskSpec, state: AwsState) -> list[str]:
        cluster.check(spec)
        base, region, machine = state.name or base_name(spec.id), spec.native_region, spec.native_machine
        tag_text = ", ".join(f"{key}={value}" for key, value in tags(spec, "<your ARN>").items())
        storage_line = (
            f"storage: your bucket {self.remote_url(spec, state)} (objects under the task prefix only)"
            if spec.container
            else f"storage: a private, encrypted S3 bucket {storage.location(spec, state)[0]} in {region}"
        )
        identity_line = (
            f"permissions: your instance profile {spec.permission_set}"
            if spec.permission_set
            else f"permissions: IAM role and instance profile {base}, limited to the task's bucket prefix "
            "and to releasing its own instances"
        )
        return [
            f"checks first: credentials (STS), region {region}, {machine} offered there, image {spec.native_image}",
            storage_line,
            f"ssh: key pair {base} from a fresh ed25519 key (private key 0600 in the registry)",
            f"network: security group {base} in the default VPC, no inbound rule",
            identity_line,
            f"launch template {base}: {machine}, boot script installs this tpi-jupyter's agent (locked versions)",
            f"machines: Auto Scaling Group {base}, 0 then {spec.parallelism} x {machine}, "
            f"{pricing_text(spec.spot)}, respawned when interrupted",
            *cluster.plan(spec, base),
            f"tags: {tag_text}",
        ]

    # ------------------------------------------------------------ create / start

    def create(self, spec: TaskSpec, state: AwsState, steps: Steps) -> None:
        cluster.check(spec)
        preflight(self.clients, spec, state)  # SpecError before anything exists
        cluster.pin_zone(self.clients, spec, state)
        storage.choose(spec, state)
        if spec.permission_set:  # needs the bucket's name: still nothing exists
            checks.check_permission_set(
                self.clients("iam", state.region), spec.permission_set, state.partition, state.bucket,
                state.prefix, spec.id,
            )  # fmt: skip
        shipped = wheel.keys(MACHINE_EXTRA)
        state.wheel_key, state.lock_key = (
            f"{state.prefix}/{shipped.wheel_key}",
            f"{state.prefix}/{shipped.lock_key}",
        )
        labels = tags(spec, state.creator)
        for service in ("s3", "ec2", "iam", "autoscaling"):
            self.clients(service, state.region)  # made before the threads share them
        steps.explain = describe
        steps.together({
            "bucket": lambda: storage.create_bucket(self.clients, spec, state, labels),
            "key pair": lambda: identity.create_key_pair(self.clients, spec, state, labels),
            "security group": lambda: network.create_security_group(self.clients, spec, state, labels),
            "IAM role and instance profile": lambda: identity.create_role(self.clients, spec, state, labels),
            "placement group": lambda: cluster.create_placement_group(self.clients, spec, state, labels),
        })  # fmt: skip
        boot_script = user_data(
            spec.id, self.remote_url(spec, state), state, _boto3_version(), spec.parallelism
        )
        steps.together({
            "agent wheel upload": lambda: wheel.ship(
                lambda key, data: storage.put(self.clients, state, key, data), MACHINE_EXTRA),
            "launch template": lambda: group.create_launch_template(self.clients, spec, state, labels, boot_script),
            "security group rule for the task's own machines": lambda: cluster.allow_own_traffic(
                self.clients, spec, state),
        })  # fmt: skip
        steps.run("auto scaling group", lambda: group.create_group(
            self.clients, spec, state, labels, self.PROFILE_PROPAGATION, self.POLL))  # fmt: skip

    def start(self, spec: TaskSpec, state: AwsState) -> None:
        if spec.container:
            storage.encrypt_env(self.clients, state)
        group.set_capacity(self.clients, state, spec.parallelism)

    # ------------------------------------------------------------ read / stop / preempt

    def _owners(self, spec: TaskSpec, state: AwsState) -> dict[str, tuple[int, int]]:
        """instance id -> (rank, boot) from the claims in the bucket (the newest boot wins)."""
        fs, root = filesystem(self.remote_url(spec, state))
        return {owner: key for key, owner in sorted(ranks.read_claims(fs, root, self._claims).items())}

    def read(self, spec: TaskSpec, state: AwsState) -> GroupState:
        if not state.group:
            return GroupState(exists=False)
        if not self._gave_up and not state.stopped:
            self._no_paid_loop(spec, state)
        return group.read(self.clients, state, self._owners(spec, state), self._events)

    def addresses(self, spec: TaskSpec, state: AwsState) -> dict[int, str]:
        """rank -> address of its live machine (describe_instances: only for a face showing them)."""
        found = group.read(self.clients, state, self._owners(spec, state), self._events, with_addresses=True)
        return {m.rank: m.address for m in found.machines if m.alive and m.rank >= 0}

    def _no_paid_loop(self, spec: TaskSpec, state: AwsState) -> None:
        """Too many failed boots: every unreported rank fails with the boot log; the group goes to 0."""
        fs, root = filesystem(self.remote_url(spec, state))
        if boot_failures.give_up(fs, root, spec.parallelism) is not None:
            self._gave_up = True
            group.scale_to_zero(self.clients, state)

    def stop(self, spec: TaskSpec, state: AwsState) -> None:
        """A user stop goes through the remote: agents see the key, stop the script, sync back,
        report "stopped" and release themselves. Machines that do not report in time are scaled away."""
        if not state.group:
            return
        fs, root = filesystem(self.remote_url(spec, state))
        with contextlib.suppress(OSError):  # the bucket is gone (half deleted): scaling to 0 still stops
            fs.pipe_file(layout.join(root, STOP_KEY), layout.timestamp().encode())
        limit = time.monotonic() + self.STOP_WAIT
        while time.monotonic() < limit and self._reporting(spec, state, fs, root):
            time.sleep(self.POLL)
        group.stop(self.clients, state, self.STOP_WAIT, self.POLL)

    def _reporting(self, spec: TaskSpec, state: AwsState, fs: Any, root: str) -> bool:
        """Whether a live machine holds a rank: it reports and releases itself (unclaimed ones are
        scaled away)."""
        found = group.describe_group(self.clients, state) or {}
        live = {
            i["InstanceId"] for i in found.get("Instances", []) if i["LifecycleState"] in group.ALIVE_STATES
        }
        return any(instance in live for instance in self._owners(spec, state))

    def preempt(self, spec: TaskSpec, state: AwsState, rank: int) -> None:
        group.preempt(self.clients, state, self._owners(spec, state), rank)

    def cost(self, spec: TaskSpec, state: AwsState, seconds: float) -> str:
        from ...prices.estimate import cost_text  # the catalogue x machine-seconds (issue 17)

        return cost_text(spec, seconds)

    # ------------------------------------------------------------ delete and sweep

    def delete(self, spec: TaskSpec, state: AwsState) -> None:
        self._delete(state, spec.id)

    def _delete(self, state: AwsState, task_id: str) -> None:
        """Group, launch template, instance profile and role, security group, key pair, bucket.

        Idempotent: what is missing (or never made) counts as deleted.
        """
        failures: list[str] = []
        actions: list[tuple[str, Callable[[], object]]] = [
            ("auto scaling group", lambda: group.delete_group(self.clients, state, self.GROUP_DELETE_WAIT, self.POLL)),
            ("placement group", lambda: cluster.delete_placement_group(
                self.clients, state, self.DEPENDENCY_WAIT, self.POLL)),
            ("launch template", lambda: group.delete_template(self.clients, state)),
            ("instance profile and role", lambda: identity.delete_role(self.clients, state)),
            ("security group", lambda: network.delete_security_group(
                self.clients, state, self.DEPENDENCY_WAIT, self.POLL)),
            ("key pair", lambda: identity.delete_key_pair(self.clients, state)),
            ("bucket", lambda: storage.delete_storage(self.clients, state)),
            ("queue", lambda: delete_queue(self.clients("sqs", state.region), task_id)),
        ]  # fmt: skip
        for label, action in actions:
            if not state.region:
                break  # nothing in the cloud was made
            try:
                action()
            except Exception as error:
                if not not_found(error):
                    failures.append(f"{label}: {describe(error)}")
                    if label == "auto scaling group":
                        break  # machines may still run: keep their role and bucket
        identity.remove_key_file(state)
        if failures:
            raise RuntimeError(
                f"aws: task {task_id} could not be fully deleted ({'; '.join(failures)}); "
                "destroy again, or `tpi sweep aws --yes` later"
            )

    def caller(self) -> str:
        return str(caller_identity(self.clients)["Arn"])

    def orphans(self, region: str | None) -> list[Orphan]:
        return aws_sweep.orphans(self.clients, region)

    def delete_orphan(self, orphan: Orphan) -> None:
        known = {item.name for item in fields(AwsState)}
        self._delete(AwsState(**{k: v for k, v in orphan.handle.items() if k in known}), orphan.task_id)


def _boto3_version() -> str:
    import boto3

    return str(boto3.__version__)


__all__ = ["AwsBackend", "AwsState"]
