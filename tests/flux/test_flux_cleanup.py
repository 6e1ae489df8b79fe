"""Cleanup: every way of leaving a stream stops its tasks and closes its source."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from agentflux import Flux, FluxConfig, FluxPerturbationError, FluxState
from conftest import TrackedSource, collect, other_tasks


class ClosableSource:
    """A hand-written async iterator (not a generator) that records ``aclose()``."""

    def __init__(self, items: list[Any]) -> None:
        self.items = list(items)
        self.idle = asyncio.Event()
        self.aclosed = 0

    def __aiter__(self) -> ClosableSource:
        return self

    async def __anext__(self) -> Any:
        if self.items:
            return self.items.pop(0)
        await self.idle.wait()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.aclosed += 1


async def test_bare_break_then_garbage_collection_closes_the_source() -> None:
    flux = Flux.lift(lambda x: x)
    source = TrackedSource()  # endless
    stream = flux.start(source)
    async with asyncio.timeout(2):
        async for item in stream:
            if item == 3:
                break
    del stream
    gc.collect()
    await source.wait_finalized()
    assert source.closed
    assert flux.state is FluxState.STOPPED
    # The flux is usable again.
    assert await collect(flux.start([1, 2])) == [1, 2]


async def test_break_out_of_a_temporary_stream_cleans_up() -> None:
    flux = Flux.lift(lambda x: x * 2)
    source = TrackedSource(delay=0.001)
    async with asyncio.timeout(2):
        async for item in flux.start(source):
            if item >= 4:
                break
        gc.collect()
        await source.wait_finalized()
    assert flux.state is FluxState.STOPPED


async def test_leaving_async_with_closes_the_source_at_once() -> None:
    flux = Flux.lift(lambda x: x)
    source = TrackedSource()
    async with asyncio.timeout(2), flux.start(source) as stream:
        async for item in stream:
            if item == 5:
                break
    # Deterministic: no waiting needed after ``async with``.
    assert source.finalized.is_set()
    assert source.closed
    assert other_tasks() == []
    assert flux.state is FluxState.STOPPED


async def test_leaving_async_with_on_an_exception_closes_the_source() -> None:
    flux = Flux.lift(lambda x: x)
    source = TrackedSource()

    async def consume() -> None:
        async with asyncio.timeout(2), flux.start(source) as stream:
            async for item in stream:
                if item == 2:
                    _ = 1 / 0

    with pytest.raises(ZeroDivisionError):
        await consume()
    assert source.closed
    assert other_tasks() == []


async def test_aclose_closes_a_sync_generator_source() -> None:
    closed: list[bool] = []

    def numbers():  # type: ignore[no-untyped-def]
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.append(True)

    flux = Flux.lift(lambda x: x)
    stream = flux.start(numbers())
    async with asyncio.timeout(2):
        assert await anext(stream) == 0
        await stream.aclose()
    assert closed == [True]
    assert other_tasks() == []


async def test_aclose_calls_aclose_of_a_custom_async_iterator() -> None:
    source = ClosableSource([1, 2])
    flux = Flux.lift(lambda x: x)
    stream = flux.start(source)
    async with asyncio.timeout(2):
        assert await anext(stream) == 1
        await stream.aclose()
    assert source.aclosed == 1
    assert other_tasks() == []


async def test_aclose_right_after_start_still_closes_the_source() -> None:
    source = ClosableSource([1, 2])
    flux = Flux.lift(lambda x: x)
    stream = flux.start(source)
    async with asyncio.timeout(2):
        await stream.aclose()
    assert flux.state is FluxState.STOPPED
    assert source.aclosed == 1


@pytest.mark.parametrize("yields", [0, 1])
@pytest.mark.parametrize("ending", ["collapse", "agent_error"])
async def test_aclose_after_the_run_ended_itself_closes_the_source(ending: str, yields: int) -> None:
    def fail_on_one(x: int) -> int:
        if x == 1:
            raise ValueError(x)
        return x

    if ending == "collapse":
        flux = Flux.lift(lambda x: x, FluxConfig(max_events=1))
    else:
        flux = Flux.lift(fail_on_one, FluxConfig(on_error="raise"))
    source = TrackedSource()  # endless: only aclose() can end it
    stream = flux.start(source)
    async with asyncio.timeout(2):
        assert await anext(stream) == 0
        for _ in range(yields):
            await asyncio.sleep(0)
        await stream.aclose()
    assert not flux.state.is_running
    assert source.finalized.is_set()


async def test_aclose_after_a_collapse_and_the_run_wound_down_closes_the_source() -> None:
    flux = Flux.lift(lambda x: x, FluxConfig(max_events=1))
    source = TrackedSource()
    stream = flux.start(source)
    async with asyncio.timeout(2):
        assert await anext(stream) == 0
        # Reading on to the end waits until the run has closed its source.
        assert [item async for item in stream] == []
    assert source.finalized.is_set()
    await stream.aclose()


async def test_stop_from_another_task_ends_the_consumer() -> None:
    flux = Flux.lift(lambda x: x)
    source = TrackedSource(delay=0.001)
    got_some = asyncio.Event()
    received: list[int] = []

    async def consume() -> None:
        async with flux.start(source) as stream:
            async for item in stream:
                received.append(item)
                if len(received) == 3:
                    got_some.set()

    consumer = asyncio.create_task(consume())
    async with asyncio.timeout(2):
        await got_some.wait()
        await flux.stop()
        assert source.closed  # stop() waits for the source to be closed
        await consumer  # the consumer's iteration ends normally
    assert received == list(range(len(received)))
    assert len(received) >= 3
    assert flux.state is FluxState.STOPPED


async def test_stop_from_another_task_wakes_a_consumer_waiting_on_an_idle_source() -> None:
    flux = Flux.lift(lambda x: x)
    source = TrackedSource([1], gate=asyncio.Event())
    first = asyncio.Event()

    async def consume() -> list[int]:
        out = []
        async with flux.start(source) as stream:
            async for item in stream:
                out.append(item)
                first.set()
        return out

    consumer = asyncio.create_task(consume())
    async with asyncio.timeout(2):
        await first.wait()
        await asyncio.sleep(0)  # the consumer now waits for an output that never comes
        await flux.stop()
        assert await consumer == [1]
    assert source.closed


async def test_cancelling_the_consumer_closes_the_source() -> None:
    flux = Flux.lift(lambda x: x)
    source = TrackedSource(delay=0.001)
    got_some = asyncio.Event()

    async def consume() -> None:
        async with flux.start(source) as stream:
            async for item in stream:
                if item == 2:
                    got_some.set()

    consumer = asyncio.create_task(consume())
    async with asyncio.timeout(2):
        await got_some.wait()
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
    assert source.closed
    assert flux.state is FluxState.STOPPED
    assert other_tasks() == []


async def test_cancelling_a_consumer_waiting_on_an_idle_source() -> None:
    flux = Flux.lift(lambda x: x)
    source = TrackedSource([], gate=asyncio.Event())
    entered = asyncio.Event()

    async def consume() -> None:
        async with flux.start(source) as stream:
            entered.set()
            async for _ in stream:
                pass

    consumer = asyncio.create_task(consume())
    async with asyncio.timeout(2):
        await entered.wait()
        await asyncio.sleep(0)
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
    assert source.closed
    assert other_tasks() == []


async def test_cleanup_fails_pending_perturbations() -> None:
    release = asyncio.Event()
    blocked = asyncio.Event()

    async def agent_fn(x: Any) -> Any:
        if x == "hold":
            blocked.set()
            await release.wait()
        return x

    flux = Flux.lift(agent_fn)
    source = TrackedSource(["hold"])
    async with asyncio.timeout(2):
        async with flux.start(source):
            await blocked.wait()
            pending = asyncio.create_task(flux.invoke("late"))
            await asyncio.sleep(0)
        with pytest.raises(FluxPerturbationError):
            await pending
    assert source.closed


async def test_pipeline_cleanup_closes_the_source_and_stops_every_stage() -> None:
    stages = [Flux.lift(lambda x: x + 1), Flux.lift(lambda x: x * 2), Flux.lift(lambda x: x - 1)]
    pipeline = stages[0] | stages[1] | stages[2]
    source = TrackedSource()
    async with asyncio.timeout(2), pipeline.start(source) as stream:
        assert [await anext(stream) for _ in range(3)] == [1, 3, 5]
    assert source.closed
    assert [stage.state for stage in stages] == [FluxState.STOPPED] * 3
    assert other_tasks() == []


async def test_pipeline_stop_stops_every_stage() -> None:
    stages = [Flux.lift(lambda x: x), Flux.lift(lambda x: x)]
    pipeline = stages[0] | stages[1]
    source = TrackedSource(delay=0.001)
    stream = pipeline.start(source)
    async with asyncio.timeout(2):
        assert await anext(stream) == 0
        await pipeline.stop()
        await pipeline.stop()
        assert [item async for item in stream] == []
    assert source.closed
    assert [stage.state for stage in stages] == [FluxState.STOPPED] * 2
    await stream.aclose()
    assert other_tasks() == []


async def test_pipeline_bare_break_then_garbage_collection() -> None:
    stages = [Flux.lift(lambda x: x), Flux.lift(lambda x: x)]
    pipeline = stages[0] | stages[1]
    source = TrackedSource()
    async with asyncio.timeout(2):
        async for item in pipeline.start(source):
            if item == 3:
                break
        gc.collect()
        await source.wait_finalized()
    assert [stage.state for stage in stages] == [FluxState.STOPPED] * 2


async def test_stop_called_by_the_agent_itself_does_not_deadlock() -> None:
    flux: Any = None

    async def stopper(x: int) -> int:
        if x == 3:
            await flux.stop()
        return x

    flux = Flux.lift(stopper)
    source = TrackedSource()
    async with asyncio.timeout(2):
        outputs = await collect(flux.start(source))
    assert outputs[:3] == [0, 1, 2]
    assert len(outputs) <= 4
    assert flux.state is FluxState.STOPPED
    await source.wait_finalized()


async def test_stream_aclose_is_idempotent_and_safe_after_the_end() -> None:
    flux = Flux.lift(lambda x: x)
    source = TrackedSource([1, 2])
    stream = flux.start(source)
    async with asyncio.timeout(2):
        assert [item async for item in stream] == [1, 2]
        await stream.aclose()
        await stream.aclose()
    assert source.closed
    assert flux.state is FluxState.STOPPED
