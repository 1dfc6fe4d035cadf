"""A step runner for `create`: one-line errors, and a checkpoint after every step.

Each step records what it made in the backend's state before it can fail further; the
checkpoint (given by task.py) saves that state, so what exists is known even when a step
fails or the client crashes, and rollback (`delete`) finds it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from ...spec import SpecError


class StepError(RuntimeError):
    """A create step that failed; the message is one line."""


def describe(error: BaseException) -> str:
    """An exception as one line: a cloud SDK's code and message when it has them."""
    response = getattr(error, "response", None)
    if isinstance(response, dict) and response.get("Error"):
        found = response["Error"]
        text = f"{found.get('Code', '')}: {found.get('Message', '')}"
    else:
        text = f"{error.__class__.__name__}: {error}" if str(error) else error.__class__.__name__
    return " ".join(text.split())


class Steps:
    def __init__(
        self,
        cloud: str,
        checkpoint: Callable[[], None] = lambda: None,
        explain: Callable[[BaseException], str] = describe,
    ):
        self.cloud, self.checkpoint, self.explain = cloud, checkpoint, explain
        self.done: list[str] = []

    def _wrap(self, label: str, action: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            try:
                action()
            except (SpecError, StepError):
                raise
            except Exception as error:
                raise StepError(
                    f"{self.cloud}: creating the {label} failed ({self.explain(error)})"
                ) from error
            self.done.append(label)

        return run

    def run(self, label: str, action: Callable[[], object]) -> None:
        """One step; the state is saved after it, failed or not."""
        try:
            self._wrap(label, action)()
        finally:
            self.checkpoint()

    def together(self, steps: Mapping[str, Callable[[], object]]) -> None:
        """Independent steps at once; all finish (so what was made is known), then the first error."""
        wrapped = [self._wrap(label, action) for label, action in steps.items()]
        try:
            with ThreadPoolExecutor(max_workers=max(1, len(wrapped))) as pool:
                futures = [pool.submit(step) for step in wrapped]
            for future in futures:
                error = future.exception()
                if error is not None:
                    raise error
        finally:
            self.checkpoint()
