"""The shipped price catalogues, machine constraints, estimates in the plan, and the `prices` table,
checked against the catalogue files' own data (read here as plain JSON, not through the module)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

from tpi_jupyter.cli import main
from tpi_jupyter.commands import build_spec, run_task
from tpi_jupyter.prices import catalogue, constraints, estimate
from tpi_jupyter.spec import GENERIC_REGIONS, MACHINES, REGIONS, SpecError, TaskSpec
from tpi_jupyter.task import Plan

from .conftest import created_nothing

CPU_GENERICS = ("s", "m", "l", "xl")
GPU_KINDS = {"t4", "v100", "p100", "a100", "a10g", "a10", "l4", "h100"}


def raw(cloud: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        resources.files("tpi_jupyter.prices").joinpath("data").joinpath(f"{cloud}.json").read_text("utf-8")
    )
    return data


@pytest.mark.parametrize("cloud", catalogue.PRICED_CLOUDS)
def test_catalogue_says_when_and_where_its_prices_come_from(cloud: str) -> None:
    data = raw(cloud)
    assert data["cloud"] == cloud and data["currency"] == "USD"
    assert (
        data["taken"] == "2025-06"
        and "June 2025" in data["note"]
        and f"tpi prices refresh {cloud}" in data["note"]
    )
    for shape in data["types"].values():
        assert shape["cpu"] > 0 and shape["memory"] > 0
        gpu = shape.get("gpu")
        assert gpu is None or (gpu["kind"] in GPU_KINDS and gpu["count"] >= 1 and gpu["memory"] >= 16)


@pytest.mark.parametrize("cloud", ["aws", "az"])
def test_every_price_has_spot_below_on_demand(cloud: str) -> None:
    for found in raw(cloud)["prices"].values():
        for on_demand, spot in found.values():
            assert 0 < spot < on_demand


def test_gcp_rates_price_shapes_by_vcpu_memory_and_gpu() -> None:
    data = raw("gcp")
    rates = data["rates"]["us-west1"]
    n1, t4 = rates["n1"], rates["gpu"]["t4"]
    offer = catalogue.load("gcp").offer("us-west1-b", "n1-standard-4+nvidia-tesla-t4*1")  # type: ignore[union-attr]
    assert offer is not None
    assert offer.on_demand == pytest.approx(4 * n1["cpu"][0] + 15 * n1["memory"][0] + t4[0])
    assert offer.spot == pytest.approx(4 * n1["cpu"][1] + 15 * n1["memory"][1] + t4[1])
    custom = catalogue.load("gcp").offer("us-west1", "n2-custom-8-32768")  # type: ignore[union-attr]
    n2c = rates["n2-custom"]
    assert custom is not None and custom.on_demand == pytest.approx(8 * n2c["cpu"][0] + 32 * n2c["memory"][0])
    small = catalogue.load("gcp").offer("us-west1", "e2-small")  # type: ignore[union-attr]
    assert small is not None and small.on_demand == pytest.approx(
        0.5 * rates["e2"]["cpu"][0] + 2 * rates["e2"]["memory"][0],
        abs=1e-6,  # prices keep 6 decimals
    )


@pytest.mark.parametrize("cloud", catalogue.PRICED_CLOUDS)
def test_generic_machines_are_priced_in_every_generic_region(cloud: str) -> None:
    loaded = catalogue.load(cloud)
    assert loaded is not None
    for region in GENERIC_REGIONS:
        native_region = REGIONS[cloud][region]
        for machine in CPU_GENERICS:
            offer = loaded.offer(native_region, MACHINES[cloud][machine])
            assert offer is not None and offer.spot is not None, (region, machine)
    for machine, native in MACHINES[cloud].items():
        if machine not in CPU_GENERICS:  # GPU machines: offered in some generic regions, not all
            priced = [r for r in GENERIC_REGIONS if loaded.offer(REGIONS[cloud][r], native)]
            assert priced, (machine, native)


def test_no_catalogue_for_kubernetes_is_said() -> None:
    assert catalogue.load("k8s") is None
    spec = TaskSpec.from_args({"cloud": "k8s", "machine": "m+t4"})
    assert estimate.price_line(spec) == f"price: n/a ({catalogue.NO_CATALOGUE['k8s']})"


# ---------------------------------------------------------------- constraints


def test_constraints_pick_the_cheapest_type_in_the_region() -> None:
    prices = raw("aws")["prices"]["us-east-1"]
    types = raw("aws")["types"]
    fits = {name: price for name, price in prices.items()
            if types[name]["cpu"] >= 8 and types[name]["memory"] >= 32
            and (types[name]["gpu"] or {}).get("kind") == "t4"}  # fmt: skip
    spec = TaskSpec.from_args({"cloud": "aws", "region": "us-east", "machine": "cpu>=8,memory>=32,gpu=t4"})
    assert spec.machine == min(fits, key=lambda name: fits[name][0]) == "g4dn.2xlarge"
    assert spec.machine_query == "cpu>=8,memory>=32,gpu=t4"
    spot = TaskSpec.from_args({"cloud": "aws", "region": "us-east", "spot": "0", "machine": "cpu>=8,gpu=t4"})
    assert spot.machine == min(fits, key=lambda name: fits[name][1])
    assert TaskSpec.from_public(spec.public_dict()) == spec  # the record keeps the query


@pytest.mark.parametrize("cloud", catalogue.PRICED_CLOUDS)
@pytest.mark.parametrize(
    "query", ["cpu>=8,memory>=32", "gpu=t4", "gpus>=2,gpu_memory>=16", "cpu<=4,gpu=none"]
)
def test_the_pick_meets_every_condition_and_nothing_cheaper_does(cloud: str, query: str) -> None:
    region = REGIONS[cloud]["us-east"]
    try:
        pick = constraints.pick(query, cloud, region, spot=False)
    except constraints.ConstraintError as error:
        assert "no " in str(error) and "\n" not in str(error)
        return
    conditions = constraints.parse(query)
    assert all(condition.holds(pick.chosen) for condition in conditions)
    for offer in catalogue.load(cloud).offers(constraints._region_key(cloud, region)):  # type: ignore[union-attr]
        if all(condition.holds(offer) for condition in conditions):
            assert offer.on_demand >= pick.chosen.on_demand
    prices = [o.on_demand for o in [pick.chosen, *pick.runners_up]]
    assert prices == sorted(prices) and len(pick.runners_up) <= constraints.RUNNERS_UP


@pytest.mark.parametrize(
    ("value", "word"),
    [
        ("cpu>>8", "cpu>>8"),
        ("cpus>=8", "cpus"),
        ("cpu>=eight", "cpu"),
        ("gpu>=t4", "gpu"),
        ("cpu>=8,", "''"),
        ("cpu>=5000", "no aws type"),
    ],
)
def test_bad_constraints_are_one_line_naming_the_key(value: str, word: str) -> None:
    with pytest.raises(SpecError) as raised:
        TaskSpec.from_args({"cloud": "aws", "machine": value})
    message = str(raised.value)
    assert (
        "\n" not in message and message.startswith("machine:") and word in message and "accepted" in message
    )


def test_kubernetes_turns_constraints_into_a_request() -> None:
    spec = TaskSpec.from_args({"cloud": "k8s", "machine": "cpu>=8,memory>=32,gpu=t4"})
    assert spec.machine == "8-32000+nvidia-tesla-t4*1"
    assert TaskSpec.from_args({"cloud": "k8s", "machine": "cpu>=4"}).machine == "4-8000"


def test_cli_refuses_bad_constraints_with_exit_2_and_creates_nothing(
    tpi_home: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "s.sh").write_text("echo hi\n")
    assert main(["run", "cloud=aws", "machine=cpu>=8,gpu=nonesuch", "--script", "s.sh"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "machine:" in err and "Traceback" not in err
    assert created_nothing(tpi_home)


# ---------------------------------------------------------------- estimates and the plan


def test_dry_run_shows_the_pick_the_price_and_the_most_it_can_cost(tpi_home: Path, workdir: Path) -> None:
    words = [
        "cloud=aws",
        "region=eu-west",
        "machine=cpu>=8,memory>=32,gpu=t4",
        "parallelism=3",
        "timeout=7200",
    ]
    plan = run_task(words, "echo", defaults={}, wait=False, dry_run=True, out=lambda _: None).plan
    assert isinstance(plan, Plan)
    text = plan.text()
    price = raw("aws")["prices"]["eu-west-1"]["g4dn.2xlarge"][0]
    assert "machine: cpu>=8,memory>=32,gpu=t4 picked g4dn.2xlarge (8 vCPU, 32 GiB, 1x T4 16GB)" in text
    assert "runners-up: g4dn.4xlarge" in text
    assert f"price: {estimate.money(price)}/h per machine (g4dn.2xlarge in eu-west-1, on-demand)" in text
    assert f"{estimate.money(price * 3)}/h for 3" in text
    assert f"at most {estimate.money(price * 3 * 2)} by the deadline (2 h)" in text
    assert "aws prices of 2025-06 (shipped)" in text
    assert created_nothing(tpi_home)


def test_a_bid_below_the_spot_price_is_warned_in_one_line(tpi_home: Path, workdir: Path) -> None:
    spot = raw("gcp")  # priced from rates: read the offer, then bid below it
    offer = catalogue.load("gcp").offer("us-west1-b", MACHINES["gcp"]["m+t4"])  # type: ignore[union-attr]
    assert offer is not None and offer.spot is not None and spot["rates"]
    bid = round(offer.spot / 2, 4)
    spec = build_spec(["cloud=gcp", "machine=m+t4", f"spot={bid}"], {})
    warning = estimate.spot_warning(spec)
    assert warning is not None and "\n" not in warning
    assert f"below the spot price of {offer.machine} in us-west1 ({estimate.money(offer.spot)}/h" in warning
    plan = run_task(["cloud=gcp", "machine=m+t4", f"spot={bid}"], "echo", defaults={}, wait=False, dry_run=True,
                    out=lambda _: None).plan  # fmt: skip
    assert f"! {warning}" in str(plan)
    # the most a bid can cost is the bid itself
    assert f"at most {estimate.money(bid * 24)}" in str(plan)
    assert (
        estimate.spot_warning(build_spec(["cloud=gcp", "machine=m+t4", f"spot={offer.spot * 2}"], {})) is None
    )
    assert estimate.spot_warning(build_spec(["cloud=gcp", "machine=m+t4", "spot=0"], {})) is None


# ---------------------------------------------------------------- the table


def rows(text: str) -> list[list[str]]:
    lines = text.splitlines()
    return [line.split() for line in lines[1:] if not line.startswith(("...", "prices in"))]


def test_prices_table_lists_a_generic_machine_across_clouds_cheapest_first(
    tpi_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prices", "m+t4"]) == 0
    out = capsys.readouterr().out
    table = rows(out)
    machines = {row[0]: row[2] for row in table}
    assert machines == {cloud: MACHINES[cloud]["m+t4"] for cloud in catalogue.PRICED_CLOUDS}
    on_demand = [float(row[-2].lstrip("$")) for row in table]
    assert on_demand == sorted(on_demand)
    aws_regions = {row[1] for row in table if row[0] == "aws"}
    assert aws_regions == {r for r, found in raw("aws")["prices"].items() if "g4dn.xlarge" in found}
    assert "k8s: no price catalogue" in out and "prices of 2025-06" in out


def test_prices_filters_by_constraints_region_cloud_and_spot(
    tpi_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prices", "gpus>=4,gpu=t4", "--cloud", "az", "--region", "us-east", "--spot"]) == 0
    table = rows(capsys.readouterr().out)
    expected = {name for name, shape in raw("az")["types"].items()
                if shape["gpu"] and shape["gpu"]["kind"] == "t4" and shape["gpu"]["count"] >= 4}  # fmt: skip
    assert {row[2] for row in table} == expected and {row[1] for row in table} == {"eastus"}
    spots = [float(row[-1].lstrip("$")) for row in table]
    assert spots == sorted(spots)


def test_prices_cuts_long_tables_and_lists_all_on_request(
    tpi_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prices", "cpu>=1"]) == 0
    out = capsys.readouterr().out
    assert len(rows(out)) == 30 and "more (--all lists every one)" in out
    assert main(["prices", "t4", "--all"]) == 0
    table = rows(capsys.readouterr().out)
    assert len(table) > 30 and all("T4" in " ".join(row) for row in table)


@pytest.mark.parametrize(("words", "key"), [(["cpu>>1"], "QUERY"), (["nonesuch.type"], "QUERY"),
                                            (["t4", "--cloud", "k8s"], "--cloud"), (["a", "b"], "QUERY"),
                                            (["refresh", "k8s"], "CLOUD")])  # fmt: skip
def test_prices_bad_input_is_one_line_exit_2(
    words: list[str], key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prices", *words]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and key in err and "accepted" in err


def test_magic_prints_the_table_and_refuses_bad_queries_as_usage_errors(
    tpi_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ip = start_ipython() or get_ipython()
    ip.run_line_magic("load_ext", "tpi_jupyter")
    capsys.readouterr()  # "already loaded" when an earlier test of this process loaded it
    ip.run_line_magic("tpi", "prices m+t4")
    assert rows(capsys.readouterr().out)[0][2] in {MACHINES[c]["m+t4"] for c in catalogue.PRICED_CLOUDS}
    with pytest.raises(UsageError, match=r"^QUERY: 'cpu>>1' is not a condition"):
        ip.run_line_magic("tpi", "prices cpu>>1")


def test_local_checks_constraints_but_has_nothing_to_pick() -> None:
    spec = TaskSpec.from_args({"machine": "cpu>=8,gpu=t4"})
    assert (spec.cloud, spec.machine, spec.machine_query) == ("local", "cpu>=8,gpu=t4", "cpu>=8,gpu=t4")
    assert estimate.price_line(spec) == "price: $0 (local machines are processes here)"
    with pytest.raises(SpecError, match=r"^machine: unknown constraint 'vram'"):
        TaskSpec.from_args({"machine": "vram>=8"})
