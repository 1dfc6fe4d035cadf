"""`tpi prices refresh` against a contract server of the public price sources (tests/price_contract.py):
documented shapes, paging, distractors that must not win, and a failure midway that keeps the
previous catalogue."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tpi_jupyter.cli import main
from tpi_jupyter.prices import catalogue
from tpi_jupyter.prices.refresh import refresh
from tpi_jupyter.prices.refresh.http import RefreshError

from .price_contract import API_KEY, PAGE, PriceServer, truth_from

FACTOR = 1.25  # served prices differ from the shipped ones, so the refresh shows


@pytest.fixture
def server(tpi_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PriceServer]:
    shipped = {cloud: catalogue.shipped(cloud) for cloud in catalogue.PRICED_CLOUDS}
    truth = truth_from(shipped, FACTOR)
    del truth["aws"]["us-east-1"]["p3.2xlarge"]  # retired there since: the refresh drops it
    srv = PriceServer(truth)
    url = srv.start()
    for name in ("TPI_PRICES_AWS_URL", "TPI_PRICES_AWS_EC2_URL", "TPI_PRICES_GCP_URL"):
        monkeypatch.setenv(name, url)
    monkeypatch.setenv("TPI_PRICES_AZURE_URL", f"{url}/api/retail/prices")
    monkeypatch.setenv("TPI_PRICES_GCP_API_KEY", API_KEY)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "contract")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    yield srv
    srv.stop()


def test_aws_refresh_reads_the_offer_files_and_spot_history(server: PriceServer) -> None:
    lines: list[str] = []
    refresh(["aws"], lines.append)
    loaded = catalogue.load("aws")
    assert loaded is not None and loaded.origin == str(catalogue.user_path("aws"))
    served = server.truth["aws"]
    assert set(loaded.data["prices"]) == set(served)
    for region, found in served.items():
        for kind, (price, spot) in found.items():
            offer = loaded.offer(region, kind)
            assert offer is not None, (region, kind)
            # Linux/shared/NA/Used on-demand wins over Windows, dedicated, SQL and reserved ones;
            # spot is the lowest of the zones (the contract serves +0.01 in zone a).
            assert offer.on_demand == pytest.approx(price) and offer.spot == pytest.approx(spot)
    assert loaded.offer("us-east-1", "p3.2xlarge") is None
    assert loaded.offer("us-west-2", "p3.2xlarge") is not None
    spot_calls = [path for method, path, _ in server.requests if method == "POST"]
    assert len(spot_calls) > len(served)  # paged by NextToken in every region
    assert "aws:" in lines[0] and "written to" in lines[0]
    mode = stat.S_IMODE(os.stat(catalogue.user_path("aws")).st_mode)
    assert mode == 0o644


def test_aws_without_credentials_keeps_the_spot_prices_and_says_so(
    server: PriceServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    lines: list[str] = []
    refresh(["aws"], lines.append)
    loaded = catalogue.load("aws")
    assert loaded is not None
    shipped = catalogue.shipped("aws")["prices"]["eu-west-1"]["g4dn.xlarge"]
    offer = loaded.offer("eu-west-1", "g4dn.xlarge")
    assert offer is not None and offer.spot == shipped[1]
    assert offer.on_demand == pytest.approx(shipped[0] * FACTOR)
    assert "spot prices kept" in lines[0] and "credentials" in lines[0]
    assert not [method for method, _, _ in server.requests if method == "POST"]


def test_azure_refresh_pages_the_retail_prices_api(server: PriceServer) -> None:
    refresh(["az"], lambda _: None)
    loaded = catalogue.load("az")
    assert loaded is not None
    for region, found in server.truth["az"].items():
        for size, (price, spot) in found.items():
            offer = loaded.offer(region, size)
            assert offer is not None and offer.on_demand == pytest.approx(price), (region, size)
            assert offer.spot == pytest.approx(spot)  # " Spot", not Low Priority, Windows or DevTest
    pages = [path for _, path, _ in server.requests if path.startswith("/api/retail/prices")]
    items = (
        sum(len(found) for found in server.truth["az"].values()) * 3
    )  # on-demand, Windows, spot + Low Priority
    assert len(pages) >= items // PAGE  # every NextPageLink followed
    assert "%24filter=" in pages[0] and "api-version=" in pages[0]


def test_gcp_refresh_reads_the_billing_catalog(server: PriceServer) -> None:
    refresh(["gcp"], lambda _: None)
    loaded = catalogue.load("gcp")
    assert loaded is not None
    rates = loaded.data["rates"]
    for region, found in server.truth["gcp"].items():
        for name, (price, spot) in found.items():
            group, part = name.split(".")
            assert rates[region][group][part] == [pytest.approx(price), pytest.approx(spot)], (region, name)
    shipped = catalogue.Catalogue("gcp", "x", "shipped", catalogue.shipped("gcp"))
    for machine in ("n1-standard-4+nvidia-tesla-t4*1", "e2-custom-8-32768", "g2-standard-4"):
        new, old = loaded.offer("us-west1-b", machine), shipped.offer("us-west1-b", machine)
        assert new is not None and old is not None
        assert new.on_demand == pytest.approx(old.on_demand * FACTOR, rel=1e-4)
    calls = [(path, headers) for _, path, headers in server.requests if "/skus" in path]
    assert len(calls) > 2 and "pageToken=" in calls[1][0]
    assert all(API_KEY not in path for path, _ in calls)  # the key travels in a header


def test_failure_midway_keeps_the_previous_catalogue(
    server: PriceServer, capsys: pytest.CaptureFixture[str]
) -> None:
    refresh(["az"], lambda _: None)
    before = catalogue.user_path("az").read_bytes()
    server.fail_on, server._seen = "/api/retail/prices", 0  # the second page fails
    assert main(["prices", "refresh", "az"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HTTP 500" in err and "previous catalogue is kept" in err
    assert "$filter" not in err and "Traceback" not in err
    assert catalogue.user_path("az").read_bytes() == before
    assert [p.name for p in catalogue.user_path("az").parent.iterdir()] == ["az.json"]  # no temp file left


def test_a_source_that_prices_too_little_is_refused(server: PriceServer) -> None:
    server.truth["gcp"] = {"us-west1": {"n1.cpu": (0.03, 0.01), "n1.memory": (0.004, 0.001)}}
    with pytest.raises(RefreshError, match="priced only"):
        refresh(["gcp"], lambda _: None)
    assert not catalogue.user_path("gcp").exists()


def test_gcp_without_key_or_credentials_is_one_line(
    server: PriceServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("TPI_PRICES_GCP_API_KEY")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    with pytest.raises(RefreshError, match="TPI_PRICES_GCP_API_KEY"):
        refresh(["gcp"], lambda _: None)


def test_a_broken_user_copy_falls_back_to_the_shipped_catalogue(tpi_home: Path) -> None:
    path = catalogue.user_path("aws")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"cloud": "aws"}))
    loaded = catalogue.load("aws")
    assert loaded is not None and loaded.origin == "shipped"


def test_the_contract_server_refuses_what_the_services_would(server: PriceServer) -> None:
    import urllib.error
    import urllib.request

    def status(path: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> int:
        request = urllib.request.Request(server.url + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code

    assert status("/api/retail/prices?$filter=nosuchField%20eq%20%27x%27") == 400
    assert status("/api/retail/prices?$filter=serviceName%20eq%20%27Virtual%20Machines%27&top=5") == 400
    assert status("/api/retail/prices?$filter=serviceName%20eq%20%27Virtual%20Machines%27") == 200
    assert status("/v1/services/6F81-5844-456A/skus?currencyCode=USD") == 403  # no key
    assert status("/v1/services/6F81-5844-456A/skus?nosuch=1", headers={"X-Goog-Api-Key": API_KEY}) == 400
    signed = {"Authorization": "AWS4-HMAC-SHA256 Credential=AKID/20250601/us-east-1/ec2/aws4_request"}
    form = b"Action=DescribeSpotPriceHistory&Version=2016-11-15&InstanceType.1=t3.micro"
    assert status("/", form, signed) == 200
    assert status("/", form + b"&NoSuchParameter=1", signed) == 400
    assert status("/", form.replace(b"2016-11-15", b"2014-01-01"), signed) == 400
    assert status("/", form) == 400  # unsigned


def test_refresh_without_names_does_every_cloud_and_one_failure_spares_the_others(
    server: PriceServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prices", "refresh"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["aws", "gcp", "az"]
    before = {cloud: catalogue.user_path(cloud).read_bytes() for cloud in ("aws", "gcp")}
    server.fail_on, server._seen = "/skus", 0  # GCP's second page fails
    server.truth["aws"]["us-east-1"]["t3.micro"] = (0.5, 0.2)
    assert main(["prices", "refresh"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "gcp: " in captured.err and "HTTP 500" in captured.err
    assert catalogue.user_path("gcp").read_bytes() == before["gcp"]
    assert catalogue.user_path("aws").read_bytes() != before["aws"]  # refreshed despite gcp's failure
    assert catalogue.load("aws").offer("us-east-1", "t3.micro").on_demand == 0.5  # type: ignore[union-attr]
