"""Names recorded before anything is asked of GCP.

Every resource of a task is named from its id (`tpi-<short id>`), so each name is known before
its create request is sent. Recording them first, and saving the state before the first request,
means a client killed after a request reached GCP but before its answer came back still leaves a
registry entry naming what may exist: `destroy` deletes each, and a name that was never made
answers 404, which counts as deleted. Firewall rules, service accounts and groups carry no
labels, so `sweep` finds them only through their template, which may never have been made.
"""

from __future__ import annotations

from ...spec import TaskSpec
from . import cluster, network
from .common import GcpState


def record_names(spec: TaskSpec, state: GcpState) -> None:
    """Everything `create` may make, by name (needs the project: after preflight)."""
    state.firewall = state.name
    if state.ssh_from:
        state.ssh_firewall = network.ssh_name(state)
    if cluster.bodies(spec, state):
        state.ranks_firewall = cluster.rule_name(state)
    if not spec.permission_set:
        state.service_account = f"{state.name}@{state.project}.iam.gserviceaccount.com"
        state.service_account_created = True
    if not state.user_bucket:
        state.bucket_created = True  # storage.create_bucket takes it back when the name is taken
    state.template = state.group = state.name
