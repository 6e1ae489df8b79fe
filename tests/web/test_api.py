"""The HTTP API (issue 13, first part): approvals answered exactly once, with the token, audited."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentflux import Flux, FluxConfig, JsonCodec, Purgatory, SemaphoreMixin, SemaphoreReason, open_purgatory
from agentflux.web import MAX_BODY, create_app, load_token
from semaphores._helpers import make_token

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def purgatory(tmp_path: Path) -> AsyncIterator[Purgatory]:
    async with open_purgatory(f"sqlite:///{tmp_path / 'p.db'}") as p:
        yield p


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.fixture
async def api(purgatory: Purgatory) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(create_app(purgatory, token=TOKEN, label="ops")) as client:
        yield client


async def test_health_and_schema(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    schema = (await api.get("/openapi.json")).json()
    assert {"/api/semaphores", "/api/semaphores/{token_id}/resolve", "/api/semaphores/{token_id}/cancel"} <= set(
        schema["paths"]
    )


async def test_pending_and_escalated_approvals_are_listed_oldest_first(
    api: httpx.AsyncClient, purgatory: Purgatory
) -> None:
    first = await purgatory.save(make_token("Deploy <b>v2</b>?", options=("yes", "no"), severity="critical"))
    second = await purgatory.save(make_token("other"))
    await purgatory.store.transition(second.id, ("pending",), "escalated", None, None)
    listed = (await api.get("/api/semaphores")).json()
    assert [row["id"] for row in listed] == [first.id, second.id]
    assert listed[1]["status"] == "escalated"
    assert listed[0]["prompt"] == "Deploy <b>v2</b>?"  # JSON data; the page escapes it
    assert listed[0]["options"] == ["yes", "no"]
    assert listed[0]["severity"] == "critical"


async def test_a_change_without_the_token_is_refused_and_changes_nothing(
    api: httpx.AsyncClient, purgatory: Purgatory
) -> None:
    token = await purgatory.save(make_token())
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic x"}):
        for verb, body in (("resolve", {"input": "yes"}), ("cancel", {"reason": "no"})):
            response = await api.post(f"/api/semaphores/{token.id}/{verb}", json=body, headers=headers)
            assert response.status_code == 401
            assert "Bearer" in response.json()["error"]
    assert (await purgatory.get(token.id)).status.value == "pending"


async def test_resolve_answers_once_and_records_who_from_where(api: httpx.AsyncClient, purgatory: Purgatory) -> None:
    token = await purgatory.save(make_token(options=("yes", "no")))
    response = await api.post(f"/api/semaphores/{token.id}/resolve", json={"input": {"ok": True}}, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "resolved"
    assert body["resolution"] == {"ok": True}
    assert body["resolved_by"] == "ops from 127.0.0.1 (web)"
    again = await api.post(f"/api/semaphores/{token.id}/resolve", json={"input": "no"}, headers=AUTH)
    assert again.status_code == 409
    assert "already resolved" in again.json()["error"]
    assert (await api.post("/api/semaphores/nope/resolve", json={"input": 1}, headers=AUTH)).status_code == 404
    assert (await purgatory.get(token.id)).resolution == {"ok": True}


async def test_cancel_withdraws_with_its_reason(api: httpx.AsyncClient, purgatory: Purgatory) -> None:
    token = await purgatory.save(make_token())
    response = await api.post(f"/api/semaphores/{token.id}/cancel", json={"reason": "not today"}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    stored = await purgatory.get(token.id)
    assert (stored.resolution, stored.resolved_by) == ("not today", "ops from 127.0.0.1 (web)")
    empty = await purgatory.save(make_token())
    assert (await api.post(f"/api/semaphores/{empty.id}/cancel", json={}, headers=AUTH)).status_code == 200
    assert (await api.post(f"/api/semaphores/{empty.id}/cancel", json={}, headers=AUTH)).status_code == 409


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (b"yes", "not JSON"),
        (b'["input"]', "must be a JSON object"),
        (b"{}", '{"input": ...}'),
        (b'{"input": 1, "extra": 2}', "unknown field"),
        (b'{"input": NaN}', "not JSON"),
        (b'{"input": ' + b"[" * 100 + b"]" * 100 + b"}", "nested deeper"),
        (b'{"input": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", "nested too deeply"),
        (b'{"input": "\\ud800"}', "cannot be stored"),
    ],
)
async def test_a_bad_body_is_422_and_changes_nothing(
    api: httpx.AsyncClient, purgatory: Purgatory, content: bytes, complaint: str
) -> None:
    token = await purgatory.save(make_token())
    response = await api.post(f"/api/semaphores/{token.id}/resolve", content=content, headers=AUTH)
    assert response.status_code == 422, response.text
    assert complaint in response.json()["error"]
    assert (await purgatory.get(token.id)).status.value == "pending"


async def test_a_body_over_the_limit_is_413_declared_or_streamed(api: httpx.AsyncClient, purgatory: Purgatory) -> None:
    token = await purgatory.save(make_token())
    big = json.dumps({"input": "x" * MAX_BODY}).encode()
    response = await api.post(f"/api/semaphores/{token.id}/resolve", content=big, headers=AUTH)
    assert response.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        yield b'{"input": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    streamed = await api.post(f"/api/semaphores/{token.id}/resolve", content=chunks(), headers=AUTH)
    assert streamed.status_code == 413
    assert (await purgatory.get(token.id)).status.value == "pending"


async def test_a_committed_answer_whose_row_cannot_be_decoded_here_is_reported_as_done(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"

    class Special:
        pass

    codec = JsonCodec()
    codec.register(Special, lambda _: {}, lambda _: Special(), name="special")
    async with open_purgatory(url, codec=codec) as writer:
        token = await writer.save(make_token(original_event=Special()))
    async with open_purgatory(url) as purgatory, client_for(create_app(purgatory, token=TOKEN)) as api:
        listed = (await api.get("/api/semaphores")).json()
        assert listed[0]["id"] == token.id
        assert "error" in listed[0]
        response = await api.post(f"/api/semaphores/{token.id}/resolve", json={"input": "yes"}, headers=AUTH)
        assert response.status_code == 200
        assert response.json()["status"] == "resolved"
        assert "cannot be decoded" in response.json()["warning"]


class Asker(SemaphoreMixin):
    async def invoke(self, x: Any) -> Any:
        return self.yield_semaphore(SemaphoreReason.APPROVAL_NEEDED, f"ok {x}?", {"x": x})

    async def resume(self, frozen_state: bytes, answer: Any) -> Any:
        return f"{self.restore_state(frozen_state)['x']}:{answer}"


async def idle() -> AsyncIterator[Any]:
    await asyncio.Event().wait()
    yield None  # pragma: no cover - never reached


async def test_a_running_flux_resumes_what_the_api_answered_and_its_metrics_are_served(purgatory: Purgatory) -> None:
    flux = Flux.lift(Asker(), FluxConfig(purgatory=purgatory, agent_id="asker"))
    async with flux.start(idle()) as stream, client_for(create_app(purgatory, token=TOKEN, fluxes=[flux])) as api:
        await flux.invoke(5)
        (pending,) = (await api.get("/api/semaphores")).json()
        assert pending["flux_id"] == "asker"
        response = await api.post(f"/api/semaphores/{pending['id']}/resolve", json={"input": "go"}, headers=AUTH)
        assert response.status_code == 200
        async with asyncio.timeout(5):
            assert await anext(stream) == "5:go"
        metrics = (await api.get("/api/metrics")).json()
        assert metrics["asker"]["semaphores_resumed"] == 1
        assert metrics["asker"]["state"] == "FLOWING"
        exposition = (await api.get("/metrics")).text
        assert 'agentflux_semaphores_resumed_total{flux="asker"} 1.0' in exposition


async def test_two_viewers_and_the_cli_answer_at_once_and_exactly_one_wins(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    async with open_purgatory(url) as purgatory, client_for(create_app(purgatory, token=TOKEN)) as api:
        for _ in range(5):
            token = await purgatory.save(make_token())
            path = f"/api/semaphores/{token.id}/resolve"
            cli = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agentflux", "purgatory", "resolve", token.id, "from-cli", "--store", url,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            responses = await asyncio.gather(
                api.post(path, json={"input": "viewer-1"}, headers=AUTH),
                api.post(path, json={"input": "viewer-2"}, headers=AUTH),
            )
            _, err = await cli.communicate()
            codes = [r.status_code for r in responses]
            winners = codes.count(200) + (cli.returncode == 0)
            assert winners == 1, (codes, cli.returncode, err)
            assert set(codes) <= {200, 409}
            if cli.returncode != 0:
                assert len(err.decode().splitlines()) == 1
                assert "already resolved" in err.decode()
            stored = await purgatory.get(token.id)
            expected = "from-cli" if cli.returncode == 0 else ["viewer-1", "viewer-2"][codes.index(200)]
            assert stored.resolution == expected


def test_the_token_is_generated_once_with_mode_0600_and_the_variable_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTFLUX_TOKEN", raising=False)
    token, generated = load_token(tmp_path / ".agentflux")
    assert generated
    assert len(token) >= 40
    assert stat.S_IMODE(os.stat(tmp_path / ".agentflux" / "token").st_mode) == 0o600
    assert load_token(tmp_path / ".agentflux") == (token, False)
    monkeypatch.setenv("AGENTFLUX_TOKEN", "from-the-environment")
    assert load_token(tmp_path / ".agentflux") == ("from-the-environment", False)
    monkeypatch.setenv("AGENTFLUX_TOKEN", " ")
    with pytest.raises(ValueError, match="empty"):
        load_token(tmp_path / ".agentflux")
    monkeypatch.delenv("AGENTFLUX_TOKEN")
    (tmp_path / ".agentflux" / "token").write_text("\n")
    with pytest.raises(ValueError, match="empty token"):
        load_token(tmp_path / ".agentflux")
    with pytest.raises(ValueError, match="non-empty token"):
        create_app(open_purgatory("memory://"), token="")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_agentflux_serve_prints_its_token_and_answers_with_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    async with open_purgatory(url) as purgatory:
        token = await purgatory.save(make_token("ship it?"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "AGENTFLUX_TOKEN"}
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentflux", "serve", "--port", str(port), "--store", url, "--label", "alice",
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert server.stdout is not None
    try:
        async with asyncio.timeout(20):
            first = (await server.stdout.readline()).decode()
            lines = [first] + [(await server.stdout.readline()).decode() for _ in range(2)]
        assert first.startswith("token: ")
        secret = first.split()[1]
        assert (tmp_path / ".agentflux" / "token").read_text().strip() == secret
        assert f"http://127.0.0.1:{port}/" in lines[1]
        assert "this machine only" in lines[2]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            async with asyncio.timeout(20):
                while True:  # the server may still be binding
                    try:
                        if (await http.get("/healthz")).status_code == 200:
                            break
                    except httpx.ConnectError:
                        await asyncio.sleep(0.05)
            denied = await http.post(f"/api/semaphores/{token.id}/resolve", json={"input": "yes"})
            assert denied.status_code == 401
            answered = await http.post(
                f"/api/semaphores/{token.id}/resolve",
                json={"input": "yes"},
                headers={"Authorization": f"Bearer {secret}"},
            )
            assert answered.status_code == 200
            assert answered.json()["resolved_by"] == "alice from 127.0.0.1 (web)"
    finally:
        server.terminate()
        await server.wait()


async def test_agentflux_serve_says_so_when_it_cannot_listen(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentflux", "serve", "--port", str(port), "--store", "memory://",
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(result.communicate(), 20)
    assert result.returncode == 1
    assert f"could not listen on 127.0.0.1:{port}" in err.decode()
    assert "Traceback" not in err.decode()


# ----------------------------------------------------------------------------- tasks


async def test_a_task_runs_through_its_gate_when_its_approval_is_answered_over_the_api(purgatory: Purgatory) -> None:
    app = create_app(purgatory, token=TOKEN)
    async with client_for(app) as api, app.router.lifespan_context(app):
        body = {"description": "Fix the <img src=x onerror=alert(1)> parser", "seed": 7, "gates": ["integrating"]}
        assert (await api.post("/api/tasks", json=body)).status_code == 401
        created = await api.post("/api/tasks", json=body, headers=AUTH)
        assert created.status_code == 201, created.text
        task = created.json()
        assert task["status"] == "running"
        assert task["lead_builder"]
        assert "integrating" in task["plan"]["phases"]
        async with asyncio.timeout(10):
            while (await api.get(f"/api/tasks/{task['id']}")).json()["status"] != "waiting":  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        waiting = (await api.get(f"/api/tasks/{task['id']}")).json()
        (pending,) = (await api.get("/api/semaphores")).json()
        assert waiting["pending_approval"] == pending["id"]
        answer = await api.post(f"/api/semaphores/{pending['id']}/resolve", json={"input": "approve"}, headers=AUTH)
        assert answer.status_code == 200
        async with asyncio.timeout(10):
            while (await api.get(f"/api/tasks/{task['id']}")).json()["status"] != "completed":  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        done = (await api.get(f"/api/tasks/{task['id']}")).json()
        assert done["phase"] == "complete"
        assert len(done["artifacts"]) == len(task["plan"]["phases"]) >= 2
        assert all(artifact["content"] for artifact in done["artifacts"])
        assert done["description"] == body["description"]  # data as given; escaped where shown
        assert done["metrics"]["approvals_resolved"] == 1
        assert [t["id"] for t in (await api.get("/api/tasks")).json()] == [task["id"]]
        assert (await api.get("/api/tasks/nope")).status_code == 404


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({}, "description"),
        ({"description": ""}, "non-empty"),
        ({"description": "x" * 2001}, "at most 2000"),
        ({"description": "x", "seed": "7"}, "seed"),
        ({"description": "x", "seed": True}, "seed"),
        ({"description": "x", "gates": ["nowhere"]}, "nowhere"),
        ({"description": "x", "gates": "integrating"}, "gates"),
        ({"description": "x", "llm": {"model": "m"}}, "no LLM configured"),
        ({"description": "x", "colour": "red"}, "unknown field"),
    ],
)
async def test_a_bad_task_is_422(purgatory: Purgatory, body: dict[str, Any], complaint: str) -> None:
    app = create_app(purgatory, token=TOKEN)
    async with client_for(app) as api, app.router.lifespan_context(app):
        response = await api.post("/api/tasks", json=body, headers=AUTH)
        assert response.status_code == 422, response.text
        assert complaint in response.json()["error"]
        assert (await api.get("/api/tasks")).json() == []


def hostile_llm(options: Any) -> Any:
    from agentflux.workshop import MockLLMClient

    return MockLLMClient(lambda messages: f"<script>alert(1)</script> says {options.get('model', 'default')}")


async def test_a_task_with_llm_dialogue_speaks_through_the_servers_client(purgatory: Purgatory) -> None:
    asked: list[Any] = []

    def factory(options: Any) -> Any:
        asked.append(dict(options))
        return hostile_llm(options)

    app = create_app(purgatory, token=TOKEN, llm=factory)
    async with client_for(app) as api, app.router.lifespan_context(app):
        body = {"description": "Add a login page", "seed": 2, "llm": {"model": "small", "max_tokens": 40}}
        created = await api.post("/api/tasks", json=body, headers=AUTH)
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        async with asyncio.timeout(10):
            while (await api.get(f"/api/tasks/{task_id}")).json()["status"] != "completed":  # noqa: ASYNC110 - the API is polled as a client would
                await asyncio.sleep(0.02)
        done = (await api.get(f"/api/tasks/{task_id}")).json()
        assert asked == [{"model": "small", "max_tokens": 40}]
        assert {line["source"] for line in done["dialogue"]} == {"llm"}
        assert done["dialogue"][0]["text"] == "<script>alert(1)</script> says small"  # data as given
        assert done["metrics"]["llm_calls"] > 0


@pytest.mark.parametrize(
    ("llm", "complaint"),
    [
        ("gpt", '"llm" must be an object'),
        ({"base_url": "http://elsewhere/v1"}, "unknown \"llm\" option(s) ['base_url']"),
        ({"api_key": "k"}, "unknown"),
        ({"model": 5}, '"llm.model" must be a string'),
        ({"model": ""}, "1 to 200"),
        ({"token_budget": -1}, ">= 0"),
        ({"max_tokens": 0}, "1 to 4096"),
        ({"max_tokens": True}, "an integer"),
    ],
)
async def test_bad_llm_options_are_422_and_nothing_is_called(purgatory: Purgatory, llm: Any, complaint: str) -> None:
    called: list[Any] = []
    app = create_app(purgatory, token=TOKEN, llm=lambda options: called.append(options))  # type: ignore[func-returns-value]
    async with client_for(app) as api, app.router.lifespan_context(app):
        response = await api.post("/api/tasks", json={"description": "x", "llm": llm}, headers=AUTH)
        assert response.status_code == 422, response.text
        assert complaint.replace("\\", "") in response.json()["error"]
        assert called == []
