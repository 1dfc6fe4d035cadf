"""The jupyter_server extension's REST API, with pytest-jupyter's real server (jp_fetch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from tpi_jupyter import state
from tpi_jupyter.commands import build_spec
from tpi_jupyter.task import Task, launch

from .conftest import wait_for

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def jp_server_config(jp_server_config: dict[str, Any]) -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"tpi_jupyter.server": True}}}


@pytest.fixture
def notebook_dir(jp_root_dir: Path, tpi_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workdir inside the server's root, so that pulled results can be opened there."""
    path = jp_root_dir / "project"
    path.mkdir()
    monkeypatch.chdir(path)
    return path


def start(words: list[str], script: str) -> Task:
    task = launch(build_spec(words, {"cloud": "local"}), script)
    assert isinstance(task, Task)
    return task


async def get(jp_fetch: Any, *parts: str, **params: str) -> Any:
    response = await jp_fetch("tpi", *parts, params=params)
    assert response.code == 200
    return json.loads(response.body)


async def test_list_detail_logs_files_pull_destroy(jp_fetch: Any, notebook_dir: Path) -> None:
    script = "mkdir -p results; for i in 1 2 3; do echo log-$i; done; echo 42 > results/answer.txt"
    task = start(["name=rest", "workdir=.", "output=results", "parallelism=2"], script)
    wait_for(lambda: task.status == "succeeded", timeout=60)

    (listed,) = (await get(jp_fetch, "tasks"))["tasks"]
    assert (listed["id"], listed["name"], listed["cloud"], listed["status"]) == (
        task.id,
        "rest",
        "local",
        "succeeded",
    )
    assert listed["parallelism"] == 2 and listed["elapsed"] > 0

    detail = await get(jp_fetch, "tasks", "rest")  # by name or by id
    assert detail["id"] == task.id
    assert [(r["rank"], r["state"], r["code"]) for r in detail["ranks"]] == [
        (0, "succeeded", 0),
        (1, "succeeded", 0),
    ]
    assert "machine-started" in [event["kind"] for event in detail["events"]]

    first = await get(jp_fetch, "tasks", task.id, "logs")
    assert sorted(f"{line['rank']}:{line['text']}" for line in first["lines"]) == sorted(
        f"{rank}:log-{i}" for rank in (0, 1) for i in (1, 2, 3))  # fmt: skip
    assert first["final"] is True
    again = await get(jp_fetch, "tasks", task.id, "logs", cursor=first["cursor"])
    assert again["lines"] == []  # the cursor remembers what was read

    files = await get(jp_fetch, "tasks", task.id, "files")
    assert files["source"] == "remote"
    assert files["files"] == [{"path": "results/answer.txt", "size": 3, "local": False,
                               "open_path": "project/results/answer.txt"}]  # fmt: skip

    response = await jp_fetch("tpi", "tasks", task.id, "pull", method="POST", body="")
    assert json.loads(response.body)["files"] == ["results/answer.txt"]
    files = await get(jp_fetch, "tasks", task.id, "files")
    assert files["source"] == "workdir" and files["files"][0]["local"] is True
    assert (notebook_dir / "results" / "answer.txt").read_text() == "42\n"

    response = await jp_fetch("tpi", "tasks", task.id, "destroy", method="POST", body="")
    assert json.loads(response.body)["status"] == "destroyed"
    assert state.load(task.id) is None
    assert (await get(jp_fetch, "tasks"))["tasks"] == []


async def test_stop_from_the_api(jp_fetch: Any, notebook_dir: Path) -> None:
    task = start(["name=stoppable"], "sleep 60")
    wait_for(lambda: task.status == "running", timeout=30)
    response = await jp_fetch("tpi", "tasks", "stoppable", "stop", method="POST", body="")
    assert json.loads(response.body)["status"] == "failed"
    detail = await get(jp_fetch, "tasks", "stoppable")
    assert detail["ranks"][0]["reason"] == "stopped"
    task.destroy()


async def test_unknown_task_is_404(jp_fetch: Any, notebook_dir: Path) -> None:
    for parts, method in ((("tasks", "nope"), "GET"), (("tasks", "nope", "logs"), "GET"),
                          (("tasks", "nope", "files"), "GET"), (("tasks", "nope", "destroy"), "POST")):  # fmt: skip
        with pytest.raises(HTTPClientError) as error:
            await jp_fetch("tpi", *parts, method=method, body="" if method == "POST" else None)
        assert error.value.code == 404


async def test_bad_cursor_is_400(jp_fetch: Any, notebook_dir: Path) -> None:
    task = start(["name=cursor"], "echo x")
    with pytest.raises(HTTPClientError) as error:
        await jp_fetch("tpi", "tasks", task.id, "logs", params={"cursor": "not-a-cursor"})
    assert error.value.code == 400
    task.destroy()


async def test_without_a_token_is_403(jp_fetch: Any, notebook_dir: Path) -> None:
    for parts, method in ((("tasks",), "GET"), (("tasks", "x", "destroy"), "POST")):
        with pytest.raises(HTTPClientError) as error:
            await jp_fetch("tpi", *parts, method=method, body="" if method == "POST" else None,
                           headers={"Authorization": ""})  # fmt: skip
        assert error.value.code == 403


async def test_a_name_that_could_be_a_path_is_400(
    jp_fetch: Any,
    http_server_client: Any,
    jp_base_url: str,
    jp_auth_header: dict[str, str],
    notebook_dir: Path,
) -> None:
    # issue 11, item 16: a lookup never turns a name into a path. Sent already quoted (jp_fetch
    # would quote the % again): tornado matches [^/]+ on the quoted path, then unquotes %2F to /.
    for quoted in ("..%2Fx", "..%2F..%2Fetc%2Fpasswd", "a%5Cb", "nul%00here", "tab%09here", "a" * 256):
        url = f"{jp_base_url}tpi/tasks/{quoted}"
        for suffix, method in (("", "GET"), ("/logs", "GET"), ("/destroy", "POST")):
            with pytest.raises(HTTPClientError) as error:
                await http_server_client.fetch(url + suffix, method=method, headers=jp_auth_header,
                                   body="" if method == "POST" else None)  # fmt: skip
            assert error.value.code == 400, (quoted, suffix)
            assert error.value.response is not None and "accepted" in error.value.response.reason


async def test_a_registry_file_missing_fields_does_not_hide_the_others(
    jp_fetch: Any, notebook_dir: Path, tpi_home: Path
) -> None:
    task = start(["name=visible"], "echo x")
    (tpi_home / "tasks" / "tpi-broken-00000000-00000000.json").write_text(
        '{"id": "tpi-broken-00000000-00000000"}'
    )
    assert [listed["name"] for listed in (await get(jp_fetch, "tasks"))["tasks"]] == ["visible"]
    task.destroy()
