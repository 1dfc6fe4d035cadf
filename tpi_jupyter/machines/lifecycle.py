"""A machine's life: create (each step checkpointed, rolled back on failure), read, stop, start,
destroy. The record keeps the spec without secrets, the driver's state and the billed time."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..backends.kit.steps import StepError, Steps
from ..spec import SpecError, TaskSpec, task_id
from ..task import TaskError
from . import registry
from .driver import Connect, MachineDriver, MachineSpec, Status, get_driver


@dataclass
class Machine:
    """A machine in the registry, with its driver."""

    record: dict[str, Any]
    driver: MachineDriver[Any]
    state: Any

    @classmethod
    def of(cls, record: dict[str, Any]) -> Machine:
        driver = get_driver(record["cloud"])
        known = {item.name for item in fields(driver.state_type)}
        state = driver.state_type(**{k: v for k, v in record["state"].items() if k in known})
        return cls(record, driver, state)

    @property
    def spec(self) -> MachineSpec:
        return MachineSpec(task=TaskSpec.from_public(self.record["spec"]), kind=self.record["kind"])

    @property
    def name(self) -> str:
        return str(self.record["name"])

    def save_state(self) -> None:
        self.record["state"] = asdict(self.state)
        registry.save(self.record)

    def read(self) -> Status:
        return self.driver.read(self.spec, self.state)

    def running_seconds(self, now: float | None = None) -> float:
        since = self.record.get("running_since")
        return float(self.record.get("billed_seconds", 0.0)) + (
            (now or time.time()) - since if since else 0.0
        )

    def cost(self) -> str:
        """The task backend's cost so far for this machine's spec and running time."""
        from ..backends.base import get_backend

        try:
            backend = get_backend(self.record["cloud"])
            task_spec = TaskSpec.from_public(self.record["spec"])
            return backend.cost(task_spec, backend.new_state(task_spec, 0.0), self.running_seconds())
        except Exception:  # a price lookup that fails must not hide the machine
            return "n/a"


def find(name: str) -> Machine:
    record = registry.load(name) if name.startswith("tpi-") else None
    record = record or registry.load(task_id(name))
    if record is None:
        raise TaskError(f"machine {name!r} is not in the registry; see `tpi machine list`")
    return Machine.of(record)


def create(spec: MachineSpec, extra: dict[str, Any] | None = None) -> Machine:
    """Make the machine; on any failure remove what was made and say so in one line."""
    driver = get_driver(spec.cloud)
    if registry.load(spec.id) is not None:
        raise SpecError(
            f"NAME: a machine named {spec.name!r} exists; accepted: a new name, or destroy it first"
        )
    record: dict[str, Any] = {
        "id": spec.id, "name": spec.name, "cloud": spec.cloud, "kind": spec.kind,
        "spec": spec.task.public_dict(), "created": time.time(), "status": "creating",
        "billed_seconds": 0.0, "running_since": None, **(extra or {}),
    }  # fmt: skip
    machine = Machine(record, driver, driver.new_state(spec))
    machine.save_state()
    try:
        driver.create(spec, machine.state, Steps(spec.cloud, machine.save_state))
    except BaseException as error:
        cleaned = _rollback(machine, spec)
        if isinstance(error, SpecError):
            raise
        if isinstance(error, (StepError, RuntimeError, OSError)):
            raise TaskError(f"machine {spec.name}: {error}; {cleaned}") from None
        raise
    record.update(status="running", running_since=time.time())
    machine.save_state()
    return machine


def _rollback(machine: Machine, spec: MachineSpec) -> str:
    try:
        machine.driver.delete(spec, machine.state)
    except Exception as error:
        machine.record["status"] = "failed"
        machine.save_state()
        return f"rollback incomplete ({error}); the machine stays listed: destroy it to retry"
    registry.delete(spec.id)
    return "everything made was removed"


def stop(machine: Machine) -> None:
    if not machine.driver.stop_verb:
        raise SpecError(
            f"stop: cloud={machine.record['cloud']} machines cannot be stopped; accepted: destroy"
        )
    machine.driver.stop(machine.spec, machine.state)
    _bill(machine)
    machine.record["status"] = "stopped"
    machine.save_state()


def start(machine: Machine) -> None:
    if not machine.driver.stop_verb:
        raise SpecError(f"start: cloud={machine.record['cloud']} machines cannot be stopped or started")
    machine.driver.start(machine.spec, machine.state)
    machine.record.update(status="running", running_since=time.time())
    machine.save_state()


def _bill(machine: Machine) -> None:
    machine.record["billed_seconds"] = machine.running_seconds()
    machine.record["running_since"] = None


def destroy(machine: Machine) -> None:
    """Every resource, the key file, then the record; a failure keeps the record for a retry."""
    try:
        machine.driver.delete(machine.spec, machine.state)
    except Exception as error:
        raise TaskError(f"machine {machine.name}: destroy incomplete ({error}); destroy again") from None
    registry.delete(machine.record["id"])


def ssh_target(machine: Machine) -> Connect:
    status = machine.read()
    if status.state != "running":
        raise TaskError(f"machine {machine.name} is {status.state}; start it first" if status.state == "stopped"
                        else f"machine {machine.name} is {status.state}; nothing to reach")  # fmt: skip
    return machine.driver.ssh(machine.spec, machine.state)
