"""The GCP backend end to end: storage on fake-gcs-server, Compute through the contract server.

tests/gcp_contract.py answers the documented compute/v1 REST shapes and validates every request
body with google-cloud-compute's own message types (unknown fields rejected); it plays the
managed instance group, each instance running the agent its startup script starts as a local
process against fake-gcs-server with its own metadata stand-in. What only a real project
shows is listed in the README.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tpi_jupyter import layout, ranks, state
from tpi_jupyter.backends.gcp import GcpBackend, GcpState
from tpi_jupyter.backends.gcp import storage as gcp_storage
from tpi_jupyter.commands import build_spec
from tpi_jupyter.spec import SpecError
from tpi_jupyter.sync import filesystem
from tpi_jupyter.task import Task, TaskError, launch

from . import emulators
from .conftest import wait_for
from .gcp_contract import PROJECT, ContractServer, credentials_file

SECRET = "s3cr3t-value-that-must-not-leak"


@pytest.fixture(scope="module")
def gcs_url() -> Iterator[str]:
    yield from emulators.fake_gcs_server()


@pytest.fixture(scope="module")
def contract(gcs_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContractServer]:
    base = tmp_path_factory.mktemp("gcp")
    pubsub = emulators.pstest()  # sweep lists Pub/Sub topics: never the real service from a test
    server = ContractServer(gcs_url, base / "machines", base / "adc.json", next(pubsub))
    credentials_file(base / "adc.json", f"{server.url}/token")
    yield server
    server.close()
    pubsub.close()


@pytest.fixture
def gcp(
    contract: ContractServer, tpi_home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ContractServer]:
    contract.reset()
    for key, value in contract.env().items():
        monkeypatch.setenv(key, value)
    yield contract
    contract.reset()


def start(words: list[str], script: str) -> Task:
    task = launch(build_spec(words, {"cloud": "gcp"}), script)
    assert isinstance(task, Task)
    return task


def buckets() -> list[dict[str, Any]]:
    answer = gcp_storage.gcs(PROJECT).call("GET", "b", project=PROJECT, json_out=False)
    return list(json.loads(answer[1] or b"{}").get("items", []))


def ours(server: ContractServer, task_id: str) -> list[str]:
    """Every resource of the task left anywhere: templates, groups, accounts, grants, buckets."""
    left = [
        f"template {n}"
        for n, t in server.templates.items()
        if t["properties"]["labels"].get("tpi-task") == task_id
    ]
    left += [f"group {n}" for n in server.groups]
    left += [f"firewall {n}" for n in server.firewalls]
    left += [f"account {e}" for e in server.accounts]
    left += [f"grant {b['role']}" for b in server.policy.get("bindings", []) if "condition" in b]
    # fake-gcs-server keeps no bucket labels: our buckets are the ones named tpi-<short id>.
    left += [f"bucket {b['name']}" for b in buckets() if b["name"].startswith("tpi-")]
    return left


def posts(server: ContractServer, fragment: str) -> list[Any]:
    return [body for method, path, body in server.calls if method == "POST" and path.endswith(fragment)]


def running(pid: int) -> bool:
    """Whether a process runs (a killed one may stay a zombie until its new parent reaps it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def read_key(task: Task, key: str) -> bytes:
    fs, root = filesystem(task.record["remote"])
    return bytes(fs.cat_file(layout.join(root, key)))


LIFE_SCRIPT = """#!/bin/bash
mkdir -p results
cat input.txt > results/out.txt
echo "rank $TPI_RANK of $TPI_WORLD_SIZE, token length ${#SECRET_TOKEN}"
"""


def test_lifecycle_create_run_succeed_destroy(
    gcp: ContractServer, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "input.txt").write_text("hello from the workdir\n")
    requested: list[dict[str, Any]] = []  # fake-gcs-server drops labels and iamConfiguration
    real_body = gcp_storage.bucket_body
    monkeypatch.setattr(
        gcp_storage, "bucket_body", lambda *args: requested.append(real_body(*args)) or requested[-1]
    )
    words = ["workdir=.", "output=results", "spot=0", "machine=m+t4", "image=nvidia", "timeout=900",
             f"environment=SECRET_TOKEN={SECRET}", "tags=team=ml", "name=gcp-life"]  # fmt: skip
    task = start(words, LIFE_SCRIPT)
    backend = task.record["backend"]
    assert task.record["remote"] == f"gs://{backend['bucket']}/{task.id}"

    # The group was created at size 0, then resized to 1 after the upload.
    (group_body,) = posts(gcp, "/instanceGroupManagers")
    assert group_body["targetSize"] == 0
    resizes = [(m, p) for m, p, _ in gcp.calls if p.endswith("/resize")]
    assert len(resizes) == 1
    # The template: SPOT, deadline backstop, T4 with TERMINATE, DLVM image from its family, labels.
    (template,) = posts(gcp, "/global/instanceTemplates")
    properties = template["properties"]
    assert properties["machineType"] == "n1-standard-4"
    assert properties["guestAccelerators"] == [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 1}]
    scheduling = properties["scheduling"]
    assert scheduling["provisioningModel"] == "SPOT" and scheduling["onHostMaintenance"] == "TERMINATE"
    assert scheduling["instanceTerminationAction"] == "DELETE" and scheduling["terminationTime"].endswith("Z")
    assert "deeplearning-platform-release" in properties["disks"][0]["initializeParams"]["sourceImage"]
    assert properties["labels"]["tpi-task"] == task.id and properties["labels"]["team"] == "ml"
    assert properties["serviceAccounts"][0]["email"] == backend["service_account"]
    # No inbound traffic: the machines' tag is the target of a deny-all ingress rule above the defaults.
    (rule,) = posts(gcp, "/global/firewalls")
    assert properties["tags"] == {"items": [rule["name"]]} and rule["targetTags"] == [rule["name"]]
    assert rule["denied"] == [{"IPProtocol": "all"}] and rule["priority"] < 65534
    assert rule["direction"] == "INGRESS" and rule["sourceRanges"] == ["0.0.0.0/0"]
    # Not asked for SSH: the deny beats the network's default-allow-ssh for the task's machines.
    assert not gcp.ingress_allowed("198.51.100.7", 22, rule["name"])
    assert gcp.ingress_allowed("198.51.100.7", 22, "some-other-vm")  # the contract's defaults apply
    # No secret anywhere the cloud keeps: metadata, labels, any request body.
    everything = json.dumps(gcp.calls)
    assert SECRET not in everything
    script = properties["metadata"]["items"][0]["value"]
    assert "SECRET_TOKEN" not in script and "--rank auto --release gcp" in script
    # The bucket: labelled, uniform access, public access prevented (as requested).
    assert [b["name"] for b in buckets()] == [backend["bucket"]]
    (bucket,) = requested
    assert bucket["labels"]["tpi-task"] == task.id and bucket["location"] == "US-WEST1"
    assert bucket["iamConfiguration"] == {"uniformBucketLevelAccess": {"enabled": True},
                                          "publicAccessPrevention": "enforced"}  # fmt: skip
    (bucket_policy,) = gcp.bucket_policies.values()
    (objects,) = bucket_policy["bindings"]
    assert objects["role"] == "roles/storage.objectAdmin" and objects["members"] == [
        f"serviceAccount:{backend['service_account']}"
    ]
    assert (
        f'startsWith("projects/_/buckets/{backend["bucket"]}/objects/{task.id}/")'
        in objects["condition"]["expression"]
    )
    # The service account may touch this bucket's task prefix and release from its own group only.
    grants = [
        b for b in gcp.policy["bindings"] if b["members"] == [f"serviceAccount:{backend['service_account']}"]
    ]
    (release,) = grants
    assert release["role"] == "roles/compute.instanceAdmin.v1"
    assert release["condition"]["expression"] == (
        f'resource.name == "projects/{PROJECT}/zones/us-west1-b/instanceGroupManagers/{backend["group"]}"'
    )

    assert task.wait(timeout=120) == "succeeded", "\n".join(gcp.log_of(n) for n, _ in gcp.ended)
    assert "rank 0 of 1, token length 31" in task.logs()[0]
    # The machine released itself with deleteInstances on its own group: no recreate, size 0.
    (released,) = posts(gcp, f"/{backend['group']}/deleteInstances")
    claims = ranks.read_claims(*filesystem(task.record["remote"]))
    assert released["instances"] == [f"zones/us-west1-b/instances/{claims[(0, 0)]}"]
    wait_for(lambda: gcp.instances(backend["group"]) == [], timeout=30)
    assert gcp.groups[backend["group"]].target == 0 and gcp.groups[backend["group"]].created == 1

    fetched = task.destroy()
    assert fetched == ["results/out.txt"]
    assert (workdir / "results" / "out.txt").read_text() == "hello from the workdir\n"
    assert ours(gcp, task.id) == [] and state.load(task.id) is None
    GcpBackend().delete(task.task_spec, task.backend_state)  # idempotent


PARALLEL_SCRIPT = """#!/bin/bash
mkdir -p results
# rank 1 runs until the test has seen rank 0 release itself (no race with a sleep)
if [ "$TPI_RANK" = 1 ]; then for _ in $(seq 1200); do [ -e "$GO_FILE" ] && break; sleep 0.1; done; fi
echo "rank $TPI_RANK done" | tee "results/rank-$TPI_RANK.txt"
"""


def test_parallelism_two_each_rank_releases_only_itself(
    gcp: ContractServer, workdir: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    task = start(["workdir=.", "output=results", "parallelism=2", "spot=-1", "name=gcp-par",
                  f"environment=GO_FILE={go}"], PARALLEL_SCRIPT)  # fmt: skip
    group = task.record["backend"]["group"]
    (template,) = posts(gcp, "/global/instanceTemplates")
    assert template["properties"]["scheduling"]["provisioningModel"] == "STANDARD"
    assert "guestAccelerators" not in template["properties"]

    def rank_zero_reported() -> bool:
        try:
            return json.loads(read_key(task, layout.status(0)))["result"] == "success"
        except FileNotFoundError:
            return False

    wait_for(rank_zero_reported, timeout=90)
    claims = ranks.read_claims(*filesystem(task.record["remote"]))
    assert sorted(claims) == [(0, 0), (1, 0)]
    # Rank 0 released its own instance only: rank 1's machine is still in the group, still running.
    wait_for(lambda: gcp.instances(group) == [claims[(1, 0)]], timeout=30)
    assert gcp.groups[group].target == 1
    assert task.read(fresh=True).ranks[1].state == "running"
    go.touch()
    assert task.wait(timeout=90) == "succeeded"
    assert [body["instances"] for body in posts(gcp, f"/{group}/deleteInstances")] == [
        [f"zones/us-west1-b/instances/{claims[(0, 0)]}"],
        [f"zones/us-west1-b/instances/{claims[(1, 0)]}"],
    ]
    assert not any(path.endswith("/resize") and "size=0" in path for _, path, _ in gcp.calls)
    task.destroy()
    assert ours(gcp, task.id) == []


RESUME_SCRIPT = """#!/bin/bash
mkdir -p results
n=$(cat results/epoch.txt 2>/dev/null || echo 0)
while [ "$n" -lt 3 ]; do
  n=$((n + 1)); echo "$n" > results/epoch.txt; echo "epoch $n"
  if [ "$n" = 2 ] && [ ! -e "$GO_FILE" ]; then for _ in $(seq 1200); do [ -e "$GO_FILE" ] && break; sleep 0.1; done; fi
done
"""


def test_preemption_notice_then_the_group_recreates_and_the_rank_resumes(
    gcp: ContractServer, workdir: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    task = start(["workdir=.", "output=results", "spot=0", "name=gcp-pre", f"environment=GO_FILE={go}"],
                 RESUME_SCRIPT)  # fmt: skip
    group = task.record["backend"]["group"]
    wait_for(lambda: "epoch 2" in "".join(task.logs()), timeout=90)
    (first,) = gcp.instances(group)
    gcp.preempt(first)  # instance/preempted = TRUE: the agent syncs, exits without a status
    go.touch()
    assert task.wait(timeout=120) == "succeeded", "\n".join(gcp.log_of(n) for n, _ in gcp.ended)
    claims = ranks.read_claims(*filesystem(task.record["remote"]))
    assert sorted(claims) == [(0, 0), (0, 1)] and claims[(0, 0)] == first != claims[(0, 1)]
    assert gcp.groups[group].created == 2  # recreated once, by the group, not by the client
    # The agent left on the notice by itself (not killed at the end of the 30 s), without a release.
    assert [code for name, code in gcp.ended if name == first] == [0]
    assert [body["instances"] for body in posts(gcp, f"/{group}/deleteInstances")] == [
        [f"zones/us-west1-b/instances/{claims[(0, 1)]}"]
    ]
    assert read_key(task, layout.data("results/epoch.txt")).decode().strip() == "3"
    logs = task.logs()[0]
    assert "epoch 3" in logs and "epoch 1" in logs
    task.destroy()
    assert ours(gcp, task.id) == []


def test_rollback_when_the_group_cannot_be_created(gcp: ContractServer, workdir: Path) -> None:
    gcp.fail_on = "/instanceGroupManagers"
    with pytest.raises(TaskError) as raised:
        start(["name=gcp-roll", "spot=0"], "#!/bin/bash\ntrue\n")
    message = str(raised.value)
    assert "creating the managed instance group failed" in message and "\n" not in message
    assert message.endswith("everything created so far was removed")
    assert posts(gcp, "/global/instanceTemplates") and posts(gcp, "/serviceAccounts")  # made, then removed
    assert state.records() == []
    assert gcp.templates == {} and gcp.groups == {} and gcp.accounts == {} and gcp.firewalls == {}
    assert [b for b in gcp.policy["bindings"] if "condition" in b] == []
    assert [b for b in buckets() if b["name"].startswith("tpi-")] == []


@pytest.mark.parametrize(
    ("words", "key", "setup"),
    [
        (["region=us-north9-z"], "region", None),
        (["machine=zz9-mega"], "machine", None),
        (["machine=m+v100", "region=us-east"], "machine", None),  # us-east1-c offers no V100 here
        (["machine=m+t4"], "machine", "quota"),
        ([], "cloud", "disabled"),
        ([], "cloud", "no-credentials"),
        (["spot=0.5"], "spot", None),
        (["image=ubuntu@ubuntu-os-cloud/no-such-family"], "image", None),
    ],
)
def test_preflight_one_line_errors_and_nothing_created(
    gcp: ContractServer, monkeypatch: pytest.MonkeyPatch, words: list[str], key: str, setup: str | None
) -> None:
    if setup == "quota":
        gcp.quotas["PREEMPTIBLE_NVIDIA_T4_GPUS"] = 0
    elif setup == "disabled":
        gcp.compute_disabled = True
    elif setup == "no-credentials":
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
        monkeypatch.setenv("CLOUDSDK_CONFIG", str(Path(gcp.machines) / "no-gcloud"))
    with pytest.raises(SpecError) as raised:
        start(["name=gcp-pre-flight", "spot=0", *words], "#!/bin/bash\ntrue\n")
    message = str(raised.value)
    assert message.startswith(f"{key}: ") and "accepted:" in message and "\n" not in message
    gcp.compute_disabled = False
    assert state.records() == []
    assert not [c for c in gcp.calls if c[0] in ("POST", "PUT", "DELETE") and c[1] != "/token"
                and not c[1].endswith(":getIamPolicy")]  # fmt: skip


def test_ssh_only_when_asked_only_from_that_range_and_rolled_back(
    gcp: ContractServer, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TPI_GCP_SSH_CIDR", " 203.0.113.0/28 ")
    # A failure midway removes both rules.
    gcp.fail_on = "/instanceGroupManagers"
    with pytest.raises(TaskError):
        start(["name=gcp-ssh", "spot=0"], "#!/bin/bash\ntrue\n")
    assert len(posts(gcp, "/global/firewalls")) == 2 and gcp.firewalls == {}
    gcp.fail_on, gcp.calls[:] = "", []

    task = start(["name=gcp-ssh", "spot=0"], "#!/bin/bash\nsleep 600\n")
    backend = task.record["backend"]
    deny, allow = posts(gcp, "/global/firewalls")
    tag = backend["name"]
    assert deny["denied"] == [{"IPProtocol": "all"}] and deny["targetTags"] == [tag]
    assert allow["allowed"] == [{"IPProtocol": "tcp", "ports": ["22"]}]
    assert allow["sourceRanges"] == ["203.0.113.0/28"] and allow["targetTags"] == [tag]
    assert allow["priority"] < deny["priority"] < 65534
    (template,) = posts(gcp, "/global/instanceTemplates")
    assert template["properties"]["tags"] == {"items": [tag]}
    assert backend["ssh_firewall"] == allow["name"] and backend["ssh_from"] == "203.0.113.0/28"
    # As GCP evaluates the rules: port 22 from the range only, nothing else from anywhere.
    assert gcp.ingress_allowed("203.0.113.9", 22, tag)
    assert not gcp.ingress_allowed("203.0.113.16", 22, tag)
    assert not gcp.ingress_allowed("203.0.113.9", 8888, tag)
    task.destroy()
    assert ours(gcp, task.id) == [] and gcp.firewalls == {}


def test_ssh_rule_of_a_forgotten_task_is_swept(
    gcp: ContractServer, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tpi_jupyter.backends.kit.sweep import sweep

    monkeypatch.setenv("TPI_GCP_SSH_CIDR", "203.0.113.7/32")
    task = start(["name=gcp-ssh-sweep", "spot=0"], "#!/bin/bash\nsleep 600\n")
    assert len(gcp.firewalls) == 2
    state.delete(task.id)
    sweep(GcpBackend(), [], region=None, everyone=False, delete=True)
    assert ours(gcp, task.id) == [] and gcp.firewalls == {}


@pytest.mark.parametrize("value", ["anywhere", "203.0.113.7/33", "203.0.113.7/24"])
def test_a_bad_ssh_range_is_one_line_and_creates_nothing(
    gcp: ContractServer,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    value: str,
) -> None:
    from tpi_jupyter import cli

    (workdir / "run.sh").write_text("#!/bin/bash\ntrue\n")
    monkeypatch.setenv("TPI_GCP_SSH_CIDR", value)
    with pytest.raises(SpecError) as raised:
        start(["name=gcp-ssh-bad", "spot=0"], "#!/bin/bash\ntrue\n")
    message = str(raised.value)
    assert message.startswith("TPI_GCP_SSH_CIDR: ") and "accepted: a CIDR" in message and "\n" not in message
    capsys.readouterr()
    assert (
        cli.main(["run", "cloud=gcp", "name=gcp-ssh-bad", "--script", "run.sh", "--dry-run", "--json"]) == 2
    )
    assert capsys.readouterr().err == f"tpi: error: {message}\n"
    assert state.records() == []
    assert not [c for c in gcp.calls if c[0] in ("POST", "PUT", "DELETE") and c[1] != "/token"]


def test_sweep_finds_and_deletes_a_forgotten_task(gcp: ContractServer, workdir: Path) -> None:
    from tpi_jupyter.backends.kit.sweep import sweep

    task = start(["name=gcp-sweep", "spot=0"], "#!/bin/bash\nsleep 600\n")
    wait_for(lambda: gcp.instances(task.record["backend"]["group"]), timeout=30)
    state.delete(task.id)  # the client forgot it
    backend = GcpBackend()
    lines = sweep(backend, [], region=None, everyone=False, delete=False)
    assert len(lines) == 1 and lines[0].startswith(f"orphan {task.id} (us-west1-b):")
    assert "managed instance group" in lines[0] and "bucket" in lines[0] and "service account" in lines[0]
    lines = sweep(backend, [], region=None, everyone=False, delete=True)
    assert lines[0].startswith(f"deleted {task.id}")
    assert ours(gcp, task.id) == []
    assert sweep(backend, [], region=None, everyone=False, delete=False) == []


def test_sweep_finds_a_map_runs_queue_by_its_label(gcp: ContractServer, workdir: Path) -> None:
    """A map run's Pub/Sub topics and subscription carry the task's label: when the registry
    forgets the run, sweep finds the queue with the task's other resources and deletes it."""
    from google.cloud import pubsub_v1

    from tpi_jupyter.backends.kit.sweep import sweep
    from tpi_jupyter.fanout.pubsub import PubSubQueue, labelled_queues

    task = start(["name=gcp-map-sweep", "spot=0"], "#!/bin/bash\nsleep 600\n")
    queue = PubSubQueue.for_task(task.id, task.record["remote"], "us-west1")
    queue.create()
    name = queue.address.name
    assert labelled_queues(PROJECT) == {name: task.id}
    subscription = queue.subscriber.get_subscription(request={"subscription": queue.subscription})
    assert dict(subscription.labels) == {"tpi-task": task.id}
    state.delete(task.id)  # the client forgot it
    backend = GcpBackend()
    lines = sweep(backend, [], region=None, everyone=False, delete=False)
    assert len(lines) == 1 and f"Pub/Sub queue {name}" in lines[0] and "instance template" in lines[0]
    assert sweep(backend, [], region=None, everyone=False, delete=True)[0].startswith(f"deleted {task.id}")
    topics = pubsub_v1.PublisherClient().list_topics(request={"project": f"projects/{PROJECT}"})
    assert [topic.name for topic in topics] == []
    subscriptions = pubsub_v1.SubscriberClient().list_subscriptions(
        request={"project": f"projects/{PROJECT}"}
    )
    assert [found.name for found in subscriptions] == []
    assert ours(gcp, task.id) == []


def test_state_round_trips_and_dry_run_plan_names_every_resource(gcp: ContractServer) -> None:
    spec = build_spec(["name=gcp-plan", "machine=m+t4"], {"cloud": "gcp"})
    backend = GcpBackend()
    lines = backend.plan(spec, backend.new_state(spec, 0.0))
    text = "\n".join(lines)
    for word in ("bucket", "service account", "instance template", "managed instance group", "labels"):
        assert word in text
    assert GcpState(**json.loads(json.dumps(GcpState(project="p").__dict__))).project == "p"
    assert gcp.calls == []  # a plan asks nothing of the cloud


def test_startup_script_helper_fetches_the_agent_and_releases_its_own_instance(
    gcp: ContractServer, workdir: Path, tmp_path: Path
) -> None:
    """The startup script's own helper (gcsfs, the metadata server, deleteInstances), run as the
    machine would, against fake-gcs-server, a metadata stand-in and the contract server."""
    import os
    import shlex
    import subprocess
    import sys
    import zipfile

    import gcsfs

    from .gcp_metadata import Metadata

    task = start(["name=gcp-boot", "spot=0"], "#!/bin/bash\nsleep 600\n")
    group = task.record["backend"]["group"]
    (instance,) = wait_for(lambda: gcp.instances(group), timeout=30)  # type: ignore[misc]
    script = gcp.templates[group]["properties"]["metadata"]["items"][0]["value"]
    assert f'"$TPI_ROOT/{Path(task.record["backend"]["wheel_key"]).name}[gcp]"' in script
    helper = script.split("<<'TPI_HELPER_END'\n", 1)[1].split("\nTPI_HELPER_END\n", 1)[0]
    (tmp_path / "helper.py").write_text(helper)
    exports = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in script.splitlines()
                   if line.startswith("export TPI_GCP_"))  # fmt: skip
    metadata = Metadata(instance, "us-west1-b", PROJECT)
    env = {k: v for k, v in os.environ.items() if k != "TPI_INSTANCE_ID"}
    env.update(exports, GCE_METADATA_HOST=metadata.host)

    def helper_run(*args: str) -> str:
        done = subprocess.run([sys.executable, str(tmp_path / "helper.py"), *args], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode in (0, 1), done.stderr
        return done.stdout

    try:
        assert helper_run("machine-id").strip() == instance  # from the metadata server
        assert "instance/name" in metadata.asked
        line = next(line for line in script.splitlines() if "tpi_helper get " in line and ".whl" in line)
        key = shlex.split(line)[shlex.split(line).index("get") + 1]
        helper_run("get", key, str(tmp_path / "agent.whl"))
        with zipfile.ZipFile(tmp_path / "agent.whl") as archive:
            assert "tpi_jupyter/backends/gcp/machine.py" in archive.namelist()
        helper_run("get", ".tpi/agent/lock.txt", str(tmp_path / "lock.txt"))
        assert f"gcsfs=={gcsfs.__version__}" in (tmp_path / "lock.txt").read_text().splitlines()
        (tmp_path / "boot.log").write_text("tpi-boot: a boot that failed\n")
        helper_run("boot-log", instance, str(tmp_path / "boot.log"))
        assert "released this machine" in helper_run("failed", instance, "test failure", "1")
    finally:
        metadata.close()
    (released,) = posts(gcp, f"/{group}/deleteInstances")
    assert released["instances"] == [f"zones/us-west1-b/instances/{instance}"]
    assert gcp.groups[group].target == 0
    assert read_key(task, f".tpi/machines/{instance}/boot-log").startswith(b"tpi-boot: a boot that failed")
    task.destroy()
    assert ours(gcp, task.id) == []


def test_dry_run_json_prints_every_create_request_body_and_creates_nothing(
    gcp: ContractServer, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from google.cloud import compute_v1

    from tpi_jupyter import cli

    (workdir / "input.txt").write_text("x\n")
    (workdir / "run.sh").write_text("#!/bin/bash\ntrue\n")
    words = ["run", "cloud=gcp", "workdir=.", "machine=m+t4", "image=nvidia", "spot=0", "name=gcp-dry", f"environment=TOKEN={SECRET}",
             "--script", "run.sh", "--dry-run", "--json"]  # fmt: skip
    assert cli.main(words) == 0
    printed = capsys.readouterr().out
    plan = json.loads(printed)
    assert SECRET not in printed and plan["files"] == 2
    urls = [f"{r['method']} {r['url'].split('?')[0].rsplit('/', 2)[-2:]}" for r in plan["requests"]]
    assert len(urls) == 8, urls
    kinds = {"firewalls": "Firewall", "instanceTemplates": "InstanceTemplate",
             "instanceGroupManagers": "InstanceGroupManager"}  # fmt: skip
    for request in plan["requests"]:  # what Compute would get is what its own types accept
        kind = kinds.get(request["url"].rsplit("/", 1)[-1])
        if kind:
            getattr(compute_v1, kind).from_json(json.dumps(request["body"]), ignore_unknown_fields=False)
    template = next(r["body"] for r in plan["requests"] if r["url"].endswith("/instanceTemplates"))
    assert template["properties"]["scheduling"]["provisioningModel"] == "SPOT"
    assert template["properties"]["disks"][0]["initializeParams"]["sourceImage"] == (
        "projects/deeplearning-platform-release/global/images/family/common-cu124-ubuntu-2204-py310"
    )
    assert gcp.calls == [] and state.records() == []
    assert "no SSH" in " ".join(GcpBackend().plan(build_spec(words[1:-4], {}), GcpState(name="tpi-x")))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TPI_GCP_SSH_CIDR", "203.0.113.7/32")
        assert cli.main(words) == 0
        rules = [
            r["body"]
            for r in json.loads(capsys.readouterr().out)["requests"]
            if r["url"].endswith("/firewalls")
        ]
        assert [r["priority"] for r in rules] == [900, 800] and rules[1]["sourceRanges"] == ["203.0.113.7/32"]
        assert "allows tcp:22 from 203.0.113.7/32 only" in " ".join(
            GcpBackend().plan(build_spec(words[1:-4], {}), GcpState(name="tpi-x"))
        )
    # --json is for plans only: one line, exit 2, nothing created.
    assert cli.main([*words[:-2], "--json"]) == 2
    assert "--json: shows a launch plan; accepted: --dry-run --json" in capsys.readouterr().err
    assert gcp.calls == [] and state.records() == []


def test_gcp_is_found_by_entry_point_with_its_machine_hooks() -> None:
    from tpi_jupyter.backends.base import get_backend, machine_hooks

    backend = get_backend("gcp")
    assert isinstance(backend, GcpBackend)
    assert (backend.capabilities.ranks, backend.capabilities.sweep, backend.capabilities.preemption) == (
        "claims", True, True)  # fmt: skip
    hooks = machine_hooks("gcp")
    assert hooks.__name__ == "tpi_jupyter.backends.gcp.machine" and callable(hooks.release)
    assert callable(hooks.notice) and callable(hooks.identity)


def test_stop_goes_through_the_bucket_and_each_machine_releases_itself(
    gcp: ContractServer, workdir: Path
) -> None:
    task = start(["name=gcp-stop", "spot=0"], "#!/bin/bash\necho started\nsleep 600\n")
    group = task.record["backend"]["group"]
    wait_for(lambda: "started" in "".join(task.logs()), timeout=90)
    (instance,) = gcp.instances(group)
    # Read: the group's managed instances, and listErrors as events.
    gcp.groups[group].fail("ZONE_RESOURCE_POOL_EXHAUSTED", "The zone does not have enough resources",
                           "2026-11-30T12:00:00.000-08:00")  # fmt: skip
    found = GcpBackend().read(task.task_spec, task.backend_state)
    assert found.exists and [m.alive for m in found.machines] == [True] and found.machines[0].rank == 0
    assert found.events == [{"time": 1796068800.0, "kind": "group-error", "rank": None,
                             "detail": "ZONE_RESOURCE_POOL_EXHAUSTED: The zone does not have enough resources"}]  # fmt: skip
    # A group in motion: its status and the instance's state and action are events too.
    gcp.groups[group].instances[instance].status = "STAGING"
    moving = GcpBackend().read(task.task_spec, task.backend_state).events
    gcp.groups[group].instances[instance].status = "RUNNING"
    assert [(e["kind"], e["rank"], e["detail"]) for e in moving if e["kind"] != "group-error"] == [
        ("group", None, f"{group} not stable: target 1, 1 creating"),
        ("instance", 0, f"{instance}: STAGING, action CREATING"),
    ]
    task.stop()
    assert gcp.instances(group) == []
    (released,) = posts(gcp, f"/{group}/deleteInstances")  # the agent saw the stop key and released itself
    assert released["instances"] == [f"zones/us-west1-b/instances/{instance}"]
    outcome = json.loads(read_key(task, layout.status(0)))
    assert outcome["result"] == "failure" and outcome["reason"].startswith("stopped")
    task.destroy()
    assert ours(gcp, task.id) == []


def test_delete_tolerates_a_partial_record(gcp: ContractServer) -> None:
    backend = GcpBackend()
    spec = build_spec(["name=gone"], {"cloud": "gcp"})
    backend.delete(spec, GcpState())
    backend.delete(spec, GcpState(project=PROJECT, zone="us-west1-b", name="tpi-nothing", group="tpi-nothing",
                                  template="tpi-nothing", firewall="tpi-nothing", bucket="tpi-nothing",
                                  prefix="gone", bucket_created=True))  # fmt: skip


def test_rank_claims_on_gcs_are_exclusive(gcp: ContractServer) -> None:
    """gcsfs's create mode sends ifGenerationMatch=0: the second claim of a rank loses."""
    fs = gcp_storage.gcs(PROJECT)
    fs.mkdir("tpi-claims")
    path = "tpi-claims/task/reports/0/0/claim"
    assert ranks.create_exclusive(fs, path, b"machine-a\n") is True
    assert ranks.create_exclusive(fs, path, b"machine-b\n") is False
    assert fs.cat_file(path) == b"machine-a\n"
    fs.rm("tpi-claims", recursive=True)


def test_tpi_preempt_deletes_the_ranks_instance_and_the_group_recreates_it(
    gcp: ContractServer, workdir: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    script = '#!/bin/bash\nif [ ! -e "$GO_FILE" ]; then echo waiting; sleep 600; fi\necho "done"\n'
    task = start(["name=gcp-kill", "spot=0", f"environment=GO_FILE={go}"], script)
    group = task.record["backend"]["group"]
    wait_for(lambda: "waiting" in "".join(task.logs()), timeout=90)
    (first,) = gcp.instances(group)
    script_pid = int((gcp.machines / first / "script.pid").read_text())
    task.preempt(0)  # instances.delete: the machine vanishes, script and all
    assert first not in gcp.instances(group) and gcp.groups[group].target == 1
    assert not running(script_pid)
    go.touch()
    assert task.wait(timeout=120) == "succeeded"
    claims = ranks.read_claims(*filesystem(task.record["remote"]))
    assert sorted(claims) == [(0, 0), (0, 1)] and claims[(0, 0)] == first != claims[(0, 1)]
    task.destroy()
    assert ours(gcp, task.id) == []
