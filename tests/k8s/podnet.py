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
from pathlib import Path
from typing import Any

from tpi_jupyter.backends.local_net import NetError, add_bridge, free_subnet, plug, run  # the product's own

POOL = ipaddress.IPv4Network("10.244.0.0/16")
LOCK = Path("/run/tpi-k8s-testbed.lock")  # one machine-wide lock: two beds never pick one subnet


def _dnat(bridge: str, gateway: str) -> list[str]:
    rule = ["PREROUTING", "-i", bridge, "-d", gateway, "-j", "DNAT", "--to-destination", "127.0.0.1"]
    return [*rule, "-m", "comment", "--comment", f"tpi-jupyter k8s test bed {bridge}"]


def create(root: Path) -> dict[str, Any]:
    """The bed's bridge, gateway and DNAT rule; returns the description the node agents read."""
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    net = {"bridge": f"tpib{tag}", "prefix": f"tpi-{tag}-", "ips": str(root / "network" / "ips")}
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subnet = free_subnet(POOL)
        net |= {"subnet": str(subnet), "gateway": str(subnet[1])}
        try:
            add_bridge(net["bridge"], net["gateway"])
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
        plug(net["bridge"], name, host_end, address)
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
