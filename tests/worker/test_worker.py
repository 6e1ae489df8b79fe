"""The Redis Streams source and sink and the worker, in this process, on the real servers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from agentflux import open_purgatory
from agentflux.sources._redis import from_redis_stream, to_redis_stream
from agentflux.worker import StreamWorker, load_agent
from servers import postgres_schema_url

from .agents import Doubler

redis_asyncio = pytest.importorskip("redis.asyncio", reason="the redis extra is not installed")


async def fill(url: str, stream: str, count: int, *, poison: set[int] = frozenset()) -> list[str]:  # type: ignore[assignment]
    client = redis_asyncio.Redis.from_url(url, decode_responses=True)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for n in range(count):
                pipe.xadd(stream, {"n": str(n), **({"poison": "1"} if n in poison else {})})
            ids: list[str] = await pipe.execute()
        return ids
    finally:
        await client.aclose()


async def read_sink(url: str, stream: str) -> list[dict[str, Any]]:
    client = redis_asyncio.Redis.from_url(url, decode_responses=True)
    try:
        entries = await client.xrange(stream)
        return [{"source_id": f["source_id"], **json.loads(f["data"])} for _, f in entries]
    finally:
        await client.aclose()


async def pending(url: str, stream: str, group: str) -> int:
    client = redis_asyncio.Redis.from_url(url, decode_responses=True)
    try:
        summary = await client.xpending(stream, group)
        return int(summary["pending"])
    finally:
        await client.aclose()


async def resolve_as_they_appear(purgatory: Any, seen: list[str]) -> None:
    feed = purgatory.changes(maxsize=1_000_000)  # a resolver must not lose sight of a token
    try:
        pending_now = await purgatory.list_pending()
        for token in pending_now:
            seen.append(token.id)
            await purgatory.resolve(token.id, "yes", by="test resolver")
        async for change in feed:
            if change.kind == "saved" and change.token.id not in seen:
                seen.append(change.token.id)
                await purgatory.resolve(change.token.id, "yes", by="test resolver")
    finally:
        feed.close()


async def until_sink_has(url: str, stream: str, count: int, within: float = 30.0) -> list[dict[str, Any]]:
    async with asyncio.timeout(within):
        while True:
            rows = await read_sink(url, stream)
            if len({row["source_id"] for row in rows}) >= count:
                return rows
            await asyncio.sleep(0.05)


@pytest.mark.timeout(60)
async def test_a_worker_writes_every_output_once_and_parks_and_resumes_tokens(
    redis_url: str, names: dict[str, str]
) -> None:
    url = postgres_schema_url()
    ids = await fill(redis_url, names["stream"], 200)
    async with open_purgatory(url) as purgatory:
        source = from_redis_stream(redis_url, names["stream"], names["group"], "c1", batch=16, claim_idle=5)
        sink = to_redis_stream(redis_url, names["sink"])
        worker = StreamWorker(Doubler(), source, sink, purgatory, agent_id="doubler", concurrency=8)
        resolved: list[str] = []
        running = asyncio.ensure_future(worker.run())
        resolver = asyncio.ensure_future(resolve_as_they_appear(purgatory, resolved))
        try:
            rows = await until_sink_has(redis_url, names["sink"], 200)
        finally:
            worker.drain()
            stats = await running
            resolver.cancel()
            await asyncio.gather(resolver, return_exceptions=True)
            await source.aclose()
            await sink.aclose()
        assert sorted(row["source_id"] for row in rows) == sorted(ids)
        assert len(rows) == 200  # nothing written twice
        assert all(row["doubled"] == 2 * row["n"] for row in rows)
        assert sum(1 for row in rows if row.get("approved") == "yes") == 20
        assert (stats.parked, stats.resumed, stats.written) == (20, 20, 180)
        assert len(resolved) == 20
        assert await pending(redis_url, names["stream"], names["group"]) == 0
        assert await purgatory.list_pending() == []


@pytest.mark.timeout(60)
async def test_a_poison_event_goes_to_the_dead_letter_stream_and_the_rest_flow_on(
    redis_url: str, names: dict[str, str]
) -> None:
    ids = await fill(redis_url, names["stream"], 30, poison={3, 17})
    async with open_purgatory("memory://") as purgatory:
        source = from_redis_stream(
            redis_url, names["stream"], names["group"], "c1", batch=8, claim_idle=0.2, max_deliveries=3
        )
        sink = to_redis_stream(redis_url, names["sink"])
        worker = StreamWorker(Doubler(), source, sink, purgatory, agent_id="doubler", concurrency=4)
        running = asyncio.ensure_future(worker.run())
        resolver = asyncio.ensure_future(resolve_as_they_appear(purgatory, []))
        client = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
        try:
            async with asyncio.timeout(30):
                while await client.xlen(f"{names['stream']}:dead") < 2:  # noqa: ASYNC110 - polled as a client would
                    await asyncio.sleep(0.05)
            rows = await until_sink_has(redis_url, names["sink"], 28)
            dead = await client.xrange(f"{names['stream']}:dead")
        finally:
            worker.drain()
            await running
            resolver.cancel()
            await asyncio.gather(resolver, return_exceptions=True)
            await source.aclose()
            await sink.aclose()
            await client.aclose()
        assert sorted(f["source_id"] for _, f in dead) == sorted([ids[3], ids[17]])
        assert all("ValueError: poison event" in f["error"] for _, f in dead)
        assert all(int(f["deliveries"]) == 4 for _, f in dead)
        assert {row["source_id"] for row in rows} == set(ids) - {ids[3], ids[17]}
        assert await pending(redis_url, names["stream"], names["group"]) == 0


def test_load_agent_takes_objects_classes_factories_and_async_functions() -> None:
    assert load_agent("worker.agents:Doubler").name == "doubler"
    assert load_agent("worker.agents:Identity").name == "identity"
    with pytest.raises(ValueError, match="module:attr"):
        load_agent("worker.agents")
    with pytest.raises(ValueError, match="has no attribute"):
        load_agent("worker.agents:Nope")
    with pytest.raises(ValueError, match="is not an agent"):
        load_agent("worker.agents:asyncio")


@pytest.mark.timeout(60)
async def test_a_store_outage_holds_parking_back_instead_of_dead_lettering(
    redis_url: str, names: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentflux import SemaphoreStoreError

    ids = await fill(redis_url, names["stream"], 11)  # entries 0 and 10 park
    async with open_purgatory("memory://") as purgatory:
        source = from_redis_stream(
            redis_url, names["stream"], names["group"], "c1", batch=4, claim_idle=0.1, max_deliveries=1
        )
        sink = to_redis_stream(redis_url, names["sink"])
        worker = StreamWorker(Doubler(), source, sink, purgatory, agent_id="doubler", concurrency=2)
        real_park = worker.flux._park
        failures = iter(range(3))

        async def flaky(token: Any, event: Any) -> Any:
            if next(failures, None) is not None:
                raise SemaphoreStoreError("postgres store: a transaction failed: the server is restarting")
            return await real_park(token, event)

        monkeypatch.setattr(worker.flux, "_park", flaky)
        running = asyncio.ensure_future(worker.run())
        try:
            rows = await until_sink_has(redis_url, names["sink"], 9)
            async with asyncio.timeout(10):
                while len(await purgatory.list_pending()) < 2:  # noqa: ASYNC110 - polled as a client would
                    await asyncio.sleep(0.02)
        finally:
            worker.drain()
            await running
            await source.aclose()
            await sink.aclose()
        client = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
        try:
            assert await client.xlen(f"{names['stream']}:dead") == 0
        finally:
            await client.aclose()
        assert {row["source_id"] for row in rows} == set(ids) - {ids[0], ids[10]}
        assert sorted(t.original_event["id"] for t in await purgatory.list_pending()) == sorted([ids[0], ids[10]])
        assert await pending(redis_url, names["stream"], names["group"]) == 0
