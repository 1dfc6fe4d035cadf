"""The agent in a Job's pod: `python -m tpi_jupyter.backends.k8s.pod --remote URL ...`.

Runs in the user's container with the runtime the init container copied in (its own Python,
not the image's). The rank is the completion index the Job controller gives
(`JOB_COMPLETION_INDEX`); the boot is the next free one of that rank in the remote. Environment
values and storage credentials come from the task's Secret, mounted read-only; the credentials
stay in the agent's environment (the script gets only the task's values). SIGTERM is the pod
being taken (eviction, spot reclaim, deletion): the agent syncs back and reports nothing, and
the pod exits 143 so the Job respawns the index (its pod failure policy ignores disruptions).
A user stop comes through the remote, as on every cloud. The exit code is the script's, so the
pod failure policy fails the index with it.

No IPython, Jupyter or kubernetes imports: this runs in the pod.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from ... import layout
from . import machine
from .manifests import ENV_KEY, INDEX, STORAGE_KEY
from .storage import GCP_KEY, GCP_KEY_CONTENT

INTERRUPTED = 143  # 128 + SIGTERM: not a success, so the index is not counted done


def load_secret(directory: Path, private: Path) -> dict[str, str]:
    """Storage credentials into this process's environment; the task's values returned."""
    storage = json.loads((directory / STORAGE_KEY).read_text())  # the Secret is mounted, or the pod waits
    key = storage.pop(GCP_KEY_CONTENT, None)
    if key:
        private.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = private / "gcp-key.json"
        path.touch(mode=0o600)
        path.write_text(key)
        storage[GCP_KEY] = str(path)
    os.environ.update(storage)
    values = json.loads((directory / ENV_KEY).read_text())
    return {str(name): str(value) for name, value in values.items()}


def exit_code(outcome: dict[str, Any]) -> int:
    if outcome.get("result") == "success":
        return 0
    code = outcome.get("code")
    return min(int(code), 255) if isinstance(code, int) and code > 0 else 1


def next_boot(remote: Any, rank: int) -> int:
    boots = [int(name) for name in remote.names(layout.rank_dir(rank)) if name.isdigit()]
    return max(boots, default=-1) + 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tpi_jupyter.backends.k8s.pod")
    parser.add_argument("--remote", required=True)
    parser.add_argument("--secret-dir", required=True)
    parser.add_argument("--machine-dir", required=True)
    args = parser.parse_args(argv)
    values = load_secret(Path(args.secret_dir), Path(args.machine_dir) / "agent")
    from ...agent import Agent, Remote, RemoteGone  # after the credentials are in the environment

    rank = int(os.environ[INDEX])
    remote = Remote(args.remote)
    if remote.exists(layout.status(rank)):  # reported already (a late respawn): nothing to do
        return exit_code(json.loads(remote.read_text(layout.status(rank))))
    agent = Agent(args.remote, rank, next_boot(remote, rank), args.machine_dir)
    agent.command = machine.script_command  # the image may hold only /bin/sh
    agent.echo = sys.stdout  # `kubectl logs` shows the script's output, not only the agent's
    signal.signal(signal.SIGTERM, lambda *_: agent.interrupt("the pod is being terminated"))
    try:
        agent.prepare()
        agent.values = values
        outcome = agent.run()
    except Exception as error:  # a status even then: the index would be respawned blind
        outcome = {"result": "failure", "code": None, "reason": f"agent error: {error}"}
    if outcome.get("interrupted"):
        print(f"tpi-agent: interrupted ({agent.interruption}); data synced, the Job respawns rank {rank}")
        return INTERRUPTED
    try:
        agent.report(outcome)
    except RemoteGone as error:
        print(f"tpi-agent: {error}; not reporting", file=sys.stderr)
    return exit_code(outcome)


if __name__ == "__main__":
    sys.exit(main())
