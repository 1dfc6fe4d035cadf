"""What the client-crash tests share: `tpi` as a subprocess killed at a random point, and the
clean-up that must always finish the job (destroy, sweep, a second destroy that ends clean).

A backend under test is a `Target`: its cloud, the extra `tpi run` words it needs, and a
`leftovers()` that lists everything of the kinds the backend makes that the server (or this
machine) still holds, tagged or not.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tpi_jupyter import state

from . import figures


def tpi(*words: str, kill_after: float | None = None) -> subprocess.CompletedProcess[str] | None:
    """Run the CLI; with kill_after, SIGKILL it then (None if it was killed before it ended)."""
    command = [sys.executable, "-m", "tests.faults.fast_cli", *words]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               stdin=subprocess.DEVNULL, env=os.environ.copy())  # fmt: skip
    try:
        out, err = process.communicate(timeout=kill_after if kill_after is not None else 240)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.communicate()
        return None
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def tpi_killed_when(*words: str, when: Callable[[], bool], limit: float = 120) -> bool:
    """Run the CLI and SIGKILL it as soon as `when()` holds (a request reached the server);
    whether the kill came before the CLI ended by itself."""
    command = [sys.executable, "-m", "tests.faults.fast_cli", *words]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL, env=os.environ.copy())  # fmt: skip
    deadline = time.monotonic() + limit
    while process.poll() is None and not when() and time.monotonic() < deadline:
        time.sleep(0.002)
    killed = process.poll() is None
    process.kill()
    process.wait()
    return killed


def ended_clean(done: subprocess.CompletedProcess[str] | None, what: str) -> None:
    """Exit 0; on failure the message names the step and shows what the CLI said."""
    assert done is not None, f"{what}: did not end"
    assert done.returncode == 0, f"{what}: exit {done.returncode}: {done.stderr.strip()}"


@dataclass
class Target:
    cloud: str
    leftovers: Callable[[], list[str]]
    words: list[str] = field(default_factory=list)
    sweep: bool = True  # the local backend has nothing to sweep (its resources are processes)
    file: str = "test_crashes.py"  # how the soak's table says to replay it
    backend: str = ""  # the figures' name, when one cloud has two modes (k8s-claim); else the cloud


def clean_up(target: Target, name: str) -> dict[str, Any]:
    """destroy, then sweep, then destroy again; what each step found to do."""
    recorded = 1 if any(r["name"] == name for r in state.records()) else 0
    ended_clean(tpi("destroy", name), f"destroy {name}")
    after_destroy = target.leftovers()
    if target.sweep:
        ended_clean(tpi("sweep", target.cloud, "--yes"), f"sweep {target.cloud}")
    left = target.leftovers()
    assert left == [], f"{target.cloud}: left {left} (after destroy: {after_destroy})"
    ended_clean(tpi("destroy", name), f"second destroy {name}")
    assert state.records() == []
    return {"recorded": recorded, "left_for_sweep": after_destroy}


Point = Callable[[], Callable[[], bool]]  # called as a round starts: `when()` for that round


def named_kills(target: Target, script: Path, points: dict[str, Point]) -> list[dict[str, Any]]:
    """`tpi run` killed the moment each named request reached the server (`when()` holds): the
    narrow windows between a create request and the registry's next save, which random points
    seldom hit. Each is cleaned up and must leave nothing."""
    rows = []
    for point, arm in points.items():
        name = f"crash-{target.cloud}-at-{len(rows)}"
        words = [f"cloud={target.cloud}", *target.words, "spot=0", "workdir=.", f"name={name}"]
        killed = tpi_killed_when("run", *words, "--script", str(script), when=arm())
        rows.append({"verb": "run", "kill_at": point, "killed": killed, **clean_up(target, name)})
        print(rows[-1])
    figures.record(
        "crash", f"{target.backend or target.cloud} (named requests)", {"rounds": rows, "file": target.file}
    )
    return rows


def kill_rounds(target: Target, script: Path, ci_rounds: int = 2) -> list[dict[str, Any]]:
    """Rounds of `run` or `destroy` killed at random points; each is cleaned up and must leave
    nothing. The first round's run is whole, to time a launch (the span kill points are drawn
    from), and its destroy is killed. Records the soak's figures."""
    seed = figures.seed()
    rng = random.Random(seed)

    def run(name: str, kill_after: float | None = None) -> subprocess.CompletedProcess[str] | None:
        words = [f"cloud={target.cloud}", *target.words, "spot=0", "workdir=.", f"name={name}"]
        return tpi("run", *words, "--script", str(script), kill_after=kill_after)

    rows, launch_time = [], 0.0
    for round_ in range(int(os.environ.get("TPI_FAULT_CRASHES") or ci_rounds)):
        name = f"crash-{target.cloud}-{round_}"
        verb = rng.choice(["run", "destroy"]) if round_ else "destroy"
        point = rng.uniform(0.2, launch_time) if round_ else 0.0
        if verb == "run":
            killed = run(name, kill_after=point)
        else:
            began = time.monotonic()
            ended_clean(run(name), f"run {name}")
            if not round_:
                launch_time = time.monotonic() - began
                point = rng.uniform(0.2, launch_time)
                assert target.leftovers(), "the listing sees nothing of a running task: it could not fail"
            killed = tpi("destroy", name, kill_after=point / 2)
        row = {"verb": verb, "kill_at": round(point, 2), "killed": killed is None, **clean_up(target, name)}
        rows.append(row)
        print(row)
    figures.record("crash", target.backend or target.cloud, {"seed": seed, "launch_seconds": round(launch_time, 2), "rounds": rows,
                                           "file": target.file})  # fmt: skip
    return rows
