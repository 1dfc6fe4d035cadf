"""A real ipykernel from this venv, driven through jupyter_client, for tests."""

from __future__ import annotations

import queue
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.manager import KernelManager

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TRACEBACK = "Traceback (most recent call last)"


@dataclass
class Result:
    """What one execute request produced: its reply and every output message, in order."""

    reply: dict[str, Any]
    outputs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    comms: list[dict[str, Any]] = field(default_factory=list)  # widget comm_open / comm_msg contents

    @property
    def ok(self) -> bool:
        return self.reply.get("status") == "ok"

    @property
    def text(self) -> str:
        """Everything a user would see in the cell, ANSI colours removed."""
        parts = []
        for kind, content in self.outputs:
            if kind == "stream":
                parts.append(content["text"])
            elif kind in ("display_data", "execute_result"):
                parts.append(content["data"].get("text/plain", "") + "\n")
            elif kind == "error":
                parts.append("\n".join(content["traceback"]) + "\n")
        return ANSI.sub("", "".join(parts))

    @property
    def error_text(self) -> str:
        """The error as the reply and the error outputs carry it."""
        parts = [
            f"{self.reply.get('ename', '')}: {self.reply.get('evalue', '')}",
            *self.reply.get("traceback", []),
        ]
        for kind, content in self.outputs:
            if kind == "error":
                parts.extend(content["traceback"])
        return ANSI.sub("", "\n".join(parts))


class Kernel:
    """A real ipykernel from this venv, driven through jupyter_client."""

    def __init__(self, env: dict[str, str], cwd: Path):
        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(env=env, cwd=str(cwd))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=90)

    def execute(self, code: str, timeout: float = 120) -> Result:
        """Run code; collect its outputs until the kernel is idle again, then its reply."""
        msg_id = self.client.execute(code, store_history=False)
        result = Result(reply={})
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no idle status within {timeout} s for {code!r}; so far: {result.text!r}"
                )
            try:
                message = self.client.get_iopub_msg(timeout=remaining)
            except queue.Empty:
                continue
            if message["parent_header"].get("msg_id") != msg_id:
                continue  # output of an earlier request, or of the kernel before a restart
            kind, content = message["msg_type"], message["content"]
            if kind == "status" and content["execution_state"] == "idle":
                break
            if kind in ("stream", "display_data", "execute_result", "error"):
                result.outputs.append((kind, content))
            elif kind in ("comm_open", "comm_msg"):
                result.comms.append(content)
        while True:
            reply = self.client.get_shell_msg(timeout=max(deadline - time.monotonic(), 5))
            if reply["parent_header"].get("msg_id") == msg_id:
                result.reply = reply["content"]
                return result

    def ok(self, code: str, timeout: float = 120) -> Result:
        result = self.execute(code, timeout)
        assert result.ok, f"{code!r} failed:\n{result.text}"
        return result

    def pid(self) -> int:
        return int(self.ok("import os; os.getpid()").text.strip())

    def restart(self) -> None:
        self.manager.restart_kernel(now=True)  # kills the kernel process, starts a fresh one
        self.client.wait_for_ready(timeout=90)

    def shutdown(self) -> None:
        try:
            self.client.stop_channels()
        finally:
            self.manager.shutdown_kernel(now=True)
