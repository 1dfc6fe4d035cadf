"""The Kubernetes test bed: a real control plane on 127.0.0.1, built from the Go module proxy.

`build` compiles kube-apiserver, kube-controller-manager, kube-scheduler (module
k8s.io/kubernetes) and etcd (go.etcd.io/etcd/server/v3) from tests/k8s/testbed/go.mod into a
cache keyed by their versions. `up DIR` starts them with client-certificate authentication,
Node+RBAC authorisation and their own kubeconfigs, the default StorageClass with its provisioner
stand-in (provisioner.py), then one or more node agents: stand-ins for the kubelet
(tests/k8s/node_agent.py), the one part that is not real. Pods get a network namespace and an
address each on the bed's bridge (podnet.py). `down DIR` stops and removes all of it.

Command line: scripts/k8s-testbed (build | up DIR [--nodes N] | down DIR | env DIR).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.k8s import mpi_operator, pki, podnet
from tests.k8s.build import BuildError, bin_dir, build, built
from tests.k8s.proc import alive, start_time

REPO = Path(__file__).resolve().parent.parent.parent
NODE_PREFIX = "tpi-standin-"


class BedError(RuntimeError):
    """The bed could not be built or started; the message says which part and why."""


# --- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Bed:
    """One test bed in a directory: its state file lists what it started, in order."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.pki = self.root / "pki"
        self.logs = self.root / "logs"
        self.state_file = self.root / "state.json"

    # state
    def state(self) -> dict[str, Any]:
        if not self.state_file.exists():
            return {"processes": [], "ports": {}}
        return dict(json.loads(self.state_file.read_text()))

    def _save(self, state: dict[str, Any]) -> None:
        pki.write_public(self.state_file, json.dumps(state, indent=1).encode())

    @property
    def kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    @property
    def network(self) -> dict[str, Any]:
        """The pod network (podnet.py): bridge, subnet, gateway, namespace prefix."""
        return dict(self.state().get("network") or {})

    @property
    def gateway(self) -> str:
        """Where pods reach this machine's 127.0.0.1 services, port for port."""
        return str(self.network["gateway"])

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.state()['ports']['apiserver']}"

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        """Start argv detached (its own session), logging to logs/<name>.log; record it at once."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd=self.root,
                env=env,
            )
        state = self.state()
        state["processes"].append({"name": name, "pid": proc.pid, "start": start_time(proc.pid)})
        self._save(state)

    def pid(self, name: str) -> int:
        """The pid of a process this bed started, by its name (e.g. node-tpi-standin-0)."""
        return int(next(e["pid"] for e in self.state()["processes"] if e["name"] == name))

    def check_running(self) -> None:
        for entry in self.state()["processes"]:
            if not alive(entry):
                raise BedError(f"{entry['name']} exited during start-up:\n{self.log_tail(entry['name'])}")

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # TLS requests with the admin certificate
    def _tls(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(self.pki / "admin.crt", self.pki / "admin.key")
        return ctx

    def get(self, url: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, context=self._tls(), timeout=5) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as err:
            return int(err.code), err.read()
        except (urllib.error.URLError, OSError):
            return 0, b""

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        """POST a JSON object to the API server as the admin."""
        data = json.dumps(body).encode()
        request = urllib.request.Request(f"{self.server}{path}", data, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, context=self._tls(), timeout=10) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as err:
            return int(err.code), err.read()

    def wait_for(self, what: str, url: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_running()
            if self.get(url)[0] == 200:
                return
            time.sleep(0.3)
        raise BedError(f"{what} not ready within {timeout:.0f} s ({url})")

    def write_kubeconfig(self, path: Path, user: str, stem: str) -> Path:
        """A kubeconfig for `user` (JSON is YAML) with the certificate pki/<stem>.crt."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "tpi-testbed",
                    "cluster": {"server": self.server, "certificate-authority": str(self.pki / "ca.crt")},
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate": str(self.pki / f"{stem}.crt"),
                        "client-key": str(self.pki / f"{stem}.key"),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "tpi-testbed",
                    "context": {"cluster": "tpi-testbed", "user": user, "namespace": "default"},
                }
            ],
            "current-context": "tpi-testbed",
        }
        pki.write_private(path, json.dumps(config, indent=1).encode())
        return path


# --- up / down -------------------------------------------------------------------------------


def _certificates(bed: Bed) -> None:
    bed.pki.mkdir(parents=True, exist_ok=True)
    pki.make_ca(bed.pki)
    pki.make_service_account_keys(bed.pki)
    pki.issue(bed.pki, "apiserver", "apiserver", serving=True, ips=(bed.gateway,))  # pods use the gateway
    for stem in ("controller-manager-serving", "scheduler-serving"):
        pki.issue(bed.pki, stem, stem, serving=True)
    pki.issue(bed.pki, "admin", "tpi-testbed-admin", orgs=("system:masters",))
    pki.issue(bed.pki, "controller-manager", "system:kube-controller-manager")
    pki.issue(bed.pki, "scheduler", "system:kube-scheduler")
    pki.issue(bed.pki, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", orgs=("system:masters",))


def _start_etcd(bed: Bed, binaries: Path, client: int, peer: int) -> None:
    local = "http://127.0.0.1"
    bed.spawn(
        "etcd",
        [
            str(binaries / "etcd"),
            "--name=testbed",
            f"--data-dir={bed.root / 'etcd'}",
            f"--listen-client-urls={local}:{client}",
            f"--advertise-client-urls={local}:{client}",
            f"--listen-peer-urls={local}:{peer}",
            f"--initial-advertise-peer-urls={local}:{peer}",
            f"--initial-cluster=testbed={local}:{peer}",
            "--unsafe-no-fsync",  # a throw-away store; fsync only slows a shared disk (envtest does this)
            "--log-level=warn",
        ],
    )
    deadline = time.monotonic() + 60
    while _get_plain(f"{local}:{client}/health") != 200:
        bed.check_running()
        if time.monotonic() > deadline:
            raise BedError(f"etcd not healthy within 60 s:\n{bed.log_tail('etcd')}")
        time.sleep(0.2)


def _get_plain(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except (urllib.error.URLError, OSError):
        return 0


def _start_apiserver(bed: Bed, binaries: Path, etcd: int, port: int) -> None:
    p = bed.pki
    bed.spawn(
        "kube-apiserver",
        [
            str(binaries / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={p}",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            "--allow-privileged=true",
            # Nodes by their InternalIP (127.0.0.1), never by hostname: no DNS lookups off loopback.
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-certificate-authority={p / 'ca.crt'}",
            f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
            "--endpoint-reconciler-type=none",  # it would publish 127.0.0.1, which Endpoints reject
            "--profiling=false",
        ],
    )
    bed.wait_for("kube-apiserver", f"https://127.0.0.1:{port}/readyz")


def _component_flags(bed: Bed, kubeconfig: Path, stem: str, port: int) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--tls-cert-file={bed.pki / f'{stem}.crt'}",
        f"--tls-private-key-file={bed.pki / f'{stem}.key'}",
        "--leader-elect=false",
        "--profiling=false",
    ]


def _start_controllers(bed: Bed, binaries: Path, kcm: int, scheduler: int) -> None:
    kcm_config = bed.write_kubeconfig(
        bed.root / "controller-manager.kubeconfig", "system:kube-controller-manager", "controller-manager"
    )
    sched_config = bed.write_kubeconfig(
        bed.root / "scheduler.kubeconfig", "system:kube-scheduler", "scheduler"
    )
    bed.spawn(
        "kube-controller-manager",
        [
            str(binaries / "kube-controller-manager"),
            *_component_flags(bed, kcm_config, "controller-manager-serving", kcm),
            f"--service-account-private-key-file={bed.pki / 'sa.key'}",
            f"--root-ca-file={bed.pki / 'ca.crt'}",
            "--use-service-account-credentials=true",  # each controller under its own RBAC role, as in clusters
        ],
    )
    bed.spawn(
        "kube-scheduler",
        [
            str(binaries / "kube-scheduler"),
            *_component_flags(bed, sched_config, "scheduler-serving", scheduler),
        ],
    )
    bed.wait_for("kube-controller-manager", f"https://127.0.0.1:{kcm}/healthz")
    bed.wait_for("kube-scheduler", f"https://127.0.0.1:{scheduler}/healthz")


def start_node(bed: Bed, name: str, extra: list[str] | None = None) -> None:
    """Start a stand-in node agent (not a kubelet) under the identity system:node:<name>."""
    pki.issue(bed.pki, f"node-{name}", f"system:node:{name}", orgs=("system:nodes",))
    config = bed.write_kubeconfig(bed.root / f"node-{name}.kubeconfig", f"system:node:{name}", f"node-{name}")
    argv = [sys.executable, "-m", "tests.k8s.node_agent", "--kubeconfig", str(config), "--name", name]
    serving_cert, serving_key = pki.issue(
        bed.pki, f"node-{name}-serving", f"system:node:{name}", serving=True
    )
    argv += ["--dir", str(bed.root / "nodes" / name), *(extra or [])]
    argv += ["--network", str(bed.root / "network" / "network.json")]
    argv += [
        "--tls-cert",
        str(serving_cert),
        "--tls-key",
        str(serving_key),
        "--client-ca",
        str(bed.pki / "ca.crt"),
    ]
    bed.spawn(f"node-{name}", argv, env={**os.environ, "PYTHONPATH": str(REPO)})
    bed.wait_for(f"stand-in node {name}", f"{bed.server}/api/v1/nodes/{name}", timeout=60)
    deadline = time.monotonic() + 60
    while not _schedulable(bed.get(f"{bed.server}/api/v1/nodes/{name}")[1]):
        bed.check_running()
        if time.monotonic() > deadline:
            raise BedError(
                f"node {name} still tainted not-ready after 60 s (is kube-controller-manager running?)"
            )
        time.sleep(0.3)


def _schedulable(node_json: bytes) -> bool:
    """Ready, and without the not-ready taint that admission puts on every new node."""
    node = json.loads(node_json or b"{}")
    taints = (node.get("spec") or {}).get("taints") or []
    return not any(t["key"] == "node.kubernetes.io/not-ready" for t in taints)


def _start_storage(bed: Bed) -> None:
    """The default StorageClass and its provisioner stand-in (provisioner.py), under its own user
    bound to the bootstrap ClusterRole system:persistent-volume-provisioner."""
    from tests.k8s import provisioner  # imports the kubernetes client: only when a bed starts

    user = "system:tpi-standin-provisioner"
    pki.issue(bed.pki, "provisioner", user)
    config = bed.write_kubeconfig(bed.root / "provisioner.kubeconfig", user, "provisioner")
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "tpi-standin-provisioner"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "system:persistent-volume-provisioner",
        },
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }
    for path, body in (
        ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding),
        ("/apis/storage.k8s.io/v1/storageclasses", provisioner.storage_class()),
    ):
        code, answer = bed.post(path, body)
        if code != 201:
            raise BedError(f"creating {body['kind']}: HTTP {code} {answer[:300]!r}")
    argv = [sys.executable, "-m", "tests.k8s.provisioner", "--kubeconfig", str(config)]
    argv += ["--dir", str(bed.root / "volumes")]
    bed.spawn("provisioner", argv, env={**os.environ, "PYTHONPATH": str(REPO)})


def up(root: Path, nodes: int = 1) -> Bed:
    """Start a bed in root (created; must hold no running bed). Rolls back on any failure."""
    bed = Bed(root)
    if any(alive(e) for e in bed.state()["processes"]):
        raise BedError(
            f"{bed.root} already has a running test bed: run `scripts/k8s-testbed down {root}` first"
        )
    if not built():
        raise BedError(
            f"the test bed is not built ({bin_dir()} is incomplete): run `scripts/k8s-testbed build`"
        )
    binaries = bin_dir()
    if bed.network:  # a previous bed here that was never brought down
        podnet.destroy(bed.network)
    for old in ("etcd", "nodes", "pki", "network", "volumes"):  # a previous bed's data starts afresh
        shutil.rmtree(bed.root / old, ignore_errors=True)
    bed.root.mkdir(parents=True, exist_ok=True)
    ports = {k: free_port() for k in ("etcd", "etcd_peer", "apiserver", "controller_manager", "scheduler")}
    bed._save({"processes": [], "ports": ports})
    try:
        bed._save({**bed.state(), "network": podnet.create(bed.root)})
        _certificates(bed)
        _start_etcd(bed, binaries, ports["etcd"], ports["etcd_peer"])
        _start_apiserver(bed, binaries, ports["etcd"], ports["apiserver"])
        bed.write_kubeconfig(bed.kubeconfig, "tpi-testbed-admin", "admin")
        _start_controllers(bed, binaries, ports["controller_manager"], ports["scheduler"])
        _start_storage(bed)
        for index in range(nodes):
            start_node(bed, f"{NODE_PREFIX}{index}")
    except BaseException:
        down(root)
        raise
    return bed


def _pid_files(bed: Bed) -> list[Path]:
    """Container processes the node agents recorded (nodes/<node>/pids/*.json)."""
    return sorted((bed.root / "nodes").glob("*/pids/*.json"))


def down(root: Path, grace: float = 15) -> None:
    """Stop everything the bed started, newest first: node agents (they stop their pods), the
    scheduler and controller-manager, the API server, and etcd last (the API server cannot
    shut down cleanly without it)."""
    bed = Bed(root)
    nodes = [e for e in bed.state()["processes"] if e["name"].startswith("node-")]
    rest = [e for e in reversed(bed.state()["processes"]) if e not in nodes]
    for group in (nodes, *([e] for e in rest)):
        live = [e for e in group if alive(e)]
        for entry in live:
            _signal_group(int(entry["pid"]), signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(alive(e) for e in live) and time.monotonic() < deadline:
            time.sleep(0.05)
        for entry in live:
            if alive(entry):
                _signal_group(int(entry["pid"]), signal.SIGKILL)
    for path in _pid_files(bed):  # a node agent killed hard cannot have stopped its containers
        entry = json.loads(path.read_text())
        if alive(entry):
            _signal_group(int(entry["pid"]), signal.SIGKILL)
        path.unlink(missing_ok=True)
    if bed.network:  # after the node agents: a hard-killed one leaves its pods' namespaces
        podnet.destroy(bed.network)
    if bed.state_file.exists():
        bed.state_file.unlink()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


# --- command line ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="k8s-testbed", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("build", help="build (or reuse) the control-plane binaries and mpi-operator")
    p_up = sub.add_parser("up", help="start a bed in DIR and print its KUBECONFIG")
    p_up.add_argument("dir", type=Path)
    p_up.add_argument("--nodes", type=int, default=1, help="stand-in nodes to register (default 1)")
    for verb, text in (
        ("down", "stop everything the bed in DIR started"),
        ("env", "print export KUBECONFIG=..."),
    ):
        sub.add_parser(verb, help=text).add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.verb == "build":
            print(build())
            print(mpi_operator.build())  # issue 16: the MPIJob controller, cached by its own version
        elif args.verb == "up":
            if args.nodes < 0:
                parser.error("--nodes: accepted values are integers >= 0")
            bed = up(args.dir, args.nodes)
            print(f"export KUBECONFIG={bed.kubeconfig}")
        elif args.verb == "down":
            down(args.dir)
        else:
            print(f"export KUBECONFIG={Bed(args.dir).kubeconfig}")
    except (BedError, BuildError, podnet.NetError) as err:
        print(f"k8s-testbed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
