"""The test bed's pod network: a network namespace and an address per pod, on a bridge.

Each bed owns one bridge on this machine (`tpib<hash>`) with a private /24 from 10.244.0.0/16
(the first one no interface of this machine uses), the gateway `.1` on the bridge. Each pod gets
a network namespace `tpi-<hash>-<pod uid>` whose `eth0` is one end of a veth pair plugged into
the bridge, with the next free address: pod IPs are real, pods talk to each other across the
bridge, and the API server (on this machine) reaches them by their IP, so its pod proxy works.

Pods reach this machine's 127.0.0.1 services (the API server, moto, storage emulators) at the
gateway: packets from the bridge to the gateway are DNATed to 127.0.0.1, the same port
(`route_localnet` on the bridge only). Pods have no default route: they reach the bed's /24 and
nothing else. Addresses exist only on the bed's bridge and in the namespaces it creates.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

POOL = ipaddress.ip_network("10.244.0.0/16")
LOCK = Path("/run/tpi-k8s-testbed.lock")  # one machine-wide lock: two beds never pick one subnet


class NetError(RuntimeError):
    """A command of the pod network failed; the message names it and its error."""


def run(*argv: str, check: bool = True) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:  # a NetError, so that the rollback around it runs (a bridge left once)
        raise NetError(f"{argv[0]} is not installed: run scripts/install-tools") from None
    if check and done.returncode != 0:
        raise NetError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _dnat(bridge: str, gateway: str) -> list[str]:
    rule = ["PREROUTING", "-i", bridge, "-d", gateway, "-j", "DNAT", "--to-destination", "127.0.0.1"]
    return [*rule, "-m", "comment", "--comment", f"tpi-jupyter k8s test bed {bridge}"]


def _used_networks() -> list[ipaddress.IPv4Network]:
    """The networks of this machine's addresses and routes: a pod subnet overlaps none of them."""
    used = []
    for line in run("ip", "-4", "-o", "addr", "show").splitlines():
        match = re.search(r"inet (\S+)", line)
        if match:
            used.append(ipaddress.IPv4Interface(match.group(1)).network)
    for line in run("ip", "-4", "route", "show", "table", "all").splitlines():
        first = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            if first not in ("default", "broadcast", "local", "unreachable"):
                used.append(ipaddress.IPv4Network(first, strict=False))
    return used


def create(root: Path) -> dict[str, Any]:
    """The bed's bridge, gateway and DNAT rule; returns the description the node agents read."""
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    net = {"bridge": f"tpib{tag}", "prefix": f"tpi-{tag}-", "ips": str(root / "network" / "ips")}
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        used = _used_networks()
        free = (s for s in POOL.subnets(new_prefix=24) if not any(s.overlaps(u) for u in used))
        subnet = next(free, None)
        if subnet is None:
            raise NetError(f"no free /24 left in {POOL} for the pod network")
        net |= {"subnet": str(subnet), "gateway": str(subnet[1])}
        try:
            run("ip", "link", "add", net["bridge"], "type", "bridge")
            run("ip", "addr", "add", f"{net['gateway']}/24", "dev", net["bridge"])
            run("ip", "link", "set", net["bridge"], "up")
        except NetError:
            destroy(net)
            raise
    try:
        run("sysctl", "-q", "-w", f"net.ipv4.conf.{net['bridge']}.route_localnet=1")
        run("iptables", "-t", "nat", "-A", *_dnat(net["bridge"], net["gateway"]))
    except NetError:
        destroy(net)
        raise
    Path(net["ips"]).mkdir(parents=True, exist_ok=True)
    (root / "network" / "network.json").write_text(json.dumps(net))
    return net


def destroy(net: dict[str, Any]) -> None:
    """Remove every pod namespace and veth pair, the DNAT rule and the bridge."""
    for name in namespaces(net):
        detach(net, name, "")
    for line in run("ip", "-br", "link", "show", "master", net["bridge"], check=False).splitlines():
        run("ip", "link", "del", line.split()[0].split("@")[0], check=False)  # a stray pair
    if "gateway" in net:
        with contextlib.suppress(NetError):
            for _ in range(10):  # until none is left (-D fails then); a rule added twice goes twice
                run("iptables", "-t", "nat", "-D", *_dnat(net["bridge"], net["gateway"]))
    run("ip", "link", "del", net["bridge"], check=False)
    for ip_file in Path(net["ips"]).glob("*") if Path(net["ips"]).is_dir() else []:
        ip_file.unlink(missing_ok=True)


def namespaces(net: dict[str, Any]) -> list[str]:
    """The bed's pod namespaces that exist now."""
    names = [line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()]
    return [n for n in names if n.startswith(net["prefix"])]


def dnat_rules(net: dict[str, Any]) -> list[str]:
    return [r for r in run("iptables", "-t", "nat", "-S", "PREROUTING").splitlines() if net["bridge"] in r]


def _allocate(net: dict[str, Any], owner: str) -> str:
    """The next free address (a file per address, created exclusively: nodes share the pool)."""
    subnet = ipaddress.ip_network(net["subnet"])
    for address in list(subnet.hosts())[1:]:
        try:
            fd = os.open(Path(net["ips"]) / str(address), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as out:
            out.write(owner)
        return str(address)
    raise NetError(f"the pod network {subnet} is full")


def veth(namespace: str) -> str:
    """The host end of a pod's veth pair (interface names have at most 15 characters)."""
    return "tv" + hashlib.sha256(namespace.encode()).hexdigest()[:12]


def link_exists(name: str) -> bool:
    return bool(run("ip", "-br", "link", "show", "dev", name, check=False).strip())


def attach(net: dict[str, Any], uid: str) -> tuple[str, str]:
    """A namespace and an address for the pod `uid`; returns (namespace name, pod IP)."""
    name = f"{net['prefix']}{uid}"
    host_end = veth(name)
    address = _allocate(net, name)
    try:
        run("ip", "netns", "add", name)
        run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", name)
        run("ip", "link", "set", host_end, "master", net["bridge"], "up")
        run("ip", "-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
        run("ip", "-n", name, "link", "set", "eth0", "up")
        run("ip", "-n", name, "link", "set", "lo", "up")
    except NetError:
        detach(net, name, address)
        raise
    return name, address


def detach(net: dict[str, Any], name: str, address: str) -> None:
    """Delete the pod's veth pair and namespace, and free its address. The pair is deleted by
    name: a process left in the namespace would keep it, and the pair with it, alive."""
    run("ip", "link", "del", veth(name), check=False)
    run("ip", "netns", "del", name, check=False)
    if address:
        (Path(net["ips"]) / address).unlink(missing_ok=True)
