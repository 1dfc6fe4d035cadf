"""The machine's startup script for a runner: the registration, the runner, then release.

The registration (single-use, short-lived) is written to a 0600 file on the machine and read
once by the runner; the repository token is not in this script. When the runner ends (idle,
or after its one job), the machine releases itself with its driver's release command.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass

from .forge import Registration, Repo

# The real runners, downloaded on the machine (what only a real repository and cloud show).
ACTIONS_RUNNER = "2.329.0"
GITLAB_RUNNER = "v18.5.0"


@dataclass(frozen=True)
class RunnerSettings:
    repo: Repo
    labels: list[str]
    idle_timeout: int  # seconds without a job
    single: bool
    stand_in: bool  # the project's stand-in instead of the real runner (tests)

    @property
    def takes_one_job(self) -> bool:
        """GitHub's just-in-time runners are ephemeral: one job each, by GitHub's rule."""
        return self.single or self.repo.driver == "github"


def registration_json(settings: RunnerSettings, registration: Registration, poll: float = 1.0) -> str:
    return json.dumps({
        "driver": settings.repo.driver, "url": settings.repo.instance, "secret": registration.secret,
        "labels": settings.labels, "idle_timeout": settings.idle_timeout, "single": settings.takes_one_job,
        "poll": poll})  # fmt: skip


def startup_script(
    settings: RunnerSettings, registration: Registration, release: str, python: str = ""
) -> str:
    body = registration_json(settings, registration, poll=0.2 if settings.stand_in else 1.0)
    program = _stand_in(python or sys.executable) if settings.stand_in else _real(settings)
    return "\n".join([
        "#!/bin/bash",
        f"# tpi runner for {settings.repo.url}: a single-use registration, no repository token",
        "set -u", "umask 077", 'export HOME="${HOME:-/root}"', 'mkdir -p "$HOME/runner"', 'cd "$HOME/runner"',
        "cat > registration.json <<'TPI_REGISTRATION'", body, "TPI_REGISTRATION",
        program, release, ""])  # fmt: skip


def _stand_in(python: str) -> str:
    return f"{shlex.quote(python)} -m tpi_jupyter.runners.standin registration.json"


def _real(settings: RunnerSettings) -> str:
    """Unproven here: needs the forge and the runners' downloads (named in the README)."""
    idle = settings.idle_timeout
    if settings.repo.driver == "gitlab":
        url = f"https://gitlab-runner-downloads.s3.amazonaws.com/{GITLAB_RUNNER}/binaries/gitlab-runner-linux-amd64"
        most = "--max-builds 1 " if settings.single else ""
        return "\n".join([
            f"curl -fsSL -o gitlab-runner {url} && chmod +x gitlab-runner",
            'URL=$(python3 -c "import json;print(json.load(open(\'registration.json\'))[\'url\'])")',
            'TOKEN=$(python3 -c "import json;print(json.load(open(\'registration.json\'))[\'secret\'])")',
            "rm -f registration.json",
            f'./gitlab-runner run-single --url "$URL" --token "$TOKEN" --executor shell {most}'
            f"--wait-timeout {idle} --builds-dir \"$HOME/runner/builds\"",
            'curl -fsS -X DELETE "$URL/api/v4/runners" --form "token=$TOKEN" || true'])  # fmt: skip
    url = (f"https://github.com/actions/runner/releases/download/v{ACTIONS_RUNNER}/"
           f"actions-runner-linux-x64-{ACTIONS_RUNNER}.tar.gz")  # fmt: skip
    return "\n".join([
        f"curl -fsSL {url} | tar xz",
        'JIT=$(python3 -c "import json;print(json.load(open(\'registration.json\'))[\'secret\'])")',
        "rm -f registration.json",
        './run.sh --jitconfig "$JIT" > runner.log 2>&1 &', "RUNNER=$!", "START=$(date +%s)",
        # idle: no job picked up within the timeout; a job once started runs to its end
        'while kill -0 "$RUNNER" 2>/dev/null; do',
        f'  if ! grep -q "Running job" runner.log && [ $(( $(date +%s) - START )) -ge {idle} ]; then',
        '    kill -TERM "$RUNNER"; fi; sleep 5; done'])  # fmt: skip
