"""SIGKILL ``agentflux serve`` while a task waits at its gate, start it again, approve: the task
completes with all its artifacts and nothing acknowledged is lost (issue 13.4)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("uvicorn", reason="agentflux serve needs the web extra")

TOKEN = "restart-test-token"
TASK = "Research how customers use saved searches and ship an improved version"  # five phases
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(tmp_path: Path, store: str, *extra: str) -> Iterator[tuple[subprocess.Popen[str], httpx.Client]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFLUX_", "OPENAI_"))}
    env |= {"AGENTFLUX_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "agentflux", "serve", "--port", str(port), "--store", store, *extra],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as api:
            deadline = time.monotonic() + 20
            while True:  # the server says it serves before uvicorn has bound the port
                try:
                    if api.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "agentflux serve never answered"
                time.sleep(0.05)
            yield process, api
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def wait_for(api: httpx.Client, task_id: str, *statuses: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        task = api.get(f"/api/tasks/{task_id}").json()
        if task["status"] in statuses:
            return dict(task)
        assert time.monotonic() < deadline, task
        time.sleep(0.05)


@pytest.mark.parametrize("answered_by", ["api", "cli"])
def test_a_task_parked_at_its_gate_survives_sigkill_and_completes_when_approved(
    tmp_path: Path, answered_by: str
) -> None:
    store = f"sqlite:///{tmp_path / 'serve.db'}"
    with serving(tmp_path, store) as (process, api):
        done = api.post("/api/tasks", json={"description": "Add a login page", "seed": 1, "gates": []}, headers=AUTH)
        gated = api.post("/api/tasks", json={"description": TASK, "seed": 5, "gates": ["integrating"]}, headers=AUTH)
        assert (done.status_code, gated.status_code) == (201, 201), (done.text, gated.text)
        finished = wait_for(api, done.json()["id"], "completed")
        waiting = wait_for(api, gated.json()["id"], "waiting")
        token_id = waiting["pending_approval"]
        assert token_id
        assert len(waiting["artifacts"]) == 4
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        assert process.returncode == -signal.SIGKILL

    with serving(tmp_path, store) as (process, api):
        listed = {task["id"]: task for task in api.get("/api/tasks").json()}
        assert set(listed) == {finished["id"], waiting["id"]}
        again = api.get(f"/api/tasks/{waiting['id']}").json()
        assert again["status"] == "waiting"
        assert again["pending_approval"] == token_id
        assert again["artifacts"] == waiting["artifacts"]  # content and all, as acknowledged
        assert api.get(f"/api/tasks/{finished['id']}").json()["artifacts"] == finished["artifacts"]
        assert [s["id"] for s in api.get("/api/semaphores").json()] == [token_id]
        if answered_by == "api":
            answer = api.post(f"/api/semaphores/{token_id}/resolve", json={"input": "approve"}, headers=AUTH)
            assert answer.status_code == 200, answer.text
        else:
            answer_cli = subprocess.run(
                [sys.executable, "-m", "agentflux", "purgatory", "resolve", token_id, "approve", "--store", store],
                capture_output=True,
                text=True,
                timeout=30,
                cwd=tmp_path,
            )
            assert answer_cli.returncode == 0, answer_cli.stderr
        completed = wait_for(api, waiting["id"], "completed")
        assert completed["artifacts"][:4] == waiting["artifacts"]
        assert len(completed["artifacts"]) == 5
        assert [a["phase"] for a in completed["artifacts"]] == completed["plan"]["phases"]
        assert completed["metrics"]["phases_completed"] == 5
        assert completed["metrics"]["approvals_resolved"] == 1
        assert completed["restored"] is True
        assert any(line["phase"] == "integrating" for line in completed["dialogue"])
        assert api.get("/api/semaphores").json() == []
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then ends by the signal it caught (as a service should).
        assert process.wait(timeout=15) in (0, -signal.SIGTERM)
        _, errors = process.communicate()
        assert "Traceback" not in errors, errors


def test_serve_with_an_llm_endpoint_gives_tasks_that_ask_llm_dialogue(tmp_path: Path) -> None:
    from workshop._helpers import serving as fake_llm

    store = f"sqlite:///{tmp_path / 'serve.db'}"
    with fake_llm() as fake, serving(tmp_path, store, "--llm-base-url", fake.url, "--model", "tiny") as (_, api):
        plain = api.post("/api/tasks", json={"description": "Add a login page", "seed": 1}, headers=AUTH)
        asked = api.post(
            "/api/tasks", json={"description": "Add a login page", "seed": 1, "llm": {"max_tokens": 30}}, headers=AUTH
        )
        assert (plain.status_code, asked.status_code) == (201, 201), (plain.text, asked.text)
        with_llm = wait_for(api, asked.json()["id"], "completed")
        without = wait_for(api, plain.json()["id"], "completed")
    assert {line["source"] for line in with_llm["dialogue"]} == {"llm"}
    assert {line["source"] for line in without["dialogue"]} == {"template"}
    assert with_llm["metrics"]["llm_calls"] == len(fake.exchanges) > 0
    assert {exchange.body["model"] for exchange in fake.exchanges} == {"tiny"}


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (("--model", "m"), "needs both --llm-base-url and --model"),
        (("--llm-base-url", "ftp://x/v1", "--model", "m"), "must be an http(s) URL"),
    ],
)
def test_serve_refuses_half_an_llm_configuration(tmp_path: Path, flags: tuple[str, ...], complaint: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFLUX_", "OPENAI_"))}
    result = subprocess.run(
        [sys.executable, "-m", "agentflux", "serve", "--port", str(free_port()), "--store", "memory://", *flags],
        capture_output=True, text=True, timeout=30, cwd=tmp_path, env=env | {"AGENTFLUX_TOKEN": TOKEN},
    )  # fmt: skip
    assert result.returncode == 1
    assert complaint in result.stderr
