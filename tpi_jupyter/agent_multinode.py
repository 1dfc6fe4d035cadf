"""The agent's part of a multi-node task (`parallelism > 1`): rendezvous, then the launch mode.

`launch=script`: every rank publishes its address, waits for all, and runs the script with the
distributed variables (multinode.py). `launch=mpi`: rank 0 runs the script with an SSH setup for
`mpirun`; the other ranks serve SSH until rank 0 has reported (mpi_launch.py). A worker lost
while the job runs restarts the whole job (MPI cannot lose a rank): rank 0 ends its `mpirun`,
records the restart in `reports/0/restarts.json`, waits for the respawned worker's new address,
and runs the script again in its work directory (the last synced data and what it wrote since).
A lost rank 0 respawns and runs the script again from the synced data; the workers keep serving.

No IPython or Jupyter imports: this runs on bare machines.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import mpi_launch, multinode
from .backends.base import Timing
from .mpi_launch import LaunchError
from .multinode import MASTER_PORT, RendezvousError

if TYPE_CHECKING:
    from .agent import Agent

Outcome = dict[str, Any]


def run(agent: Agent, deadline: float, sync_interval: float) -> Outcome:
    """The script's run for this rank, whatever the task's launch mode and size."""
    world = int(agent.task["spec"]["parallelism"])
    mpi = agent.task["spec"].get("launch", "script") == "mpi"
    if world <= 1 and not mpi:  # launch=mpi on one machine still gets its hostfile
        return agent._run_script(deadline, sync_interval)
    try:
        if mpi and agent.rank > 0:
            return _serve(agent, deadline, sync_interval)
        if mpi:
            return _launch_mpi(agent, deadline, sync_interval)
        records = _rendezvous(agent, deadline, world)
        env = multinode.script_variables(records, agent.rank, agent.private / "hostfile")
        return agent._run_script(deadline, sync_interval, extra_env=env)
    except (RendezvousError, LaunchError) as error:
        return _abandoned(agent, deadline, str(error))


def _abandoned(agent: Agent, deadline: float, message: str) -> Outcome:
    """The outcome when the rendezvous or the launch could not go on, with its one line."""
    if agent.interrupted.is_set():
        return {"result": None, "interrupted": True}
    if agent._stop_outcome:
        agent.log.line(f"[tpi] {message}")
        return {"result": "failure", "code": None, **agent._stop_outcome}
    if time.time() >= deadline:
        agent.log.line("[tpi] timeout: the task's deadline passed during the rendezvous")
        return {"result": "timeout", "code": None}
    agent.log.line(f"[tpi] {message}")
    return {"result": "failure", "code": None, "reason": message}


def _cancelled(agent: Agent, deadline: float) -> Callable[[], str]:
    def why() -> str:
        if agent.interrupted.is_set():
            return "the machine is being taken"
        if time.time() >= deadline:
            return "the task's deadline passed"
        return agent._stop_reason()

    return why


def _interval(agent: Agent) -> float:
    timing = Timing(**agent.task.get("timing", {}))
    return timing.log_interval if agent.remote.local else timing.heartbeat_interval


def _publish(agent: Agent, **ports: int) -> str:
    address = multinode.node_address(agent.cloud)
    multinode.publish(
        agent.remote, agent.rank, agent.boot, address, **ports
    )  # no log line: logs are the script's
    return address


def _wait(agent: Agent, deadline: float, world: int) -> list[dict[str, Any]]:
    timeout = min(multinode.timeout_of(agent.values), max(0.0, deadline - time.time()))
    return multinode.wait_for_all(
        agent.remote, world, timeout, _interval(agent), _cancelled(agent, deadline), agent.log.line
    )


def _rendezvous(agent: Agent, deadline: float, world: int) -> list[dict[str, Any]]:
    ports = {}
    if agent.rank == 0:  # ranks sharing this machine's loopback cannot all use the usual port
        ports["master_port"] = MASTER_PORT if multinode.own_network() else multinode.free_port()
    _publish(agent, **ports)
    return _wait(agent, deadline, world)


# ---------------------------------------------------------------- launch=mpi, rank 0


def _launch_mpi(agent: Agent, deadline: float, sync_interval: float) -> Outcome:
    world = int(agent.task["spec"]["parallelism"])
    key = mpi_launch.fetch_key(agent.remote, agent.private)
    heartbeat = Timing(**agent.task.get("timing", {})).heartbeat_interval
    _publish(agent)
    if agent.boot > 0:  # this machine replaces a lost rank 0: the job starts over
        why = f"rank 0 was lost (boot {agent.boot} took its place)"
        count = mpi_launch.record_restart(agent.remote, why)
        agent.log.line(
            f"[tpi] {why}: the whole MPI job runs again from the last synced data (restart {count})"
        )
    while True:
        records = _wait(agent, deadline, world)
        env = multinode.script_variables(records, 0, agent.private / "hostfile")
        config = mpi_launch.client_config(key, records)
        mpi_launch.reach_workers(config, records)
        env |= mpi_launch.launcher_variables(config)
        boots = {rank: int(record["boot"]) for rank, record in enumerate(records) if rank > 0}
        check = _throttled(
            functools.partial(mpi_launch.lost_worker, agent.remote, boots, heartbeat), _interval(agent)
        )
        outcome = agent._run_script(deadline, sync_interval, extra_env=env, restart=check)
        why = str(outcome.get("restart") or "")
        if not why and outcome.get("result") == "failure" and "reason" not in outcome:
            why = _verdict(agent, boots, heartbeat)  # mpirun failed: a worker lost?
        if not why:
            return outcome
        count = mpi_launch.record_restart(agent.remote, why)
        if count > mpi_launch.MAX_RESTARTS:
            raise LaunchError(f"{why}; the job was restarted {count - 1} times already, giving up")
        agent.log.line(f"[tpi] {why}: restarting the whole MPI job (restart {count}; MPI cannot lose a rank)")


def _throttled(check: Callable[[], str], every: float) -> Callable[[], str]:
    next_at = [time.monotonic() + every]

    def throttled() -> str:
        if time.monotonic() < next_at[0]:
            return ""
        next_at[0] = time.monotonic() + every
        return check()

    return throttled


def _verdict(agent: Agent, boots: dict[int, int], heartbeat: float) -> str:
    """After a failed mpirun: the lost worker that caused it, or "" once every worker has beaten
    since (they live on: the job failed on its own)."""
    failed_at = time.time()
    give_up = failed_at + (mpi_launch.LOST_HEARTBEATS + 1) * heartbeat
    while time.time() < give_up:
        why = mpi_launch.lost_worker(agent.remote, boots, heartbeat)
        if why or mpi_launch.all_alive_since(agent.remote, boots, failed_at):
            return why
        time.sleep(min(heartbeat / 4, 1.0))
    return ""


# ---------------------------------------------------------------- launch=mpi, workers


def _serve(agent: Agent, deadline: float, sync_interval: float) -> Outcome:
    """Serve SSH for rank 0's mpirun until rank 0 reports; the outcome mirrors rank 0's."""
    key = mpi_launch.fetch_key(agent.remote, agent.private)
    address = multinode.node_address(agent.cloud)
    port = 22 if os.environ.get(multinode.NETNS_VARIABLE) else multinode.free_port()
    server = mpi_launch.start_sshd(key, address, port)
    (agent.machine_dir / "script.pid").write_text(str(server.pid))  # a preempt takes it too
    try:
        _publish(agent, ssh_port=port)
        agent.log.line(f"[tpi] serving SSH on port {port} for rank 0's mpirun")
        return _serve_until_done(agent, server, deadline, sync_interval)
    finally:
        _end(server)
        agent.push()


def _serve_until_done(
    agent: Agent, server: subprocess.Popen[bytes], deadline: float, sync_interval: float
) -> Outcome:
    next_sync, next_look = time.time() + sync_interval, 0.0
    while True:
        if time.time() >= deadline:
            agent.log.line("[tpi] timeout: the task's deadline passed")
            return {"result": "timeout", "code": None}
        if agent.interrupted.is_set():
            agent.log.line("[tpi] the cloud is taking this machine; syncing back, the rank respawns")
            return {"result": None, "interrupted": True}
        why = agent._stop_reason()
        if why:
            agent.log.line(f"[tpi] {why}; stopping the SSH server")
            return {"result": "failure", "code": None, **agent._stop_outcome}
        if server.poll() is not None:
            raise LaunchError(f"launch=mpi: sshd exited with code {server.returncode}")
        if time.monotonic() >= next_look:
            next_look = time.monotonic() + _interval(agent)
            done = mpi_launch.rank0_result(agent.remote)
            if done is not None:
                agent.log.line(f"[tpi] rank 0 reported {done.get('result')}; this worker ends with it")
                return _mirror(done)
        if time.time() >= next_sync:
            agent._push_quietly()
            next_sync = time.time() + sync_interval
        time.sleep(0.1)


def _mirror(rank0: Outcome) -> Outcome:
    """A worker's outcome: the job's result is rank 0's (a failure stops the workers, as ever)."""
    if rank0.get("result") == "failure":
        return {"result": "failure", "code": None, "reason": "stopped: rank 0 failed", "stopped_by": 0}
    return {"result": rank0.get("result"), "code": None, "reason": "worker of rank 0's mpirun"}


def _end(server: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, sig)
            server.wait(timeout=5)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
