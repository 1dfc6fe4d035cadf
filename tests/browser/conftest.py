"""Browser tests: a real JupyterLab server from this venv, driven by headless Debian Chromium.

Run them in their own pytest process (`pytest tests/browser`): pytest-jupyter's fixtures and
Playwright's sync API do not mix. Needs /usr/bin/chromium (`scripts/install-browser`) and the
`playwright` Python package; never `playwright install`. Screenshots go to
`test-output/browser/` at the repo root.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tpi_jupyter import state
from tpi_jupyter.task import Task

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-output" / "browser"
CHROMIUM = Path(os.environ.get("TPI_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SERVER_START_TIMEOUT = 90.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives JupyterLab in headless Chromium")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remember each phase's report on the item, so fixtures can tell that the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LabServer:
    url: str  # http://127.0.0.1:PORT
    token: str
    root: Path  # the server's root_dir, where notebooks go
    home: Path  # TPI_JUPYTER_HOME of the server and its kernels
    log: Path  # the server's stdout and stderr

    def lab_url(self, path: str) -> str:
        return f"{self.url}/lab/tree/{path}?token={self.token}"

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


def _jupyter_command() -> list[str]:
    script = Path(sys.executable).with_name("jupyter")
    return [str(script), "lab"] if script.exists() else [sys.executable, "-m", "jupyterlab"]


def _wait_ready(server: LabServer, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/api/status?token={server.token}", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"jupyter lab not ready within {SERVER_START_TIMEOUT} s:\n{server.log_tail()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (server and kernels), then SIGKILL what is left."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):  # kernels the server did not stop share its group
        os.killpg(process.pid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(timeout=5)


def _kill_tasks(home: Path) -> None:
    """Delete every task registered under home (its local processes too), like tests/conftest.py."""
    previous = os.environ.get("TPI_JUPYTER_HOME")
    os.environ["TPI_JUPYTER_HOME"] = str(home)
    try:
        for record in state.records():
            try:
                task = Task(record)
                task.backend.delete(task.task_spec, task.backend_state)
            finally:
                state.delete(record["id"])
    finally:
        if previous is None:
            os.environ.pop("TPI_JUPYTER_HOME", None)
        else:
            os.environ["TPI_JUPYTER_HOME"] = previous


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    """`jupyter lab` from this venv on a free port with a token, root_dir and TPI_JUPYTER_HOME in a tmp dir.

    One server per test module (starting one takes a few seconds); each test uses its own notebook,
    hence its own kernel. Teardown stops the server and its kernels, then deletes every task.
    """
    tmp_path = tmp_path_factory.mktemp("lab")
    root = tmp_path / "notebooks"
    home = tmp_path / "tpi-home"
    settings = tmp_path / "lab-settings"
    for path in (root, home, settings):
        path.mkdir()
    # No news pop-up (a user setting, so it lives in JUPYTERLAB_SETTINGS_DIR).
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps({"fetchNews": "false"}))

    env = dict(os.environ)
    env.pop("TPI_JUPYTER_NONINTERACTIVE", None)  # tests/conftest.py sets it; kernels must show widgets
    env.update(
        TPI_JUPYTER_HOME=str(home),
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "lab-workspaces"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"),
        JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"),  # ignore the user's ~/.jupyter
        JUPYTER_DATA_DIR=str(tmp_path / "jupyter-data"),  # and user kernelspecs: this venv's python3 only
        PYTHONUNBUFFERED="1",
    )
    port, token = free_port(), uuid.uuid4().hex
    server = LabServer(f"http://127.0.0.1:{port}", token, root, home, tmp_path / "jupyter-lab.log")
    command = [
        *_jupyter_command(),
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.allow_root=True",
        "--LabApp.extension_manager=readonly",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp, to run commands and read kernel state
    ]
    with server.log.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    try:
        _wait_ready(server, process)
        yield server
    finally:
        _stop(process)
        _kill_tasks(home)


@pytest.fixture
def page(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A Playwright page in headless Debian Chromium; screenshot saved if the test fails."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 1000},
        )  # fmt: skip
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.on("pageerror", lambda error: print(f"[browser page error] {error}"))
            yield page
            report = getattr(request.node, "report_call", None)
            if report is None or report.failed:
                save_screenshot(page, f"{request.node.name}-failure")
        finally:
            context.close()


@pytest.fixture
def screenshot() -> Callable[[Any, str], Path]:
    """save_screenshot(page, name), for tests."""
    return save_screenshot


def save_screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot to test-output/browser/<name>.png and print its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    try:
        page.screenshot(path=str(path), full_page=True)
    except Exception as error:  # a screenshot must never hide the real failure
        print(f"screenshot {path} failed: {error}")
        return path
    print(f"screenshot: {path}")
    return path
