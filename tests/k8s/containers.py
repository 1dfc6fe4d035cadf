"""One container of the kubelet stand-in: a local process in its own mount and UTS namespaces.

The image is not pulled (there is no container runtime): the command runs on an overlay of this
machine's root filesystem (see container_init.py). Stopping follows the kubelet: SIGTERM to the
container's main process, SIGKILL to everything it started once the grace period is over, and
anything left when the main process ends is killed too (as a PID namespace's end would).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tests.k8s.proc import start_time

INIT = Path(__file__).resolve().parent / "container_init.py"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Container:
    """A run of one container: start() once; poll() until it returns an exit code."""

    def __init__(self, spec: dict[str, Any], work: Path, pid_dir: Path, restarts: int = 0) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.id = f"standin://{uuid.uuid4().hex}"
        self.work = work / f"{self.name}-{restarts}"
        self.pid_file = pid_dir / f"{self.id.removeprefix('standin://')}.json"
        self.restarts = restarts
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = ""
        self.finished_at = ""
        self.ended = 0.0  # time.monotonic() at exit, for the restart delay
        self.exit_code: int | None = None
        self.reason = ""
        self.message = ""

    def start(
        self,
        argv: list[str],
        env: dict[str, str],
        mounts: list[dict[str, Any]],
        hostname: str,
        log: Path,
        netns: str | None = None,
        lower: str = "/",
    ) -> None:
        """Run argv in new mount and UTS namespaces, inside the pod's network namespace if any,
        on an overlay of `lower` (a local image's root filesystem, images.py)."""
        self.work.mkdir(parents=True, exist_ok=True)
        spec = {"dir": str(self.work), "mounts": mounts, "hostname": hostname, "argv": argv, "lower": lower}
        spec["workdir"] = self.spec.get("workingDir") or "/"
        # argv may hold expanded $(VAR)s of Secret values: owner-only, like the kubelet's files
        fd = os.open(self.work / "spec.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(spec))
        launcher = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
        launcher += ["unshare", "--mount", "--uts", "--propagation", "private"]
        launcher += [sys.executable, "-I", str(INIT), str(self.work / "spec.json")]
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                launcher, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(json.dumps({"pid": self.proc.pid, "start": start_time(self.proc.pid)}))
        self.started_at = now()

    def fail_to_start(self, message: str) -> None:
        """Record a container the stand-in could not create (as a runtime's StartError)."""
        self.started_at = self.finished_at = now()
        self.ended = time.monotonic()
        self.exit_code, self.reason, self.message = 128, "StartError", message

    def poll(self) -> int | None:
        if self.exit_code is not None or self.proc is None:
            return self.exit_code
        code = self.proc.poll()
        if code is None:
            return None
        self._killpg(signal.SIGKILL)  # whatever the main process left behind
        self.pid_file.unlink(missing_ok=True)
        self.exit_code = 128 - code if code < 0 else code  # killed by signal N: 128 + N
        self.reason = "Completed" if self.exit_code == 0 else "Error"
        self.finished_at = now()
        self.ended = time.monotonic()
        return self.exit_code

    def stop(self, grace: float) -> int:
        """SIGTERM, then SIGKILL after `grace` seconds; returns the exit code."""
        if self.proc is not None and self.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.poll() is None:
                self._killpg(signal.SIGKILL)
                self.proc.wait()
        code = self.poll()
        return 137 if code is None else code

    def _killpg(self, sig: signal.Signals) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def status(self, ready: bool) -> dict[str, Any]:
        """This run as a ContainerStatus."""
        state: dict[str, Any]
        if self.exit_code is not None:
            state = {
                "terminated": {
                    "exitCode": self.exit_code,
                    "reason": self.reason,
                    "startedAt": self.started_at,
                    "finishedAt": self.finished_at,
                    "containerID": self.id,
                    **({"message": self.message} if self.message else {}),
                }
            }
        elif self.proc is not None:
            state = {"running": {"startedAt": self.started_at}}
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        return {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "containerID": self.id,
            "ready": ready and "running" in state,
            "started": "running" in state,
            "restartCount": self.restarts,
            "state": state,
        }


def waiting(spec: dict[str, Any], reason: str) -> dict[str, Any]:
    """A ContainerStatus for a container that has not started."""
    return {
        "name": spec["name"],
        "image": spec.get("image", ""),
        "imageID": "",
        "ready": False,
        "started": False,
        "restartCount": 0,
        "state": {"waiting": {"reason": reason}},
    }
