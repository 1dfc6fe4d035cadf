"""HTTP for the price sources (stdlib only), their endpoints, and the one-line refresh error.

Endpoints are overridable (tests point them at contract servers):
TPI_PRICES_AWS_URL (price list files), TPI_PRICES_AWS_EC2_URL (DescribeSpotPriceHistory),
TPI_PRICES_AZURE_URL (Retail Prices API), TPI_PRICES_GCP_URL (Cloud Billing Catalog API).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import IO, Any

ENDPOINTS = {
    "TPI_PRICES_AWS_URL": "https://pricing.us-east-1.amazonaws.com",
    "TPI_PRICES_AWS_EC2_URL": "",  # "": boto3's own endpoint for each region
    "TPI_PRICES_AZURE_URL": "https://prices.azure.com/api/retail/prices",
    "TPI_PRICES_GCP_URL": "https://cloudbilling.googleapis.com",
}
TIMEOUT = 60.0


class RefreshError(Exception):
    """A refresh that could not finish; one line, no URL query or credential in it."""


def endpoint(name: str) -> str:
    return os.environ.get(name) or ENDPOINTS[name]


def where(url: str) -> str:
    """The URL without its query (a page token or filter is noise; a key would be a secret)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def open_url(url: str, headers: dict[str, str] | None = None) -> IO[bytes]:
    request = urllib.request.Request(url, headers={"User-Agent": "tpi-jupyter-prices", **(headers or {})})
    try:
        response: IO[bytes] = urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as error:
        raise RefreshError(
            f"{where(url)} answered HTTP {error.code}; the previous catalogue is kept"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise RefreshError(
            f"{where(url)} could not be reached ({reason}); the previous catalogue is kept"
        ) from None
    return response


def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    with open_url(url, headers) as response:
        try:
            return json.load(response)
        except (ValueError, OSError) as error:
            raise RefreshError(
                f"{where(url)} sent no valid JSON ({error}); the previous catalogue is kept"
            ) from None
