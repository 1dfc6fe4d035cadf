"""Multi-node tasks on Azure (issue 16, point 6), on the Resource Manager contract server.

Request bodies are checked with azure-mgmt's own models (tests/azure_contract.py), and inbound
traffic is decided from the security group as Azure decides it (priority order, first match,
Azure's default rules last). What only Azure shows (the placement group's real packing) is
named in the README.
"""

from __future__ import annotations

import pytest

from tpi_jupyter import state
from tpi_jupyter.commands import build_spec
from tpi_jupyter.spec import SpecError
from tpi_jupyter.task import launch

from .azure_contract import ContractServer, inbound_allowed
from .test_azure import arm, azurite, imds, start  # noqa: F401 - fixtures

SCRIPT = "#!/bin/bash\nsleep 600\n"
RANK_A, RANK_B = "10.70.0.4", "10.70.0.5"


def test_ranks_share_a_placement_group_and_reach_each_other_only(arm: ContractServer) -> None:  # noqa: F811
    task = start(["name=az-mpi", "parallelism=3", "launch=mpi", "spot=-1"], SCRIPT)
    scale_set = arm.bodies("virtualmachinescalesets")[0]  # the PUT; PATCHes resize it
    assert scale_set["properties"]["singlePlacementGroup"] is True
    (nsg,) = arm.bodies("networksecuritygroups")
    (vnet,) = arm.bodies("virtualnetworks")
    subnet = vnet["properties"]["subnets"][0]["properties"]["addressPrefix"]
    allow = next(r for r in nsg["properties"]["securityRules"] if r["name"] == "ranks")["properties"]
    assert allow["sourceAddressPrefix"] == allow["destinationAddressPrefix"] == subnet == "10.70.0.0/20"
    # As Azure evaluates the group: any port between ranks; nothing from the internet, another
    # network of the subscription (a peering the VirtualNetwork tag would cover), or the balancer.
    for port in (22, 1024, 29500):
        assert inbound_allowed(nsg, RANK_A, RANK_B, port)
        assert not inbound_allowed(nsg, "198.51.100.7", RANK_B, port)
        assert not inbound_allowed(nsg, "10.70.200.9", RANK_B, port, vnet="10.70.0.0/16")
        assert not inbound_allowed(nsg, "10.80.0.9", RANK_B, port, vnet="10.0.0.0/8")
    task.destroy()
    assert arm.tagged(task.id) == []


def test_a_single_machine_keeps_the_group_without_rules(arm: ContractServer) -> None:  # noqa: F811
    task = start(["name=az-one", "spot=-1"], SCRIPT)
    scale_set = arm.bodies("virtualmachinescalesets")[0]
    assert scale_set["properties"]["singlePlacementGroup"] is False
    (nsg,) = arm.bodies("networksecuritygroups")
    assert nsg["properties"]["securityRules"] == []
    task.destroy()
    assert arm.tagged(task.id) == []


@pytest.mark.parametrize(
    ("words", "text"),
    [
        (["parallelism=2", "placement=cluster"], "placement: cluster is not available on az"),
        (
            ["parallelism=101"],
            "parallelism: 101 machines do not fit one Azure placement group; accepted: 1 to 100",
        ),
    ],
)
def test_refusals_are_one_line_and_create_nothing(arm: ContractServer, words: list[str], text: str) -> None:  # noqa: F811
    for dry_run in (True, False):
        with pytest.raises(SpecError) as raised:
            launch(build_spec(["name=az-bad", *words], {"cloud": "az"}), SCRIPT, dry_run=dry_run)
        assert str(raised.value).startswith(text) and "\n" not in str(raised.value)
    assert arm.calls == [] and state.records() == []


def test_dry_run_shows_the_placement_group_and_the_rules(arm: ContractServer) -> None:  # noqa: F811
    text = str(launch(build_spec(["name=az-plan", "parallelism=2"], {"cloud": "az"}), SCRIPT, dry_run=True))
    assert "the 2 machines in one placement group (singlePlacementGroup)" in text
    assert '"singlePlacementGroup": true' in text and '"name": "deny-other-inbound"' in text
    assert arm.calls == []
