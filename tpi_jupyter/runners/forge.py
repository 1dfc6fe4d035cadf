"""The forges' REST calls a runner needs, made with the repository token on the client only.

GitHub: `POST /repos/{owner}/{repo}/actions/runners/generate-jitconfig` (a just-in-time runner
configuration: one runner, one job, usable once) and `DELETE .../actions/runners/{id}`.
GitLab: `GET /projects/{path}`, `POST /user/runners` (a runner authentication token for this
runner only) and `DELETE /runners/{id}`. Base URLs are overridable (GitHub Enterprise,
self-managed GitLab), which is also how the tests reach their contract servers.
"""

from __future__ import annotations

import ipaddress
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from ..spec import SpecError

TOKEN_ENV = "REPO_TOKEN"
DRIVERS = ("github", "gitlab")
TIMEOUT = 30.0


@dataclass(frozen=True)
class Repo:
    driver: str
    url: str  # as the user gave it, e.g. https://github.com/acme/models
    api: str  # the REST base: https://api.github.com, https://gitlab.example.com/api/v4
    path: str  # owner/name (GitHub) or group/.../project (GitLab)

    @property
    def instance(self) -> str:
        """The forge's own URL (what a GitLab runner is given): the API base without /api/v4."""
        if self.api.endswith("/api/v4"):
            return self.api.removesuffix("/api/v4")
        parts = urllib.parse.urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class Registration:
    runner_id: int
    secret: str  # the JIT configuration or runner authentication token: for the machine only

    def __repr__(self) -> str:  # never shown by accident
        return f"Registration(runner_id={self.runner_id}, secret=<hidden>)"


def parse_repo(driver: str, url: str, api: str = "") -> Repo:
    if driver not in DRIVERS:
        raise SpecError(f"--driver: {driver!r} is not a forge; accepted: {', '.join(DRIVERS)}")
    parts = urllib.parse.urlsplit(url)
    path = parts.path.strip("/").removesuffix(".git")
    if parts.scheme not in ("https", "http") or not parts.netloc or path.count("/") < 1:
        raise SpecError(f"--repo: {url!r} is not a repository URL; accepted: https://host/owner/name")
    if driver == "github" and path.count("/") != 1:
        raise SpecError(
            f"--repo: {url!r} is not a GitHub repository; accepted: https://github.com/owner/name"
        )
    host = f"{parts.scheme}://{parts.netloc}"
    default = ("https://api.github.com" if parts.netloc == "github.com" else f"{host}/api/v3") \
        if driver == "github" else f"{host}/api/v4"  # fmt: skip
    base = (api or os.environ.get(f"TPI_{driver.upper()}_API_URL", "") or default).rstrip("/")
    _check_base(base)
    return Repo(driver, url, base, path)


def _check_base(base: str) -> None:
    """The token travels to `base`: plain HTTP only to this computer (tests, a local proxy)."""
    parts = urllib.parse.urlsplit(base)
    if parts.scheme == "https":
        return
    try:
        loopback = parts.scheme == "http" and ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:
        loopback = parts.hostname == "localhost"
    if not loopback:
        raise SpecError(f"--api-url: {base!r} would send {TOKEN_ENV} unencrypted; accepted: an https:// URL")


def token() -> str:
    value = os.environ.get(TOKEN_ENV, "").strip()
    if not value:
        raise SpecError(
            f"{TOKEN_ENV}: not set; accepted: a GitHub token that may administer the repository's "
            "runners, or a GitLab token with the create_runner scope (it never leaves this computer)"
        )
    return value


class ForgeError(RuntimeError):
    """A forge refused a call; the message is one line without the token."""


def call(method: str, url: str, headers: dict[str, str], body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        **headers, "Accept": headers.get("Accept", "application/json"), "Content-Type": "application/json",
        "User-Agent": "tpi-jupyter"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        if error.code == 404 and method == "DELETE":
            return 404, None  # already gone: deletion is idempotent
        detail = error.read()[:300].decode(errors="replace")
        raise ForgeError(f"{method} {urllib.parse.urlsplit(url).path}: HTTP {error.code} {' '.join(detail.split())}") \
            from None  # fmt: skip
    except (urllib.error.URLError, OSError) as error:
        raise ForgeError(f"{method} {url}: {getattr(error, 'reason', error)}") from None


class GitHub:
    def __init__(self, repo: Repo, secret: str):
        self.repo = repo
        self.headers = {"Authorization": f"Bearer {secret}", "Accept": "application/vnd.github+json",
                        "X-GitHub-Api-Version": "2022-11-28"}  # fmt: skip

    def register(self, name: str, labels: list[str]) -> Registration:
        _, found = call("POST", f"{self.repo.api}/repos/{self.repo.path}/actions/runners/generate-jitconfig",
                        self.headers, {"name": name, "runner_group_id": 1, "labels": labels,
                                       "work_folder": "_work"})  # fmt: skip
        return Registration(int(found["runner"]["id"]), str(found["encoded_jit_config"]))

    def unregister(self, runner_id: int) -> bool:
        status, _ = call("DELETE", f"{self.repo.api}/repos/{self.repo.path}/actions/runners/{runner_id}",
                         self.headers)  # fmt: skip
        return status != 404


class GitLab:
    def __init__(self, repo: Repo, secret: str):
        self.repo = repo
        self.headers = {"PRIVATE-TOKEN": secret}

    def register(self, name: str, labels: list[str]) -> Registration:
        quoted = urllib.parse.quote(self.repo.path, safe="")
        _, project = call("GET", f"{self.repo.api}/projects/{quoted}", self.headers)
        _, found = call("POST", f"{self.repo.api}/user/runners", self.headers, {
            "runner_type": "project_type", "project_id": int(project["id"]), "description": name,
            "tag_list": ",".join(labels), "run_untagged": False})  # fmt: skip
        return Registration(int(found["id"]), str(found["token"]))

    def unregister(self, runner_id: int) -> bool:
        status, _ = call("DELETE", f"{self.repo.api}/runners/{runner_id}", self.headers)
        return status != 404


def client(repo: Repo, secret: str) -> GitHub | GitLab:
    return GitHub(repo, secret) if repo.driver == "github" else GitLab(repo, secret)
