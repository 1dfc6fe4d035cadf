"""The Kubernetes backend: one Indexed Job per task on the cluster your kubeconfig points at.

`create` (after checks: an object-store `container` or none, the cluster reachable) makes a
Secret (storage credentials; the environment values join it at `start`) and the Job, suspended.
Without `container` the remote is a PersistentVolumeClaim that every pod mounts, and a transfer
pod serves it to the client through the API server's pod proxy (transfer.py, proxyfs.py): the
claim and that pod are made before the Job, and create waits until the pod answers.
The environment values go straight into the Secret (`hold_environment`, asked by task.py
because `capabilities.holds_environment`): `.tpi/env` is never written to the remote.
`start`, once task.py wrote the remote, resumes the Job. Ranks are completion indexes; pods run the agent from a runtime an
init container copies in (pod.py), so the user's image brings only what the script needs.
Everything carries `tpi-task=<id>` and `tpi-creator=<user>`; `sweep k8s` finds leftovers by label.
Settings (environment variables, read at create): config.py.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import fsspec

from ... import layout
from ...agent_watch import STOP_KEY
from ...spec import SpecError, TaskSpec
from ...sync import filesystem
from ..base import Capabilities, GroupState, Timing, pricing_text
from ..kit.steps import Steps
from ..kit.sweep import Orphan
from ..kit.tags import label_value
from . import config, job, manifests, mpijob, service, storage
from . import sweep as k8s_sweep
from .manifests import PROTOCOL

# By name: proxyfs imports transfer.py, which pods run with `python -m` (not imported before).
fsspec.register_implementation(PROTOCOL, "tpi_jupyter.backends.k8s.proxyfs.ProxyFileSystem", clobber=True)


@dataclass
class K8sState:
    deadline: float = 0.0
    context: str = ""
    namespace: str = ""
    creator: str = ""
    name: str = ""  # of the Job and the Secret
    remote: str = ""
    secret: bool = False  # made (so delete knows what to look for)
    job: bool = False
    claim: bool = False  # the PersistentVolumeClaim and its transfer pod
    service: bool = False  # the headless Service of a multi-node Job (service.py)
    mpijob: bool = False  # launch=mpi on a cluster with mpi-operator: an MPIJob instead of the Job


class K8sBackend:
    name = "k8s"
    state_type = K8sState
    capabilities = Capabilities(
        preemption=True, sweep=True, ranks="index", prices=False, poll_interval=2.0,
        env_protection="a Kubernetes Secret of the task, mounted read-only into the agent only",
        timing=Timing(log_interval=2.0, heartbeat_interval=10.0, sync_interval=30.0),
        holds_environment=True,
    )  # fmt: skip
    STOP_WAIT = 120.0  # seconds agents get to see a stop, sync back and report
    DELETE_WAIT = 180.0  # pods get their grace period to end
    POLL = 2.0
    TRANSFER_WAIT = 180.0  # seconds for the claim to bind and the transfer pod to answer

    def __init__(self) -> None:
        self._api: job.Api | None = None
        # Pod events seen once stay: an evicted pod, and its DisruptionTarget, are gone soon after.
        self._events: dict[tuple[Any, ...], dict[str, Any]] = {}

    def api(self, state: K8sState) -> job.Api:
        if self._api is None:
            try:
                cluster = config.connect(state.context, state.namespace)
            except config.ConfigError as error:
                raise SpecError(str(error)) from None
            self._api = job.Api(cluster.api, cluster.namespace)
        return self._api

    # ------------------------------------------------------------ names and plan

    def new_state(self, spec: TaskSpec, deadline: float) -> K8sState:
        return K8sState(deadline=deadline, name=spec.id)

    def remote_url(self, spec: TaskSpec, state: K8sState) -> str:
        if state.remote:
            return state.remote
        if storage.on_claim(spec):
            from . import proxyfs  # not at import: pods run transfer.py, which it imports, with -m

            return proxyfs.remote_url(state.context, state.namespace or "default", spec.id)
        return storage.remote_url(spec)

    @staticmethod
    def pod_remote(spec: TaskSpec, remote: str) -> str:
        """The remote as the pods see it: the claim's mount, or the object store's URL."""
        return f"{manifests.CLAIM_DIR}/{spec.id}" if storage.on_claim(spec) else remote

    def manifests(self, spec: TaskSpec, state: K8sState) -> list[dict[str, Any]]:
        """What create sends (the Secret's values shown empty)."""
        settings = config.Settings.from_environment()
        namespace, creator = state.namespace, state.creator
        if not namespace:  # a dry run: the kubeconfig's namespace and user when there is one
            with contextlib.suppress(Exception):
                cluster = config.connect()
                namespace, creator = cluster.namespace, label_value(cluster.user)
        meta = manifests.metadata(spec, state.name or spec.id, namespace or "default",
                                  creator or "unknown", self.remote_url(spec, state))  # fmt: skip
        left = int(state.deadline - time.time()) if state.deadline else spec.timeout
        found = [manifests.secret(meta, {}, {})]
        mpi = False
        if mpijob.wanted(spec):  # the MPIJob only where the kubeconfig's cluster serves it
            with contextlib.suppress(Exception):
                mpi = mpijob.installed(self.api(state))
        if storage.on_claim(spec):
            found += [manifests.claim(spec, meta),
                      manifests.transfer_pod(meta, settings.agent_image, settings.agent_runtime)]  # fmt: skip
        workload = manifests.job(spec, meta, self.pod_remote(spec, self.remote_url(spec, state)), left,
                                 settings.agent_image, settings.agent_runtime)  # fmt: skip
        found += mpijob.workload(spec, meta, workload, mpi)
        return list(json.loads(json.dumps(found)))  # plain data: no shared parts (YAML anchors)

    def plan(self, spec: TaskSpec, state: K8sState) -> list[str]:
        mpijob.check(spec)
        settings = config.Settings.from_environment()
        if storage.on_claim(spec):
            claim = manifests.claim(spec, manifests.metadata(spec, spec.id, "default", ""))["spec"]
            where = [f"storage: PersistentVolumeClaim {spec.id} of the default StorageClass, "
                     f"{claim['resources']['requests']['storage']}, {claim['accessModes'][0]}",
                     f"pod {manifests.transfer_name(spec.id)}: serves the claim to this client through "
                     "the API server's pod proxy"]  # fmt: skip
        else:
            where = [f"storage: {self.remote_url(spec, state)} (the task's prefix of your container)"]
        return [
            *where,
            f"secret {spec.id}: environment values and "
            + (
                "the transfer pod's token"
                if storage.on_claim(spec)
                else "storage credentials, mounted into the agent only"
            ),
            f"job {spec.id}: Indexed, {spec.parallelism} rank(s) x {spec.native_machine}, image {spec.native_image}, "
            f"{pricing_text(spec.spot)}, evicted pods respawned",
            *mpijob.plan(spec),
            f"agent runtime: copied in by an init container from {settings.agent_image} ({settings.agent_runtime})",
            f"labels: tpi-task={spec.id}, tpi-creator=<your kubeconfig user>",
        ]

    # ------------------------------------------------------------ create / start

    def create(self, spec: TaskSpec, state: K8sState, steps: Steps) -> None:
        storage.check(spec)  # SpecError before anything exists
        mpijob.check(spec)
        settings = config.Settings.from_environment()
        try:
            cluster = config.connect(namespace=state.namespace)
        except config.ConfigError as error:
            raise SpecError(str(error)) from None
        state.context, state.namespace = cluster.context, cluster.namespace
        state.creator = label_value(cluster.user) or "unknown"
        state.remote = self.remote_url(spec, state)
        self._api = api = job.Api(cluster.api, cluster.namespace)
        steps.explain = job.describe
        meta = manifests.metadata(spec, state.name, state.namespace, state.creator, state.remote)
        credentials = storage.credentials(spec.container, settings.forward_storage_credentials,
                                          settings.storage_endpoint) if spec.container else {}  # fmt: skip
        token = secrets.token_urlsafe(32) if storage.on_claim(spec) else ""

        def make_secret() -> None:
            state.secret = True  # recorded first: a timeout may still have made it
            job.create_secret(api, manifests.secret(meta, {}, credentials, token))

        def make_claim() -> None:
            state.claim = True
            job.create_claim(api, manifests.claim(spec, meta))
            job.create_pod(api, manifests.transfer_pod(meta, settings.agent_image, settings.agent_runtime))
            self._wait_for_transfer(state)

        def make_job() -> None:
            left = int(state.deadline - time.time())
            made = manifests.job(spec, meta, self.pod_remote(spec, state.remote), left,
                                 settings.agent_image, settings.agent_runtime)  # fmt: skip
            for item in mpijob.workload(spec, meta, made, mpijob.wanted(spec) and mpijob.installed(api)):
                setattr(state, item["kind"].lower(), True)  # recorded first: rollback looks for it
                mpijob.send(api, item)

        steps.run("secret", make_secret)
        if storage.on_claim(spec):
            steps.run("claim", make_claim)
        steps.run("job", make_job)

    def _wait_for_transfer(self, state: K8sState) -> None:
        """Until the transfer pod answers through the proxy (the claim bound, the pod running)."""
        limit, last = time.monotonic() + self.TRANSFER_WAIT, ""
        while time.monotonic() < limit:
            try:
                filesystem(state.remote, patient=False)[0].ls("")
                return
            except Exception as error:  # not scheduled, not running, not listening yet
                last = job.describe(error)
            time.sleep(self.POLL)
        phase = job.pod_phase(self.api(state), manifests.transfer_name(state.name))
        raise RuntimeError(f"transfer pod {manifests.transfer_name(state.name)} did not answer in "
                           f"{self.TRANSFER_WAIT:.0f} s (phase {phase}; last: {last})")  # fmt: skip

    def hold_environment(self, spec: TaskSpec, state: K8sState, values: dict[str, str]) -> None:
        """The values into the task's Secret only (mounted into the agent, never in the pod spec)."""
        job.set_environment(self.api(state), state.name, values)

    def start(self, spec: TaskSpec, state: K8sState) -> None:
        (mpijob if state.mpijob else job).set_suspended(self.api(state), state.name, False)

    # ------------------------------------------------------------ read / stop / preempt

    def read(self, spec: TaskSpec, state: K8sState) -> GroupState:
        if not (state.job or state.mpijob):
            return GroupState(exists=False)
        reader = mpijob.read if state.mpijob else job.read
        found = reader(self.api(state), state.name, spec.id)
        for event in found.events:
            self._events.setdefault((event["kind"], event["rank"], event["detail"]), event)
        found.events = sorted(self._events.values(), key=lambda event: event["time"])
        return found

    def stop(self, spec: TaskSpec, state: K8sState) -> None:
        """Through the remote, as on every cloud: agents stop the script, sync back and report;
        then the Job is suspended, which ends the pods that did not."""
        if not (state.job or state.mpijob):
            return
        fs, root = filesystem(self.remote_url(spec, state))
        with contextlib.suppress(OSError):
            fs.pipe_file(layout.join(root, STOP_KEY), layout.timestamp().encode())
        api = self.api(state)
        limit = time.monotonic() + self.STOP_WAIT
        while time.monotonic() < limit and any(m.alive for m in job.read(api, state.name, spec.id).machines):
            time.sleep(self.POLL)
        with contextlib.suppress(Exception):
            (mpijob if state.mpijob else job).set_suspended(api, state.name, True)

    def preempt(self, spec: TaskSpec, state: K8sState, rank: int) -> None:
        live = [m for m in self.read(spec, state).machines if m.rank == rank and m.alive]
        pods = [p for p in job.pods(self.api(state), spec.id) if job.rank_of(p) == rank
                and p.status and p.status.phase in job.ALIVE_PHASES and not p.metadata.deletion_timestamp]  # fmt: skip
        if not live or not pods:
            raise RuntimeError(f"rank {rank} has no running pod to evict")
        job.evict(self.api(state), pods[0].metadata.name)

    def cost(self, spec: TaskSpec, state: K8sState, seconds: float) -> str:
        from ...prices.estimate import cost_text  # the catalogue x machine-seconds (issue 17)

        return cost_text(spec, seconds)

    # ------------------------------------------------------------ delete and sweep

    def delete(self, spec: TaskSpec, state: K8sState) -> None:
        if state.secret or state.job or state.claim or state.service or state.mpijob:
            try:
                self._delete_workload(state, spec.id)
                job.delete_all(self.api(state), state.name, spec.id, self.DELETE_WAIT, self.POLL)
            except Exception as error:
                raise RuntimeError(f"k8s: task {spec.id} could not be fully deleted ({job.describe(error)}); "
                                   "destroy again, or `tpi sweep k8s --yes` later") from None  # fmt: skip
        if state.remote:
            storage.delete(state.remote)

    def _delete_workload(self, state: K8sState, task_id: str) -> None:
        """The MPIJob before its pods (its operator would recreate them), and the Service."""
        if state.mpijob:
            mpijob.delete(self.api(state), state.name, task_id)
        if state.service:
            service.delete(self.api(state), state.name, task_id)

    def caller(self) -> str:
        try:
            return label_value(config.connect().user) or "unknown"
        except config.ConfigError as error:
            raise RuntimeError(str(error)) from None

    def orphans(self, region: str | None) -> list[Orphan]:
        cluster = config.connect(namespace=region or "")
        self._api = api = job.Api(cluster.api, cluster.namespace)
        return k8s_sweep.orphans(api)

    def delete_orphan(self, orphan: Orphan) -> None:
        handle = orphan.handle
        state = K8sState(namespace=handle["namespace"], name=handle["name"] or handle["label"],
                         remote=handle["remote"], secret=True, job=True, claim=True, service=True,
                         mpijob=True)  # fmt: skip
        self._api = None
        self._delete_workload(state, handle["label"])
        job.delete_all(self.api(state), state.name, handle["label"], self.DELETE_WAIT, self.POLL)
        if state.remote:
            storage.delete(state.remote)


__all__ = ["K8sBackend", "K8sState"]
