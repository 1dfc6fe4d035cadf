"""`launch=mpi`: rank 0 runs the script (which calls `mpirun`); the other ranks serve SSH.

The client makes a fresh ed25519 key per task at launch and writes it to `.tpi/ssh/id_ed25519`,
kept as private as `.tpi/env`. Each worker writes it 0600 into its private directory, derives
`authorized_keys` from it, makes a host key, and runs Debian's `sshd` unprivileged-compatible
(its own config, no PAM, key only, on port 22 in a network of its own, else a free port). Rank 0
gets an `ssh_config` naming every worker's port and the key, passed to `mpirun` through
`OMPI_MCA_plm_rsh_args`, so `mpirun --hostfile $TPI_HOSTFILE` reaches the workers with no setup.
Before the script, rank 0 logs in to every worker once: one that cannot be reached fails the task
with a line naming it. SSH sessions get the worker's PATH rather than the user's ~/.bashrc.

Nothing here prints the key; no log line names its path's content.

No IPython or Jupyter imports: this runs on bare machines.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from . import layout
from .multinode import RemoteLike, netns_prefix

SSHD = "/usr/sbin/sshd"  # sshd must be started by its absolute path
READY_TIMEOUT = 20.0
# OpenMPI 4.1's daemon now and then crashes writing its hardware topology into a shared-memory
# hole (hwloc_shmem_topology_write); that segment only saves each process a topology scan.
OPENMPI_FIXES = {"OMPI_MCA_rtc_hwloc_vmhole": "none"}
SESSION_PATHS = ("PATH", "LD_LIBRARY_PATH")  # where mpirun's daemons are found on a worker
LOGIN_TIMEOUT = 30.0  # rank 0's first log-in to every worker, retried until then
LOST_HEARTBEATS = 3  # a worker whose heartbeat is this many intervals old is lost
MAX_RESTARTS = 5  # whole-job restarts before the task fails (a paid machine never loops)


class LaunchError(Exception):
    """The MPI launch cannot go on; the message is the one line to show."""


def make_key() -> bytes:
    """A fresh ed25519 private key, OpenSSH format (the client, at launch)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )


def write_private(path: Path, data: bytes) -> None:
    """A 0600 file from its first byte (never world-readable, not even briefly)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def fetch_key(remote: RemoteLike, private: Path) -> Path:
    """The task's key, written 0600 on this machine."""
    directory = private / "ssh"
    directory.mkdir(mode=0o700, exist_ok=True)
    key = directory / "id_ed25519"
    try:
        text = remote.read_text(layout.SSH_KEY)
    except FileNotFoundError:
        raise LaunchError("launch=mpi: the task's SSH key is missing from the remote") from None
    write_private(key, text.encode())
    return key


def _keygen(*argv: str) -> str:
    if not shutil.which("ssh-keygen"):
        raise LaunchError("launch=mpi needs OpenSSH on every machine (Debian: openssh-server)")
    done = subprocess.run(["ssh-keygen", *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LaunchError(f"ssh-keygen failed with code {done.returncode}")  # its output may name the key
    return done.stdout


def _session_variables() -> list[tuple[str, str]]:
    found = [(name, os.environ.get(name, "")) for name in SESSION_PATHS] + list(OPENMPI_FIXES.items())
    return [(name, value) for name, value in found if value and '"' not in value and "\n" not in value]


def sshd_config(directory: Path, address: str, port: int) -> Path:
    user = getpass.getuser()
    lines = [
        f"Port {port}", f"ListenAddress {address}", f"HostKey {directory / 'host_key'}",
        f"AuthorizedKeysFile {directory / 'authorized_keys'}", f"PidFile {directory / 'sshd.pid'}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password", f"AllowUsers {user}",
        "PermitUserEnvironment no", "X11Forwarding no", "LogLevel ERROR",
        # bash reads ~/.bashrc for a command over SSH unless it is nested: a user's rc file that
        # stalls (pyenv's rehash lock) or prints would hold or break mpirun's daemons. Sessions
        # get this rank's PATH instead, the one its script would get.
        "SetEnv SHLVL=1" + "".join(f' "{name}={value}"' for name, value in _session_variables()),
    ]  # fmt: skip
    config = directory / "sshd_config"
    config.write_text("\n".join(lines) + "\n")
    return config


def start_sshd(key: Path, address: str, port: int) -> subprocess.Popen[bytes]:
    """This worker's SSH server, accepting only the task's key; returns once it listens."""
    if not os.path.exists(SSHD):
        raise LaunchError(f"launch=mpi: {SSHD} is missing on this machine (Debian: openssh-server)")
    directory = key.parent
    public = _keygen("-y", "-f", str(key))
    write_private(directory / "authorized_keys", public.encode())
    (directory / "host_key").unlink(missing_ok=True)
    (directory / "host_key.pub").unlink(missing_ok=True)
    _keygen("-q", "-t", "ed25519", "-N", "", "-f", str(directory / "host_key"))
    if os.geteuid() == 0:  # sshd as root wants its privilege-separation directory
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    config = sshd_config(directory, address, port)
    log = open(directory / "sshd.log", "ab")  # noqa: SIM115 (the server keeps it)
    server = subprocess.Popen(
        [*netns_prefix(), SSHD, "-D", "-e", "-f", str(config)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    log.close()
    give_up = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < give_up:
        if server.poll() is not None:
            raise LaunchError(
                f"launch=mpi: sshd exited with code {server.returncode} (see {directory}/sshd.log)"
            )
        try:
            with socket.create_connection((address, port), timeout=1):
                return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise LaunchError(f"launch=mpi: sshd did not listen on {address}:{port} within {READY_TIMEOUT:g} s")


def client_config(key: Path, records: list[dict[str, Any]]) -> Path:
    """Rank 0's ssh_config: each worker's address, port and the task's key; no host key prompts
    (the workers' host keys are fresh per boot, the network is the task's own)."""
    user = getpass.getuser()
    blocks = []
    for record in records[1:]:
        blocks += [
            f"Host {record['address']}", f"  Port {int(record.get('ssh_port', 22))}", f"  User {user}",
            f"  IdentityFile {key}", "  IdentitiesOnly yes", "  BatchMode yes",
            "  StrictHostKeyChecking no", "  UserKnownHostsFile /dev/null", "  LogLevel ERROR",
        ]  # fmt: skip
    config = key.parent / "config"
    config.write_text("\n".join(blocks) + "\n")
    return config


def _login(config: Path, address: str) -> str:
    """One log-in to a worker as mpirun will make it: "" if it worked, else ssh's last line."""
    argv = [*netns_prefix(), "ssh", "-F", str(config), "-o", "ConnectTimeout=5", address, "true"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=LOGIN_TIMEOUT, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"no answer within {LOGIN_TIMEOUT:g} s"
    if done.returncode == 0:
        return ""
    lines = done.stderr.strip().splitlines()
    return lines[-1] if lines else f"ssh exited with code {done.returncode}"


def reach_workers(config: Path, records: list[dict[str, Any]], timeout: float = LOGIN_TIMEOUT) -> None:
    """Log in to every worker before the script runs, so that a worker out of reach fails the task
    with one line naming it and ssh's reason (rather than OpenMPI's page of possible causes)."""
    if not shutil.which("ssh"):
        raise LaunchError("launch=mpi needs the OpenSSH client on rank 0's machine (Debian: openssh-client)")
    pending = [str(record["address"]) for record in records[1:]]
    give_up = time.monotonic() + timeout
    while True:
        errors = {address: _login(config, address) for address in pending}
        pending = [address for address, error in errors.items() if error]
        if not pending:
            return
        if time.monotonic() >= give_up:
            address = pending[0]
            raise LaunchError(
                f"launch=mpi: rank 0 cannot log in to worker {address} by SSH: {errors[address]}"
            )
        time.sleep(0.5)


def launcher_variables(config: Path) -> dict[str, str]:
    """What rank 0's script needs so that a plain `mpirun` uses the task's SSH setup."""
    variables = {"OMPI_MCA_plm_rsh_args": f"-F {config}", "TPI_SSH_CONFIG": str(config), **OPENMPI_FIXES}
    if os.geteuid() == 0:  # machines run the agent as root; OpenMPI refuses root unless told
        variables |= {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    return variables


def _heartbeat_age(remote: RemoteLike, rank: int, boot: int) -> float:
    try:
        return time.time() - layout.parse_timestamp(remote.read_text(layout.heartbeat(rank, boot)).strip())
    except (FileNotFoundError, ValueError):
        return 0.0  # not written yet: a machine just starting is not lost


def lost_worker(remote: RemoteLike, boots: dict[int, int], heartbeat_interval: float) -> str:
    """Which worker was lost since the job started ("" if none): a new boot, or a silent one."""
    from .multinode import latest_boot

    for rank, boot in boots.items():
        now = latest_boot(remote, rank)
        if now > boot:
            return f"rank {rank} was lost (boot {now} took its place)"
        silent = _heartbeat_age(remote, rank, boot) > LOST_HEARTBEATS * heartbeat_interval
        if silent and layout.STATUS not in remote.names(layout.rank_dir(rank)):
            return f"rank {rank} was lost (no heartbeat for {LOST_HEARTBEATS * heartbeat_interval:g} s)"
    return ""


def all_alive_since(remote: RemoteLike, boots: dict[int, int], since: float) -> bool:
    """Every worker's current boot beat after `since`: a failed mpirun was the job's own fault."""
    for rank, boot in boots.items():
        try:
            beat = layout.parse_timestamp(remote.read_text(layout.heartbeat(rank, boot)).strip())
        except (FileNotFoundError, ValueError):
            return False
        if beat <= since:
            return False
    return True


def record_restart(remote: RemoteLike, detail: str) -> int:
    """Append a whole-job restart to `reports/0/restarts.json`; how many there were."""
    try:
        restarts: list[dict[str, Any]] = json.loads(remote.read_text(layout.restarts()))
    except (FileNotFoundError, ValueError):
        restarts = []
    restarts.append({"time": time.time(), "detail": detail})
    remote.write(layout.restarts(), json.dumps(restarts).encode())
    return len(restarts)


def rank0_result(remote: RemoteLike) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = json.loads(remote.read_text(layout.status(0)))
    except (FileNotFoundError, ValueError):
        return None
    return found
