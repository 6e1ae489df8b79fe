"""Regressions found by review: each test reproduces a bug that was fixed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentflux import Flux, FluxConfig, FluxState, agent


async def test_ordered_output_stops_at_the_failing_event_under_raise() -> None:
    async def work(x: int) -> int:
        await asyncio.sleep(0.001 * (x % 3))
        if x == 5:
            raise ValueError(x)
        return x

    for _ in range(5):  # the bug showed up on some runs only
        flux = Flux.lift(agent(work), FluxConfig(concurrency=4, on_error="raise"))
        seen: list[int] = []
        with pytest.raises(ValueError, match="5"):
            await _consume(flux, seen)
        # Ordered output: nothing after the failing event, and what came is in order.
        assert seen == list(range(len(seen)))
        assert len(seen) <= 5


async def _consume(flux: Any, into: list[int]) -> None:
    async with flux.start(range(20)) as out:
        async for y in out:
            into.append(y)


def test_start_outside_a_running_loop_changes_nothing() -> None:
    flux = Flux.lift(lambda x: x)
    with pytest.raises(RuntimeError):
        flux.start([1, 2])
    assert flux.state is FluxState.DORMANT


async def test_pressure_is_zero_after_the_consumer_closes_the_stream() -> None:
    flux = Flux.lift(lambda x: x, FluxConfig(buffer_size=4))
    stream = flux.start(range(100))
    await asyncio.sleep(0.01)  # let the buffer fill
    assert flux.metrics().pressure == 1.0
    await stream.aclose()
    assert flux.metrics().pressure == 0.0
