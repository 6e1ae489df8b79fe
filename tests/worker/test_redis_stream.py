"""The Redis Streams source on its own: restart, reads cut short, dropped connections, options."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentflux.sources._redis import StreamEntry, from_redis_stream, to_redis_stream

from .test_worker import fill, pending, redis_asyncio


async def take(source: Any, count: int, within: float = 10.0) -> list[StreamEntry]:
    got: list[StreamEntry] = []
    async with asyncio.timeout(within):
        async for entry in source:
            got.append(entry)
            if len(got) == count:
                break
    return got


async def test_a_restarted_consumer_reads_its_own_pending_entries_first(redis_url: str, names: dict[str, str]) -> None:
    ids = await fill(redis_url, names["stream"], 8)
    first = from_redis_stream(redis_url, names["stream"], names["group"], "c1", batch=5)
    read = await take(first, 5)  # read, never acknowledged: the consumer "dies"
    await first.aclose()
    assert [e.id for e in read] == ids[:5]
    again = from_redis_stream(redis_url, names["stream"], names["group"], "c1", batch=3)
    try:
        entries = await take(again, 8)
        assert [e.id for e in entries] == ids  # its own five first, then the three it never read
        assert [e.deliveries for e in entries[:5]] == [2] * 5
        assert entries[0].fields == {"n": "0"}
        await again.ack(*(e.id for e in entries))
        assert await pending(redis_url, names["stream"], names["group"]) == 0
    finally:
        await again.aclose()


async def test_a_dead_consumers_entries_are_claimed_after_claim_idle(redis_url: str, names: dict[str, str]) -> None:
    ids = await fill(redis_url, names["stream"], 4)
    dead = from_redis_stream(redis_url, names["stream"], names["group"], "dead", batch=4)
    await take(dead, 4)
    await dead.aclose()
    live = from_redis_stream(redis_url, names["stream"], names["group"], "live", batch=4, claim_idle=0.2)
    try:
        claimed = await take(live, 4)
        assert sorted(e.id for e in claimed) == sorted(ids)
        assert live.claimed == 4
        assert all(e.deliveries == 2 for e in claimed)
    finally:
        await live.aclose()


async def test_a_read_cut_short_leaves_no_poisoned_connection(redis_url: str, names: dict[str, str]) -> None:
    source = from_redis_stream(redis_url, names["stream"], names["group"], "c1", block=5.0)
    try:
        reading = asyncio.ensure_future(take(source, 1))
        await asyncio.sleep(0.2)  # blocked in XREADGROUP on the server
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        (entry_id,) = await fill(redis_url, names["stream"], 1)
        (entry,) = await take(source, 1, within=3)  # answered by the new entry, not a stale reply
        assert entry.id == entry_id
        await source.ack(entry.id)
        assert await pending(redis_url, names["stream"], names["group"]) == 0
    finally:
        await source.aclose()


async def test_a_connection_the_server_dropped_is_made_again(redis_url: str, names: dict[str, str]) -> None:
    source = from_redis_stream(redis_url, names["stream"], names["group"], "c1", block=5.0)
    admin = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        reading = asyncio.ensure_future(take(source, 1))
        await asyncio.sleep(0.2)
        clients = await admin.client_list()
        killed = [c for c in clients if c.get("name") == "agentflux-reader:c1"]
        assert killed
        for client in killed:
            await admin.client_kill_filter(_id=client["id"])
        (entry_id,) = await fill(redis_url, names["stream"], 1)
        (entry,) = await reading
        assert entry.id == entry_id
    finally:
        await source.aclose()
        await admin.aclose()


async def test_write_once_writes_one_output_per_key(redis_url: str, names: dict[str, str]) -> None:
    sink = to_redis_stream(redis_url, names["sink"])
    admin = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert await sink.write_once("token:x", "1-0", {"v": 1})
        assert not await sink.write_once("token:x", "1-0", {"v": 1})
        assert await admin.xlen(names["sink"]) == 1
        await admin.delete(f"{names['sink']}:written:token:x")
    finally:
        await sink.aclose()
        await admin.aclose()


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"batch": 0}, "batch"),
        ({"max_deliveries": True}, "max_deliveries"),
        ({"block": 0}, "block"),
        ({"claim_idle": -1}, "claim_idle"),
    ],
)
def test_bad_source_options_are_refused(options: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        from_redis_stream("redis://127.0.0.1:6379/0", "s", "g", "c", **options)
    with pytest.raises(ValueError, match="non-empty"):
        from_redis_stream("redis://127.0.0.1:6379/0", "", "g", "c")
    with pytest.raises(ValueError, match="non-empty"):
        to_redis_stream("redis://127.0.0.1:6379/0", "")


async def test_an_entry_being_processed_longer_than_claim_idle_is_not_taken_away(
    redis_url: str, names: dict[str, str]
) -> None:
    (entry_id,) = await fill(redis_url, names["stream"], 1)
    slow = from_redis_stream(redis_url, names["stream"], names["group"], "slow", claim_idle=0.3, block=0.2)
    other = from_redis_stream(redis_url, names["stream"], names["group"], "other", claim_idle=0.3, block=0.2)
    try:
        iterator = slow.__aiter__()
        entry = await anext(iterator)
        assert entry.id == entry_id
        stealing = asyncio.ensure_future(take(other, 1, within=30))
        await asyncio.sleep(1.5)  # five claim_idle periods of "processing"
        assert not stealing.done()  # kept claimed by its keep-alive, never delivered twice
        await slow.ack(entry.id)
        assert await pending(redis_url, names["stream"], names["group"]) == 0
        stealing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stealing
        await iterator.aclose()  # type: ignore[attr-defined]
    finally:
        await slow.aclose()
        await other.aclose()


async def test_an_entry_whose_processing_failed_is_delivered_again(redis_url: str, names: dict[str, str]) -> None:
    (entry_id,) = await fill(redis_url, names["stream"], 1)
    source = from_redis_stream(redis_url, names["stream"], names["group"], "c1", claim_idle=0.2, block=0.1)
    try:
        iterator = source.__aiter__()
        first = await anext(iterator)
        source.failed(first.id, ValueError("the model went away"))  # no longer kept claimed
        async with asyncio.timeout(10):
            second = await anext(iterator)
        assert (first.id, second.id) == (entry_id, entry_id)
        assert second.deliveries == 2
        await iterator.aclose()  # type: ignore[attr-defined]
    finally:
        await source.aclose()
