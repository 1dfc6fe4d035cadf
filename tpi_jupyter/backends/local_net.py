"""The local backend's network for multi-node tasks: one network namespace per rank on a bridge.

Each rank of a task with `parallelism > 1` runs its script (and, for `launch=mpi`, its SSH server)
in a namespace `tpl<tag>-<rank>` whose `eth0` is one end of a veth pair on the task's bridge
`tplb<tag>`, with its own address from a free /24 of 10.245.0.0/16. MPI and torch.distributed
then really cross a network. The agents themselves stay in this machine's namespace, so they
reach the remote wherever it is. Namespaces have no default route: ranks reach each other only.

This needs root (CAP_NET_ADMIN) and iproute2; without them (or with `TPI_LOCAL_NETNS=0`) the ranks
share this machine's loopback, and the group writes a one-line note in the events.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

POOL = ipaddress.IPv4Network("10.245.0.0/16")
LOCK = Path("/run/tpi-local-net.lock")  # one machine-wide lock: two tasks never pick one subnet
NETWORK_FILE = "network.json"  # in the task's local base: what `destroy` removes
MAX_RANKS = 250  # a /24 holds the gateway and up to 253 ranks


class NetError(RuntimeError):
    """A command of the task's network failed; the message names it and its error."""


def run(*argv: str, check: bool = True) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:  # a NetError, so that the rollback around it runs (a bridge was left once)
        raise NetError(f"{argv[0]} is not installed: run scripts/install-tools") from None
    if check and done.returncode != 0:
        raise NetError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def unavailable_reason(parallelism: int) -> str:
    """Why namespaces cannot be made here ("" when they can)."""
    if os.environ.get("TPI_LOCAL_NETNS") == "0":
        return "TPI_LOCAL_NETNS=0"
    if parallelism > MAX_RANKS:
        return f"more than {MAX_RANKS} ranks"
    if not shutil.which("ip"):
        return "iproute2 (the ip command) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    return ""


def names(base: Path) -> dict[str, str]:
    tag = hashlib.sha256(str(base.resolve()).encode()).hexdigest()[:8]
    return {"bridge": f"tplb{tag}", "prefix": f"tpl{tag}-", "veth": f"tl{tag}r"}


def used_networks() -> list[ipaddress.IPv4Network]:
    """The networks of this machine's addresses and routes: a new subnet overlaps none of them."""
    used = []
    for line in run("ip", "-4", "-o", "addr", "show").splitlines():
        match = re.search(r"inet (\S+)", line)
        if match:
            used.append(ipaddress.IPv4Interface(match.group(1)).network)
    for line in run("ip", "-4", "route", "show", "table", "all").splitlines():
        first = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            if first not in ("default", "broadcast", "local", "unreachable", "multicast"):
                used.append(ipaddress.IPv4Network(first, strict=False))
    return used


def create(base: Path, parallelism: int) -> dict[str, Any]:
    """The bridge and one namespace per rank; the description (also saved in the base).

    Any failure removes what was made and raises NetError."""
    net: dict[str, Any] = names(base)
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subnet = free_subnet(POOL)
        hosts = list(subnet.hosts())
        net |= {"subnet": str(subnet), "gateway": str(hosts[0]), "ranks": {}}
        _save(base, net)  # before the first link: a crash midway is still cleaned by destroy
        try:
            add_bridge(net["bridge"], net["gateway"])
            for rank in range(parallelism):
                net["ranks"][str(rank)] = _attach(net, rank, str(hosts[rank + 1]))
                _save(base, net)
        except NetError:
            destroy(base)
            raise
    return net


def free_subnet(pool: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
    """The first /24 of the pool that overlaps no network of this machine (callers hold a lock)."""
    used = used_networks()
    found = next((s for s in pool.subnets(new_prefix=24) if not any(s.overlaps(u) for u in used)), None)
    if found is None:
        raise NetError(f"no free /24 left in {pool}")
    return found


def add_bridge(bridge: str, gateway: str) -> None:
    run("ip", "link", "add", bridge, "type", "bridge")
    run("ip", "addr", "add", f"{gateway}/24", "dev", bridge)
    run("ip", "link", "set", bridge, "up")


def _attach(net: dict[str, Any], rank: int, address: str) -> dict[str, str]:
    namespace = f"{net['prefix']}{rank}"
    plug(net["bridge"], namespace, f"{net['veth']}{rank}", address)
    return {"namespace": namespace, "address": address}


def plug(bridge: str, namespace: str, host_end: str, address: str) -> None:
    """A new namespace whose `eth0` (address/24) is the peer of `host_end` on the bridge."""
    run("ip", "netns", "add", namespace)
    run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", namespace)
    run("ip", "link", "set", host_end, "master", bridge, "up")
    run("ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
    run("ip", "-n", namespace, "link", "set", "eth0", "up")
    run("ip", "-n", namespace, "link", "set", "lo", "up")


def _save(base: Path, net: dict[str, Any]) -> None:
    temp = base / f".{NETWORK_FILE}.tmp"
    temp.write_text(json.dumps(net))
    os.replace(temp, base / NETWORK_FILE)


def load(base: Path) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = json.loads((base / NETWORK_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return found


def _namespaces(net: dict[str, Any]) -> list[str]:
    listed = [
        line.split()[0] for line in run("ip", "netns", "list", check=False).splitlines() if line.strip()
    ]
    return [name for name in listed if name.startswith(net["prefix"])]


def kill_inside(namespace: str) -> None:
    """SIGKILL every process in a namespace (an sshd's sessions carry no task mark)."""
    for pid in run("ip", "netns", "pids", namespace, check=False).split():
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def destroy(base: Path) -> None:
    """Kill what runs in the task's namespaces, delete them, their veths and the bridge; idempotent."""
    net = load(base)
    if net is None or not shutil.which("ip"):
        return
    for namespace in _namespaces(net):
        kill_inside(namespace)
        rank = namespace.removeprefix(net["prefix"])
        run("ip", "link", "del", f"{net['veth']}{rank}", check=False)
        run("ip", "netns", "del", namespace, check=False)
    run("ip", "link", "del", net["bridge"], check=False)
    (base / NETWORK_FILE).unlink(missing_ok=True)


def leftovers(base: Path) -> list[str]:
    """What of the task's network still exists (for tests and for destroy's check)."""
    net = names(base)
    found = [
        name for name in run("ip", "netns", "list", check=False).split() if name.startswith(net["prefix"])
    ]
    links = run("ip", "-br", "link", "show", check=False).splitlines()
    found += [
        line.split()[0].split("@")[0] for line in links if line.startswith((net["bridge"], net["veth"]))
    ]
    return found


def for_group(base: Path, parallelism: int) -> tuple[dict[str, Any] | None, str]:
    """The task's network (or None: the ranks share loopback) and a one-line note for the events."""
    why = unavailable_reason(parallelism)
    if not why:
        try:
            net = create(base, parallelism)
            return net, f"a network namespace per rank on {net['subnet']}"
        except NetError as error:
            why = str(error)
    return None, f"no network namespace per rank here ({why}): the ranks share this machine's loopback"


def rank_environment(net: dict[str, Any] | None, rank: int) -> dict[str, str]:
    """What the agent of `rank` is told: its namespace and address (loopback without a network)."""
    if net is None:
        return {"TPI_NODE_ADDRESS": "127.0.0.1"}
    place = net["ranks"][str(rank)]
    return {"TPI_NETNS": place["namespace"], "TPI_NODE_ADDRESS": place["address"]}


def end_rank(net: dict[str, Any] | None, rank: int) -> None:
    """A rank's machine ended: what still runs in its namespace (sshd sessions) ends with it."""
    if net is not None:
        kill_inside(net["ranks"][str(rank)]["namespace"])
