"""Multi-node tasks on the local backend: each rank in its own network namespace (issue 16).

Real agents, real namespaces and veth pairs, real sshd and OpenMPI: a C all-reduce across 3
ranks launched by `mpirun` on rank 0 (`launch=mpi`), a TCP exchange between ranks of a
`launch=script` task, a lost worker restarting the whole MPI job. The PyTorch DDP step is in
test_multinode_ddp.py (it needs torch).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tpi_jupyter import layout, mpi_launch, multinode, state
from tpi_jupyter.agent import Remote
from tpi_jupyter.backends import local_net
from tpi_jupyter.backends.base import default_address, machine_address
from tpi_jupyter.task import Task

from .conftest import wait_for
from .test_local_backend import remote_path, start

EXAMPLES = Path(__file__).parent.parent / "examples" / "multinode"
NO_NETNS = local_net.unavailable_reason(3)
needs_netns = pytest.mark.skipif(bool(NO_NETNS), reason=f"no network namespaces here: {NO_NETNS}")
NO_MPI = next((f"{tool} is missing (scripts/install-tools installs it)" for tool in ("mpicc", "mpirun", "/usr/sbin/sshd")
               if not shutil.which(tool)), "")  # fmt: skip
needs_mpi = pytest.mark.skipif(bool(NO_MPI), reason=NO_MPI)

# Rank 0 listens on MASTER_ADDR:MASTER_PORT; the others connect and say their rank. Rank 0
# writes the address each connection came from: the traffic crossed between the ranks' networks.
EXCHANGE = r"""#!/bin/bash
set -e
mkdir -p results
python - <<'PY'
import json, os, socket, time
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
names = ("TPI_NODE_IPS", "TPI_HOSTFILE", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK",
         "LOCAL_RANK", "NODE_RANK", "TPI_RANK", "TPI_WORLD_SIZE")
seen = {name: os.environ[name] for name in names}
seen["hostfile"] = open(os.environ["TPI_HOSTFILE"]).read()
master = (os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
if rank == 0:
    server = socket.create_server(master)
    peers = {}
    for _ in range(world - 1):
        connection, (address, _) = server.accept()
        peers[connection.recv(16).decode()] = address
        connection.close()
    seen["peers"] = peers
else:
    for _ in range(200):
        try:
            connection = socket.create_connection(master, timeout=2)
            break
        except OSError:
            time.sleep(0.1)
    connection.sendall(str(rank).encode())
    seen["source"] = connection.getsockname()[0]
    connection.close()
json.dump(seen, open(f"results/rank-{rank}.json", "w"))
PY
"""

ALLREDUCE_RUN = """#!/bin/bash
set -e
mpicc -o allreduce allreduce.c
mpirun --hostfile "$TPI_HOSTFILE" -np "$WORLD_SIZE" --map-by node ./allreduce
"""


def netns_leftovers(task: Task) -> list[str]:
    """The task's namespaces, veths and bridge that still exist."""
    return [] if NO_NETNS else local_net.leftovers(Path(task.backend_state.base))


def sshd_of(task: Task) -> list[psutil.Process]:
    base = str(task.backend_state.base)
    found = []
    for process in psutil.process_iter(["cmdline"]):
        line = " ".join(process.info["cmdline"] or [])
        if "sshd" in line and base in line:
            found.append(process)
    return found


def rank_lines(task: Task, rank: int) -> list[str]:
    logs = [remote_path(task, layout.log(rank, boot))
            for boot in sorted(layout.boots(task.remote[0], str(remote_path(task, layout.rank_dir(rank)))))]  # fmt: skip
    text = "".join(log.read_text() for log in logs if log.exists())
    return [line.split(" ", 1)[1] for line in text.splitlines()]


def statuses(task: Task) -> list[dict[str, object]]:
    parallelism = int(task.spec["parallelism"])
    return [json.loads(remote_path(task, layout.status(rank)).read_text()) for rank in range(parallelism)]


def finished(task: Task, timeout: float = 90) -> str:
    """The task's status once every rank has reported and the group has ended."""
    wait_for(lambda: not task.read(fresh=True).group.exists, timeout)  # type: ignore[union-attr]
    return task.read(fresh=True).status


@needs_netns
def test_every_rank_gets_the_variables_and_its_own_address(tpi_home: Path, workdir: Path) -> None:
    task = start(["parallelism=3", "workdir=.", "output=results", "timeout=120"], EXCHANGE)
    assert finished(task) == "succeeded", task.tail_text(40)
    task.pull()
    seen = [json.loads((workdir / f"results/rank-{rank}.json").read_text()) for rank in range(3)]
    addresses = seen[0]["TPI_NODE_IPS"].splitlines()
    assert len(set(addresses)) == 3 and all(address.startswith("10.245.") for address in addresses)
    for rank, variables in enumerate(seen):
        assert variables["TPI_NODE_IPS"].splitlines() == addresses  # one list, rank 0 first
        assert variables["MASTER_ADDR"] == addresses[0] and variables["MASTER_PORT"] == "29500"
        assert (variables["RANK"], variables["NODE_RANK"], variables["TPI_RANK"]) == (str(rank),) * 3
        assert variables["WORLD_SIZE"] == variables["TPI_WORLD_SIZE"] == "3"
        assert variables["LOCAL_RANK"] == "0"
        assert variables["hostfile"] == "".join(f"{a} slots={os.cpu_count()}\n" for a in addresses)
        if rank:  # the connection left from this rank's own address, in its own namespace
            assert variables["source"] == addresses[rank]
    assert seen[0]["peers"] == {"1": addresses[1], "2": addresses[2]}
    published = [json.loads(remote_path(task, layout.address(rank)).read_text()) for rank in range(3)]
    assert [record["address"] for record in published] == addresses
    assert any(e["kind"] == "network" and "namespace per rank" in e["detail"] for e in task.events())
    assert not [
        line for rank in range(3) for line in rank_lines(task, rank) if "[tpi]" in line
    ]  # logs are the script's
    task.destroy()
    assert netns_leftovers(task) == []


@needs_netns
def test_a_respawned_rank_republishes_and_the_others_carry_on(tpi_home: Path, workdir: Path) -> None:
    script = 'echo "rank $RANK sees $(echo $TPI_NODE_IPS)"; sleep 4\n'
    task = start(["parallelism=2", "spot=0", "timeout=120"], script)
    wait_for(lambda: any("rank 1 sees" in line for line in rank_lines(task, 1)), 60)
    task.preempt(1)
    assert finished(task) == "succeeded", task.tail_text(40)
    record = json.loads(remote_path(task, layout.address(1)).read_text())
    assert record["boot"] == 1  # the new boot published again
    assert len([line for line in rank_lines(task, 0) if "rank 0 sees" in line]) == 1  # rank 0 ran once
    assert len([line for line in rank_lines(task, 1) if line.startswith("rank 1 sees")]) == 2
    task.destroy()


def test_without_namespaces_ranks_share_loopback_with_a_note(
    tpi_home: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TPI_LOCAL_NETNS", "0")  # as on Binder or a laptop: no CAP_NET_ADMIN
    task = start(["parallelism=2", "workdir=.", "output=results", "timeout=120"], EXCHANGE)
    assert finished(task) == "succeeded", task.tail_text(40)
    task.pull()
    seen = [json.loads((workdir / f"results/rank-{rank}.json").read_text()) for rank in range(2)]
    assert seen[0]["TPI_NODE_IPS"].splitlines() == ["127.0.0.1", "127.0.0.1"]
    assert seen[0]["MASTER_PORT"] == seen[1]["MASTER_PORT"] != "29500"  # a free port: ranks share one stack
    assert seen[0]["peers"] == {"1": "127.0.0.1"}
    notes = [e["detail"] for e in task.events() if e["kind"] == "network"]
    assert notes == [
        "no network namespace per rank here (TPI_LOCAL_NETNS=0): the ranks share this machine's loopback"
    ]
    task.destroy()


@needs_mpi
def test_mpi_without_namespaces_runs_on_shared_loopback(
    tpi_home: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TPI_LOCAL_NETNS", "0")
    shutil.copy(EXAMPLES / "allreduce.c", workdir)
    task = start(["parallelism=3", "launch=mpi", "workdir=.", "timeout=120"], ALLREDUCE_RUN)
    assert finished(task) == "succeeded", task.tail_text(40)
    hostfile = Path(task.backend_state.base) / "machines" / "0" / "agent" / "hostfile"
    assert hostfile.read_text() == f"127.0.0.1 slots={3 * (os.cpu_count() or 1)}\n"  # one host, listed once
    assert len([line for line in rank_lines(task, 0) if line.endswith(": sum 6 ok")]) == 3
    task.destroy()
    assert not sshd_of(task)


def test_the_default_address_is_the_default_route_interfaces() -> None:
    route = subprocess.run(["ip", "-4", "route", "get", "192.0.2.1"], capture_output=True, text=True)
    if route.returncode != 0 or " src " not in route.stdout:
        pytest.skip("no default route here (or no iproute2): nothing to compare with")
    expected = route.stdout.split(" src ")[1].split()[0]
    assert default_address() == expected
    assert machine_address("") == expected  # no cloud hooks: the default


def test_rendezvous_timeout_is_one_line_naming_the_missing_ranks(tmp_path: Path) -> None:
    remote = Remote(str(tmp_path))
    (tmp_path / ".tpi").mkdir()
    (tmp_path / ".tpi" / "task.json").write_text("{}")
    multinode.publish(remote, 0, 0, "10.0.0.2", master_port=29500)
    started = time.monotonic()
    with pytest.raises(multinode.RendezvousError) as raised:
        multinode.wait_for_all(remote, 3, 0.3, 0.05, lambda: "")
    assert time.monotonic() - started < 2
    message = str(raised.value)
    assert "\n" not in message
    assert "rank(s) 1, 2 did not publish an address within 0.3 s" in message
    assert multinode.TIMEOUT_VARIABLE in message


def test_a_stale_address_of_an_earlier_boot_does_not_count(tmp_path: Path) -> None:
    remote = Remote(str(tmp_path))
    (tmp_path / ".tpi").mkdir()
    (tmp_path / ".tpi" / "task.json").write_text("{}")
    multinode.publish(remote, 0, 0, "10.0.0.2")
    multinode.publish(remote, 1, 0, "10.0.0.3")
    remote.write(layout.heartbeat(1, 1), b"x")  # rank 1 respawned: boot 1 has not published yet
    assert multinode.current_record(remote, 1) is None
    with pytest.raises(multinode.RendezvousError, match=r"rank\(s\) 1 did not publish"):
        multinode.wait_for_all(remote, 2, 0.2, 0.05, lambda: "")
    multinode.publish(remote, 1, 1, "10.0.0.9")
    assert [r["address"] for r in multinode.wait_for_all(remote, 2, 1, 0.05, lambda: "")] == [
        "10.0.0.2",
        "10.0.0.9",
    ]


@needs_mpi
def test_rank_0_logs_in_to_every_worker_before_the_script_or_names_the_one_it_cannot(tmp_path: Path) -> None:
    directory = tmp_path / "ssh"
    directory.mkdir(mode=0o700)
    key = directory / "id_ed25519"
    mpi_launch.write_private(key, mpi_launch.make_key())
    port, closed = multinode.free_port(), multinode.free_port()
    server = mpi_launch.start_sshd(key, "127.0.0.1", port)
    try:
        worker = {"address": "127.0.0.1", "ssh_port": port}
        mpi_launch.reach_workers(mpi_launch.client_config(key, [{}, worker]), [{}, worker], timeout=10)
        gone = {"address": "127.0.0.1", "ssh_port": closed}  # a worker whose sshd is not there
        config = mpi_launch.client_config(key, [{}, gone])
        with pytest.raises(mpi_launch.LaunchError) as raised:
            mpi_launch.reach_workers(config, [{}, gone], timeout=1)
    finally:
        server.kill()
        server.wait()
    message = str(raised.value)
    assert message.startswith("launch=mpi: rank 0 cannot log in to worker 127.0.0.1 by SSH: ")
    assert "Connection refused" in message and "\n" not in message
    assert "PRIVATE KEY" not in message and key.read_text() not in message


def tpi_run(workdir: Path, *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tpi_jupyter.cli", "run", *words], cwd=workdir, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip


def only_task() -> Task:
    records = state.records()
    assert len(records) == 1
    return Task(records[0])


@needs_netns
@needs_mpi
def test_mpi_allreduce_across_three_namespaces_with_tpi_run(tpi_home: Path, workdir: Path) -> None:
    shutil.copy(EXAMPLES / "allreduce.c", workdir)
    (workdir / "run.sh").write_text(ALLREDUCE_RUN)
    done = tpi_run(
        workdir, "parallelism=3", "launch=mpi", "workdir=.", "timeout=180", "--script", "run.sh", "--wait"
    )
    task = only_task()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    published = [json.loads(remote_path(task, layout.address(rank)).read_text()) for rank in range(3)]
    addresses = [record["address"] for record in published]
    assert len(set(addresses)) == 3
    assert all(record["ssh_port"] == 22 for record in published[1:])
    results = sorted(line for line in rank_lines(task, 0) if " of 3 at " in line)
    # Every process checked the sum, each from its own rank's namespace address.
    assert results == [f"rank {r} of 3 at {addresses[r]}: sum 6 ok" for r in range(3)]
    assert [s["result"] for s in statuses(task)] == ["success"] * 3
    assert statuses(task)[1]["reason"] == "worker of rank 0's mpirun"
    wait_for(lambda: not sshd_of(task) and not task.read(fresh=True).group.exists, 30)  # type: ignore[union-attr]
    assert netns_leftovers(task) == []
    assert_key_stays_private(task, tpi_home, done.stdout + done.stderr)
    task.destroy()


def assert_key_stays_private(task: Task, home: Path, output: str) -> None:
    key_path = remote_path(task, layout.SSH_KEY)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = key_path.read_text()
    body = key.splitlines()[1]  # a line of the key itself, not its armour
    base = Path(task.backend_state.base)
    worker_key = base / "machines" / "1" / "agent" / "ssh" / "id_ed25519"
    assert stat.S_IMODE(worker_key.stat().st_mode) == 0o600 and worker_key.read_text() == key
    assert stat.S_IMODE((worker_key.parent / "authorized_keys").stat().st_mode) == 0o600
    assert body not in output
    assert body not in json.dumps(task.events()) + json.dumps(task.record)
    for path in [*base.glob("*.log"), *base.glob("*.json*"), *(home / "tasks").glob("*")]:
        assert body not in path.read_text(errors="replace"), path
    for rank in range(3):
        assert all(body not in line for line in rank_lines(task, rank))


@needs_netns
@needs_mpi
def test_mpi_job_result_is_rank_0s_and_a_failure_stops_the_workers(tpi_home: Path, workdir: Path) -> None:
    shutil.copy(EXAMPLES / "allreduce.c", workdir)
    task = start(["parallelism=3", "launch=mpi", "workdir=.", "timeout=120"], ALLREDUCE_RUN + "exit 3\n")
    assert finished(task) == "failed"
    outcomes = statuses(task)
    assert (outcomes[0]["result"], outcomes[0]["code"]) == ("failure", 3), task.tail_text(60)
    assert [o.get("stopped_by") for o in outcomes[1:]] == [0, 0]
    assert len([line for line in rank_lines(task, 0) if "sum 6 ok" in line]) == 3
    assert not [e for e in task.events() if e["kind"] == "job-restarted"]  # a failure of its own
    task.destroy()
    assert netns_leftovers(task) == [] and not sshd_of(task)


RESTARTING_RUN = """#!/bin/bash
set -e
mkdir -p results
attempt=$(( $(cat results/attempts 2>/dev/null || echo 0) + 1 ))
echo $attempt > results/attempts
echo "attempt $attempt"
test -x allreduce || mpicc -o allreduce allreduce.c
if [ "$attempt" = 1 ]; then pause=120; else pause=0; fi
mpirun --hostfile "$TPI_HOSTFILE" -np "$WORLD_SIZE" --map-by node ./allreduce $pause
"""


@needs_netns
@needs_mpi
@pytest.mark.parametrize("lost", [2, 0], ids=["worker", "rank0"])
def test_a_lost_machine_restarts_the_whole_mpi_job(tpi_home: Path, workdir: Path, lost: int) -> None:
    shutil.copy(EXAMPLES / "allreduce.c", workdir)
    task = start(["parallelism=3", "launch=mpi", "spot=0", "workdir=.", "output=results", "timeout=200"],
                 RESTARTING_RUN)  # fmt: skip
    wait_for(lambda: len([line for line in rank_lines(task, 0) if "sum 6 ok" in line]) == 3, 90)
    wait_for(lambda: synced_attempts(task) == "1", 30)  # a respawned rank 0 resumes from it
    first = json.loads(remote_path(task, layout.address(lost)).read_text())
    task.preempt(lost)  # the machine of that rank is lost mid-run, without warning
    assert finished(task, 150) == "succeeded", task.tail_text(60)
    lines = rank_lines(task, 0)
    restart_line = f"rank {lost} was lost"
    assert any(restart_line in line and "(restart 1" in line for line in lines)
    assert "attempt 2" in lines and len([line for line in lines if "sum 6 ok" in line]) == 6
    restarted = [e for e in task.events() if e["kind"] == "job-restarted"]
    assert len(restarted) == 1 and restart_line in restarted[0]["detail"]
    second = json.loads(remote_path(task, layout.address(lost)).read_text())
    assert (first["boot"], second["boot"]) == (0, 1)  # the respawned rank republished
    assert [s["result"] for s in statuses(task)] == ["success"] * 3
    task.destroy()
    assert netns_leftovers(task) == [] and not sshd_of(task)


def synced_attempts(task: Task) -> str:
    path = remote_path(task, layout.data("results/attempts"))
    return path.read_text().strip() if path.exists() else ""


@needs_netns
@needs_mpi
def test_stop_ends_sshd_namespaces_and_every_process(tpi_home: Path, workdir: Path) -> None:
    shutil.copy(EXAMPLES / "allreduce.c", workdir)
    script = ALLREDUCE_RUN.replace("./allreduce", "./allreduce 300")
    task = start(["parallelism=3", "launch=mpi", "workdir=.", "timeout=400"], script)
    wait_for(
        lambda: len([line for line in rank_lines(task, 0) if "sum 6 ok" in line]) == 3, 180
    )  # an MPI start over sshd is slow on a loaded 2-core machine
    assert len(sshd_of(task)) >= 2 and len(netns_leftovers(task)) >= 3
    task.stop()
    assert finished(task, 60) == "failed"
    wait_for(lambda: not task.read(fresh=True).group.exists, 60)  # type: ignore[union-attr]
    assert not sshd_of(task) and netns_leftovers(task) == []
    running = [p for p in psutil.process_iter(["name", "status"]) if p.info["status"] != psutil.STATUS_ZOMBIE]
    assert not [
        p for p in running if p.info["name"] in ("orted", "allreduce", "mpirun")
    ]  # dead and reaped or zombies
    task.destroy()
