"""A CONTRACT SERVER for the GitHub and GitLab REST endpoints a runner uses (not GitHub, not GitLab).

It answers the documented request and response shapes, checks the auth header of every call,
refuses unknown body fields (HTTP 422 / 400 as the forges do), and records every call so a test
can read what was sent. It also plays the forges' job queues:

- GitLab: the runner API as documented (`POST /api/v4/jobs/request`, `PUT /api/v4/jobs/{id}`,
  `PATCH /api/v4/jobs/{id}/trace`, `DELETE /api/v4/runners`), matching jobs by tags.
- GitHub: the JIT configuration has the real runner's shape (`.runner`, `.credentials`,
  `.credentials_rsaparams`, base64 JSON); the Actions broker behind it is private to GitHub, so
  the job queue is a STAND-IN broker under `/_standin/` that only the project's stand-in runner
  speaks. A JIT runner is ephemeral, as on GitHub: removed once its one job or session ends.

Documented shapes: docs.github.com/en/rest/actions/self-hosted-runners (generate-jitconfig,
delete a runner, list runners); docs.gitlab.com/ee/api/users.html#create-a-runner-linked-to-a-user,
docs.gitlab.com/ee/api/runners.html (delete a runner by id / by authentication token).
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import secrets
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

JIT_FIELDS = {"name": str, "runner_group_id": int, "labels": list, "work_folder": str}
GITLAB_RUNNER_FIELDS = {"runner_type", "project_id", "group_id", "description", "paused", "locked",
                        "run_untagged", "tag_list", "access_level", "maximum_timeout", "maintenance_note"}  # fmt: skip
GITHUB_DEFAULT_LABELS = ("self-hosted", "linux", "x64")


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case: HTTP header names are case-insensitive
    body: bytes


@dataclass
class Job:
    id: int
    forge: str
    labels: list[str]
    script: str
    token: str = field(default_factory=lambda: f"job-{secrets.token_hex(8)}")
    runner: int = 0
    state: str = "pending"  # pending | running | success | failed
    exit_code: int | None = None
    log: str = ""


@dataclass
class Runner:
    id: int
    forge: str
    name: str
    labels: list[str]
    secret: str  # GitLab: the runner authentication token; GitHub: the JIT credential's client id
    ephemeral: bool


class ForgeContract:
    """Both forges on one loopback port; `token` is the repository token they accept."""

    def __init__(self, token: str, github_repo: str = "acme/models", gitlab_project: str = "acme/ml/models"):
        self.token, self.github_repo, self.gitlab_project = token, github_repo, gitlab_project
        self.gitlab_project_id = 4242
        self.calls: list[Call] = []
        self.runners: dict[int, Runner] = {}
        self.removed: list[int] = []
        self.jobs: dict[int, Job] = {}
        self._ids = itertools.count(101)
        self._lock = threading.Lock()
        contract = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                call = Call(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with contract._lock:
                    contract.calls.append(call)
                try:
                    status, answer = contract.route(call)
                except Refused as refusal:
                    status, answer = refusal.status, {"message": str(refusal)}
                data = b"" if answer is None else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ForgeContract:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------ what tests use

    @property
    def github_api(self) -> str:
        return f"{self.url}/github"

    @property
    def gitlab_api(self) -> str:
        return f"{self.url}/api/v4"

    def queue_job(self, forge: str, labels: list[str], script: str) -> Job:
        with self._lock:
            job = Job(next(self._ids), forge, labels, script)
            self.jobs[job.id] = job
            return job

    # ------------------------------------------------------------ routing

    def route(self, call: Call) -> tuple[int, Any]:
        path = urllib.parse.urlsplit(call.path).path
        routes = [
            ("POST", rf"/github/repos/{self.github_repo}/actions/runners/generate-jitconfig", self.gh_jit),
            ("GET", rf"/github/repos/{self.github_repo}/actions/runners", self.gh_list),
            ("DELETE", rf"/github/repos/{self.github_repo}/actions/runners/(\d+)", self.gh_delete),
            ("POST", r"/_standin/acquire", self.gh_acquire),
            ("POST", r"/_standin/complete", self.gh_complete),
            ("DELETE", r"/_standin/sessions/(\d+)", self.gh_end_session),
            ("GET", r"/api/v4/projects/([^/]+)", self.gl_project),
            ("POST", r"/api/v4/user/runners", self.gl_create_runner),
            ("DELETE", r"/api/v4/runners/(\d+)", self.gl_delete_runner),
            ("DELETE", r"/api/v4/runners", self.gl_delete_own),
            ("POST", r"/api/v4/jobs/request", self.gl_request_job),
            ("PUT", r"/api/v4/jobs/(\d+)", self.gl_update_job),
            ("PATCH", r"/api/v4/jobs/(\d+)/trace", self.gl_trace),
        ]  # fmt: skip
        for method, pattern, action in routes:
            match = re.fullmatch(pattern, path)
            if match and method == call.method:
                with self._lock:
                    return action(call, *match.groups())  # type: ignore[operator]
        raise Refused(404, f"no route {call.method} {path}")

    @staticmethod
    def _json(call: Call) -> dict[str, Any]:
        try:
            found = json.loads(call.body or b"{}")
        except ValueError:
            raise Refused(400, "body is not JSON") from None
        if not isinstance(found, dict):
            raise Refused(400, "body is not an object")
        return found

    def _github_auth(self, call: Call) -> None:
        if call.headers.get("authorization") not in (f"Bearer {self.token}", f"token {self.token}"):
            raise Refused(401, "Bad credentials")
        if "x-github-api-version" in call.headers and call.headers["x-github-api-version"] != "2022-11-28":
            raise Refused(400, "unsupported API version")

    def _gitlab_auth(self, call: Call) -> None:
        if call.headers.get("private-token") != self.token:
            raise Refused(401, "401 Unauthorized")

    # ------------------------------------------------------------ GitHub

    def gh_jit(self, call: Call) -> tuple[int, Any]:
        self._github_auth(call)
        body = self._json(call)
        unknown = set(body) - set(JIT_FIELDS)
        missing = {"name", "runner_group_id", "labels"} - set(body)
        wrong = [key for key, kind in JIT_FIELDS.items() if key in body and not isinstance(body[key], kind)]
        if unknown or missing or wrong:
            raise Refused(
                422, f"Invalid request: unknown {sorted(unknown)} missing {sorted(missing)} wrong {wrong}"
            )
        labels = body["labels"]
        if not 1 <= len(labels) <= 100 or not all(isinstance(label, str) and label for label in labels):
            raise Refused(422, "labels: 1 to 100 non-empty strings")
        if any(runner.name == body["name"] for runner in self.runners.values()):
            raise Refused(409, "Already exists - A runner with the same name already exists")
        runner = Runner(next(self._ids), "github", body["name"], [*GITHUB_DEFAULT_LABELS, *labels],
                        secrets.token_hex(16), ephemeral=True)  # fmt: skip
        self.runners[runner.id] = runner

        def b64(value: Any) -> str:
            return base64.b64encode(json.dumps(value).encode()).decode()

        files = {
            ".runner": b64({"agentId": runner.id, "agentName": runner.name, "poolId": 1, "poolName": "Default",
                            "serverUrl": self.url, "gitHubUrl": f"https://github.com/{self.github_repo}",
                            "workFolder": body.get("work_folder", "_work"), "ephemeral": True}),
            ".credentials": b64({"scheme": "OAuth", "data": {"clientId": runner.secret,
                                 "authorizationUrl": f"{self.url}/_apis/oauth2/token"}}),
            ".credentials_rsaparams": b64({"d": "stand-in", "exponent": "AQAB", "modulus": "stand-in"}),
        }  # fmt: skip
        return 201, {"runner": self._gh_runner(runner), "encoded_jit_config": b64(files)}

    @staticmethod
    def _gh_runner(runner: Runner) -> dict[str, Any]:
        return {"id": runner.id, "name": runner.name, "os": "unknown", "status": "offline", "busy": False,
                "labels": [{"id": i + 1, "name": name, "type": "read-only" if name in GITHUB_DEFAULT_LABELS
                            else "custom"} for i, name in enumerate(runner.labels)]}  # fmt: skip

    def gh_list(self, call: Call) -> tuple[int, Any]:
        self._github_auth(call)
        found = [self._gh_runner(r) for r in self.runners.values() if r.forge == "github"]
        return 200, {"total_count": len(found), "runners": found}

    def gh_delete(self, call: Call, runner_id: str) -> tuple[int, Any]:
        self._github_auth(call)
        return self._remove(int(runner_id), "github")

    def _remove(self, runner_id: int, forge: str) -> tuple[int, Any]:
        runner = self.runners.get(runner_id)
        if runner is None or runner.forge != forge:
            raise Refused(404, "Not Found")
        del self.runners[runner_id]
        self.removed.append(runner_id)
        return 204, None

    def _broker_runner(self, call: Call, agent: int) -> Runner:
        runner = self.runners.get(agent)
        if runner is None or call.headers.get("authorization") != f"Bearer {runner.secret}":
            raise Refused(401, "stand-in broker: unknown session")
        return runner

    def gh_acquire(self, call: Call) -> tuple[int, Any]:
        runner = self._broker_runner(call, int(self._json(call).get("agent_id", 0)))
        job = self._take(runner)
        return (200, {"job": {"id": job.id, "script": job.script}}) if job else (204, None)

    def _take(self, runner: Runner) -> Job | None:
        for job in self.jobs.values():
            if job.forge == runner.forge and job.state == "pending" and set(job.labels) <= set(runner.labels):
                job.state, job.runner = "running", runner.id
                return job
        return None

    def gh_complete(self, call: Call) -> tuple[int, Any]:
        body = self._json(call)
        runner = self._broker_runner(call, int(body.get("agent_id", 0)))
        job = self.jobs.get(int(body.get("job_id", 0)))
        if job is None or job.runner != runner.id:
            raise Refused(404, "stand-in broker: not this runner's job")
        job.state = "success" if body.get("result") == "succeeded" else "failed"
        job.exit_code, job.log = int(body["exit_code"]), str(body.get("log", ""))
        self._remove(runner.id, "github")  # ephemeral: one job, then GitHub removes the runner
        return 200, {}

    def gh_end_session(self, call: Call, agent: str) -> tuple[int, Any]:
        runner = self.runners.get(int(agent))
        if runner is None:
            return 204, None  # removed already (its job ended)
        self._broker_runner(call, int(agent))
        return self._remove(runner.id, "github")

    # ------------------------------------------------------------ GitLab

    def gl_project(self, call: Call, quoted: str) -> tuple[int, Any]:
        self._gitlab_auth(call)
        if urllib.parse.unquote(quoted) != self.gitlab_project:
            raise Refused(404, "404 Project Not Found")
        return 200, {"id": self.gitlab_project_id, "path_with_namespace": self.gitlab_project}

    def gl_create_runner(self, call: Call) -> tuple[int, Any]:
        self._gitlab_auth(call)
        body = self._json(call)
        unknown = set(body) - GITLAB_RUNNER_FIELDS
        if unknown:
            raise Refused(400, f"unknown parameters {sorted(unknown)}")
        if body.get("runner_type") != "project_type" or body.get("project_id") != self.gitlab_project_id:
            raise Refused(400, "runner_type project_type needs this project's project_id")
        tags = body.get("tag_list", "")
        labels = [t.strip() for t in (tags.split(",") if isinstance(tags, str) else tags) if t.strip()]
        runner = Runner(next(self._ids), "gitlab", str(body.get("description", "")), labels,
                        f"glrt-{secrets.token_urlsafe(15)}", ephemeral=False)  # fmt: skip
        self.runners[runner.id] = runner
        return 201, {"id": runner.id, "token": runner.secret, "token_expires_at": None}

    def gl_delete_runner(self, call: Call, runner_id: str) -> tuple[int, Any]:
        self._gitlab_auth(call)
        return self._remove(int(runner_id), "gitlab")

    def _by_token(self, token: Any) -> Runner:
        for runner in self.runners.values():
            if runner.forge == "gitlab" and runner.secret == token:
                return runner
        raise Refused(403, "403 Forbidden")

    def gl_delete_own(self, call: Call) -> tuple[int, Any]:
        return self._remove(self._by_token(self._json(call).get("token")).id, "gitlab")

    def gl_request_job(self, call: Call) -> tuple[int, Any]:
        runner = self._by_token(self._json(call).get("token"))
        job = self._take(runner)
        if job is None:
            return 204, None
        return 201, {
            "id": job.id, "token": job.token, "allow_git_fetch": True,
            "job_info": {"id": job.id, "name": "test", "stage": "test", "project_id": self.gitlab_project_id,
                         "project_name": self.gitlab_project.rsplit("/", 1)[-1]},
            "runner_info": {"timeout": 3600},
            "steps": [{"name": "script", "script": job.script.splitlines(), "timeout": 3600,
                       "when": "on_success", "allow_failure": False}],
            "variables": [], "git_info": {}, "artifacts": None, "cache": [], "services": [],
        }  # fmt: skip

    def _job(self, job_id: str, token: Any) -> Job:
        job = self.jobs.get(int(job_id))
        if job is None or job.token != token:
            raise Refused(403, "403 Forbidden")
        return job

    def gl_update_job(self, call: Call, job_id: str) -> tuple[int, Any]:
        body = self._json(call)
        job = self._job(job_id, body.get("token"))
        if body.get("state") not in ("running", "success", "failed"):
            raise Refused(400, "state: running, success or failed")
        job.state, job.exit_code = body["state"], body.get("exit_code")
        return 200, None

    def gl_trace(self, call: Call, job_id: str) -> tuple[int, Any]:
        job = self._job(job_id, call.headers.get("job-token"))
        if not re.fullmatch(r"\d+-\d+", call.headers.get("content-range", "")):
            raise Refused(416, "Range Not Satisfiable")
        job.log += call.body.decode(errors="replace")
        return 202, None
