"""The spot soak: a two-rank epoch loop preempted at random ranks and random times (seeded).

Each rank keeps its own epoch file (the README's epoch example, one file per rank so that a
rank's resume point is its own), prints `epoch N` per epoch, and ends at the epoch the driver
writes into GO_FILE once every preemption is done. Checks: every rank ends at that epoch, and no
respawned boot starts further back than one sync interval (plus the epoch in flight) from the
last epoch its previous boot printed.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tpi_jupyter import layout
from tpi_jupyter.agent import SETTLE
from tpi_jupyter.sync import filesystem
from tpi_jupyter.task import Task, TaskError

EPOCH_PERIOD = 0.2  # seconds per epoch

SCRIPT = """#!/bin/bash
mkdir -p results
file="results/epoch-$TPI_RANK.txt"
if test -s "$file"; then EPOCH="$(cat "$file")"; fi
for ((epoch=${EPOCH:-1}; ; epoch++)); do
  sleep PERIOD
  echo "epoch $epoch"
  echo "$epoch" | tee "$file" >/dev/null
  if test -s "$GO_FILE" && test "$epoch" -ge "$(cat "$GO_FILE")"; then break; fi
done
""".replace("PERIOD", str(EPOCH_PERIOD))


@dataclass
class SoakFigures:
    """What one soak run measured, for the test's asserts and the soak's table."""

    backend: str
    seed: int
    preemptions: int = 0
    last_epoch: int = 0
    final_epochs: dict[int, int] = field(default_factory=dict)
    boots: dict[int, int] = field(default_factory=dict)
    max_setback: int = 0  # epochs a respawned boot went back, worst case
    allowed_setback: int = 0
    status: str = ""
    seconds: float = 0.0
    epochs: dict[int, dict[int, list[int]]] = field(default_factory=dict, repr=False)

    @property
    def lost(self) -> int:
        """Ranks that did not end at the last epoch, plus boots that went back too far."""
        short = sum(1 for epoch in self.final_epochs.values() if epoch != self.last_epoch)
        return short + (1 if self.max_setback > self.allowed_setback else 0)


def allowed_setback(sync_interval: float) -> int:
    """One sync interval of epochs, plus the settle round a file still being written waits for
    (agent.SETTLE, twice) and the epoch in flight."""
    return math.ceil((sync_interval + 2 * SETTLE) / EPOCH_PERIOD) + 2


def rank_epochs(task: Task) -> dict[int, dict[int, list[int]]]:
    """Per rank, per boot: the epochs that boot printed (from its log in the remote)."""
    fs, _ = filesystem(task.record["remote"])
    fs.invalidate_cache()
    found: dict[int, dict[int, list[int]]] = {}
    for key, parts in task.read(fresh=True).log_parts.items():
        report = layout.parse_report(key)
        assert report is not None and report.boot is not None
        text = b"".join(bytes(fs.cat_file(path)) for path, _ in parts).decode(errors="replace")
        epochs = [int(line.rsplit(" ", 1)[1]) for line in text.splitlines() if " epoch " in line]
        found.setdefault(report.rank, {})[report.boot] = epochs
    return found


def setback(boots: dict[int, list[int]]) -> int:
    """How far back the worst respawn started, in epochs, against the furthest epoch before it."""
    worst, furthest = 0, 0
    for boot in sorted(boots):
        epochs = boots[boot]
        if epochs and furthest:
            worst = max(worst, furthest - epochs[0])
        furthest = max([furthest, *epochs])
    return worst


def synced_epoch(task: Task, rank: int) -> int:
    fs, root = filesystem(task.record["remote"])
    try:
        return int(
            bytes(fs.cat_file(layout.join(root, layout.data(f"results/epoch-{rank}.txt")))).strip() or 0
        )
    except (FileNotFoundError, ValueError):
        return 0


def soak(
    task: Task,
    go_file: Path,
    *,
    preemptions: int,
    seed: int,
    sync_interval: float,
    kill: Callable[[int], None] = lambda rank: None,
    tick: Callable[[], None] = lambda: None,
    gap: tuple[float, float] = (0.5, 3.0),
    timeout: float = 600,
) -> SoakFigures:
    """Preempt random ranks at random times, then let the task finish; measure what survived.

    `kill(rank)` ends a played machine's processes (clouds whose machines the test plays);
    `tick()` runs while waiting (to play replacement machines)."""
    rng = random.Random(seed)
    figures = SoakFigures(task.record["cloud"], seed, allowed_setback=allowed_setback(sync_interval))
    began = time.monotonic()
    deadline = began + timeout

    def pause(seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            tick()
            time.sleep(0.1)

    while figures.preemptions < preemptions:
        if time.monotonic() > deadline:
            raise AssertionError(f"soak seed {seed}: {figures.preemptions} preemptions in {timeout} s")
        pause(rng.uniform(*gap))
        rank = rng.randrange(2)
        if task.read(fresh=True).ranks[rank].state != "running":
            continue  # its machine is being replaced: pick again later
        try:
            task.preempt(rank)
        except TaskError:
            continue  # the machine went between the read and the preempt
        kill(rank)  # a played machine's processes go with its instance
        figures.preemptions += 1

    # Every preemption done: name the last epoch, a little beyond what any rank has reached. The
    # ranks go on while their logs are read (seconds, for many boots on a loaded machine): add that.
    reading = time.monotonic()
    reached = max(
        [epoch for boots in rank_epochs(task).values() for e in boots.values() for epoch in e] or [0]
    )
    late = math.ceil((time.monotonic() - reading + 2 * task.poll_interval) / EPOCH_PERIOD)
    figures.last_epoch = reached + allowed_setback(sync_interval) + late + 10
    partial = go_file.with_suffix(".partial")
    partial.write_text(str(figures.last_epoch))
    partial.rename(go_file)  # the script never reads half a number
    while (status := task.read(fresh=True).status) not in ("succeeded", "failed", "timeout"):
        if time.monotonic() > deadline:
            raise AssertionError(f"soak seed {seed}: task still {status} after {timeout} s")
        pause(0.3)
    figures.status = status
    figures.seconds = time.monotonic() - began
    epochs = figures.epochs = rank_epochs(task)
    for rank in (0, 1):
        figures.final_epochs[rank] = synced_epoch(task, rank)
        figures.boots[rank] = len(epochs.get(rank, {}))
        figures.max_setback = max(figures.max_setback, setback(epochs.get(rank, {})))
    return figures
