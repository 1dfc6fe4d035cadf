"""The local machine: an unprivileged `sshd` on a loopback port, with the machine's own keys.

Its disk is a directory under the machine's files; its processes (sshd, the startup script,
every SSH session through `SetEnv`) carry `TPI_PROCESS_MARK=machine:<id>` in their environment,
so stop and destroy find each of them even after a `setsid`. They start with a clean
environment: nothing of the caller's (a `REPO_TOKEN` above all) reaches the machine.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..agent import PROCESS_MARK
from ..backends.kit.steps import Steps
from ..backends.local_group import kill_marked
from ..spec import SpecError
from .driver import MachineSpec, SshTarget, Status
from .keys import new_key
from .registry import files_dir, remove_files

SSHD = "/usr/sbin/sshd"
READY_WAIT = 10.0
KEPT_ENV = ("PATH", "LANG", "LC_ALL", "TZ")  # the rest of the caller's environment stays behind


@dataclass
class LocalMachineState:
    dir: str = ""
    port: int = 0
    user: str = ""
    key_file: str = ""
    sshd_pid: int = 0
    startup_pid: int = 0
    stopped: bool = False


def mark(machine_id: str) -> str:
    return f"machine:{machine_id}"


def machine_env(spec: MachineSpec, state: LocalMachineState) -> dict[str, str]:
    env = {key: os.environ[key] for key in KEPT_ENV if key in os.environ}
    disk = str(Path(state.dir) / "disk")
    env.update({"HOME": disk, "USER": state.user, "LOGNAME": state.user, "SHELL": "/bin/bash",
                PROCESS_MARK: mark(spec.id), "TPI_MACHINE": spec.id, "TPI_MACHINE_DIR": state.dir})  # fmt: skip
    return env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _alive(pid: int) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, PermissionError, FileNotFoundError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class LocalMachineDriver:
    name = "local"
    state_type = LocalMachineState
    stop_verb = "stop"
    release_command = 'touch "$TPI_MACHINE_DIR/released"; kill -TERM "$(cat "$TPI_MACHINE_DIR/sshd.pid")"'

    def new_state(self, spec: MachineSpec) -> LocalMachineState:
        return LocalMachineState(dir=str(files_dir(spec.id)), user=getpass.getuser())

    def plan(self, spec: MachineSpec) -> list[str]:
        return [
            f"files: {files_dir(spec.id)} (its disk, its sshd's configuration and host key)",
            "ssh: a fresh ed25519 key for you (0600) and one for the machine's host",
            f"machine: {SSHD} on 127.0.0.1 (a free port), logins as {getpass.getuser()} with that key only",
            "startup script: run once, detached, in the machine's disk" if spec.startup_script else "",
        ]

    def create(self, spec: MachineSpec, state: LocalMachineState, steps: Steps) -> None:
        if not Path(SSHD).exists():
            raise SpecError(f"cloud: local machines need {SSHD}; accepted: apt-get install openssh-server")
        root = Path(state.dir)
        steps.run("machine files", lambda: self._files(spec, state, root))
        steps.run("sshd", lambda: self._sshd(spec, state))
        if spec.startup_script:
            steps.run("startup script", lambda: self._startup(spec, state))

    def _files(self, spec: MachineSpec, state: LocalMachineState, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=False, mode=0o700)
        (root / "disk").mkdir(mode=0o700)
        state.key_file = str(root / "id_ed25519")
        public = new_key(Path(state.key_file), f"tpi-machine {spec.id}")
        _write(root / "host_key.pub", new_key(root / "host_key", f"host {spec.id}") + "\n")
        _write(root / "authorized_keys", public + "\n")
        if spec.startup_script:
            _write(root / "startup.sh", spec.startup_script)

    def _config(self, spec: MachineSpec, state: LocalMachineState) -> Path:
        root = Path(state.dir)
        lines = [
            f"ListenAddress 127.0.0.1:{state.port}", f"HostKey {root / 'host_key'}",
            f"AuthorizedKeysFile {root / 'authorized_keys'}", f"PidFile {root / 'sshd.pid'}",
            f"AllowUsers {state.user}", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password", "UsePAM no", "StrictModes no", "X11Forwarding no",
            # HOME is the machine's disk, as for its startup script: a login reads the machine's
            # own dotfiles, not this computer's (whose shell setup may wait on locks of its own)
            f"SetEnv {PROCESS_MARK}={mark(spec.id)} TPI_MACHINE={spec.id} HOME={Path(state.dir) / 'disk'}",
        ]  # fmt: skip
        _write(root / "sshd_config", "\n".join(lines) + "\n")
        return root / "sshd_config"

    def _sshd(self, spec: MachineSpec, state: LocalMachineState) -> None:
        if os.geteuid() == 0:  # root's sshd separates privileges into this directory
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        for _ in range(3):  # a free port may be taken between the probe and sshd's bind
            state.port = _free_port()
            process = self._spawn(spec, state, [SSHD, "-D", "-e", "-f", str(self._config(spec, state))],
                                  Path(state.dir) / "sshd.log")  # fmt: skip
            state.sshd_pid = process.pid
            if self._ready(process, state.port):
                public = (Path(state.dir) / "host_key.pub").read_text().split()
                _write(Path(state.dir) / "known_hosts", f"[127.0.0.1]:{state.port} {public[0]} {public[1]}\n")
                return
        log = (Path(state.dir) / "sshd.log").read_text(errors="replace").strip().splitlines()
        raise RuntimeError(f"sshd did not start: {log[-1] if log else 'no log'}")

    def _ready(self, process: subprocess.Popen[bytes], port: int) -> bool:
        limit = time.monotonic() + READY_WAIT
        while time.monotonic() < limit:
            if process.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
            time.sleep(0.05)
        process.kill()
        return False

    def _spawn(self, spec: MachineSpec, state: LocalMachineState, argv: list[str],
               log: Path) -> subprocess.Popen[bytes]:  # fmt: skip
        with open(log, "ab") as out:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       cwd=Path(state.dir) / "disk", env=machine_env(spec, state),
                                       start_new_session=True)  # fmt: skip
        # Reaped when it ends (a kernel lives long: no zombie per machine); it outlives this process.
        threading.Thread(target=process.wait, daemon=True).start()
        return process

    def _startup(self, spec: MachineSpec, state: LocalMachineState) -> None:
        root = Path(state.dir)
        process = self._spawn(spec, state, ["/bin/bash", str(root / "startup.sh")], root / "startup.log")
        state.startup_pid = process.pid

    def read(self, spec: MachineSpec, state: LocalMachineState) -> Status:
        root = Path(state.dir)
        if not root.is_dir():
            return Status("gone")
        if (root / "released").exists():
            return Status("released")
        if state.stopped:
            return Status("stopped")
        return Status("running", f"127.0.0.1:{state.port}") if _alive(state.sshd_pid) else Status("gone")

    def ssh(self, spec: MachineSpec, state: LocalMachineState) -> SshTarget:
        return SshTarget(state.user, "127.0.0.1", state.port, state.key_file,
                         str(Path(state.dir) / "known_hosts"), pinned=True)  # fmt: skip

    def stop(self, spec: MachineSpec, state: LocalMachineState) -> None:
        """Every process of the machine ends; its disk and keys stay."""
        end_processes(spec, state)
        state.stopped, state.sshd_pid, state.startup_pid = True, 0, 0

    def start(self, spec: MachineSpec, state: LocalMachineState) -> None:
        self._sshd(spec, state)
        state.stopped = False

    def delete(self, spec: MachineSpec, state: LocalMachineState) -> None:
        end_processes(spec, state)
        remove_files(spec.id)


def end_processes(spec: MachineSpec, state: LocalMachineState) -> None:
    """sshd and its sessions (sshd rewrites its title over its environment, so they are found as
    the children of listeners started with this machine's configuration), then every marked one."""
    import psutil

    config = str(Path(state.dir) / "sshd_config")
    listeners = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if config in " ".join(process.info["cmdline"] or ()):
                listeners.append(process)
    found = list(listeners)
    for listener in listeners:
        with contextlib.suppress(psutil.Error):
            found += listener.children(recursive=True)
    for process in found:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(found, timeout=5)
    left = kill_marked(mark(spec.id))
    if left:
        raise RuntimeError(f"processes of machine {spec.name} still run: {', '.join(left)}")


def _write(path: Path, text: str) -> None:
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(handle, "w") as out:
        out.write(text)
