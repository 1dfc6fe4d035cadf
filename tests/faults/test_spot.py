"""Spot soak, CI form: a two-rank epoch loop preempted at random (seeded) on every backend.

The local backend's machines are real detached processes; the clouds' are played by local
processes (AWS: the agent of each moto instance's user data; GCP and Azure: the contract
servers' played instances). benchmarks/soak.py runs this file with 20 preemptions each.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tpi_jupyter import ranks
from tpi_jupyter.commands import build_spec
from tpi_jupyter.sync import filesystem
from tpi_jupyter.task import Task, launch

from ..aws_moto import PlayedMachine, aws_env, moto_endpoint  # noqa: F401 - fixtures
from ..test_aws import play_all
from ..test_azure import arm, azurite, imds  # noqa: F401 - fixtures
from ..test_gcp import contract, gcp, gcs_url  # noqa: F401 - fixtures
from ..test_k8s_backend import cluster, k8s, needs_bed  # noqa: F401 - fixtures
from . import figures
from .spot import SCRIPT, SoakFigures, soak

pytestmark = pytest.mark.slow


def start(cloud: str, go_file: Path, *extra: str, timeout: int = 1800) -> Task:
    words = [*extra, "workdir=.", "output=results", "spot=0", "parallelism=2", f"timeout={timeout}",
             f"name=soak-{cloud}", f"environment=GO_FILE={go_file}"]  # fmt: skip
    task = launch(build_spec(words, {"cloud": cloud}), SCRIPT)
    assert isinstance(task, Task)
    return task


def run_soak(
    task: Task, go_file: Path, ci_preemptions: int, timeout: float = 600, **hooks: Callable[..., None]
) -> SoakFigures:
    seed = figures.seed()
    result = soak(
        task, go_file, preemptions=figures.preemptions(ci_preemptions), seed=seed,
        sync_interval=float(task.record["timing"]["sync_interval"]), timeout=timeout, **hooks,  # type: ignore[arg-type]
    )  # fmt: skip
    figures.record("spot", result.backend, result)
    where = f"seed {seed}: {result}; epochs per rank and boot: {result.epochs}"
    assert result.status == "succeeded", where
    assert result.final_epochs == {0: result.last_epoch, 1: result.last_epoch}, where
    assert result.max_setback <= result.allowed_setback, where
    assert sum(result.boots.values()) >= 2 + result.preemptions // 2, where  # the kills were real
    return result


def finish(task: Task, workdir: Path, result: SoakFigures) -> None:
    task.destroy()
    for rank in (0, 1):  # the results came home, at the last epoch
        assert (workdir / "results" / f"epoch-{rank}.txt").read_text().strip() == str(result.last_epoch)


def test_local_soak(tpi_home: Path, workdir: Path, tmp_path: Path) -> None:
    task = start("local", tmp_path / "go")
    finish(task, workdir, run_soak(task, tmp_path / "go", 4))


def test_aws_soak(aws_env: str, tpi_home: Path, workdir: Path, tmp_path: Path) -> None:  # noqa: F811
    task = start("aws", tmp_path / "go")
    known: set[str] = set()
    played: dict[str, PlayedMachine] = {}

    def tick() -> None:  # the group's replacements boot: play each new instance
        for machine in play_all(task, tmp_path / "machines", known):
            played[machine.instance_id] = machine

    def kill(rank: int) -> None:  # the reclaimed instance vanishes, agent and script alike
        claims = ranks.read_claims(*filesystem(task.record["remote"]))
        boot = max(b for r, b in claims if r == rank)
        played[claims[(rank, boot)]].kill()

    tick()
    try:
        finish(task, workdir, run_soak(task, tmp_path / "go", 2, kill=kill, tick=tick))
    finally:
        for machine in played.values():
            machine.kill()


@figures.soak_only  # one GCP preemption is in CI already (tests/test_gcp.py)
def test_gcp_soak(gcp: object, workdir: Path, tmp_path: Path) -> None:  # noqa: F811
    task = start("gcp", tmp_path / "go")
    finish(task, workdir, run_soak(task, tmp_path / "go", 2))


@figures.soak_only  # one Azure eviction is in CI already (tests/test_azure.py)
def test_azure_soak(arm: object, workdir: Path, tmp_path: Path) -> None:  # noqa: F811
    task = start("az", tmp_path / "go")
    finish(task, workdir, run_soak(task, tmp_path / "go", 2))


@needs_bed
@figures.soak_only  # one eviction is in CI already (tests/test_k8s_backend.py)
def test_k8s_soak(k8s: dict[str, Any], workdir: Path, tmp_path: Path) -> None:  # noqa: F811
    # The Job controller waits 10 s * 2^(n-1) before it replaces an index's n-th evicted pod,
    # ignored failures included (kubernetes#130881; capped at 10 min): 20 evictions take ~1 hour,
    # longer than the other clouds' 1800 s task deadline (the Job's activeDeadlineSeconds).
    task = start("k8s", tmp_path / "go", f"container=s3://{k8s['bucket']}/runs", timeout=5400)
    finish(task, workdir, run_soak(task, tmp_path / "go", 2, timeout=5400))
