"""Multi-node rendezvous: every rank publishes its private address, then waits for all others.

Each boot of a rank writes `reports/<rank>/address` = {"address", "boot", "slots"} (rank 0 adds
"master_port"; a `launch=mpi` worker adds "ssh_port"). A record counts once it belongs to the
rank's latest boot, so a respawned rank's old address is never used. When every rank has
published, the script gets what distributed frameworks expect: `TPI_NODE_IPS`, `TPI_HOSTFILE`
(OpenMPI format, `slots=` GPUs or cores), `MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE`, `RANK`,
`LOCAL_RANK`, `NODE_RANK`. One process per machine: RANK = NODE_RANK = the rank, LOCAL_RANK 0.

A rank that respawns republishes; with `launch=script` the other ranks carry on and the
framework's own rendezvous decides (torch.distributed fails or waits as it is configured).

No IPython or Jupyter imports: this runs on bare machines.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from . import layout

RENDEZVOUS_TIMEOUT = 900.0  # seconds; `TPI_RENDEZVOUS_TIMEOUT` in the task's environment changes it
TIMEOUT_VARIABLE = "TPI_RENDEZVOUS_TIMEOUT"
SLOW = 10.0  # seconds of waiting before the rank's log says whom it waits for
MASTER_PORT = 29500  # torch.distributed's usual port, on a machine (or namespace) of its own
NETNS_VARIABLE = "TPI_NETNS"  # set by the local group: the rank's network namespace
ADDRESS_VARIABLE = "TPI_NODE_ADDRESS"  # set by the local group: the rank's address there


class RemoteLike(Protocol):
    def read_text(self, key: str) -> str: ...
    def write(self, key: str, data: bytes) -> None: ...
    def names(self, key: str) -> list[str]: ...


class RendezvousError(Exception):
    """Not every rank published its address in time; the message is the one line to show."""


def own_network() -> bool:
    """Whether this rank has a network stack of its own (a machine, or a local namespace): then
    the usual fixed ports are free. Ranks sharing this machine's loopback take free ports."""
    return bool(os.environ.get(NETNS_VARIABLE)) or os.environ.get(ADDRESS_VARIABLE, "") not in ("127.0.0.1",)


def netns_prefix() -> list[str]:
    """The command prefix that runs a program in this rank's namespace (none without one)."""
    namespace = os.environ.get(NETNS_VARIABLE, "")
    return ["ip", "netns", "exec", namespace] if namespace else []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def slots() -> int:
    """GPUs on this machine (nvidia-smi), else its cores: the hostfile's `slots=`."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=False)
            gpus = [line for line in listed.stdout.splitlines() if line.startswith("GPU ")]
            if gpus:
                return len(gpus)
        except (OSError, subprocess.SubprocessError):
            pass
    return os.cpu_count() or 1


def node_address(cloud: str) -> str:
    """This rank's private address: the local group's, else the cloud's machine hook's."""
    if os.environ.get(ADDRESS_VARIABLE):
        return os.environ[ADDRESS_VARIABLE]
    from .backends.base import machine_address

    return machine_address(cloud)


def publish(remote: RemoteLike, rank: int, boot: int, address: str, **ports: int) -> dict[str, Any]:
    record = {"address": address, "boot": boot, "slots": slots(), **ports}
    remote.write(layout.address(rank), json.dumps(record).encode())
    return record


def latest_boot(remote: RemoteLike, rank: int) -> int:
    boots = [int(name) for name in remote.names(layout.rank_dir(rank)) if name.isdigit()]
    return max(boots, default=0)


def current_record(remote: RemoteLike, rank: int) -> dict[str, Any] | None:
    """The rank's address record if its latest boot wrote it (else None: not yet, or stale)."""
    try:
        record: dict[str, Any] = json.loads(remote.read_text(layout.address(rank)))
    except (FileNotFoundError, ValueError):
        return None
    return record if int(record.get("boot", -1)) >= latest_boot(remote, rank) else None


def wait_for_all(
    remote: RemoteLike,
    world: int,
    timeout: float,
    interval: float,
    cancelled: Callable[[], str],
    say: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Every rank's current record, rank 0 first; RendezvousError after `timeout` seconds or
    when `cancelled()` gives a reason (a stop, a failed rank, the deadline). A wait longer than
    SLOW seconds is said once (to the rank's log): a quick rendezvous leaves the log the script's."""
    found: dict[int, dict[str, Any]] = {}
    began = time.monotonic()
    give_up, said = began + timeout, False
    while True:
        for rank in range(world):
            if rank not in found:
                record = current_record(remote, rank)
                if record is not None:
                    found[rank] = record
        if len(found) == world:
            return [found[rank] for rank in range(world)]
        missing = ", ".join(str(rank) for rank in range(world) if rank not in found)
        why = cancelled()
        if why:
            raise RendezvousError(f"rendezvous abandoned ({why}); rank(s) {missing} had not published")
        if time.monotonic() >= give_up:
            raise RendezvousError(
                f"rendezvous timeout: rank(s) {missing} did not publish an address within {timeout:g} s "
                f"(set {TIMEOUT_VARIABLE} in environment= to wait longer)"
            )
        if say is not None and not said and time.monotonic() - began >= SLOW:
            said = True
            say(f"[tpi] waiting for rank(s) {missing} to publish their address (up to {timeout:g} s)")
        time.sleep(interval)


def timeout_of(values: dict[str, str]) -> float:
    text = values.get(TIMEOUT_VARIABLE) or os.environ.get(TIMEOUT_VARIABLE, "")
    try:
        return float(text) if text else RENDEZVOUS_TIMEOUT
    except ValueError:
        return RENDEZVOUS_TIMEOUT


def hostfile_text(records: list[dict[str, Any]]) -> str:
    """One line per address, rank 0's first; ranks sharing an address (one loopback) add their
    slots on one line, as OpenMPI refuses a host listed twice with `slots=`."""
    slots: dict[str, int] = {}
    for record in records:
        slots[str(record["address"])] = slots.get(str(record["address"]), 0) + int(record.get("slots", 1))
    return "".join(f"{address} slots={count}\n" for address, count in slots.items())


def interface_variables() -> dict[str, str]:
    """Which interface the frameworks use, where their own guess is wrong: in a local namespace
    the host name resolves to loopback (gloo must use eth0); ranks sharing this machine's
    loopback keep gloo's and OpenMPI's traffic on it."""
    if os.environ.get(NETNS_VARIABLE):
        return {"GLOO_SOCKET_IFNAME": "eth0"}
    if not own_network():
        return {
            "GLOO_SOCKET_IFNAME": "lo",
            "OMPI_MCA_btl_tcp_if_include": "lo",
            "OMPI_MCA_oob_tcp_if_include": "lo",
        }
    return {}


def script_variables(records: list[dict[str, Any]], rank: int, hostfile: Path) -> dict[str, str]:
    """What the script of `rank` gets; the hostfile is written here (the rank's private dir)."""
    hostfile.write_text(hostfile_text(records))
    return {
        **interface_variables(),
        "TPI_NODE_IPS": "\n".join(str(record["address"]) for record in records),
        "TPI_HOSTFILE": str(hostfile),
        "MASTER_ADDR": str(records[0]["address"]),
        "MASTER_PORT": str(records[0].get("master_port", MASTER_PORT)),
        "WORLD_SIZE": str(len(records)),
        "RANK": str(rank),
        "NODE_RANK": str(rank),
        "LOCAL_RANK": "0",
    }
