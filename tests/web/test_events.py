"""``GET /api/events``: Server-Sent Events with a bounded history, replay, gaps and heartbeats."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from agentflux import Flux, FluxConfig, SemaphoreMixin, SemaphoreReason, open_purgatory
from agentflux.web import EventLog, create_app

TOKEN = "events-token"


def parse(frames: list[str]) -> list[tuple[int, str, dict[str, Any]]]:
    events = []
    for frame in frames:
        fields = dict(line.split(": ", 1) for line in frame.strip().splitlines() if not line.startswith(":"))
        if "data" in fields:
            events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return events


async def take(stream: AsyncIterator[str], count: int) -> list[str]:
    frames = []
    async with asyncio.timeout(3):
        async for frame in stream:
            if frame.startswith("id: "):
                frames.append(frame)
                if len(frames) == count:
                    return frames
    return frames


async def test_a_new_viewer_gets_the_history_then_new_events_in_order() -> None:
    log = EventLog(history=10)
    for n in range(3):
        log.publish("tick", f"tick {n}", task="t1", n=n)
    stream = log.stream(None)
    assert (await anext(stream)).startswith("retry: 1000\n")
    log.publish("tock", "tock")
    events = parse(await take(stream, 4))
    assert [(i, kind) for i, kind, _ in events] == [(1, "tick"), (2, "tick"), (3, "tick"), (4, "tock")]
    assert events[0][2] == {"type": "tick", "task": "t1", "message": "tick 0", "n": 0}
    await stream.aclose()
    assert log.viewers == set()


async def test_reconnecting_with_last_event_id_replays_only_what_was_missed() -> None:
    log = EventLog(history=10)
    for n in range(6):
        log.publish("tick", str(n))
    stream = log.stream("4")
    events = parse(await take(stream, 2))
    assert [i for i, _, _ in events] == [5, 6]
    await stream.aclose()


async def test_a_viewer_that_fell_behind_the_history_is_told_of_the_gap() -> None:
    log = EventLog(history=5)
    for n in range(20):
        log.publish("tick", str(n))
    stream = log.stream("3")
    events = parse(await take(stream, 6))
    assert events[0][1] == "gap"
    assert events[0][2]["missed"] == 12  # 4..15 are gone, 16..20 are kept
    assert [i for i, _, _ in events[1:]] == [16, 17, 18, 19, 20]
    await stream.aclose()


@pytest.mark.parametrize("header", ["junk", "-1", "999"])
async def test_an_unusable_last_event_id_starts_over(header: str) -> None:
    log = EventLog()
    log.publish("tick", "0")
    stream = log.stream(header)
    assert [i for i, _, _ in parse(await take(stream, 1))] == [1]
    await stream.aclose()


async def test_a_viewer_that_stops_reading_is_dropped_and_slows_nobody() -> None:
    log = EventLog(history=100, backlog=10)
    slow, fast = log.stream(None), log.stream(None)
    await anext(slow)
    await anext(fast)
    reading = asyncio.ensure_future(take(fast, 1000))
    for n in range(1000):
        log.publish("tick", str(n))
        if n % 5 == 0:
            await asyncio.sleep(0)  # the fast viewer keeps up
    assert len(parse(await reading)) == 1000
    assert log.dropped_viewers == 1
    assert len(log.viewers) == 1  # only the fast one is still served
    # The slow one gets what it had queued (10), then its stream ends.
    left = [frame async for frame in slow]
    assert len(parse(left)) == 10
    await fast.aclose()


async def test_an_idle_stream_carries_heartbeats() -> None:
    log = EventLog(heartbeat=0.05)
    stream = log.stream(None)
    await anext(stream)
    async with asyncio.timeout(2):
        assert await anext(stream) == ": heartbeat\n\n"
    log.publish("tick", "0")
    assert (await anext(stream)).startswith("id: 1\nevent: tick\n")
    await stream.aclose()


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="history and backlog"):
        EventLog(history=0)
    with pytest.raises(ValueError, match="heartbeat"):
        EventLog(heartbeat=0)


class Asker(SemaphoreMixin):
    async def invoke(self, x: Any) -> Any:
        return self.yield_semaphore(SemaphoreReason.APPROVAL_NEEDED, f"ok <script>{x}</script>?", {"x": x})

    async def resume(self, frozen_state: bytes, answer: Any) -> Any:
        return f"{self.restore_state(frozen_state)['x']}:{answer}"


async def idle() -> AsyncIterator[Any]:
    await asyncio.Event().wait()
    yield None  # pragma: no cover - never reached


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_purgatory_changes_and_flux_signals_reach_a_viewer_over_http(tmp_path: Path) -> None:
    async with open_purgatory(f"sqlite:///{tmp_path / 'p.db'}") as purgatory:
        flux = Flux.lift(Asker(), FluxConfig(purgatory=purgatory, agent_id="asker"))
        app = create_app(purgatory, token=TOKEN, fluxes=[flux])
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", timeout_graceful_shutdown=1))
        serving = asyncio.ensure_future(server.serve())
        try:
            async with asyncio.timeout(10):
                while not server.started:  # noqa: ASYNC110 - uvicorn has no event to wait on
                    await asyncio.sleep(0.01)
            async with flux.start(idle()) as outputs, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                async with http.stream("GET", "/api/events") as response:
                    assert response.headers["content-type"].startswith("text/event-stream")
                    lines = response.aiter_text()
                    await flux.invoke(7)  # parks a token
                    seen: dict[str, dict[str, Any]] = {}
                    buffer = ""
                    async with asyncio.timeout(5):
                        async for chunk in lines:
                            buffer += chunk
                            for _, kind, data in parse(buffer.split("\n\n")[:-1]):
                                seen[kind] = data
                            if "semaphore_saved" in seen:
                                break
                    saved = seen["semaphore_saved"]
                    assert saved["type"] == "semaphore_saved"
                    assert saved["token"]["prompt"] == "ok <script>7</script>?"  # data: escaped where shown
                    token_id = saved["token"]["id"]
                    answer = await http.post(
                        f"/api/semaphores/{token_id}/resolve",
                        json={"input": "go"},
                        headers={"Authorization": f"Bearer {TOKEN}"},
                    )
                    assert answer.status_code == 200
                    async with asyncio.timeout(5):
                        async for chunk in lines:
                            buffer += chunk
                            for _, kind, data in parse(buffer.split("\n\n")[:-1]):
                                seen[kind] = data
                            if "semaphore_resumed" in seen and "semaphore_resolved" in seen:
                                break
                    assert seen["semaphore_resolved"]["token"]["resolved_by"] == "dashboard from 127.0.0.1 (web)"
                    assert seen["semaphore_resumed"]["flux"] == "asker"
                    assert seen["semaphore_resumed"]["message"] == "asker: semaphore_resumed"
                    await lines.aclose()
                async with asyncio.timeout(5):
                    assert await anext(outputs) == "7:go"
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 10)
