"""The fan-out worker: a map run's script on every machine (`python -m tpi_jupyter.fanout.worker`).

One supervisor per machine takes messages from the run's queue, hands each to an idle worker
process (one per core unless configured), renews visibility while tasks run, and records every
outcome in its own chunks of the remote. A task ends as "done", "failed" (exception, timeout,
crash, memory limit, retry limit) or goes back to the queue (`retry=True`, a spot notice, a
stop). The supervisor is single-threaded, so forking a replacement worker process is safe.
No IPython or Jupyter imports: this runs on machines.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from collections import deque
from typing import Any

from ..agent import Remote, RemoteGone
from ..layout import TASK_JSON
from ..output import mask_values
from . import layout
from .executor import WorkerData, WorkerLoadError, load_worker, serve
from .queue import Message, TaskQueue, open_queue
from .records import Writer

NOTICE_POLL = 0.5  # seconds between two looks for a spot notice key
PROGRESS_EVERY = 10.0  # seconds between two progress lines in the task's log
RECLAIM_WAIT = 300.0  # after a spot notice, how long to wait for the machine to go


class Slot:
    """One worker process and the message it runs."""

    def __init__(self, supervisor: Supervisor):
        self.supervisor = supervisor
        self.message: Message | None = None
        self.started = 0.0
        self.spawn()

    def spawn(self) -> None:
        sup = self.supervisor
        parent, child = sup.context.Pipe()
        self.process = sup.context.Process(
            target=serve,
            args=(child, sup.function, sup.config.style, sup.worker_data, sup.config.memory_gb, sup.config.fresh_process),
            daemon=True,
        )  # fmt: skip
        self.process.start()
        child.close()
        self.conn = parent

    def run(self, message: Message) -> None:
        self.message, self.started = message, time.monotonic()
        self.conn.send((message.task_id, message.data))

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()

    def respawn(self) -> None:
        self.kill()
        self.spawn()

    def replace(self) -> None:
        """A new process after one that ends by itself (--fresh-process): no kill, no wait;
        multiprocessing reaps the old one when it starts the next."""
        self.conn.close()
        self.spawn()


class Supervisor:
    def __init__(self, remote: Remote, config: layout.MapConfig, queue: TaskQueue, rank: int):
        self.remote, self.config, self.queue, self.rank = remote, config, queue, rank
        self.context = multiprocessing.get_context("fork")
        self.termination, self.shutdown = self.context.Event(), self.context.Event()
        self.cores = config.workers or os.cpu_count() or 1
        self.worker_data = WorkerData(config, os.cpu_count() or 1, self.termination, self.shutdown)
        pickled = remote_bytes(remote, layout.WORKER_PICKLE) if config.worker == layout.PICKLED else None
        self.function = load_worker(config.worker, pickled)
        name = f"r{rank}-{socket.gethostname()}-{os.getpid()}-{int(time.time() * 1000)}"
        self.records = Writer(name, remote.write, imported_values(remote))
        self.buffer: deque[Message] = deque()
        self.slots: list[Slot] = []
        self.finished: list[Message] = []  # recorded, not yet written and acked
        self.stop_reason = ""  # "notice" or "stop" once the machine winds down
        self.started = time.time()
        self.tally = {"done": 0, "failed": 0, "retry": 0}

    # -- outcomes

    def finish(self, message: Message, final: str, kind: str, elapsed: float, **details: Any) -> None:
        self.records.add(kind, message.task_id, final=final, attempt=message.deliveries,
                         elapsed=round(elapsed, 6), **details)  # fmt: skip
        self.tally[final] += 1
        self.finished.append(message)  # acked once its record is written (flush): nothing is lost

    def outcome(self, slot: Slot, kind: str, retry: bool, payload: str) -> None:
        message, elapsed = slot.message, time.monotonic() - slot.started
        assert message is not None
        slot.message = None
        value = json.loads(payload)
        if kind == "ok" and not retry:
            self.finish(message, "done", "completed", elapsed, result=value)
        elif kind == "ok" and message.deliveries <= self.config.retries:
            self.records.add("retry", message.task_id, attempt=message.deliveries, result=value)
            self.tally["retry"] += 1
            self.queue.release(message)
        elif kind == "ok":
            error = f"retry limit ({self.config.retries}) reached; last result: {value!r}"
            self.finish(message, "failed", "failed", elapsed, error=error, result=value)
        else:
            self.finish(
                message, "failed", "memory" if kind == "memory" else "exception", elapsed, error=value
            )

    def lost(self, slot: Slot, kind: str, error: str) -> None:
        """The worker process ended (crash) or was ended (timeout) with a task in hand."""
        message, elapsed = slot.message, time.monotonic() - slot.started
        assert message is not None
        slot.message = None
        slot.respawn()
        self.finish(message, "failed", kind, elapsed, error=error)

    # -- the loop

    def run(self) -> int:
        slots = self.slots = [Slot(self) for _ in range(self.cores)]
        self.records.add("worker-started", None, detail=f"{self.cores} worker process(es)")
        times = {"extend": 0.0, "flush": 0.0, "notice": 0.0, "progress": time.monotonic(), "receive": 0.0}
        try:
            while True:
                now = time.monotonic()
                self.watch(now, times)
                if self.stop_reason:
                    code = self.wind_down(slots)
                    if code is not None:
                        return code
                    continue  # a notice without a reclaim: back to work
                busy = [slot for slot in slots if slot.message is not None]
                idle = [slot for slot in slots if slot.message is None]
                if idle and not self.buffer and now >= times["receive"]:
                    got = self.queue.receive(max(2 * self.cores, 4), self.config.visibility)
                    self.buffer.extend(got)
                    if not got:
                        if self.finished:
                            self.flush()  # our own acks first: they count as in flight
                        if not busy and self.drained():
                            return 0
                        times["receive"] = now + self.config.idle_poll
                while idle and self.buffer:
                    slot = idle.pop()
                    slot.run(self.buffer.popleft())
                    busy.append(slot)
                self.wait(busy, now, times)
        finally:
            for slot in slots:
                slot.kill()
            with contextlib.suppress(RemoteGone, FileNotFoundError):  # a destroyed run takes no writes
                self.flush()

    def drained(self) -> bool:
        """Nothing waiting and nothing in flight anywhere: the run is over for this machine."""
        depth = self.queue.depth()
        return depth.waiting == 0 and depth.in_flight == 0

    def wait(self, busy: list[Slot], now: float, times: dict[str, float]) -> None:
        timeout = self.config.idle_poll if not busy else 0.05
        ready = multiprocessing.connection.wait([slot.conn for slot in busy], timeout=timeout)
        for slot in busy:
            if slot.conn in ready:
                self.collect(slot)
            elif time.monotonic() - slot.started > self.config.task_timeout:
                self.lost(slot, "timed-out", f"the task ran longer than {self.config.task_timeout:g} s")

    def collect(self, slot: Slot) -> None:
        try:
            kind, retry, payload = slot.conn.recv()
        except (EOFError, OSError):
            slot.process.join(1)
            code = slot.process.exitcode
            self.lost(slot, "exited", f"the worker process ended with code {code} during the task")
            return
        self.outcome(slot, kind, retry, payload)
        if self.config.fresh_process:  # the process ends after one task
            slot.replace()
        elif kind == "memory":  # a fresh process for the next task
            slot.respawn()

    def watch(self, now: float, times: dict[str, float]) -> None:
        """Periodic duties: renew visibility, flush records, look for a spot notice, log progress."""
        if now >= times["extend"]:
            times["extend"] = now + self.config.visibility / 3
            for message in self.held():
                self.queue.extend(message, self.config.visibility)
        if now >= times["flush"]:
            times["flush"] = now + self.config.flush_interval
            self.flush()
        if now >= times["notice"]:
            times["notice"] = now + (NOTICE_POLL if self.remote.local else 10 * NOTICE_POLL)
            if self.noticed():
                self.notice("spot notice")
        if now >= times["progress"] + PROGRESS_EVERY:
            times["progress"] = now
            print(f"[map] {self.tally['done']} done, {self.tally['failed']} failed, "
                  f"{self.tally['retry']} retried on this machine", flush=True)  # fmt: skip

    def held(self) -> list[Message]:
        running = [slot.message for slot in self.slots if slot.message is not None]
        return [*self.buffer, *running, *self.finished]

    def flush(self) -> None:
        """Write the records, then ack their tasks: a machine lost in between redelivers a task
        whose result is already written (read once), never drops one that is not."""
        self.records.flush()
        finished, self.finished = self.finished, []
        ack_many = getattr(self.queue, "ack_many", None)  # one transaction where the queue has it
        if ack_many is not None:
            ack_many(finished)
        else:
            for message in finished:
                self.queue.ack(message)

    def noticed(self) -> bool:
        """A spot notice key written since this machine started (a respawned machine ignores the
        notice its predecessor got)."""
        try:
            written = float(remote_bytes(self.remote, layout.notice_key(self.rank)) or 0)
        except (FileNotFoundError, ValueError):
            return False
        return written >= self.started

    def notice(self, reason: str) -> None:
        if not self.stop_reason:
            self.stop_reason = "stop" if reason == "stop" else "notice"
            # A SIGTERM is a user stop or the cloud taking the machine: tasks see both flags.
            self.termination.set()
            if reason == "stop":
                self.shutdown.set()
            self.records.add("spot-notice" if reason != "stop" else "stop", None, detail=reason)

    def wind_down(self, slots: list[Slot]) -> int | None:
        """Stop taking tasks: give back what waits, let running tasks finish within the grace,
        give back the rest. Then exit (stop), or wait for the machine to go (notice): None when
        the notice is withdrawn instead, or not followed by a reclaim within RECLAIM_WAIT."""
        released = 0
        while self.buffer:
            self.queue.release(self.buffer.popleft())
            released += 1
        end = time.monotonic() + self.config.grace
        while any(slot.message for slot in slots) and time.monotonic() < end:
            self.wait([slot for slot in slots if slot.message], time.monotonic(), {})
        for slot in slots:
            if slot.message is not None:
                self.queue.release(slot.message)
                self.records.add("released", slot.message.task_id, attempt=slot.message.deliveries)
                slot.message = None
                released += 1
        self.records.add("machine-released", None, detail=f"{released} task(s) back to the queue")
        self.flush()
        print(f"[map] {self.stop_reason}: {released} task(s) back to the queue", flush=True)
        if self.stop_reason == "stop":
            return 143
        end = time.monotonic() + RECLAIM_WAIT  # the cloud takes the machine now (local: `tpi preempt`)
        while time.monotonic() < end and self.stop_reason == "notice" and self.noticed():
            time.sleep(NOTICE_POLL)
        if self.stop_reason == "stop":  # a SIGTERM while waiting
            return 143
        self.records.add("notice-withdrawn", None, detail="the machine was not taken; taking tasks again")
        self.stop_reason = ""
        self.termination.clear()
        return None


def reopen_queue(config: layout.MapConfig) -> TaskQueue:
    """The run's queue: its class by the name the client found, else by entry point."""
    if not config.queue_class:
        return open_queue(config.queue_cloud, config.queue_url)
    module, _, name = config.queue_class.partition(":")
    queue_type = getattr(importlib.import_module(module), name)
    queue: TaskQueue = queue_type(config.queue_url)
    return queue


def imported_values(remote: Remote) -> list[str]:
    """The values the task imported from the client's environment (masked in its logs too)."""
    names = json.loads(remote.read_text(TASK_JSON)).get("masked", [])
    return mask_values(os.environ[name] for name in names if os.environ.get(name))


def remote_bytes(remote: Remote, key: str) -> bytes:
    if remote.local:
        with open(remote.key(key), "rb") as handle:
            return handle.read()
    return bytes(remote.fs.cat_file(remote.key(key)))


def main(argv: list[str] | None = None) -> int:
    remote_url = os.environ.get("TPI_REMOTE", "")
    if not remote_url:
        print("tpi map worker: TPI_REMOTE is not set (run by the agent of a map run)", file=sys.stderr)
        return 2
    remote = Remote(remote_url)
    config = layout.MapConfig.parse(remote.read_text(layout.MAP_JSON))
    queue = reopen_queue(config)
    try:
        supervisor = Supervisor(remote, config, queue, int(os.environ.get("TPI_RANK", "0")))
    except WorkerLoadError as error:
        print(f"tpi map worker: {error}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: supervisor.notice("stop"))
    try:
        return supervisor.run()
    except (RemoteGone, FileNotFoundError) as error:  # the run was destroyed under us
        print(f"tpi map worker: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
