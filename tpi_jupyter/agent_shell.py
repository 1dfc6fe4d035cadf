"""How the agent starts the user's script in a container whose image may hold only `/bin/sh`.

A machine hook chooses (`script_command` in a cloud's `tpi_jupyter.machines` module): the VMs of
aws, gcp and az keep `agent.script_command` (bash's login shell, so the image's profile applies);
Kubernetes uses `container_command`, which needs nothing from the image but `/bin/sh`:

- a shebang whose interpreter exists is honoured (the kernel runs it, as `docker run` would);
- a shebang naming bash, in an image without bash, falls back to `/bin/sh` with a note in the log;
- any other missing interpreter fails with exit code 127 and one line naming it;
- no shebang (TPI requires one; tpi-jupyter runs the body under `/bin/bash`): `/bin/bash` when the
  image has it, else `/bin/sh`, with a note.

No login shell in a container: the image's `ENV` (its PATH, conda, CUDA) is already the process's
environment, and a profile such as Debian's `/etc/profile` would reset PATH.
Notes are written by the shell to the script's output, so they reach the task's log.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

SH = "/bin/sh"
BASH = "/bin/bash"


def shebang(script: Path) -> list[str]:
    """The interpreter and its one optional argument (as the kernel splits it); [] without one."""
    with open(script, "rb") as handle:
        first = handle.readline(4096)
    if not first.startswith(b"#!"):
        return []
    return first[2:].decode(errors="replace").strip().split(None, 1)


def _runnable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _program(words: list[str]) -> tuple[str, bool]:
    """(the program the shebang asks for, whether it is here); `env NAME` is looked up on PATH."""
    interpreter = words[0]
    if os.path.basename(interpreter) == "env" and len(words) > 1 and _runnable(interpreter):
        name = words[1].split()[0]
        return name, not name.startswith("-") and shutil.which(name) is not None
    return interpreter, _runnable(interpreter)


def _with_note(note: str, argv: list[str]) -> list[str]:
    """`/bin/sh` prints the note to the script's output, then runs argv."""
    return [SH, "-c", f'echo {shlex.quote(note)} >&2; exec "$@"', "tpi-agent", *argv]


def container_command(script: Path) -> list[str]:
    """The command that runs `script` in a container that may hold nothing but `/bin/sh`."""
    words = shebang(script)
    if not words:
        if _runnable(BASH):
            return [BASH, str(script)]
        return _with_note(f"tpi-agent: no shebang and no {BASH} in this image: running the script with {SH}",
                          [SH, str(script)])  # fmt: skip
    program, present = _program(words)
    if present:
        return [str(script)]
    if os.path.basename(program) == "bash":
        direct = os.path.basename(words[0]) == "bash"  # `#!/bin/bash -e` keeps -e; `env bash` has none
        options = [word for word in words[1:] if word.startswith("-")] if direct else []
        return _with_note(f"tpi-agent: the script asks for bash ({' '.join(words)}), which this image "
                          f"lacks: running it with {SH}", [SH, *options, str(script)])  # fmt: skip
    note = (
        f"tpi-agent: the script's interpreter {program} is not in this image (shebang: #!{' '.join(words)})"
    )
    return [SH, "-c", f"echo {shlex.quote(note)} >&2; exit 127"]
