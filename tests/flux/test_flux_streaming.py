"""Streaming: order, concurrency, slow sources, backpressure and bounded memory."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from agentflux import Flux, FluxConfig, FluxState
from conftest import TrackedSource, collect, gapped, signals_until_stopped


class Tracker:
    """An agent that sleeps a given time per item and records how many calls overlap."""

    def __init__(self, delays: dict[Any, float] | None = None, default: float = 0.0) -> None:
        self.delays = delays or {}
        self.default = default
        self.active = 0
        self.max_active = 0
        self.calls = 0

    async def invoke(self, x: Any) -> Any:
        self.calls += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.delays.get(x, self.default))
            return ("out", x)
        finally:
            self.active -= 1


async def test_single_worker_keeps_order() -> None:
    items = list(range(200))
    assert await collect(Flux.lift(lambda x: x * 3).start(items)) == [x * 3 for x in items]


@pytest.mark.parametrize("concurrency", [2, 4, 8])
async def test_ordered_output_with_concurrency(concurrency: int) -> None:
    rng = random.Random(concurrency)
    items = list(range(40))
    tracker = Tracker({x: rng.uniform(0, 0.004) for x in items})
    flux = Flux.lift(tracker, FluxConfig(concurrency=concurrency))
    assert await collect(flux.start(TrackedSource(items))) == [("out", x) for x in items]
    assert 1 < tracker.max_active <= concurrency


async def test_unordered_output_emits_as_completed() -> None:
    items = list(range(8))
    # Every fourth item is slow: its neighbours overtake it.
    tracker = Tracker({x: 0.05 if x % 4 == 0 else 0.0 for x in items})
    flux = Flux.lift(tracker, FluxConfig(concurrency=4, ordered=False))
    outputs = [x for _, x in await collect(flux.start(items))]
    assert sorted(outputs) == items
    assert outputs.index(1) < outputs.index(0)
    assert outputs.index(5) < outputs.index(4)


@pytest.mark.parametrize("ordered", [True, False])
async def test_concurrency_limit_is_respected(ordered: bool) -> None:
    tracker = Tracker(default=0.002)
    flux = Flux.lift(tracker, FluxConfig(concurrency=3, ordered=ordered))
    source = TrackedSource(range(30))
    async with asyncio.timeout(5), flux.start(source) as stream:
        # Perturbations share the same slots as stream events.
        invokes = asyncio.gather(*(flux.invoke(f"p{i}") for i in range(10)))
        outputs = [item async for item in stream]
        await invokes
    assert len(outputs) == 30
    assert tracker.max_active == 3
    assert tracker.calls == 40


async def test_slow_source_and_slow_stage_lose_nothing() -> None:
    async def slow_stage(x: int) -> int:
        await asyncio.sleep(0.1)
        return x * 100

    pipeline = Flux.lift(lambda x: x + 1) | Flux.lift(slow_stage)
    loop = asyncio.get_running_loop()
    begun = loop.time()
    outputs = await collect(pipeline.start(gapped(range(5), 0.1)))
    assert outputs == [100, 200, 300, 400, 500]
    # Source gaps and stage work overlap; nothing was cut short by a read timeout.
    assert loop.time() - begun < 1.5


async def test_slow_source_is_not_cancelled_between_items() -> None:
    cancelled: list[bool] = []

    async def patient() -> Any:
        for item in range(3):
            try:
                await asyncio.sleep(0.12)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
            yield item

    assert await collect(Flux.lift(lambda x: x).start(patient())) == [0, 1, 2]
    assert cancelled == []


async def test_end_of_source_ends_iteration_promptly() -> None:
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()
    flux = Flux.lift(lambda x: x)
    async with asyncio.timeout(2), flux.start(TrackedSource([1, 2, 3], gate=gate)) as stream:
        assert [await anext(stream) for _ in range(3)] == [1, 2, 3]
        gate.set()  # the source now ends
        begun = loop.time()
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        assert loop.time() - begun < 0.05
    assert flux.state is FluxState.STOPPED


async def test_short_stream_has_no_latency_floor() -> None:
    loop = asyncio.get_running_loop()
    begun = loop.time()
    for _ in range(10):
        assert await collect(Flux.lift(lambda x: x).start(TrackedSource([1, 2, 3]))) == [1, 2, 3]
    assert loop.time() - begun < 0.25


async def test_block_policy_with_a_slow_consumer_loses_nothing() -> None:
    flux = Flux.lift(lambda x: x, FluxConfig(buffer_size=8))
    received: list[int] = []
    async with asyncio.timeout(10), flux.start(TrackedSource(range(1000))) as stream:
        async for item in stream:
            received.append(item)
            await asyncio.sleep(0)
            if item % 100 == 0:
                await asyncio.sleep(0.002)
    assert received == list(range(1000))
    metrics = flux.metrics()
    assert metrics.dropped == 0
    assert metrics.events_in == 1000


async def run_without_reading(policy: str, n: int, buffer_size: int) -> tuple[list[int], Any, list[Any]]:
    """Let the producer finish before the consumer reads anything."""
    flux = Flux.lift(lambda x: x, FluxConfig(buffer_size=buffer_size, drop_policy=policy))  # type: ignore[arg-type]
    observer = flux.observe()
    stream = flux.start(TrackedSource(range(n)))
    signals = await signals_until_stopped(observer)
    assert flux.state is FluxState.STOPPED
    return await collect(stream), flux.metrics(), signals


async def test_drop_oldest_keeps_the_newest_items() -> None:
    outputs, metrics, signals = await run_without_reading("drop_oldest", 10, 3)
    assert outputs == [7, 8, 9]
    assert metrics.dropped == 7
    dropped = [s for s in signals if s.kind == "dropped"]
    assert len(dropped) == 7


async def test_drop_newest_keeps_the_oldest_items() -> None:
    outputs, metrics, signals = await run_without_reading("drop_newest", 10, 3)
    assert outputs == [0, 1, 2]
    assert metrics.dropped == 7
    assert len([s for s in signals if s.kind == "dropped"]) == 7


async def test_drop_policies_do_not_drop_when_the_consumer_keeps_up() -> None:
    for policy in ("drop_oldest", "drop_newest"):
        flux = Flux.lift(lambda x: x, FluxConfig(buffer_size=2, drop_policy=policy))  # type: ignore[arg-type]
        gate = asyncio.Event()
        source = TrackedSource([1], gate=gate)
        async with asyncio.timeout(2), flux.start(source) as stream:
            assert await anext(stream) == 1
            gate.set()
            assert [item async for item in stream] == []
        assert flux.metrics().dropped == 0


@pytest.mark.parametrize(("concurrency", "ordered"), [(1, True), (3, False)])
async def test_memory_stays_bounded_with_a_slow_consumer(concurrency: int, ordered: bool) -> None:
    buffer_size = 10
    bound = buffer_size + concurrency + 16 + 2
    flux = Flux.lift(lambda x: x, FluxConfig(buffer_size=buffer_size, concurrency=concurrency, ordered=ordered))
    source = TrackedSource()  # endless
    consumed = 0
    max_lead = 0
    async with asyncio.timeout(10), flux.start(source) as stream:
        async for _ in stream:
            consumed += 1
            max_lead = max(max_lead, source.read - consumed)
            await asyncio.sleep(0.0005)
            if consumed == 150:
                break
    assert max_lead <= bound
    assert max_lead >= buffer_size  # the producer did run ahead up to the buffer
    assert source.closed


@pytest.mark.parametrize("concurrency", [2, 4])
async def test_memory_stays_bounded_with_a_slow_consumer_ordered(concurrency: int) -> None:
    buffer_size = 10
    bound = buffer_size + concurrency + 16 + 2
    flux = Flux.lift(lambda x: x, FluxConfig(buffer_size=buffer_size, concurrency=concurrency))
    source = TrackedSource(range(3000))
    consumed = 0
    max_lead = 0
    async with asyncio.timeout(10), flux.start(source) as stream:
        async for _ in stream:
            consumed += 1
            max_lead = max(max_lead, source.read - consumed)
            await asyncio.sleep(0.0005)
            if consumed == 100:
                break
    assert max_lead <= bound
