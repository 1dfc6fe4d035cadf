"""A STAND-IN for the runner binary (GitHub's actions/runner, gitlab-runner), for tests only.

It runs on the machine with the registration the client handed over, never the repository
token. It polls the forge for a job, runs its script with bash, reports the result, and after
`idle_timeout` seconds without a job (or after one job with `single`) unregisters and exits,
so that the machine's startup script goes on to release the machine.

GitLab: the runner API as documented (`POST /api/v4/jobs/request`, `PUT /api/v4/jobs/{id}`,
`PATCH /api/v4/jobs/{id}/trace`, `DELETE /api/v4/runners` with the runner's own token).
GitHub: the JIT configuration is decoded as the real runner does (`.runner`'s `serverUrl`,
`.credentials`' client id); the job broker behind it is private to GitHub, so the contract
server offers a stand-in broker under `/_standin/` instead (named so on both sides).
Imports only the standard library: it runs on bare machines.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def _call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
          raw: bytes | None = None) -> tuple[int, Any]:  # fmt: skip
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as error:
        return error.code, None


def _run(script: str, work: Path) -> tuple[int, str]:
    work.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["/bin/bash", "-e", "-c", script], cwd=work, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    return done.returncode, done.stdout + done.stderr


class GitLabSession:
    def __init__(self, registration: dict[str, Any]):
        self.url, self.token = registration["url"].rstrip("/"), registration["secret"]

    def next_job(self) -> dict[str, Any] | None:
        status, job = _call("POST", f"{self.url}/api/v4/jobs/request",
                            {"token": self.token, "info": {"name": "tpi-runner-stand-in", "version": "0"}})  # fmt: skip
        return job if status == 201 else None

    def finish(self, job: dict[str, Any], code: int, log: str) -> None:
        _call("PATCH", f"{self.url}/api/v4/jobs/{job['id']}/trace", raw=log.encode(),
              headers={"JOB-TOKEN": job["token"], "Content-Range": f"0-{len(log.encode())}",
                       "Content-Type": "text/plain"})  # fmt: skip
        _call(
            "PUT",
            f"{self.url}/api/v4/jobs/{job['id']}",
            {"token": job["token"], "state": "success" if code == 0 else "failed", "exit_code": code},
        )

    @staticmethod
    def script(job: dict[str, Any]) -> str:
        return "\n".join(line for step in job.get("steps", []) for line in step.get("script", []))

    def unregister(self) -> None:
        _call("DELETE", f"{self.url}/api/v4/runners", {"token": self.token})


class GitHubSession:
    def __init__(self, registration: dict[str, Any]):
        files = json.loads(base64.b64decode(registration["secret"]))
        runner = json.loads(base64.b64decode(files[".runner"]))
        credentials = json.loads(base64.b64decode(files[".credentials"]))
        self.agent, self.broker = int(runner["agentId"]), runner["serverUrl"].rstrip("/") + "/_standin"
        self.headers = {"Authorization": f"Bearer {credentials['data']['clientId']}"}

    def next_job(self) -> dict[str, Any] | None:
        status, found = _call("POST", f"{self.broker}/acquire", {"agent_id": self.agent}, self.headers)
        return found["job"] if status == 200 else None

    def finish(self, job: dict[str, Any], code: int, log: str) -> None:
        _call("POST", f"{self.broker}/complete", {"agent_id": self.agent, "job_id": job["id"],
              "result": "succeeded" if code == 0 else "failed", "exit_code": code, "log": log}, self.headers)  # fmt: skip

    @staticmethod
    def script(job: dict[str, Any]) -> str:
        return str(job["script"])

    def unregister(self) -> None:
        """A JIT runner's registration ends with its session (GitHub removes it)."""
        _call("DELETE", f"{self.broker}/sessions/{self.agent}", None, self.headers)


def serve(registration: dict[str, Any], work: Path, clock: Any = time.monotonic) -> int:
    """Take jobs until idle for `idle_timeout` (or one job with `single`); the number of jobs run."""
    session = (
        GitLabSession(registration) if registration["driver"] == "gitlab" else GitHubSession(registration)
    )
    idle, poll, single = (
        float(registration["idle_timeout"]),
        float(registration.get("poll", 1.0)),
        registration["single"],
    )
    jobs, last = 0, clock()
    print(f"stand-in runner: waiting for jobs labelled {','.join(registration['labels'])}", flush=True)
    while clock() - last < idle:
        job = session.next_job()
        if job is None:
            time.sleep(poll)
            continue
        code, log = _run(session.script(job), work / str(job["id"]))
        session.finish(job, code, log)
        jobs, last = jobs + 1, clock()
        print(f"stand-in runner: job {job['id']} ended with code {code}", flush=True)
        if single:
            break
    session.unregister()
    print(f"stand-in runner: unregistered after {jobs} job(s)", flush=True)
    return jobs


def main(argv: list[str]) -> int:
    path = Path(argv[0])
    registration = json.loads(path.read_text())
    path.unlink()  # single-use: nothing to reuse once the runner holds it
    serve(registration, path.parent / "work")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
