"""The AWS machine hooks the agent calls on an Auto Scaling Group instance (`--release aws`).

`identity()` is the instance id (IMDSv2, or `TPI_INSTANCE_ID` when set: tests playing a machine).
`release(instance_id)` removes this one instance from its group and lowers the group's desired
capacity by one, so the group does not replace it and no other rank is touched.
`notice()` is EC2's word that it takes the instance: a spot interruption notice
(`spot/instance-action`) or a rebalance recommendation; None while there is none (404).
`TPI_IMDS_URL` moves the metadata service (tests run a stand-in on 127.0.0.1);
`AWS_EC2_METADATA_DISABLED=true` without it turns the notice watch off.

Imports only the standard library at module level (boto3 comes with the `aws` extra that the
machine's boot script installs). No IPython or Jupyter imports: this runs on bare machines.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

IMDS = "http://169.254.169.254/latest"
IMDS_TIMEOUT = 2.0


def _base() -> str:
    return os.environ.get("TPI_IMDS_URL") or IMDS


def _imds(path: str) -> str:
    token_request = urllib.request.Request(
        f"{_base()}/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"}
    )
    with urllib.request.urlopen(token_request, timeout=IMDS_TIMEOUT) as response:
        token = response.read().decode()
    request = urllib.request.Request(
        f"{_base()}/meta-data/{path}", headers={"X-aws-ec2-metadata-token": token}
    )
    with urllib.request.urlopen(request, timeout=IMDS_TIMEOUT) as response:
        return str(response.read().decode())


def _optional(path: str) -> str | None:
    try:
        return _imds(path)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def notice() -> str | None:
    if (
        not os.environ.get("TPI_IMDS_URL")
        and os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true"
    ):
        return None  # boto3's switch: no metadata service here (tests without a stand-in)
    action = _optional("spot/instance-action")
    if action:
        return f"spot interruption notice: {action}"
    rebalance = _optional("events/recommendations/rebalance")
    return f"rebalance recommendation: {rebalance}" if rebalance else None


def identity() -> str:
    return os.environ.get("TPI_INSTANCE_ID") or _imds("instance-id")


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or _imds("placement/region")


def release(instance_id: str) -> None:
    import boto3

    client = boto3.client("autoscaling", region_name=_region())
    client.terminate_instance_in_auto_scaling_group(
        InstanceId=instance_id, ShouldDecrementDesiredCapacity=True
    )
