"""``EventBus``: sync non-blocking publish, bounded subscribers, close ends everyone (SPEC 3, 10)."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from agentflux import Flux
from agentflux.sources import ClosedResourceError, EventBus, from_events

from ._helpers import drain, settle


def test_publish_is_a_plain_call_that_works_without_a_running_loop() -> None:
    bus: EventBus[int] = EventBus()
    assert not inspect.iscoroutinefunction(bus.publish)
    subscription = bus.subscribe(maxsize=1)
    # Nobody ever reads: publishing must still return at once, every time.
    for event in range(10_000):
        assert bus.publish(event) == 1
    assert subscription.pending == 1
    assert subscription.dropped == 9_999
    bus.close()


async def test_subscribe_registers_at_once_before_any_iteration() -> None:
    bus: EventBus[str] = EventBus()
    bus.publish("before")  # nobody subscribed yet: lost for everyone
    subscription = bus.subscribe()
    assert bus.publish("after subscribe") == 1  # counted before the first __anext__
    bus.publish("later")
    bus.close()
    assert await drain(subscription) == ["after subscribe", "later"]


async def test_every_subscriber_gets_every_event_in_order() -> None:
    bus: EventBus[int] = EventBus()
    subscriptions = [bus.subscribe() for _ in range(3)]
    for event in range(5):
        assert bus.publish(event) == 3
    bus.close()
    for subscription in subscriptions:
        assert await drain(subscription) == [0, 1, 2, 3, 4]


async def test_drop_oldest_keeps_the_newest_events_and_counts_the_drops() -> None:
    bus: EventBus[int] = EventBus()
    subscription = bus.subscribe(maxsize=3, overflow="drop_oldest")
    for event in range(10):
        bus.publish(event)
    assert subscription.dropped == 7
    bus.close()
    assert await drain(subscription) == [7, 8, 9]


async def test_drop_newest_keeps_the_oldest_events_and_counts_the_drops() -> None:
    bus: EventBus[int] = EventBus()
    subscription = bus.subscribe(maxsize=3, overflow="drop_newest")
    for event in range(10):
        bus.publish(event)
    assert subscription.dropped == 7
    bus.close()
    assert await drain(subscription) == [0, 1, 2]


async def test_drops_are_per_subscriber() -> None:
    bus: EventBus[int] = EventBus()
    small = bus.subscribe(maxsize=2)
    large = bus.subscribe(maxsize=100)
    for event in range(5):
        bus.publish(event)
    assert (small.dropped, large.dropped) == (3, 0)
    bus.close()
    assert await drain(small) == [3, 4]
    assert await drain(large) == [0, 1, 2, 3, 4]


async def test_a_reader_that_keeps_up_loses_nothing() -> None:
    bus: EventBus[int] = EventBus()
    subscription = bus.subscribe(maxsize=1)
    received = []
    for event in range(20):
        bus.publish(event)
        received.append(await anext(subscription))
    assert received == list(range(20))
    assert subscription.dropped == 0
    bus.close()
    await subscription.aclose()


async def test_close_wakes_a_blocked_subscriber_and_ends_a_full_one() -> None:
    bus: EventBus[int] = EventBus()
    full = bus.subscribe(maxsize=2)
    for event in range(3):
        bus.publish(event)
    idle = bus.subscribe()
    blocked = asyncio.create_task(drain(idle))
    await settle()
    assert not blocked.done()

    bus.close()
    assert await asyncio.wait_for(blocked, 1) == []
    # The full one still reads what it had queued, then ends.
    assert await drain(full, limit=1) == [1, 2]
    assert full.dropped == 1
    assert bus.closed


async def test_close_ends_many_blocked_subscribers() -> None:
    bus: EventBus[int] = EventBus()
    readers = [asyncio.create_task(drain(bus.subscribe())) for _ in range(5)]
    await settle()
    bus.publish(42)
    bus.close()
    results = await asyncio.wait_for(asyncio.gather(*readers), 1)
    assert results == [[42]] * 5


async def test_close_wakes_every_task_reading_one_subscription() -> None:
    bus: EventBus[int] = EventBus()
    subscription = bus.subscribe()
    readers = [asyncio.create_task(drain(subscription)) for _ in range(2)]
    await settle()
    bus.publish(1)
    bus.publish(2)
    bus.close()
    _, pending = await asyncio.wait(readers, timeout=0.5)
    try:
        assert not pending, "a reader of the closed bus is still blocked"
        assert sorted(event for reader in readers for event in reader.result()) == [1, 2]
    finally:
        for reader in pending:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


async def test_closing_a_subscription_ends_its_blocked_reader_and_leaves_the_bus() -> None:
    bus: EventBus[int] = EventBus()
    subscription = bus.subscribe()
    reader = asyncio.create_task(drain(subscription))
    await settle()
    subscription.close()
    assert await asyncio.wait_for(reader, 1) == []
    assert bus.publish(1) == 0
    bus.close()


async def test_subscription_context_manager_leaves_the_bus() -> None:
    bus: EventBus[str] = EventBus()
    async with bus.subscribe() as subscription:
        assert bus.statistics().subscribers == 1
        bus.publish("inside")
        assert await anext(subscription) == "inside"
    assert bus.statistics().subscribers == 0
    assert bus.publish("outside") == 0
    assert [event async for event in subscription] == []
    bus.close()


async def test_statistics_count_published_buffered_and_dropped_including_departed() -> None:
    bus: EventBus[int] = EventBus()
    assert bus.statistics().published == 0
    keeper = bus.subscribe(maxsize=10)
    leaver = bus.subscribe(maxsize=1, overflow="drop_newest")
    for event in range(4):
        bus.publish(event)
    stats = bus.statistics()
    assert (stats.published, stats.subscribers, stats.buffered, stats.dropped, stats.closed) == (
        4, 2, 4 + 1, 3, False
    )
    await leaver.aclose()
    stats = bus.statistics()
    assert (stats.subscribers, stats.buffered, stats.dropped) == (1, 4, 3)
    assert await anext(keeper) == 0
    assert bus.statistics().buffered == 3
    bus.close()
    stats = bus.statistics()
    assert stats.closed
    assert stats.dropped == 3  # counted once, not again at close
    assert stats.published == 4
    await keeper.aclose()


async def test_publish_and_subscribe_after_close_raise_closed_resource_error() -> None:
    bus: EventBus[int] = EventBus()
    bus.close()
    bus.close()  # idempotent
    with pytest.raises(ClosedResourceError):
        bus.publish(1)
    with pytest.raises(ClosedResourceError):
        bus.subscribe()
    with pytest.raises(ClosedResourceError):
        from_events(bus)


def test_subscribe_rejects_bad_arguments() -> None:
    bus: EventBus[int] = EventBus()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="maxsize"):
            bus.subscribe(maxsize=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="overflow"):
        bus.subscribe(overflow="block")  # type: ignore[arg-type]
    assert bus.statistics().subscribers == 0
    bus.close()


async def test_from_events_is_a_flux_source() -> None:
    bus: EventBus[int] = EventBus()
    source = from_events(bus)  # subscribed now, before the flux reads anything
    flux = Flux.lift(lambda x: x * 2)
    async with asyncio.timeout(5), flux.start(source) as out:
        for event in range(5):
            bus.publish(event)
        bus.close()
        outputs = [y async for y in out]
    assert outputs == [0, 2, 4, 6, 8]


async def test_stopping_a_flux_on_from_events_leaves_the_bus() -> None:
    bus: EventBus[int] = EventBus()
    flux = Flux.lift(lambda x: x)
    async with asyncio.timeout(5), flux.start(from_events(bus, maxsize=4)) as out:
        assert bus.statistics().subscribers == 1
        bus.publish(7)
        assert await anext(out) == 7
    assert bus.statistics().subscribers == 0
    assert bus.publish(8) == 0
    bus.close()
