"""An agent that raises something other than an ``Exception`` never hangs the stream.

Decided behaviour: a ``CancelledError`` out of the agent while nobody cancels the flux (an
inner future it awaited was cancelled) is the agent's error, wrapped in a ``FluxError``
(dead-lettered under ``skip``, raised to the consumer under ``raise``); any other
``BaseException`` ends the run and reaches the consumer; ``KeyboardInterrupt`` and
``SystemExit`` end the run and propagate out of the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentflux import Flux, FluxConfig, FluxError, FluxState
from conftest import TrackedSource


class Abort(BaseException):
    """A custom BaseException, as some frameworks define for their own control flow."""


async def cancelled_inside() -> None:
    """What an agent sees when a future it awaits is cancelled by someone else."""
    inner = asyncio.get_running_loop().create_future()
    inner.cancel()
    await inner


def agent_raising(kind: str, on: int) -> Any:
    async def agent_fn(x: int) -> int:
        await asyncio.sleep(0)
        if x == on:
            if kind == "cancel":
                await cancelled_inside()
            elif kind == "abort":
                raise Abort(x)
            elif kind == "keyboard":
                raise KeyboardInterrupt
            else:
                raise SystemExit(3)
        return x

    return agent_fn


async def consume_into(stream: Any, seen: list[int]) -> None:
    async with stream:
        async for y in stream:
            seen.append(y)


PARAMS = pytest.mark.parametrize(
    ("on_error", "concurrency"), [("skip", 1), ("skip", 3), ("raise", 1), ("raise", 3)]
)


@PARAMS
async def test_a_custom_base_exception_ends_the_run_and_reaches_the_consumer(on_error: str, concurrency: int) -> None:
    flux = Flux.lift(agent_raising("abort", on=3), FluxConfig(on_error=on_error, concurrency=concurrency))  # type: ignore[arg-type]
    source = TrackedSource(range(10))
    seen: list[int] = []
    async with asyncio.timeout(5):
        with pytest.raises(Abort):
            await consume_into(flux.start(source), seen)
    assert 3 not in seen
    assert flux.state is FluxState.STOPPED
    await asyncio.wait_for(source.finalized.wait(), 5)


@PARAMS
async def test_a_spurious_cancelled_error_is_the_agents_error(on_error: str, concurrency: int) -> None:
    flux = Flux.lift(agent_raising("cancel", on=3), FluxConfig(on_error=on_error, concurrency=concurrency))  # type: ignore[arg-type]
    source = TrackedSource(range(8))
    seen: list[int] = []
    async with asyncio.timeout(5):
        if on_error == "skip":
            async with flux.start(source) as stream:
                seen = [y async for y in stream]
            assert sorted(seen) == [0, 1, 2, 4, 5, 6, 7]
            [letter] = flux.dead_letters
            assert letter.event == 3
            assert isinstance(letter.error, FluxError)
            assert "CancelledError" in str(letter.error)
            assert isinstance(letter.error.__cause__, asyncio.CancelledError)
        else:
            with pytest.raises(FluxError, match="CancelledError"):
                await consume_into(flux.start(source), seen)
            assert 3 not in seen
    assert flux.state is FluxState.STOPPED


async def test_a_spurious_cancelled_error_is_retried_like_any_agent_error() -> None:
    calls = 0

    async def agent_fn(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            await cancelled_inside()
        return x

    flux = Flux.lift(agent_fn, FluxConfig(retries=1, retry_backoff=0.0))
    async with asyncio.timeout(5), flux.start([7]) as stream:
        assert [y async for y in stream] == [7]


async def test_a_perturbation_that_raises_a_spurious_cancel_gets_a_flux_error_and_the_stream_goes_on() -> None:
    gate = asyncio.Event()

    async def agent_fn(x: int) -> int:
        if x == 100:
            await cancelled_inside()
        return x

    async def source() -> Any:
        yield 1
        await gate.wait()
        yield 2

    flux = Flux.lift(agent_fn)
    async with asyncio.timeout(5), flux.start(source()) as stream:
        assert await anext(stream) == 1
        with pytest.raises(FluxError, match="CancelledError"):
            await flux.invoke(100)
        assert await flux.invoke(5) == 5
        gate.set()
        assert [y async for y in stream] == [2]


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_a_perturbation_that_raises_a_custom_base_exception_ends_the_run(concurrency: int) -> None:
    gate = asyncio.Event()

    async def agent_fn(x: int) -> int:
        if x == 100:
            raise Abort(x)
        return x

    async def source() -> Any:
        yield 1
        await gate.wait()
        yield 2  # pragma: no cover - the run ends first

    flux = Flux.lift(agent_fn, FluxConfig(concurrency=concurrency))
    async with asyncio.timeout(5):
        stream = flux.start(source())
        assert await anext(stream) == 1
        pending = asyncio.ensure_future(flux.invoke(100))
        with pytest.raises(Abort):
            await pending
        with pytest.raises(Abort):
            await anext(stream)
        await stream.aclose()
    assert flux.state is FluxState.STOPPED


async def test_cancelling_the_consumer_is_still_a_cancellation() -> None:
    started = asyncio.Event()

    async def agent_fn(x: int) -> int:
        started.set()
        await asyncio.Event().wait()
        return x  # pragma: no cover

    flux = Flux.lift(agent_fn)
    source = TrackedSource(range(3))

    async def consume() -> None:
        async with flux.start(source) as stream:
            async for _ in stream:
                pass  # pragma: no cover

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert flux.dead_letters == ()
    await asyncio.wait_for(source.finalized.wait(), 5)


@pytest.mark.parametrize(("kind", "expected"), [("keyboard", KeyboardInterrupt), ("exit", SystemExit)])
def test_keyboard_interrupt_and_system_exit_propagate_out_of_the_loop(kind: str, expected: type) -> None:
    async def main() -> None:
        flux = Flux.lift(agent_raising(kind, on=2))
        async with flux.start(range(5)) as stream:
            async for _ in stream:
                pass

    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(expected):
            loop.run_until_complete(asyncio.wait_for(main(), 5))
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.close()
