"""TaskSpec: parse and validate every argument of `iterative_task`; catalogues; identifier."""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import importlib.util
import os
import random
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from .prices.constraints import is_query

CLOUDS = ("local", "aws", "gcp", "az", "k8s")
GENERIC_MACHINES = (
    "s", "m", "l", "xl",
    "m+t4", "m+k80", "l+k80", "xl+k80", "m+v100", "l+v100", "xl+v100",
)  # fmt: skip
GENERIC_REGIONS = ("us-west", "us-east", "eu-north", "eu-west")
GENERIC_IMAGES = ("ubuntu", "nvidia")
DEFAULT_TIMEOUT = 86400

# Generic machine types per cloud. K80 machines (p2, NC v1, nvidia-tesla-k80) are retired
# everywhere: `*+k80` maps to the nearest current T4 machine with at least the same CPU and RAM.
MACHINES: dict[str, dict[str, str]] = {
    "aws": {
        "s": "t3.micro", "m": "m5.2xlarge", "l": "m5.8xlarge", "xl": "m5.16xlarge",
        "m+t4": "g4dn.xlarge", "m+k80": "g4dn.4xlarge", "l+k80": "g4dn.12xlarge",
        "xl+k80": "g4dn.metal", "m+v100": "p3.2xlarge", "l+v100": "p3.8xlarge",
        "xl+v100": "p3.16xlarge",
    },
    "gcp": {
        "s": "e2-small", "m": "e2-custom-8-32768", "l": "e2-custom-32-131072",
        "xl": "n2-custom-64-262144",
        "m+t4": "n1-standard-4+nvidia-tesla-t4*1",
        "m+k80": "n1-highmem-8+nvidia-tesla-t4*1",
        "l+k80": "n1-highmem-16+nvidia-tesla-t4*2",
        "xl+k80": "n1-highmem-32+nvidia-tesla-t4*4",
        "m+v100": "n1-highmem-8+nvidia-tesla-v100*1",
        "l+v100": "n1-highmem-16+nvidia-tesla-v100*2",
        "xl+v100": "n1-highmem-32+nvidia-tesla-v100*4",
    },
    "az": {
        "s": "Standard_B1s", "m": "Standard_F8s_v2", "l": "Standard_F32s_v2",
        "xl": "Standard_F64s_v2", "m+t4": "Standard_NC4as_T4_v3",
        "m+k80": "Standard_NC8as_T4_v3", "l+k80": "Standard_NC64as_T4_v3",
        "xl+k80": "Standard_NC64as_T4_v3", "m+v100": "Standard_NC24ads_A100_v4",
        "l+v100": "Standard_NC48ads_A100_v4", "xl+v100": "Standard_NC96ads_A100_v4",
    },
    "k8s": {
        "s": "1-1000", "m": "8-16000", "l": "32-64000", "xl": "64-128000",
        "m+t4": "4-16000+nvidia-tesla-t4*1", "m+k80": "4-53000+nvidia-tesla-t4*1",
        "l+k80": "12-112000+nvidia-tesla-t4*2", "xl+k80": "24-212000+nvidia-tesla-t4*4",
        "m+v100": "4-61000+nvidia-tesla-v100*1", "l+v100": "12-224000+nvidia-tesla-v100*2",
        "xl+v100": "24-448000+nvidia-tesla-v100*4",
    },
    "local": {m: m for m in GENERIC_MACHINES},
}  # fmt: skip

REGIONS: dict[str, dict[str, str]] = {
    "aws": {"us-west": "us-west-1", "us-east": "us-east-1", "eu-north": "eu-north-1",
            "eu-west": "eu-west-1"},
    "gcp": {"us-west": "us-west1-b", "us-east": "us-east1-c", "eu-north": "europe-north1-a",
            "eu-west": "europe-west1-d"},
    "az": {"us-west": "westus2", "us-east": "eastus", "eu-north": "northeurope",
           "eu-west": "westeurope"},
    # Kubernetes regions are node selectors; a generic region selects any node.
    "k8s": {r: "" for r in GENERIC_REGIONS},
    "local": {r: r for r in GENERIC_REGIONS},
}  # fmt: skip

IMAGES: dict[str, dict[str, str]] = {
    "aws": {
        "ubuntu": "ubuntu@099720109477:x86_64:*ubuntu/images/hvm-ssd*/ubuntu-*-24.04-amd64-server-*",
        "nvidia": "ubuntu@898082745236:x86_64:Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)*",
    },
    "gcp": {
        "ubuntu": "ubuntu@ubuntu-os-cloud/ubuntu-2404-lts-amd64",
        "nvidia": "ubuntu@deeplearning-platform-release/common-cu124-ubuntu-2204-py310",
    },
    "az": {
        "ubuntu": "ubuntu@Canonical:ubuntu-24_04-lts:server:latest",
        "nvidia": "ubuntu@microsoft-dsvm:ubuntu-hpc:2204:latest",
    },
    "k8s": {"ubuntu": "ubuntu:24.04", "nvidia": "nvidia/cuda:12.4.1-runtime-ubuntu22.04"},
    "local": {"ubuntu": "ubuntu", "nvidia": "nvidia"},
}

# Native value syntax per cloud, with the example shown in error messages.
_ACCEL = r"(\+[a-z0-9][a-z0-9-]*\*[1-9]\d*)?"
NATIVE_MACHINE: dict[str, tuple[str, str]] = {
    "aws": (r"[a-z][a-z0-9-]*\.[a-z0-9-]+", "an EC2 instance type such as g4dn.xlarge"),
    "gcp": (r"[a-z][a-z0-9-]*" + _ACCEL, "a machine type such as n2-custom-8-32768[+nvidia-tesla-t4*1]"),
    "az": (r"(Standard|Basic)_[A-Za-z0-9_-]+", "a VM size such as Standard_F8s_v2"),
    "k8s": (r"\d+(\.\d+)?-\d+" + _ACCEL, "{cpu}-{memory}[+{accelerator}*{count}] such as 64-256000+nvidia-tesla-t4*1"),
}  # fmt: skip
NATIVE_REGION: dict[str, tuple[str, str]] = {
    "aws": (r"[a-z]{2}(-gov)?-[a-z]+-\d", "an AWS region such as us-east-1"),
    "gcp": (r"[a-z]+-[a-z]+\d+-[a-z]", "a GCP zone such as us-east1-a"),
    "az": (r"[a-z][a-z0-9]+", "an Azure region such as eastus"),
    "k8s": (r"[A-Za-z0-9./_-]+=[A-Za-z0-9._-]*(,[A-Za-z0-9./_-]+=[A-Za-z0-9._-]*)*",
            "node labels key=value[,key=value...]"),
}  # fmt: skip
NATIVE_IMAGE: dict[str, tuple[str, str]] = {
    "aws": (r"[a-z_][a-z0-9_-]*@[0-9*]+:[a-z0-9_*]+:.+", "{user}@{owner}:{architecture}:{name}"),
    "gcp": (r"[a-z_][a-z0-9_-]*@[a-z0-9-]+/[a-z0-9-]+", "{user}@{project}/{family}"),
    "az": (r"[a-z_][a-z0-9_-]*@[^:@\s]+:[^:@\s]+:[^:@\s]+:[^:@\s]+",
           "{user}@{publisher}:{offer}:{sku}:{version}"),
    "k8s": (r"[a-z0-9]+([._/:@-][A-Za-z0-9_.-]+)*", "a container image such as ubuntu:24.04"),
}  # fmt: skip
NATIVE_PERMISSION_SET: dict[str, tuple[str, str]] = {
    "aws": (r"arn:aws[a-z-]*:iam::?\d{12}:instance-profile/[\w+=,.@/-]+",
            "an instance profile ARN arn:aws:iam::123456789012:instance-profile/NAME"),
    "gcp": (r"[a-z0-9][a-z0-9._-]*@[a-z0-9][a-z0-9._-]*\.gserviceaccount\.com(,scopes=[\w,.:/-]+)?",
            "a service account email[,scopes=...]"),
    "az": (r"/subscriptions/[^,\s]+/userAssignedIdentities/[^,\s]+(,/subscriptions/[^,\s]+/userAssignedIdentities/[^,\s]+)*",
           "comma-separated user-assigned identity resource ids"),
    "k8s": (r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", "a service account name in the namespace"),
}  # fmt: skip
NATIVE_CONTAINER: dict[str, tuple[str, str]] = {
    "local": (r"\S.*", "a local directory or an fsspec URL"),
    "aws": (r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?", "an S3 bucket name[/prefix]"),
    "gcp": (r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9](/\S*)?", "a GCS bucket name[/prefix]"),
    "az": (r"[a-z0-9]{3,24}/[a-z0-9](-?[a-z0-9])+(/\S*)?", "{storage account}/{container}[/prefix]"),
    "k8s": (r"(s3|gs|az)://[a-z0-9][a-z0-9._-]*[a-z0-9](/\S*)?|[a-z0-9]([a-z0-9.-]*[a-z0-9])?",
            "an object-store URL s3://, gs:// or az://{bucket}[/prefix], or a PersistentVolumeClaim name"),
}  # fmt: skip

MAX_PARALLELISM = 1000  # a ceiling against typos (parallelism=10000000); raise it here if needed
MAX_DISK_GB = 65536  # the largest disk any supported cloud attaches (64 TiB)
MAX_NAME_BYTES = 255  # the usual file name limit; a name is never used as a path, but stays short


@dataclass(frozen=True)
class Argument:
    """One `key=value` argument: its default (as written) and what is accepted, in words.

    The validator's messages and every help text (`tpi run --help`, `%tpi?`) read this table.
    """

    name: str
    default: str  # the value assumed when the key is absent ("" = none)
    shown: str  # the default as help shows it
    accepted: str


ARGUMENT_TABLE = (
    Argument("cloud", "local", "local", "local, aws, gcp, az, k8s"),
    Argument("machine", "m", "m", "generic " + " ".join(GENERIC_MACHINES) + ", or a native type: "
             "AWS g4dn.xlarge, GCP n2-custom-8-32768[+nvidia-tesla-t4*1], Azure Standard_F8s_v2, "
             "Kubernetes {cpu}-{memory}[+{accelerator}*{count}], or constraints such as "
             "cpu>=8,memory>=32,gpu=t4 (the cheapest type that meets them; see tpi prices)"),
    Argument("image", "ubuntu", "ubuntu", "ubuntu, nvidia, or native: AWS {user}@{owner}:{arch}:{name}, "
             "GCP {user}@{project}/{family}, Azure {user}@{publisher}:{offer}:{sku}:{version}, "
             "Kubernetes any image"),
    Argument("region", "us-west", "us-west", " ".join(GENERIC_REGIONS) + ", or native: AWS region, "
             "GCP zone, Azure region, Kubernetes node labels k=v,k2=v2"),
    Argument("disk_size", "-1", "-1", f"-1 (automatic) or a size in GB from 1 to {MAX_DISK_GB}"),
    Argument("spot", "-1", "-1", "-1 (on-demand), 0 (spot at automatic price) or a maximum price "
             "in USD per hour > 0, written with ASCII digits and an optional decimal point"),
    Argument("parallelism", "1", "1", f"a whole number of machines from 1 to {MAX_PARALLELISM}"),
    Argument("timeout", str(DEFAULT_TIMEOUT), str(DEFAULT_TIMEOUT),
             "a whole number of seconds >= 1, an absolute deadline from creation"),
    Argument("environment", "", "none", "environment=NAME=value, NAME= to import the local value, "
             "or GLOB= (AWS_*=) to import every match; repeat the key for more"),
    Argument("tags", "", "none", "tags=KEY=value, repeat the key; keys of 1-63 letters, digits, "
             "space and _.:/=+@-, not starting with tpi-"),
    Argument("name", "", "a random readable name", f"text of 1-{MAX_NAME_BYTES} bytes (UTF-8) with "
             "at least one of a-z, A-Z, 0-9; no / or \\ and no control characters"),
    Argument("permission_set", "", "none", "AWS instance profile ARN, GCP service account"
             "[,scopes=...], Azure identity ids, Kubernetes service account"),
    Argument("workdir", "", "none (nothing uploaded)", "an existing directory, relative to the "
             "notebook's (or the shell's) directory"),
    Argument("output", "", "none (nothing downloaded)", "a path inside workdir, such as results"),
    Argument("exclude", "", "none", "comma-separated gitignore patterns or TPI '+ rule'/'- rule' "
             "lines; repeat the key for more"),
    Argument("container", "", "none", "an existing bucket or container to use instead of a new "
             "one; for local, a directory or an fsspec URL other processes can reach"),
    Argument("launch", "script", "script", "script (every rank runs the script) or mpi (rank 0 runs "
             "it, to call mpirun across the task's machines; the others serve SSH)"),
    Argument("placement", "none", "none", "none, or cluster (machines of a multi-node task packed close: "
             "AWS cluster placement group)"),
)  # fmt: skip
ARGUMENT = {argument.name: argument for argument in ARGUMENT_TABLE}
ARGUMENTS = tuple(ARGUMENT)
# Optional dependencies (pyproject extras) a cloud or a storage URL needs, by import name.
EXTRA_MODULES = {"aws": ("boto3", "s3fs"), "s3": ("s3fs",), "gcs": ("gcsfs",), "azure": ("adlfs",)}
PROTOCOL_EXTRA = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure",
                  "abfss": "azure"}  # fmt: skip
LAUNCHES = ("script", "mpi")
PLACEMENTS = ("none", "cluster")
LIST_ARGUMENTS = ("exclude",)
MAP_ARGUMENTS = ("environment", "tags")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ENV_GLOB = re.compile(r"[A-Za-z0-9_*?]+")
# Set by the product on every machine; a user cannot override them.
RESERVED_ENV = ("TPI_TASK", "TPI_TASK_ID", "TPI_REGION", "TPI_MACHINE", "TPI_RANK", "TPI_WORLD_SIZE")


class SpecError(ValueError):
    """A bad argument. Its message is one line naming the key and what is accepted."""


def _one_of(values: Iterable[str]) -> str:
    return ", ".join(values)


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


# ---------------------------------------------------------------- identifier


def _base36_hash(text: str) -> str:
    number = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest(), "big")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = []
    while number:
        number, rest = divmod(number, 36)
        out.append(digits[rest])
    return "".join(reversed(out))[:8]


def normalize_name(name: str) -> str:
    text = re.sub(r"[^a-z0-9]+", "-", name.lower())[:28]
    return text.removeprefix("-").removesuffix("-")


_ID = re.compile(r"tpi-([a-z0-9-]*)-([0-9a-z]{8})-([0-9a-z]{8})")


def is_task_id(text: str) -> bool:
    match = _ID.fullmatch(text)
    return bool(match) and _base36_hash(match[1] + match[2]) == match[3]  # type: ignore[index]


def task_id(name: str) -> str:
    """`tpi-{n}-{salt}-{check}` as the reference defines it; a valid id is kept."""
    if is_task_id(name):
        return name
    normalized = normalize_name(name)
    salt = _base36_hash(name)
    return f"tpi-{normalized}-{salt}-{_base36_hash(normalized + salt)}"


def short_id(identifier: str) -> str:
    """`{salt}{check}`, for clouds that limit name length."""
    parts = identifier.rsplit("-", 2)
    return parts[-2] + parts[-1]


_ADJECTIVES = [
    "amber",
    "brisk",
    "calm",
    "deft",
    "eager",
    "fair",
    "gentle",
    "hardy",
    "keen",
    "lucid",
    "merry",
    "nimble",
    "proud",
    "quiet",
    "rapid",
    "sunny",
    "tidy",
    "vivid",
    "witty",
    "zesty",
]
_NOUNS = [
    "badger",
    "crane",
    "dingo",
    "egret",
    "falcon",
    "gecko",
    "heron",
    "ibex",
    "jackal",
    "koala",
    "lemur",
    "marten",
    "newt",
    "otter",
    "puffin",
    "quail",
    "raven",
    "stoat",
    "tapir",
    "walrus",
]


def random_name() -> str:
    rng = random.SystemRandom()
    return f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}-{rng.randrange(100, 1000)}"


# ---------------------------------------------------------------- parsing key=value tokens


def parse_assignments(tokens: Iterable[str]) -> dict[str, Any]:
    """Turn `key=value` tokens into raw arguments.

    Lists (`exclude`) are comma-separated and the key may repeat; maps (`environment`,
    `tags`) take one `NAME=value` per occurrence of the key, so values may hold commas.
    """
    raw: dict[str, Any] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise SpecError(f"malformed argument {token!r}: expected key=value")
        if key not in ARGUMENTS:
            raise SpecError(
                f"unknown argument {key!r}{_did_you_mean(key, ARGUMENTS)}; accepted: {_one_of(ARGUMENTS)}"
            )
        if key in LIST_ARGUMENTS:
            # Empty parts are kept so that validation rejects them instead of dropping them.
            raw.setdefault(key, []).extend(part.strip() for part in value.split(","))
        elif key in MAP_ARGUMENTS:
            entry, eq, entry_value = value.partition("=")
            if not entry:
                raise SpecError(f"{key}: expected {key}=NAME=value, got {token!r}")
            if not eq and key == "tags":
                raise SpecError(f"tags: expected tags=KEY=value, got {token!r}")
            mapping = raw.setdefault(key, {})
            if entry in mapping:
                raise SpecError(f"{key}: {entry!r} is given twice; accepted: each name once")
            mapping[entry] = entry_value
        else:
            if key in raw:
                raise SpecError(f"{key}: given twice; accepted: {key}= at most once")
            raw[key] = value
    return raw


# ---------------------------------------------------------------- the spec


@dataclass(frozen=True)
class TaskSpec:
    cloud: str = "local"
    machine: str = "m"
    image: str = "ubuntu"
    region: str = "us-west"
    disk_size: int = -1
    spot: float = -1.0
    parallelism: int = 1
    timeout: int = DEFAULT_TIMEOUT
    environment: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    name: str = ""
    permission_set: str = ""
    workdir: str = ""
    output: str = ""
    exclude: tuple[str, ...] = ()
    container: str = ""
    launch: str = "script"
    placement: str = "none"
    # Not an argument: the constraints that picked `machine` (machine=cpu>=8,...), if any.
    machine_query: str = field(default="", metadata={"derived": True})

    @classmethod
    def from_args(cls, raw: Mapping[str, Any], *, cwd: str | os.PathLike[str] | None = None) -> TaskSpec:
        """Validate raw arguments (strings, lists, maps); relative workdirs resolve against cwd."""
        unknown = [key for key in raw if key not in ARGUMENTS]
        if unknown:
            raise SpecError(f"unknown argument {unknown[0]!r}; accepted: {_one_of(ARGUMENTS)}")

        def get(key: str) -> Any:
            return raw.get(key, ARGUMENT[key].default)

        cloud = _choice("cloud", str(get("cloud")), CLOUDS)
        spec = cls(
            cloud=cloud,
            machine=_machine(str(get("machine")), cloud),
            image=_catalogued("image", str(get("image")), cloud, IMAGES, NATIVE_IMAGE),
            region=_catalogued("region", str(get("region")), cloud, REGIONS, NATIVE_REGION),
            disk_size=_integer("disk_size", get("disk_size"), minimum=-1, maximum=MAX_DISK_GB,
                               forbid_zero=True),
            spot=_spot(get("spot")),
            parallelism=_integer("parallelism", get("parallelism"), minimum=1, maximum=MAX_PARALLELISM),
            timeout=_integer("timeout", get("timeout"), minimum=1),
            environment=_environment(raw.get("environment", {})),
            tags=_tags(raw.get("tags", {})),
            name=check_name(str(get("name")), allow_empty=True),
            permission_set=_native_only("permission_set", str(get("permission_set")), cloud,
                                        NATIVE_PERMISSION_SET),
            container=_container(str(get("container")), cloud),
            exclude=_exclude(raw.get("exclude", ())),
            launch=_choice("launch", str(get("launch")), LAUNCHES),
            placement=_choice("placement", str(get("placement")), PLACEMENTS),
        )  # fmt: skip
        _check_extra(cloud)
        if is_query(spec.machine):  # constraints: the cheapest type that meets them (prices/)
            from .prices.choose import resolve

            spec = resolve(spec)
        workdir, output = _storage(str(get("workdir")), str(get("output")), cwd)
        return replace(spec, workdir=workdir, output=output)

    @classmethod
    def from_public(cls, data: Mapping[str, Any]) -> TaskSpec:
        """Rebuild a spec stored by `public_dict` (already validated); environment keeps names only."""
        known = {key: value for key, value in data.items() if key in cls.__dataclass_fields__}
        known["environment"] = dict.fromkeys(data.get("environment") or [], "")
        known["exclude"] = tuple(data.get("exclude") or ())
        known["tags"] = dict(data.get("tags") or {})
        return cls(**known)

    def with_name(self, name: str) -> TaskSpec:
        return replace(self, name=name)

    @property
    def id(self) -> str:
        if not self.name:
            raise ValueError("a spec without a name has no id; use with_name(random_name())")
        return task_id(self.name)

    @property
    def native_machine(self) -> str:
        return MACHINES[self.cloud].get(self.machine, self.machine)

    @property
    def native_region(self) -> str:
        return REGIONS[self.cloud].get(self.region, self.region)

    @property
    def native_image(self) -> str:
        return IMAGES[self.cloud].get(self.image, self.image)

    def public_dict(self) -> dict[str, Any]:
        """The spec without secret values: environment keeps only its names."""
        data = asdict(self)
        data["environment"] = sorted(self.environment)
        data["exclude"] = list(self.exclude)
        if not self.machine_query:  # kept only where constraints chose the machine
            del data["machine_query"]
        return data


def _choice(key: str, value: str, accepted: Iterable[str]) -> str:
    accepted = tuple(accepted)
    if value not in accepted:
        raise SpecError(
            f"{key}: {value!r} is not accepted{_did_you_mean(value, accepted)}; accepted: {_one_of(accepted)}"
        )
    return value


def _catalogued(
    key: str, value: str, cloud: str, catalogue: dict[str, dict[str, str]],
    native: dict[str, tuple[str, str]],
) -> str:  # fmt: skip
    if value in catalogue[cloud]:
        return value
    generic = _one_of(catalogue[cloud])
    if cloud in native:
        pattern, description = native[cloud]
        if re.fullmatch(pattern, value, re.ASCII):
            return value
        raise SpecError(
            f"{key}: {value!r} is not valid for cloud={cloud}; accepted: {generic}, or {description}"
        )
    raise SpecError(f"{key}: {value!r} is not valid for cloud={cloud}; accepted: {generic}")


def _machine(value: str, cloud: str) -> str:
    """A generic or native type; constraints are checked and resolved by prices/ after the spec."""
    return value if is_query(value) else _catalogued("machine", value, cloud, MACHINES, NATIVE_MACHINE)


def _native_only(key: str, value: str, cloud: str, native: dict[str, tuple[str, str]]) -> str:
    if not value:
        return value
    if cloud not in native:
        raise SpecError(f"{key}: not supported for cloud={cloud}; accepted: empty")
    pattern, description = native[cloud]
    if not re.fullmatch(pattern, value, re.ASCII):
        raise SpecError(f"{key}: {value!r} is not valid for cloud={cloud}; accepted: {description}")
    return value


def _integer(key: str, value: Any, *, minimum: int, maximum: int | None = None,
             forbid_zero: bool = False) -> int:  # fmt: skip
    accepted = ARGUMENT[key].accepted
    text = str(value).strip()
    # ASCII digits only: int() also takes "1_0" and other scripts' digits, which nobody means.
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise SpecError(f"{key}: {value!r} is not a whole number; accepted: {accepted}")
    number = int(text)
    if number < minimum or (maximum is not None and number > maximum) or (forbid_zero and number == 0):
        raise SpecError(f"{key}: {number} is out of range; accepted: {accepted}")
    return number


def _spot(value: Any) -> float:
    accepted = ARGUMENT["spot"].accepted
    text = str(value).strip()
    # float() also takes "1_0", "inf", "1e3" and other scripts' digits: only plain decimals here.
    if not re.fullmatch(r"-1(\.0*)?|([0-9]+(\.[0-9]*)?|\.[0-9]+)", text):
        problem = "is out of range" if re.fullmatch(r"-[0-9.]+", text) else "is not a number"
        raise SpecError(f"spot: {value!r} {problem}; accepted: {accepted}")
    return float(text)


def _environment(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise SpecError("environment: expected a map; accepted: environment=NAME=value (repeat the key)")
    result: dict[str, str] = {}
    for name, entry in value.items():
        name, entry = str(name), str(entry)
        if "*" in name or "?" in name:
            if not ENV_GLOB.fullmatch(name):
                raise SpecError(
                    f"environment: {name!r} is not a variable name or glob; accepted: letters, digits, _, * and ?"
                )
            if entry:
                raise SpecError(
                    f"environment: glob {name!r} must have an empty value to import matching variables; accepted: {name}="
                )
        elif not ENV_NAME.fullmatch(name):
            raise SpecError(
                f"environment: {name!r} is not a variable name; accepted: letters, digits and _, not starting with a digit"
            )
        if name in RESERVED_ENV:
            raise SpecError(f"environment: {name} is set by tpi-jupyter; accepted: any other name")
        result[name] = entry
    return result


def _tags(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise SpecError("tags: expected a map; accepted: tags=KEY=value (repeat the key)")
    result = {}
    for key, entry in value.items():
        key, entry = str(key), str(entry)
        if not re.fullmatch(r"[A-Za-z0-9_.:/=+@ -]{1,63}", key) or key.lower().startswith("tpi-"):
            raise SpecError(
                f"tags: {key!r} is not a valid tag key; accepted: 1-63 of letters, digits, space and _.:/=+@-, not starting with tpi- in any case"
            )
        if len(entry) > 255 or "\n" in entry:
            raise SpecError(
                f"tags: the value of {key!r} is too long or multi-line; accepted: one line of at most 255 characters"
            )
        result[key] = entry
    return result


def check_name(value: str, *, allow_empty: bool = False, key: str = "name") -> str:
    """A task name or id as typed: never a path, never a control character, at most 255 bytes."""
    accepted = ARGUMENT["name"].accepted
    if not value:
        if allow_empty:
            return value
        raise SpecError(f"{key}: empty; accepted: {accepted}")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise SpecError(
            f"{key}: {value[:40]!r}... is longer than {MAX_NAME_BYTES} bytes; accepted: {accepted}"
        )
    bad = next((char for char in value if char in "/\\" or unicodedata.category(char) in ("Cc", "Cs")), None)
    if bad is not None:
        raise SpecError(f"{key}: {value!r} contains {bad!r}; accepted: {accepted}")
    if not normalize_name(value):
        raise SpecError(f"{key}: {value!r} has no letter or digit; accepted: {accepted}")
    return value


def _container(value: str, cloud: str) -> str:
    value = _native_only("container", value, cloud, NATIVE_CONTAINER)
    protocol = value.partition("://")[0] if "://" in value else ""
    if cloud == "local" and protocol == "memory":
        raise SpecError(
            f"container: {value!r} lives in this process only, and local machines are other processes; "
            f"accepted: {ARGUMENT['container'].accepted}"
        )
    if protocol in PROTOCOL_EXTRA:
        _check_extra(PROTOCOL_EXTRA[protocol], key="container", value=value)
    return value


def _check_extra(extra: str, *, key: str = "cloud", value: str = "") -> None:
    """A cloud or storage URL whose optional dependencies are missing: say which extra to install."""
    missing = [module for module in EXTRA_MODULES.get(extra, ()) if not _importable(module)]
    if missing:
        value = value or extra
        raise SpecError(
            f"{key}: {value!r} needs {', '.join(missing)}, which is not installed; "
            f"accepted: {key}={value} after pip install 'tpi-jupyter[{extra}]'"
        )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules holds None (import blocked)
        return False


def _exclude(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else list(value)
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise SpecError(
                "exclude: empty pattern; accepted: gitignore patterns or TPI '+ rule'/'- rule' lines"
            )
        if "\n" in item:
            raise SpecError(f"exclude: {item!r} spans lines; accepted: one pattern per entry")
    return tuple(items)


def _storage(workdir: str, output: str, cwd: str | os.PathLike[str] | None) -> tuple[str, str]:
    if not workdir:
        if output:
            raise SpecError(
                "output: needs a workdir (output is relative to workdir); accepted: set workdir=DIR"
            )
        return "", ""
    base = Path(cwd) if cwd is not None else Path.cwd()
    path = (base / os.path.expanduser(workdir)).resolve()
    if not path.is_dir():
        raise SpecError(
            f"workdir: {workdir!r} is not an existing directory; accepted: a directory relative to {base}"
        )
    if output:
        pure = PurePosixPath(output.replace(os.sep, "/"))
        if pure.is_absolute() or ".." in pure.parts:
            raise SpecError(
                f"output: {output!r} is outside the workdir; accepted: a path inside workdir, such as results"
            )
        output = str(pure)
    return str(path), output


def resolve_environment(requested: Mapping[str, str], local: Mapping[str, str]) -> dict[str, str]:
    """Values for the machines: `NAME=` imports the local value, a glob imports every match.

    Explicit entries win over globs. Importing a variable that is not set here is an error: a
    silently missing credential would only show up on the machine, as a failed run.
    """
    values: dict[str, str] = {}
    for pattern in (name for name in requested if "*" in name or "?" in name):
        values.update(
            (name, value)
            for name, value in local.items()
            if fnmatch.fnmatchcase(name, pattern) and name not in RESERVED_ENV
        )
    for name, value in requested.items():
        if "*" in name or "?" in name:
            continue
        if value:
            values[name] = value
        elif name in local:
            values[name] = local[name]
        else:
            raise SpecError(
                f"environment: {name}= imports {name}, which is not set here; "
                f"accepted: set {name} before launching, or give a value ({name}=value)"
            )
    return values
