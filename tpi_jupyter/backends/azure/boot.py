"""The Azure custom data: the shared boot script (kit/boot.py) with Azure's fragment.

Azure contributes the managed identity's client id (not a secret: it names the identity the
machine may use), where its scale set is, and a helper that reads and writes the task's
container with that identity, asks the metadata service for the instance's name, and deletes
its own instance. Storage is reached with Entra ID tokens only: no account key, no SAS.
"""

from __future__ import annotations

from ..kit import boot_failures
from ..kit.boot import BootPlan, CloudBoot, script
from .common import AzState

HELPER = """
import json
import os
import urllib.request

from azure.identity import ManagedIdentityCredential
from azure.storage.blob import ContainerClient

ACCOUNT = @ACCOUNT@
CONTAINER = @CONTAINER@
PREFIX = @PREFIX@
IMDS = os.environ.get("TPI_IMDS_URL") or "http://169.254.169.254"
CREDENTIAL = ManagedIdentityCredential(client_id=os.environ["AZURE_CLIENT_ID"])


def _container():
    url = f"https://{ACCOUNT}.blob.core.windows.net"
    return ContainerClient(url, CONTAINER, credential=CREDENTIAL)


def machine_id():
    ask = urllib.request.Request(IMDS + "/metadata/instance/compute?api-version=2021-02-01", headers={"Metadata": "true"})
    with urllib.request.urlopen(ask, timeout=5) as response:
        return json.loads(response.read().decode())["name"]


def _key(key):
    return PREFIX + "/" + key


def read(key):
    return _container().download_blob(_key(key)).readall()


def write(key, data):
    _container().upload_blob(_key(key), data, overwrite=True)


def keys(prefix):
    return [item.name[len(_key("")):] for item in _container().list_blobs(name_starts_with=_key(prefix))]


def release(name):
    sub, group, scale_set = os.environ["TPI_AZ_SUBSCRIPTION"], os.environ["TPI_AZ_GROUP"], os.environ["TPI_AZ_SCALE_SET"]
    token = CREDENTIAL.get_token("https://management.azure.com/.default").token
    url = (f"https://management.azure.com/subscriptions/{sub}/resourceGroups/{group}/providers/"
           f"Microsoft.Compute/virtualMachineScaleSets/{scale_set}/virtualMachines/{name.rsplit('_', 1)[-1]}"
           "?api-version=2024-07-01")
    ask = urllib.request.Request(url, method="DELETE", headers={"Authorization": "Bearer " + token})
    urllib.request.urlopen(ask, timeout=30).read()
"""


def cloud_boot(state: AzState, versions: dict[str, str]) -> CloudBoot:
    helper = (
        HELPER.replace("@ACCOUNT@", repr(state.account))
        .replace("@CONTAINER@", repr(state.container))
        .replace("@PREFIX@", repr(state.prefix.strip("/")))
    )
    return CloudBoot(
        name="az",
        environment={
            "AZURE_CLIENT_ID": state.identity_client_id,
            "AZURE_STORAGE_ANON": "false",
            "TPI_AZ_SUBSCRIPTION": state.subscription,
            "TPI_AZ_GROUP": state.group,
            "TPI_AZ_SCALE_SET": state.name,
        },
        bootstrap=tuple(f"{name}=={version}" for name, version in sorted(versions.items())),
        helper=helper,
    )


def custom_data(task_id: str, remote: str, state: AzState, versions: dict[str, str], parallelism: int) -> str:
    plan = BootPlan(
        task_id=task_id, remote=remote, deadline=state.deadline, wheel_key=state.wheel_key,
        lock_key=state.lock_key, failed_boot_limit=boot_failures.limit(parallelism),
    )  # fmt: skip
    return script(plan, cloud_boot(state, versions))


def bootstrap_versions() -> dict[str, str]:
    """The helper's requirements at the client's versions."""
    from importlib.metadata import version

    return {name: version(name) for name in ("azure-identity", "azure-storage-blob")}
