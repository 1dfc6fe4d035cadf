"""Tests for tpi_jupyter.spec: identifier, defaults, every argument per cloud, bad input."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import string
from pathlib import Path

import pytest

from tpi_jupyter import spec as spec_module
from tpi_jupyter.spec import (
    GENERIC_IMAGES,
    GENERIC_MACHINES,
    GENERIC_REGIONS,
    IMAGES,
    MACHINES,
    REGIONS,
    SpecError,
    TaskSpec,
    is_task_id,
    normalize_name,
    parse_assignments,
    random_name,
    resolve_environment,
    short_id,
    task_id,
)

CLOUDS = ("local", "aws", "gcp", "az", "k8s")
REMOTE_CLOUDS = ("aws", "gcp", "az", "k8s")

# Documented vectors (reference `name` argument and DESIGN.md).
HELLO_ID = "tpi-hello-world-5kz6ldls-57wo7rsp"
TEST_ID = "tpi-test-3z4xlzwq-3u0vweb4"


def build(tokens: list[str], cwd: Path | None = None) -> TaskSpec:
    """What the magic does with the words of a `%%tpi` line."""
    return TaskSpec.from_args(parse_assignments(tokens), cwd=cwd)


# ---------------------------------------------------------------- an independent identifier oracle
# Written from the definition in DESIGN.md, not from spec.py, and checked against the vectors below.


def oracle_hash(text: str) -> str:
    number = int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16)
    alphabet = string.digits + string.ascii_lowercase
    digits = ""
    while number > 0:
        digits = alphabet[number % 36] + digits
        number //= 36
    return digits[:8]


def oracle_id(name: str, normalized: str) -> str:
    salt = oracle_hash(name)
    return f"tpi-{normalized}-{salt}-{oracle_hash(normalized + salt)}"


def test_oracle_reproduces_documented_vectors() -> None:
    assert oracle_id("Hello, World!", "hello-world") == HELLO_ID
    assert oracle_id("test", "test") == TEST_ID


# ---------------------------------------------------------------- identifier


@pytest.mark.parametrize(("name", "expected"), [("Hello, World!", HELLO_ID), ("test", TEST_ID)])
def test_task_id_documented_vectors(name: str, expected: str) -> None:
    assert task_id(name) == expected
    assert is_task_id(expected)


def test_task_id_is_deterministic_and_distinguishes_names() -> None:
    assert task_id("train") == task_id("train")
    # Same normalized form, different raw names: the salt differs.
    assert normalize_name("Train") == normalize_name("train")
    assert task_id("Train") != task_id("train")
    assert task_id("Train").startswith("tpi-train-")


@pytest.mark.parametrize("identifier", [HELLO_ID, TEST_ID])
def test_valid_id_given_as_name_is_kept(identifier: str) -> None:
    assert task_id(identifier) == identifier
    assert TaskSpec(name=identifier).id == identifier


def test_task_id_of_any_name_is_valid_and_kept() -> None:
    for name in ("train", "My Experiment #3", "Ünïcødé", "x" * 60):
        identifier = task_id(name)
        assert is_task_id(identifier)
        assert task_id(identifier) == identifier


@pytest.mark.parametrize(
    "near_id",
    [
        TEST_ID[:-1] + ("5" if TEST_ID[-1] != "5" else "6"),  # wrong check
        HELLO_ID.replace("5kz6ldls", "5kz6ldlt"),  # salt changed, check no longer matches
        "tpi-test-3z4xlzwq-3u0vweb",  # check one char short
        TEST_ID.upper(),  # ids are lowercase
        "tpi-hello-world-5kz6ldls-57wo7rsp-",
    ],
)
def test_near_id_with_wrong_check_is_hashed_like_any_name(near_id: str) -> None:
    assert not is_task_id(near_id)
    identifier = task_id(near_id)
    assert identifier != near_id
    assert identifier == oracle_id(near_id, normalize_name(near_id))
    assert is_task_id(identifier)


def test_is_task_id_rejects_garbage() -> None:
    for text in ("", "tpi-", "test", "tpi-test", "xyz-test-3z4xlzwq-3u0vweb4", " " + TEST_ID, TEST_ID + "\n"):
        assert not is_task_id(text), text


@pytest.mark.parametrize(
    ("name", "normalized"),
    [
        ("Hello, World!", "hello-world"),
        ("test", "test"),
        ("a  b\t\tc", "a-b-c"),  # a run of outside chars becomes one '-'
        ("A_B.C/D", "a-b-c-d"),
        ("!!!Hello", "hello"),  # leading punctuation stripped
        ("--x--", "x"),
        ("   lead and trail   ", "lead-and-trail"),
        ("Ünïcødé", "n-c-d"),  # non-ascii letters are outside [a-z0-9]
        ("日本語", ""),
        ("x" * 40, "x" * 28),  # cut to 28
        ("a" * 27 + " tail", "a" * 27),  # cut leaves a trailing '-', which is stripped
        ("b" * 28 + "!!!", "b" * 28),
        ("9lives", "9lives"),
    ],
)
def test_normalize_name(name: str, normalized: str) -> None:
    assert normalize_name(name) == normalized
    assert len(normalize_name(name)) <= 28


@pytest.mark.parametrize(
    ("name", "normalized"),
    [
        ("A very long experiment name that goes on and on", "a-very-long-experiment-name"),
        ("Ünïcødé run", "n-c-d-run"),
        ("...leading punctuation", "leading-punctuation"),
    ],
)
def test_task_id_uses_normalized_name(name: str, normalized: str) -> None:
    identifier = task_id(name)
    assert identifier == oracle_id(name, normalized)
    assert re.fullmatch(r"tpi-[a-z0-9-]*-[0-9a-z]{8}-[0-9a-z]{8}", identifier)
    assert is_task_id(identifier)


def test_short_id() -> None:
    # `{random_hash_1}{random_hash_2}` as the reference's `id` attribute describes.
    assert short_id(HELLO_ID) == "5kz6ldls57wo7rsp"
    assert short_id(TEST_ID) == "3z4xlzwq3u0vweb4"
    long_id = task_id("a long name with many dashes - - - in it")
    assert short_id(long_id) == long_id[-17:-9] + long_id[-8:]
    assert len(short_id(long_id)) == 16


def test_random_name_gives_valid_distinct_ids() -> None:
    names = [random_name() for _ in range(10)]
    for name in names:
        assert name
        assert normalize_name(name), name
        assert is_task_id(task_id(name))
        assert is_task_id(TaskSpec().with_name(name).id)
    assert len(set(names)) >= 9  # 360000 combinations: a repeat is (very) unlikely
    assert len({task_id(name) for name in names}) == len(set(names))


def test_id_needs_a_name() -> None:
    with pytest.raises(ValueError):
        _ = TaskSpec().id
    with pytest.raises(ValueError):
        _ = build([]).id
    assert build(["name=Hello, World!"]).id == HELLO_ID
    assert TaskSpec().with_name("test").id == TEST_ID


# ---------------------------------------------------------------- defaults


EXPECTED_DEFAULTS = {
    "cloud": "local",
    "machine": "m",
    "image": "ubuntu",
    "region": "us-west",
    "disk_size": -1,
    "spot": -1,
    "parallelism": 1,
    "timeout": 86400,
    "environment": {},
    "tags": {},
    "name": "",
    "permission_set": "",
    "workdir": "",
    "output": "",
    "exclude": (),
    "container": "",
    "launch": "script",
    "placement": "none",
}


@pytest.mark.parametrize("make", [TaskSpec, lambda: TaskSpec.from_args({}), lambda: build([])])
def test_defaults(make) -> None:
    spec = make()
    assert {f.name for f in dataclasses.fields(spec) if not f.metadata.get("derived")} == set(EXPECTED_DEFAULTS)
    for key, value in EXPECTED_DEFAULTS.items():
        assert getattr(spec, key) == value, key
    assert isinstance(spec.disk_size, int)
    assert isinstance(spec.parallelism, int)
    assert isinstance(spec.timeout, int)
    assert isinstance(spec.exclude, tuple)


def test_default_cloud_fills_in_other_defaults_per_cloud() -> None:
    spec = build(["cloud=aws"])
    assert (spec.machine, spec.image, spec.region) == ("m", "ubuntu", "us-west")
    assert spec.native_machine == "m5.2xlarge" or re.fullmatch(r"[a-z0-9]+\.[a-z0-9]+", spec.native_machine)
    assert spec.native_region.startswith("us-west-")


# ---------------------------------------------------------------- catalogues


# Native syntaxes as the reference documents them, written here independently of spec.py.
REFERENCE_MACHINE_SYNTAX = {
    "aws": r"[a-z][a-z0-9-]*\.[a-z0-9]+",
    "gcp": r"[a-z][a-z0-9-]*(\+nvidia-tesla-[a-z0-9]+\*[1-9]\d*)?",
    "az": r"Standard_[A-Za-z0-9_]+",
    "k8s": r"\d+-\d+(\+nvidia-tesla-[a-z0-9]+\*[1-9]\d*)?",
}
REFERENCE_REGION_SYNTAX = {
    "aws": r"[a-z]{2}-[a-z]+-\d",
    "gcp": r"[a-z]+-[a-z]+\d-[a-z]",  # a zone, not a region
    "az": r"[a-z]+\d?",
    "k8s": r"|[^=,\s]+=[^=,\s]*(,[^=,\s]+=[^=,\s]*)*",  # empty: any node
}
REFERENCE_IMAGE_SYNTAX = {
    "aws": r"[a-z_][a-z0-9_-]*@(\d{12}|\*):(x86_64|arm64|\*):.+",
    "gcp": r"[a-z_][a-z0-9_-]*@[a-z0-9-]+/[a-z0-9-]+",
    "az": r"[a-z_][a-z0-9_-]*@[^:]+:[^:]+:[^:]+:[^:]+",
    "k8s": r"[a-z0-9][^\s]*",
}

# The reference's generic machine table: minimum cpu, minimum RAM (GB), GPU count.
REFERENCE_MACHINE_TABLE = {
    "s": (1, 1, 0),
    "m": (8, 16, 0),
    "l": (32, 64, 0),
    "xl": (64, 128, 0),
    "m+t4": (4, 16, 1),
    "m+k80": (4, 53, 1),
    "l+k80": (12, 112, 2),
    "xl+k80": (24, 212, 4),
    "m+v100": (4, 61, 1),
    "l+v100": (12, 224, 2),
    "xl+v100": (24, 448, 4),
}


def test_generic_catalogues_are_the_references() -> None:
    assert set(GENERIC_MACHINES) == set(REFERENCE_MACHINE_TABLE)
    assert set(GENERIC_REGIONS) == {"us-west", "us-east", "eu-north", "eu-west"}
    assert set(GENERIC_IMAGES) == {"ubuntu", "nvidia"}
    for cloud in CLOUDS:
        assert set(MACHINES[cloud]) == set(GENERIC_MACHINES), cloud
        assert set(REGIONS[cloud]) == set(GENERIC_REGIONS), cloud
        assert set(IMAGES[cloud]) == set(GENERIC_IMAGES), cloud


@pytest.mark.parametrize("cloud", CLOUDS)
@pytest.mark.parametrize("machine", GENERIC_MACHINES)
def test_generic_machine_on_every_cloud(cloud: str, machine: str) -> None:
    spec = build([f"cloud={cloud}", f"machine={machine}"])
    assert spec.machine == machine
    native = spec.native_machine
    if cloud == "local":
        assert native == machine
    else:
        assert native != machine
        assert re.fullmatch(REFERENCE_MACHINE_SYNTAX[cloud], native), native
        # A catalogue value is also accepted when given natively.
        assert build([f"cloud={cloud}", f"machine={native}"]).native_machine == native


@pytest.mark.parametrize("cloud", CLOUDS)
@pytest.mark.parametrize("region", GENERIC_REGIONS)
def test_generic_region_on_every_cloud(cloud: str, region: str) -> None:
    spec = build([f"cloud={cloud}", f"region={region}"])
    assert spec.region == region
    native = spec.native_region
    if cloud == "local":
        assert native == region
    else:
        assert re.fullmatch(REFERENCE_REGION_SYNTAX[cloud], native), native
        if native:
            assert build([f"cloud={cloud}", f"region={native}"]).native_region == native


@pytest.mark.parametrize("cloud", CLOUDS)
@pytest.mark.parametrize("image", GENERIC_IMAGES)
def test_generic_image_on_every_cloud(cloud: str, image: str) -> None:
    spec = build([f"cloud={cloud}", f"image={image}"])
    assert spec.image == image
    native = spec.native_image
    if cloud == "local":
        assert native == image
    else:
        assert re.fullmatch(REFERENCE_IMAGE_SYNTAX[cloud], native), native
        assert build([f"cloud={cloud}", f"image={native}"]).native_image == native


def test_generic_regions_map_to_the_right_geography() -> None:
    for cloud in ("aws", "gcp"):
        native = {r: build([f"cloud={cloud}", f"region={r}"]).native_region for r in GENERIC_REGIONS}
        assert native["us-west"].startswith("us-west")
        assert native["us-east"].startswith("us-east")
        assert "north" in native["eu-north"]
        assert "west" in native["eu-west"]
        assert native["eu-north"].startswith(("eu-", "europe-"))
    az = {r: build(["cloud=az", f"region={r}"]).native_region for r in GENERIC_REGIONS}
    assert az["us-west"].startswith("westus")
    assert az["us-east"].startswith("eastus")
    assert az["eu-north"] == "northeurope"
    assert az["eu-west"] == "westeurope"


def test_documented_machine_mappings() -> None:
    assert build(["cloud=k8s", "machine=m+t4"]).native_machine == "4-16000+nvidia-tesla-t4*1"
    assert build(["cloud=aws", "machine=m+t4"]).native_machine == "g4dn.xlarge"
    assert build(["cloud=az", "machine=m"]).native_machine == "Standard_F8s_v2"


@pytest.mark.parametrize("machine", GENERIC_MACHINES)
def test_k8s_generic_machines_meet_the_reference_table(machine: str) -> None:
    native = build(["cloud=k8s", f"machine={machine}"]).native_machine
    match = re.fullmatch(r"(\d+)-(\d+)(?:\+nvidia-tesla-([a-z0-9]+)\*(\d+))?", native)
    assert match, native
    cpu, memory_mb, gpu, count = match.groups()
    min_cpu, min_gb, min_gpus = REFERENCE_MACHINE_TABLE[machine]
    assert int(cpu) >= min_cpu
    assert int(memory_mb) >= min_gb * 1000
    if min_gpus:
        wanted = machine.split("+")[1]
        assert gpu == ("t4" if wanted in ("t4", "k80") else wanted)
        assert int(count) >= min_gpus
    else:
        assert gpu is None


@pytest.mark.parametrize("cloud", REMOTE_CLOUDS)
@pytest.mark.parametrize("machine", [m for m in GENERIC_MACHINES if m.endswith("+k80")])
def test_k80_machines_are_refreshed_to_t4(cloud: str, machine: str) -> None:
    native = build([f"cloud={cloud}", f"machine={machine}"]).native_machine
    lowered = native.lower()
    assert "k80" not in lowered
    assert not lowered.startswith("p2.")
    assert native not in ("Standard_NC6", "Standard_NC12", "Standard_NC24", "Standard_NC24r")
    if cloud == "aws":
        assert native.startswith("g4dn.")  # the EC2 T4 family
    else:
        assert "t4" in lowered


def test_no_catalogue_value_uses_retired_skus() -> None:
    for cloud in REMOTE_CLOUDS:  # local keeps the generic names, which say k80
        for generic, native in MACHINES[cloud].items():
            assert "k80" not in native.lower(), (cloud, generic)
            assert not native.startswith("p2."), (cloud, generic)
            assert not re.fullmatch(r"Standard_NC\d+r?", native), (cloud, generic)


# ---------------------------------------------------------------- native values per cloud


NATIVE_MACHINES = [
    ("aws", "g4dn.xlarge"),
    ("aws", "p3.2xlarge"),
    ("aws", "t3a.nano"),
    ("gcp", "n2-custom-64-262144"),
    ("gcp", "custom-8-53248+nvidia-tesla-k80*1"),
    ("gcp", "a2-highgpu-1g"),
    ("az", "Standard_F8s_v2"),
    ("az", "Standard_NC4as_T4_v3"),
    ("k8s", "64-256000"),
    ("k8s", "64-256000+nvidia-tesla-k80*1"),
    ("k8s", "0.5-512"),
]
NATIVE_REGIONS = [
    ("aws", "us-east-1"),
    ("aws", "eu-central-1"),
    ("aws", "us-gov-west-1"),
    ("gcp", "us-east1-a"),
    ("gcp", "europe-west4-b"),
    ("az", "eastus"),
    ("az", "westus2"),
    ("k8s", "foo=bar,goo=baz"),
    ("k8s", "accelerator=nvidia-tesla-t4"),
    ("k8s", "kubernetes.io/arch=amd64"),
]
NATIVE_IMAGES = [
    ("aws", "ubuntu@099720109477:x86_64:*ubuntu/images/hvm-ssd/ubuntu-focal-20.04*"),
    ("aws", "ec2-user@*:*:amzn2-ami-hvm-*"),
    ("gcp", "ubuntu@ubuntu-os-cloud/ubuntu-2004-lts"),
    ("az", "ubuntu@Canonical:UbuntuServer:18.04-LTS:latest"),
    ("k8s", "ubuntu:24.04"),
    ("k8s", "ghcr.io/org/image:1.2.3"),
    ("k8s", "python@sha256:0123abcd"),
]
PERMISSION_SETS = [
    ("aws", "arn:aws:iam::123456789012:instance-profile/rolename"),
    ("aws", "arn:aws:iam::123456789012:instance-profile/path/to/role-name_1"),
    ("gcp", "sa-name@project_id.iam.gserviceaccount.com,scopes=storage-rw"),  # the reference's example
    ("gcp", "sa-name@my-project.iam.gserviceaccount.com"),
    ("gcp", "123456789012-compute@developer.gserviceaccount.com"),  # the default compute account
    (
        "gcp",
        "runner@my-project.iam.gserviceaccount.com,scopes=https://www.googleapis.com/auth/cloud-platform",
    ),
    (
        "az",
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/"
        "Microsoft.ManagedIdentity/userAssignedIdentities/{identityName}",
    ),
    (
        "az",
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/"
        "Microsoft.ManagedIdentity/userAssignedIdentities/one,"
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/"
        "Microsoft.ManagedIdentity/userAssignedIdentities/two",
    ),
    ("k8s", "my-service-account"),
    ("k8s", "default"),
]
CONTAINERS = [
    ("local", "/tmp/tpi-remote"),
    ("local", "file:///tmp/tpi remote"),
    ("local", "s3://bucket/prefix"),  # memory:// is refused for local: issue 11 item 17
    ("aws", "my-bucket"),
    ("aws", "my.bucket/some/prefix"),
    ("gcp", "my_bucket"),
    ("gcp", "my-bucket/prefix"),
    ("az", "myaccount/my-container"),
    ("az", "myaccount/my-container/prefix/dir"),
    ("k8s", "my-pvc"),
]


@pytest.mark.parametrize(("cloud", "machine"), NATIVE_MACHINES)
def test_native_machine_passes_through(cloud: str, machine: str) -> None:
    spec = build([f"cloud={cloud}", f"machine={machine}"])
    assert spec.machine == machine
    assert spec.native_machine == machine


@pytest.mark.parametrize(("cloud", "region"), NATIVE_REGIONS)
def test_native_region_passes_through(cloud: str, region: str) -> None:
    spec = build([f"cloud={cloud}", f"region={region}"])
    assert spec.region == region
    assert spec.native_region == region


@pytest.mark.parametrize(("cloud", "image"), NATIVE_IMAGES)
def test_native_image_passes_through(cloud: str, image: str) -> None:
    spec = build([f"cloud={cloud}", f"image={image}"])
    assert spec.image == image
    assert spec.native_image == image


@pytest.mark.parametrize(("cloud", "permission_set"), PERMISSION_SETS)
def test_permission_set_per_cloud(cloud: str, permission_set: str) -> None:
    assert build([f"cloud={cloud}", f"permission_set={permission_set}"]).permission_set == permission_set


@pytest.mark.parametrize(("cloud", "container"), CONTAINERS)
def test_container_per_cloud(cloud: str, container: str) -> None:
    assert build([f"cloud={cloud}", f"container={container}"]).container == container


@pytest.mark.parametrize("cloud", CLOUDS)
def test_every_argument_at_once(cloud: str, tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    native = {
        "local": ("m+t4", "ubuntu", "eu-west", "", "/tmp/remote"),
        "aws": (
            "g4dn.xlarge",
            "ubuntu@099720109477:x86_64:*ubuntu/images/hvm-ssd/ubuntu-focal-20.04*",
            "us-east-1",
            "arn:aws:iam::123456789012:instance-profile/rolename",
            "my-bucket/prefix",
        ),
        "gcp": (
            "custom-8-53248+nvidia-tesla-k80*1",
            "ubuntu@ubuntu-os-cloud/ubuntu-2004-lts",
            "us-east1-a",
            "sa-name@my-project.iam.gserviceaccount.com,scopes=storage-rw",
            "my-bucket",
        ),
        "az": (
            "Standard_F8s_v2",
            "ubuntu@Canonical:UbuntuServer:18.04-LTS:latest",
            "eastus",
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/i",
            "myaccount/mycontainer",
        ),
        "k8s": ("64-256000+nvidia-tesla-k80*1", "ubuntu:24.04", "foo=bar,goo=baz", "runner", "my-pvc"),
    }[cloud]
    machine, image, region, permission_set, container = native
    tokens = [
        f"cloud={cloud}",
        f"machine={machine}",
        f"image={image}",
        f"region={region}",
        "disk_size=30",
        "spot=0.25",
        "parallelism=3",
        "timeout=3600",
        "environment=GREETING=Hello, world!",
        "environment=TOKEN=",
        "environment=AWS_*=",
        "tags=team=ml",
        "tags=cost center=42",
        "name=train",
        "workdir=project",
        "output=results",
        "exclude=/.dvc/cache,/results/tempfile",
        "exclude=*.pyc",
        f"container={container}",
    ]
    if permission_set:
        tokens.append(f"permission_set={permission_set}")
    spec = build(tokens, cwd=tmp_path)
    assert spec.cloud == cloud
    assert (spec.machine, spec.image, spec.region) == (machine, image, region)
    assert spec.disk_size == 30 and isinstance(spec.disk_size, int)
    assert spec.spot == 0.25
    assert spec.parallelism == 3
    assert spec.timeout == 3600
    assert spec.environment == {"GREETING": "Hello, world!", "TOKEN": "", "AWS_*": ""}
    assert spec.tags == {"team": "ml", "cost center": "42"}
    assert spec.name == "train"
    assert spec.id == oracle_id("train", "train")
    assert spec.permission_set == permission_set
    assert Path(spec.workdir) == (tmp_path / "project").resolve()
    assert spec.output == "results"
    assert spec.exclude == ("/.dvc/cache", "/results/tempfile", "*.pyc")
    assert spec.container == container


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("disk_size", "-1", -1),
        ("disk_size", "1", 1),
        ("disk_size", " 100 ", 100),
        ("spot", "-1", -1.0),
        ("spot", "0", 0.0),
        ("spot", "0.05", 0.05),
        ("spot", "3", 3.0),
        ("parallelism", "1", 1),
        ("parallelism", "16", 16),
        ("timeout", "1", 1),
        ("timeout", "86400", 86400),
        ("timeout", "604800", 604800),
    ],
)
def test_numbers(key: str, value: str, expected: float) -> None:
    spec = build([f"{key}={value}"])
    assert getattr(spec, key) == expected
    assert type(getattr(spec, key)) is type(expected)


def test_from_args_accepts_python_values(tmp_path: Path) -> None:
    spec = TaskSpec.from_args(
        {"disk_size": 50, "spot": 0.5, "parallelism": 2, "timeout": 60, "exclude": "*.pyc"}, cwd=tmp_path
    )
    assert (spec.disk_size, spec.spot, spec.parallelism, spec.timeout) == (50, 0.5, 2, 60)
    assert spec.exclude == ("*.pyc",)
    with pytest.raises(SpecError, match="unknown argument 'script'"):
        TaskSpec.from_args({"script": "#!/bin/bash"})


def test_name_is_kept_verbatim() -> None:
    assert build(["name=Hello, World!"]).name == "Hello, World!"
    assert build(["name="]).name == ""


# ---------------------------------------------------------------- parse_assignments


def test_parse_assignments_scalars_lists_and_maps() -> None:
    raw = parse_assignments(
        [
            "cloud=aws",
            "spot=0",
            "exclude=/.dvc/cache,/results/tempfile",
            "exclude=*.pyc",
            "environment=GREETING=Hello, world!",
            "environment=OPTS=a=b,c=d",
            "environment=EMPTY=",
            "tags=owner=me=you",
            "name=",
        ]
    )
    assert raw == {
        "cloud": "aws",
        "spot": "0",
        "exclude": ["/.dvc/cache", "/results/tempfile", "*.pyc"],
        "environment": {"GREETING": "Hello, world!", "OPTS": "a=b,c=d", "EMPTY": ""},
        "tags": {"owner": "me=you"},
        "name": "",
    }


def test_parse_assignments_nothing() -> None:
    assert parse_assignments([]) == {}


def test_parse_exclude_strips_spaces_around_commas() -> None:
    assert parse_assignments(["exclude=a, b ,c"]) == {"exclude": ["a", "b", "c"]}


def test_parse_value_may_contain_equals_and_spaces() -> None:
    assert parse_assignments(["name=a=b c"]) == {"name": "a=b c"}


def test_parse_duplicate_map_entry() -> None:
    with pytest.raises(SpecError, match=r"^environment: 'A'"):
        parse_assignments(["environment=A=1", "environment=A=2"])
    with pytest.raises(SpecError, match=r"^tags: 'k'"):
        parse_assignments(["tags=k=1", "tags=k=1"])
    # Different entries of the same map are fine.
    assert parse_assignments(["environment=A=1", "environment=B=2"]) == {"environment": {"A": "1", "B": "2"}}


def test_parse_duplicate_scalar_key() -> None:
    with pytest.raises(SpecError, match=r"^machine: given twice"):
        parse_assignments(["machine=m", "machine=l"])
    with pytest.raises(SpecError, match=r"^machine: given twice"):
        parse_assignments(["machine=m", "machine=m"])


@pytest.mark.parametrize("token", ["machine", "", "=m", "machine m"])
def test_parse_malformed_token(token: str) -> None:
    with pytest.raises(SpecError, match="expected key=value") as info:
        parse_assignments([token])
    assert repr(token) in str(info.value)


def test_parse_unknown_key_suggests() -> None:
    with pytest.raises(SpecError) as info:
        parse_assignments(["machin=m"])
    message = str(info.value)
    assert "'machin'" in message
    assert "did you mean machine?" in message
    assert "accepted:" in message
    with pytest.raises(SpecError) as info:
        parse_assignments(["paralelism=2"])
    assert "did you mean parallelism?" in str(info.value)
    with pytest.raises(SpecError) as info:
        parse_assignments(["zzzzzz=1"])
    assert "did you mean" not in str(info.value)


# ---------------------------------------------------------------- storage


def test_workdir_resolves_relative_to_cwd(tmp_path: Path) -> None:
    (tmp_path / "sub" / "dir").mkdir(parents=True)
    assert build(["workdir=."], cwd=tmp_path).workdir == str(tmp_path.resolve())
    assert build(["workdir=sub/dir"], cwd=tmp_path).workdir == str((tmp_path / "sub" / "dir").resolve())
    assert build(["workdir=dir/.."], cwd=tmp_path / "sub").workdir == str((tmp_path / "sub").resolve())
    absolute = str(tmp_path / "sub")
    assert build([f"workdir={absolute}"], cwd="/").workdir == str((tmp_path / "sub").resolve())


def test_workdir_defaults_to_process_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert build(["workdir=."]).workdir == str(tmp_path.resolve())


def test_missing_workdir(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"^workdir: 'nope'"):
        build(["workdir=nope"], cwd=tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpecError, match=r"^workdir: 'file'"):
        build(["workdir=file"], cwd=tmp_path)


@pytest.mark.parametrize(
    ("output", "expected"),
    [("results", "results"), ("a/b", "a/b"), (".", "."), ("./results/", "results")],
)
def test_output_inside_workdir(tmp_path: Path, output: str, expected: str) -> None:
    spec = build(["workdir=.", f"output={output}"], cwd=tmp_path)
    assert spec.output == expected
    assert spec.workdir == str(tmp_path.resolve())


@pytest.mark.parametrize("output", ["../x", "/abs", "a/../../x", "..", "/"])
def test_output_outside_workdir(tmp_path: Path, output: str) -> None:
    with pytest.raises(SpecError, match=r"^output: .*outside the workdir"):
        build(["workdir=.", f"output={output}"], cwd=tmp_path)


def test_output_needs_workdir() -> None:
    with pytest.raises(SpecError, match=r"^output: needs a workdir"):
        build(["output=results"])


# ---------------------------------------------------------------- environment


LOCAL_ENV = {
    "HOME": "/home/me",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "very-secret",
    "AWS_REGION": "us-east-1",
    "aws_lower": "lower",
    "TPI_RANK": "7",
    "TPI_TASK_ID": "tpi-x",
    "TOKEN": "local-token",
}


def test_resolve_literal_value_is_kept() -> None:
    assert resolve_environment({"GREETING": "Hello, world!"}, LOCAL_ENV) == {"GREETING": "Hello, world!"}
    assert resolve_environment({"HOME": "/elsewhere"}, LOCAL_ENV) == {"HOME": "/elsewhere"}


def test_resolve_empty_value_imports_local() -> None:
    assert resolve_environment({"TOKEN": "", "HOME": ""}, LOCAL_ENV) == {
        "TOKEN": "local-token",
        "HOME": "/home/me",
    }


def test_resolve_unset_local_variable_is_refused_by_name() -> None:
    # issue 11 item 3: an import of an unset variable was silently dropped; now one line naming it
    for requested in ({"NOT_SET_ANYWHERE": ""}, {"TOKEN": "", "NOT_SET_ANYWHERE": ""}):
        with pytest.raises(SpecError) as caught:
            resolve_environment(requested, LOCAL_ENV)
        message = str(caught.value)
        assert "\n" not in message and message.startswith("environment: NOT_SET_ANYWHERE=")
        assert "not set here" in message and "accepted:" in message


def test_resolve_glob_imports_all_matches() -> None:
    assert resolve_environment({"AWS_*": ""}, LOCAL_ENV) == {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "very-secret",
        "AWS_REGION": "us-east-1",
    }
    assert resolve_environment({"AWS_REGIO?": ""}, LOCAL_ENV) == {"AWS_REGION": "us-east-1"}
    assert resolve_environment({"NOMATCH_*": ""}, LOCAL_ENV) == {}


def test_resolve_explicit_beats_glob() -> None:
    for requested in ({"AWS_*": "", "AWS_REGION": "eu-west-1"}, {"AWS_REGION": "eu-west-1", "AWS_*": ""}):
        resolved = resolve_environment(requested, LOCAL_ENV)
        assert resolved["AWS_REGION"] == "eu-west-1"
        assert resolved["AWS_SECRET_ACCESS_KEY"] == "very-secret"


def test_resolve_glob_never_imports_reserved_names() -> None:
    assert resolve_environment({"TPI_*": ""}, LOCAL_ENV) == {}
    resolved = resolve_environment({"*": ""}, LOCAL_ENV)
    assert "TPI_RANK" not in resolved and "TPI_TASK_ID" not in resolved
    assert resolved["HOME"] == "/home/me"


def test_resolve_from_a_parsed_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = build(["environment=GREETING=hi", "environment=TOKEN=", "environment=AWS_*="])
    resolved = resolve_environment(spec.environment, LOCAL_ENV)
    assert resolved == {
        "GREETING": "hi",
        "TOKEN": "local-token",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "very-secret",
        "AWS_REGION": "us-east-1",
    }


@pytest.mark.parametrize("reserved", spec_module.RESERVED_ENV)
def test_reserved_names_rejected_in_spec(reserved: str) -> None:
    for value in ("", "1"):
        with pytest.raises(SpecError, match=rf"^environment: {reserved}\b.*accepted"):
            build([f"environment={reserved}={value}"])


def test_reserved_names_cover_the_design() -> None:
    for name in ("TPI_TASK", "TPI_TASK_ID", "TPI_RANK", "TPI_WORLD_SIZE"):
        assert name in spec_module.RESERVED_ENV


def test_environment_names_and_globs_accepted() -> None:
    spec = build(["environment=_X1=a", "environment=lower_case=b", "environment=AWS_*=", "environment=A?B="])
    assert spec.environment == {"_X1": "a", "lower_case": "b", "AWS_*": "", "A?B": ""}


def test_public_dict_keeps_names_not_values(tmp_path: Path) -> None:
    secret = "s3cr3t-VALUE-do-not-leak"
    spec = build(
        [
            "cloud=aws",
            f"environment=API_KEY={secret}",
            "environment=GREETING=Hello, world!",
            "environment=AWS_*=",
            "tags=team=ml",
            "workdir=.",
            "output=results",
            "exclude=*.pyc",
            "name=train",
        ],
        cwd=tmp_path,
    )
    public = spec.public_dict()
    dumped = json.dumps(public)
    assert secret not in dumped
    assert "Hello, world!" not in dumped
    assert sorted(public["environment"]) == ["API_KEY", "AWS_*", "GREETING"]
    assert public["cloud"] == "aws"
    assert public["tags"] == {"team": "ml"}
    assert public["exclude"] == ["*.pyc"]
    assert public["output"] == "results"
    assert public["name"] == "train"
    assert set(public) == set(EXPECTED_DEFAULTS)
    # The spec itself still has the value (for the private env file), and was not mutated.
    assert spec.environment["API_KEY"] == secret


# ---------------------------------------------------------------- bad input

AWS_ARN_HINT = "arn:aws:iam::123456789012:instance-profile/NAME"

# (case id, tokens, key the message must name). `{tmp}` is replaced by a temporary directory.
BAD_INPUTS = [
    # cloud
    ("cloud-unknown", ["cloud=aws2"], "cloud"),
    ("cloud-azure", ["cloud=azure"], "cloud"),
    ("cloud-uppercase", ["cloud=AWS"], "cloud"),
    ("cloud-empty", ["cloud="], "cloud"),
    # machine, per cloud
    ("machine-local-native", ["machine=g4dn.xlarge"], "machine"),
    ("machine-local-typo", ["machine=medium"], "machine"),
    ("machine-aws-no-size", ["cloud=aws", "machine=g4dn"], "machine"),
    ("machine-aws-uppercase", ["cloud=aws", "machine=G4DN.XLARGE"], "machine"),
    ("machine-gcp-no-count", ["cloud=gcp", "machine=n1-standard-4+nvidia-tesla-t4"], "machine"),
    ("machine-gcp-uppercase", ["cloud=gcp", "machine=N2-STANDARD-8"], "machine"),
    ("machine-az-no-prefix", ["cloud=az", "machine=F8s_v2"], "machine"),
    ("machine-k8s-units", ["cloud=k8s", "machine=64-256Gi"], "machine"),
    ("machine-k8s-no-count", ["cloud=k8s", "machine=64-256000+nvidia-tesla-k80"], "machine"),
    ("machine-k8s-cpu-only", ["cloud=k8s", "machine=64"], "machine"),
    # image, per cloud
    ("image-local-native", ["image=ubuntu:24.04"], "image"),
    ("image-aws-ami-id", ["cloud=aws", "image=ami-0123456789abcdef0"], "image"),
    ("image-aws-no-name", ["cloud=aws", "image=ubuntu@099720109477:x86_64"], "image"),
    ("image-gcp-no-user", ["cloud=gcp", "image=ubuntu-os-cloud/ubuntu-2004-lts"], "image"),
    ("image-az-no-user", ["cloud=az", "image=Canonical:UbuntuServer:18.04-LTS:latest"], "image"),
    ("image-az-three-fields", ["cloud=az", "image=ubuntu@Canonical:UbuntuServer:latest"], "image"),
    ("image-k8s-space", ["cloud=k8s", "image=ubuntu 24.04"], "image"),
    ("image-k8s-uppercase-start", ["cloud=k8s", "image=Ubuntu"], "image"),
    # region, per cloud
    ("region-local-native", ["region=us-east-1"], "region"),
    ("region-aws-zone", ["cloud=aws", "region=us-east-1a"], "region"),
    ("region-aws-garbage", ["cloud=aws", "region=useast1"], "region"),
    ("region-gcp-region-not-zone", ["cloud=gcp", "region=us-east1"], "region"),
    ("region-az-display-name", ["cloud=az", "region=East US"], "region"),
    ("region-k8s-no-label", ["cloud=k8s", "region=foo"], "region"),
    ("region-k8s-trailing-comma", ["cloud=k8s", "region=foo=bar,"], "region"),
    # disk_size
    ("disk_size-zero", ["disk_size=0"], "disk_size"),
    ("disk_size-minus-two", ["disk_size=-2"], "disk_size"),
    ("disk_size-fraction", ["disk_size=1.5"], "disk_size"),
    ("disk_size-word", ["disk_size=abc"], "disk_size"),
    ("disk_size-empty", ["disk_size="], "disk_size"),
    # spot
    ("spot-negative", ["spot=-0.5"], "spot"),
    ("spot-word", ["spot=abc"], "spot"),
    ("spot-nan", ["spot=nan"], "spot"),
    ("spot-inf", ["spot=inf"], "spot"),
    ("spot-minus-two", ["spot=-2"], "spot"),
    # parallelism
    ("parallelism-zero", ["parallelism=0"], "parallelism"),
    ("parallelism-negative", ["parallelism=-1"], "parallelism"),
    ("parallelism-fraction", ["parallelism=2.5"], "parallelism"),
    ("parallelism-word", ["parallelism=x"], "parallelism"),
    # timeout
    ("timeout-zero", ["timeout=0"], "timeout"),
    ("timeout-negative", ["timeout=-5"], "timeout"),
    ("timeout-unit", ["timeout=1h"], "timeout"),
    # environment
    ("environment-digit-start", ["environment=1X=v"], "environment"),
    ("environment-dash", ["environment=A-B=v"], "environment"),
    ("environment-glob-with-value", ["environment=AWS_*=x"], "environment"),
    ("environment-bad-glob", ["environment=A-*="], "environment"),
    ("environment-reserved", ["environment=TPI_RANK=3"], "environment"),
    ("environment-reserved-import", ["environment=TPI_TASK="], "environment"),
    ("environment-no-name", ["environment==v"], "environment"),
    ("environment-duplicate", ["environment=A=1", "environment=A=2"], "environment"),
    # tags
    ("tags-bad-key", ["tags=bad!key=v"], "tags"),
    ("tags-tpi-prefix", ["tags=tpi-task=x"], "tags"),
    ("tags-tpi-prefix-uppercase", ["tags=TPI-Task=x"], "tags"),
    ("tags-newline-value", ["tags=k=a\nb"], "tags"),
    ("tags-long-value", ["tags=k=" + "v" * 256], "tags"),
    ("tags-long-key", ["tags=" + "k" * 64 + "=v"], "tags"),
    ("tags-missing-equals", ["tags=k"], "tags"),
    ("tags-no-key", ["tags==v"], "tags"),
    # name
    ("name-no-letters", ["name=!!!"], "name"),
    ("name-only-unicode", ["name=日本語"], "name"),
    # permission_set
    ("permission_set-local", ["permission_set=anything"], "permission_set"),
    (
        "permission_set-aws-reference-example-10-digits",
        ["cloud=aws", "permission_set=arn:aws:iam:1234567890:instance-profile/rolename"],
        "permission_set",
    ),
    ("permission_set-aws-name-only", ["cloud=aws", "permission_set=rolename"], "permission_set"),
    (
        "permission_set-aws-role-not-profile",
        ["cloud=aws", "permission_set=arn:aws:iam::123456789012:role/rolename"],
        "permission_set",
    ),
    ("permission_set-gcp-not-email", ["cloud=gcp", "permission_set=sa-name"], "permission_set"),
    (
        "permission_set-gcp-not-service-account",
        ["cloud=gcp", "permission_set=me@gmail.com"],
        "permission_set",
    ),
    ("permission_set-az-name-only", ["cloud=az", "permission_set=my-identity"], "permission_set"),
    (
        "permission_set-az-not-identity",
        ["cloud=az", "permission_set=/subscriptions/s/resourceGroups/g"],
        "permission_set",
    ),
    ("permission_set-k8s-uppercase", ["cloud=k8s", "permission_set=My_Account"], "permission_set"),
    # container, per cloud
    ("container-local-leading-space", ["container= /tmp/x"], "container"),
    ("container-aws-too-short", ["cloud=aws", "container=ab"], "container"),
    ("container-aws-uppercase", ["cloud=aws", "container=My_Bucket"], "container"),
    ("container-gcp-leading-dash", ["cloud=gcp", "container=-bucket"], "container"),
    ("container-az-no-container", ["cloud=az", "container=myaccount"], "container"),
    ("container-k8s-underscore", ["cloud=k8s", "container=my_pvc"], "container"),
    # storage
    ("workdir-missing", ["workdir=does-not-exist"], "workdir"),
    ("output-parent", ["workdir=.", "output=../x"], "output"),
    ("output-absolute", ["workdir=.", "output=/abs"], "output"),
    ("output-escapes", ["workdir=.", "output=a/../../x"], "output"),
    ("output-without-workdir", ["output=results"], "output"),
    ("exclude-empty", ["exclude="], "exclude"),
    ("exclude-empty-entry", ["exclude=a,,b"], "exclude"),
    ("exclude-multiline", ["exclude=a\nb"], "exclude"),
    ("launch-unknown", ["launch=mpirun"], "launch"),
    ("placement-unknown", ["placement=spread"], "placement"),
    # tokens
    ("unknown-key", ["machin=m"], "machin"),
    ("unknown-key-script", ["script=run.sh"], "script"),
    ("malformed-token", ["machine"], "machine"),
    ("duplicate-key", ["machine=m", "machine=l"], "machine"),
    ("duplicate-cloud", ["cloud=aws", "cloud=gcp"], "cloud"),
]


def test_enough_distinct_bad_inputs() -> None:
    assert len(BAD_INPUTS) >= 45
    assert len({case for case, _, _ in BAD_INPUTS}) == len(BAD_INPUTS)
    assert len({tuple(tokens) for _, tokens, _ in BAD_INPUTS}) == len(BAD_INPUTS)
    covered = {key for _, _, key in BAD_INPUTS}
    assert set(spec_module.ARGUMENTS) <= covered


@pytest.mark.parametrize(("tokens", "key"), [pytest.param(t, k, id=c) for c, t, k in BAD_INPUTS])
def test_bad_input(tokens: list[str], key: str, tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        TaskSpec.from_args(parse_assignments(tokens), cwd=tmp_path)
    message = str(info.value)
    assert message
    assert "\n" not in message and "\r" not in message
    assert len(message.splitlines()) == 1
    assert message.startswith(f"{key}:") or repr(key) in message, message
    assert "accepted" in message or "expected" in message, message


def test_bad_input_messages_are_helpful() -> None:
    def error(tokens: list[str]) -> str:
        with pytest.raises(SpecError) as info:
            build(tokens)
        return str(info.value)

    # The generic catalogue and the native syntax are both offered.
    message = error(["cloud=aws", "machine=g4dn"])
    assert "'g4dn'" in message and "m+t4" in message and "g4dn.xlarge" in message
    assert "us-west" in error(["cloud=gcp", "region=us-east1"])
    # The malformed reference ARN gets the proper form.
    assert AWS_ARN_HINT in error(["cloud=aws", "permission_set=arn:aws:iam:1234567890:instance-profile/r"])
    # Every cloud is listed for a bad cloud, with a suggestion.
    message = error(["cloud=gcpp"])
    assert "did you mean gcp?" in message
    for cloud in CLOUDS:
        assert cloud in message


def test_spec_error_is_a_value_error() -> None:
    assert issubclass(SpecError, ValueError)


@pytest.mark.parametrize("cloud", REMOTE_CLOUDS)
def test_no_permission_set_or_container_is_fine_on_every_cloud(cloud: str) -> None:
    spec = build([f"cloud={cloud}", "permission_set=", "container="])
    assert spec.permission_set == "" and spec.container == ""


# ---------------------------------------------------------------- issue 11: the one argument table


def test_argument_table_defaults_are_the_spec_defaults(tmp_path: Path) -> None:
    """Help shows the table's defaults; they must be what an empty line gives."""
    from dataclasses import fields

    arguments = tuple(f.name for f in fields(TaskSpec) if not f.metadata.get("derived"))
    assert tuple(a.name for a in spec_module.ARGUMENT_TABLE) == arguments
    empty = TaskSpec.from_args({}, cwd=tmp_path)
    assert empty == TaskSpec()
    stated = {a.name: a.default for a in spec_module.ARGUMENT_TABLE if a.default}
    assert TaskSpec.from_args(stated, cwd=tmp_path) == empty


@pytest.mark.parametrize(
    ("words", "key"),
    [(["parallelism=1001"], "parallelism"), (["parallelism=1_0"], "parallelism"), (["timeout=0"], "timeout"),
     (["disk_size=65537"], "disk_size"), (["spot=1_0"], "spot"), (["name=a/b"], "name"),
     (["name=" + "x" * 256], "name")],
)  # fmt: skip
def test_validator_messages_quote_the_table(words: list[str], key: str) -> None:
    with pytest.raises(SpecError) as error:
        build(words)
    assert str(error.value).startswith(f"{key}: ")
    assert str(error.value).endswith(f"accepted: {spec_module.ARGUMENT[key].accepted}")


@pytest.mark.parametrize(
    ("words", "expected"),
    [(["parallelism=1000"], ("parallelism", 1000)), (["disk_size=65536"], ("disk_size", 65536)),
     (["spot=.5"], ("spot", 0.5)), (["spot=-1.0"], ("spot", -1.0)), (["spot=2."], ("spot", 2.0)),
     (["name=" + "x" * 255], ("name", "x" * 255)), (["name=Ünïcode 1"], ("name", "Ünïcode 1"))],
)  # fmt: skip
def test_edges_that_stay_accepted(words: list[str], expected: tuple[str, object]) -> None:
    key, value = expected
    assert getattr(build(words), key) == value
