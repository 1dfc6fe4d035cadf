"""The boot script every cloud machine runs first (user data, startup script, custom data).

Shared by every cloud; a cloud supplies only a `CloudBoot`: its environment, the pip
requirements of its storage client, and a small Python helper (`machine_id`, `read`, `write`,
`keys`, `release`). The script

- is `set -Eeuo pipefail`; an ERR trap names the failing line, an EXIT trap copies the boot log
  to the console (`/dev/console`, else `logger`) and to the remote;
- finds Python 3.10+ with `venv`, else installs one (apt waits for the dpkg lock and retries;
  dnf installs python3.11); an image with neither fails the boot with one clear line;
- installs the agent wheel into a private venv; the wheel download retries for minutes, as a
  new role's credentials take a while to reach a fresh machine;
- runs the agent as a systemd unit (`tpi-agent.service`), not as a child of cloud-init, with
  `RuntimeMaxSec` at the deadline plus a grace, and powers the machine off after the agent
  (clouds make instances terminate on shutdown).

Where the boot log goes. A machine learns its rank only when the agent claims one, after the
boot script ended, so the boot script writes under its machine id, the same id the agent
claims with: `.tpi/machines/<machine-id>/boot-log`, plus `.tpi/machines/<machine-id>/failed`
when the boot failed. The client maps machine ids to ranks through the claims; the agent copies
the boot log to `reports/<rank>/<boot>/boot-log` once it has claimed (`--boot-log`).

No paid loop without a client: after a failed boot the helper counts the `failed` markers and,
from `failed_boot_limit` on, releases its machine from the group (the group shrinks instead of
respawning it). The client applies the same rule when it reads the task.

The paths can be moved with `TPI_ROOT`, `TPI_BOOT_LOG`, `TPI_CONSOLE` and `TPI_UNIT_DIR` (the
tests run the script unprivileged against stand-ins); on a machine they keep their defaults.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

UNIT = "tpi-agent.service"
MACHINES = ".tpi/machines"  # <machine-id>/boot-log, <machine-id>/failed
GRACE = 600  # seconds past the deadline the unit may still run (last sync, status, release)
MIN_RUNTIME = 300  # a late machine still gets this long to report the timeout
HELPER_END = "TPI_HELPER_END"
_SAFE = re.compile(r"^[A-Za-z0-9_./:=@+,%-]*$")  # words pasted into a heredoc and a unit file


def machine_key(machine_id: str, name: str) -> str:
    return f"{MACHINES}/{machine_id}/{name}"


@dataclass(frozen=True)
class CloudBoot:
    """What one cloud contributes to the boot script."""

    name: str  # the agent's `--release` hooks and the wheel's extra
    environment: Mapping[str, str]  # exported for the boot and the agent unit; never a secret
    bootstrap: Sequence[str]  # pip requirements the helper needs (exact versions)
    # Python source defining machine_id() -> str, read(key) -> bytes, write(key, data),
    # keys(prefix) -> list[str], release(machine_id); keys are relative to the task's remote.
    helper: str


@dataclass(frozen=True)
class BootPlan:
    task_id: str
    remote: str  # the agent's --remote
    deadline: float  # epoch seconds
    wheel_key: str  # relative to the remote
    failed_boot_limit: int  # failed boots of the task after which machines stop respawning
    lock_key: str = ""  # relative to the remote: exact versions of the agent's dependencies
    agent_options: Sequence[str] = field(default_factory=tuple)  # more agent arguments


def _safe(word: str) -> str:
    if not _SAFE.match(word):
        raise ValueError(f"boot script: {word!r} has characters a boot script does not quote")
    return word


HELPER_MAIN = """

def _main(argv):
    import sys

    command = argv[0]
    if command == "machine-id":
        print(machine_id())
    elif command == "get":  # get KEY PATH
        with open(argv[2], "wb") as out:
            out.write(read(argv[1]))
    elif command == "boot-log":  # boot-log MACHINE_ID LOG
        with open(argv[2], "rb") as handle:
            write(f"{MACHINES}/{argv[1]}/boot-log", handle.read())
    elif command == "failed":  # failed MACHINE_ID REASON LIMIT: 0 when released
        write(f"{MACHINES}/{argv[1]}/failed", argv[2].encode())
        failed = [key for key in keys(MACHINES + "/") if key.endswith("/failed")]
        print(f"tpi-boot: {len(failed)} failed boot(s) of this task; limit {argv[3]}")
        if len(failed) >= int(argv[3]):
            release(argv[1])
            print("tpi-boot: released this machine from its group: no more respawns")
            return 0
        return 1
    else:
        print(f"tpi-boot helper: unknown command {command!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
"""


def helper_source(cloud: CloudBoot) -> str:
    """The helper program the boot script writes next to the agent's venv."""
    if HELPER_END in cloud.helper:
        raise ValueError(f"boot script: the {cloud.name} helper must not contain {HELPER_END}")
    return f"MACHINES = {MACHINES!r}\n{cloud.helper.strip()}\n{HELPER_MAIN}"


def _exports(cloud: CloudBoot) -> str:
    return "\n".join(f"export {_safe(k)}={shlex.quote(v)}" for k, v in sorted(cloud.environment.items()))


def _unit_environment(cloud: CloudBoot) -> str:
    values = {**cloud.environment, "HOME": "/root", "TPI_PRIVATE_AGENT": "1"}
    return "\n".join(f"Environment={_safe(k)}={_safe(v)}" for k, v in sorted(values.items()))


def script(plan: BootPlan, cloud: CloudBoot) -> str:
    """The boot script: names and addresses only, no credential or environment value."""
    wheel_name = _safe(plan.wheel_key.rsplit("/", 1)[-1])
    agent = [
        "--remote", plan.remote, "--rank", "auto", "--release", cloud.name,
        "--machine-dir", "${TPI_ROOT}/machine", "--boot-log", "${TPI_BOOT_LOG}", *plan.agent_options,
    ]  # fmt: skip
    agent_line = " ".join(word if word.startswith("${") else _safe(word) for word in agent)
    if not cloud.bootstrap:
        raise ValueError(f"boot script: the {cloud.name} helper needs at least one pip requirement")
    pip_args = " ".join(shlex.quote(_safe(item)) for item in cloud.bootstrap)
    lock_fetch, constraint = "", ""
    if plan.lock_key:
        lock_fetch = (
            f'tpi_retry 30 10 tpi_helper get {shlex.quote(_safe(plan.lock_key))} "$TPI_ROOT/lock.txt"'
        )
        constraint = '-c "$TPI_ROOT/lock.txt" '
    return (
        BOOT_TEMPLATE.replace("@TASK@", _safe(plan.task_id))
        .replace("@LOCK_FETCH@", lock_fetch)
        .replace("@CONSTRAINT@", constraint)
        .replace("@EXPORTS@", _exports(cloud))
        .replace("@DEADLINE@", str(int(plan.deadline)))
        .replace("@GRACE@", str(GRACE))
        .replace("@MIN_RUNTIME@", str(MIN_RUNTIME))
        .replace("@LIMIT@", str(max(1, int(plan.failed_boot_limit))))
        .replace("@BOOTSTRAP@", pip_args)
        .replace("@WHEEL_KEY@", shlex.quote(_safe(plan.wheel_key)))
        .replace("@WHEEL_NAME@", wheel_name)
        .replace("@EXTRA@", _safe(cloud.name))
        .replace("@UNIT@", UNIT)
        .replace("@UNIT_ENV@", _unit_environment(cloud))
        .replace("@AGENT@", agent_line)
        .replace("@HELPER@", helper_source(cloud))
    )


# `@NAME@` placeholders are filled by script(); everything else is literal bash.
BOOT_TEMPLATE = r"""#!/bin/bash
# tpi-jupyter boot script for task @TASK@. It holds no secret: the machine reads the task
# (script, environment, data) from the task's remote with its own cloud identity.
# Run with "after-agent" by the agent unit's ExecStopPost.
set -Eeuo pipefail
TPI_ROOT="${TPI_ROOT:-/opt/tpi}"
TPI_BOOT_LOG="${TPI_BOOT_LOG:-/var/log/tpi-boot.log}"
TPI_CONSOLE="${TPI_CONSOLE:-/dev/console}"
TPI_UNIT_DIR="${TPI_UNIT_DIR:-/etc/systemd/system}"
TPI_PY="$TPI_ROOT/venv/bin/python"
TPI_HELPER="$TPI_ROOT/boot_helper.py"
TPI_MACHINE_ID=""
@EXPORTS@
mkdir -p "$TPI_ROOT"
exec >>"$TPI_BOOT_LOG" 2>&1

tpi_say() { echo "tpi-boot: $*" >&2; }

# Copy the boot log where an operator can see it without the machine: the console
# (EC2 get-console-output, serial port) or else the system log.
tpi_console() {
  if [ -w "$TPI_CONSOLE" ] && cat "$TPI_BOOT_LOG" >"$TPI_CONSOLE" 2>/dev/null; then
    return 0
  fi
  logger -t tpi-boot <"$TPI_BOOT_LOG" || true
}

tpi_helper() { "$TPI_PY" "$TPI_HELPER" "$@"; }

tpi_poweroff() { systemctl poweroff --no-block || shutdown -h now || true; }

# tpi_retry ATTEMPTS DELAY COMMAND...: transient failures (mirrors, locks, fresh roles).
tpi_retry() {
  local attempts=$1 delay=$2 n=1
  shift 2
  until "$@"; do
    if [ "$n" -ge "$attempts" ]; then
      tpi_say "gave up after $n attempts: $*"
      return 1
    fi
    tpi_say "attempt $n of $attempts failed: $*; retrying in ${delay}s"
    sleep "$delay"
    n=$((n + 1))
  done
}

# The boot failed: tell the remote (when the helper can), which may release this machine
# for good; otherwise power off, and the group respawns it.
tpi_failed() {
  local reason=$1
  tpi_say "FAILED: $reason"
  tpi_console
  if [ -n "$TPI_MACHINE_ID" ] && [ -x "$TPI_PY" ] && [ -f "$TPI_HELPER" ]; then
    tpi_helper boot-log "$TPI_MACHINE_ID" "$TPI_BOOT_LOG" || tpi_say "could not copy the boot log to the remote"
    tpi_helper failed "$TPI_MACHINE_ID" "$reason" @LIMIT@ || true
  fi
  tpi_poweroff
}

tpi_on_error() { tpi_say "line $2 in $4: command failed with exit $1: $3"; }

tpi_on_exit() {
  local code=$?
  set +e
  trap - ERR
  if [ "$code" -ne 0 ]; then
    tpi_failed "boot script exit $code"
    exit "$code"
  fi
  tpi_say "done: the agent runs as @UNIT@"
  tpi_console
  if [ -n "$TPI_MACHINE_ID" ]; then
    tpi_helper boot-log "$TPI_MACHINE_ID" "$TPI_BOOT_LOG" || tpi_say "could not copy the boot log to the remote"
  fi
}

# ExecStopPost of the agent unit: systemd says how the agent ended. A crash or a kill is a
# failed boot; a clean exit (released, interrupted, or nothing to do) or the deadline is not.
tpi_after_agent() {
  TPI_MACHINE_ID=$(cat "$TPI_ROOT/machine-id" 2>/dev/null || true)
  local result="${SERVICE_RESULT:-success}"
  tpi_say "agent ended: result $result, ${EXIT_CODE:-exited} ${EXIT_STATUS:-0}"
  if [ "$result" != success ] && [ "$result" != timeout ]; then
    journalctl -u @UNIT@ --no-pager -n 200 >>"$TPI_BOOT_LOG" 2>&1 || true
    tpi_failed "agent $result (${EXIT_CODE:-exited} ${EXIT_STATUS:-?})"
    return 0
  fi
  tpi_console
  tpi_poweroff
}

# Python 3.10+ with venv and ensurepip (Debian splits them into python3-venv).
tpi_find_python() {
  local candidate
  for candidate in python3.13 python3.12 python3.11 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

tpi_apt() {
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3 -yq "$@"
}

tpi_install_python() {
  if command -v apt-get >/dev/null 2>&1; then
    tpi_say "installing python3 and python3-venv with apt"
    tpi_retry 5 15 tpi_apt update
    tpi_retry 5 15 tpi_apt install python3 python3-venv
  elif command -v dnf >/dev/null 2>&1; then
    tpi_say "installing python3.11 with dnf"
    tpi_retry 5 15 dnf install -y -q python3.11
  else
    tpi_say "this image has no Python 3.10+, and neither apt-get nor dnf to install one"
    return 1
  fi
}

tpi_boot() {
  trap 'tpi_on_error "$?" "$LINENO" "$BASH_COMMAND" "${FUNCNAME[0]:-main}"' ERR
  trap tpi_on_exit EXIT
  tpi_say "task @TASK@: boot starts $(date -u +%FT%TZ)"
  local python
  if ! python=$(tpi_find_python); then
    tpi_install_python
    python=$(tpi_find_python) || { tpi_say "no Python 3.10+ with venv after installing"; return 1; }
  fi
  tpi_say "python: $python"
  "$python" -m venv "$TPI_ROOT/venv"
  tpi_retry 5 10 "$TPI_ROOT/venv/bin/pip" install -q --disable-pip-version-check @BOOTSTRAP@
  cat >"$TPI_HELPER" <<'TPI_HELPER_END'
@HELPER@
TPI_HELPER_END
  TPI_MACHINE_ID=$(tpi_retry 5 5 tpi_helper machine-id)
  echo "$TPI_MACHINE_ID" >"$TPI_ROOT/machine-id"
  tpi_say "machine $TPI_MACHINE_ID"
  tpi_retry 30 10 tpi_helper get @WHEEL_KEY@ "$TPI_ROOT/@WHEEL_NAME@"
  @LOCK_FETCH@
  tpi_retry 5 10 "$TPI_ROOT/venv/bin/pip" install -q --disable-pip-version-check @CONSTRAINT@"$TPI_ROOT/@WHEEL_NAME@[@EXTRA@]"
  install -m 0700 "$0" "$TPI_ROOT/boot.sh"
  local left=$((@DEADLINE@ + @GRACE@ - $(date +%s)))
  if [ "$left" -lt @MIN_RUNTIME@ ]; then left=@MIN_RUNTIME@; fi
  mkdir -p "$TPI_UNIT_DIR"
  cat >"$TPI_UNIT_DIR/@UNIT@" <<TPI_UNIT_END
[Unit]
Description=tpi-jupyter agent for task @TASK@
Wants=network-online.target
After=network-online.target

[Service]
Type=exec
@UNIT_ENV@
ExecStart=$TPI_PY -m tpi_jupyter.agent @AGENT@
ExecStopPost=$TPI_ROOT/boot.sh after-agent
RuntimeMaxSec=$left
TimeoutStopSec=120
Restart=no
TPI_UNIT_END
  systemctl daemon-reload
  systemctl start --no-block @UNIT@
}

if [ "${1:-boot}" = after-agent ]; then
  tpi_after_agent
else
  tpi_boot
fi
"""
