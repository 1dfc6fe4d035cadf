"""Multi-node tasks on GCP (issue 16, point 6), on the Compute contract server.

The contract server (tests/gcp_contract.py) checks every body with google-cloud-compute's own
types and decides ingress as GCP does (lowest priority number wins, deny on a tie, network tags
as sources). What only GCP shows (the rule on a real VPC, the group's zone capacity) is named in
the README.
"""

from __future__ import annotations

import pytest

from tpi_jupyter import state
from tpi_jupyter.backends.gcp import GcpBackend
from tpi_jupyter.backends.kit.sweep import sweep
from tpi_jupyter.commands import build_spec
from tpi_jupyter.spec import SpecError
from tpi_jupyter.task import TaskError, launch

from .conftest import wait_for
from .gcp_contract import ContractServer
from .test_gcp import contract, gcp, gcs_url, ours, posts, start  # noqa: F401 - fixtures

SCRIPT = "#!/bin/bash\nsleep 600\n"


def test_ranks_reach_each_other_and_nothing_else_reaches_them(gcp: ContractServer) -> None:  # noqa: F811
    task = start(["name=gcp-mpi", "parallelism=3", "launch=mpi", "spot=0"], SCRIPT)
    backend = task.record["backend"]
    tag = backend["name"]
    # One zonal group: every rank in its zone (there is no regional group to spread them).
    inserts = [
        path for method, path, _ in gcp.calls if method == "POST" and path.endswith("/instanceGroupManagers")
    ]
    assert len(inserts) == 1 and "/zones/us-west1-b/" in inserts[0] and "/regions/" not in inserts[0]
    assert wait_for(lambda: len(gcp.instances(backend["group"])) == 3)
    # The rules are created side by side: their order is not fixed.
    rules = {body["name"]: body for body in posts(gcp, "/global/firewalls")}
    assert sorted(rules) == [tag, f"{tag}-ranks"] and backend["ranks_firewall"] == f"{tag}-ranks"
    deny, ranks = rules[tag], rules[f"{tag}-ranks"]
    assert ranks["sourceTags"] == [tag] and ranks["targetTags"] == [tag] and "sourceRanges" not in ranks
    assert ranks["allowed"] == [{"IPProtocol": "all"}] and ranks["priority"] < deny["priority"]
    # As GCP evaluates the rules: any port from a machine of the task, nothing from anyone else.
    for port in (22, 1024, 29500):
        assert gcp.ingress_allowed("10.128.0.7", port, tag, source_tag=tag)
        assert not gcp.ingress_allowed("10.128.0.9", port, tag, source_tag="another-task")
        assert not gcp.ingress_allowed("198.51.100.7", port, tag)
    task.destroy()
    assert ours(gcp, task.id) == [] and gcp.firewalls == {}


def test_a_single_machine_gets_no_ranks_rule(gcp: ContractServer) -> None:  # noqa: F811
    task = start(["name=gcp-one", "spot=0"], SCRIPT)
    (deny,) = posts(gcp, "/global/firewalls")
    assert deny["denied"] == [{"IPProtocol": "all"}] and task.record["backend"]["ranks_firewall"] == ""
    task.destroy()
    assert ours(gcp, task.id) == []


def test_failure_midway_removes_the_ranks_rule(gcp: ContractServer) -> None:  # noqa: F811
    gcp.fail_on = "/instanceGroupManagers"
    with pytest.raises(TaskError):
        start(["name=gcp-mpi-fail", "parallelism=2", "spot=0"], SCRIPT)
    assert len(posts(gcp, "/global/firewalls")) == 2 and gcp.firewalls == {}


def test_a_forgotten_tasks_ranks_rule_is_swept(gcp: ContractServer) -> None:  # noqa: F811
    task = start(["name=gcp-mpi-sweep", "parallelism=2", "spot=0"], SCRIPT)
    assert len(gcp.firewalls) == 2
    state.delete(task.id)
    sweep(GcpBackend(), [], region=None, everyone=False, delete=True)
    assert ours(gcp, task.id) == [] and gcp.firewalls == {}


def test_placement_cluster_is_refused_in_one_line(gcp: ContractServer) -> None:  # noqa: F811
    with pytest.raises(SpecError) as raised:
        start(["name=gcp-pl", "parallelism=2", "placement=cluster"], SCRIPT)
    assert str(raised.value).startswith(
        "placement: cluster is not available on gcp"
    ) and "accepted: none" in str(raised.value)
    assert gcp.calls == [] and state.records() == []


def test_dry_run_names_the_ranks_rule(gcp: ContractServer) -> None:  # noqa: F811
    spec = build_spec(["name=gcp-plan", "parallelism=2"], {"cloud": "gcp"})
    text = str(launch(spec, SCRIPT, dry_run=True))
    assert "all 2 machines in zone us-west1-b (the group is zonal)" in text
    assert "-ranks allows all traffic between machines tagged tpi-" in text
    backend = GcpBackend()
    rules = [
        r["body"]
        for r in backend.plan_requests(spec, backend.new_state(spec, 0.0))
        if "firewalls" in r["url"]
    ]
    assert [rule["name"].endswith("-ranks") for rule in rules] == [False, True]
    assert gcp.calls == []
