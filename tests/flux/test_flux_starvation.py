"""A source and an agent that never suspend do not keep the event loop to themselves.

``itertools.count()`` (or an async generator that never awaits) feeding an agent that never
awaits, under a drop policy, never makes the runtime wait: the worker yields to the loop
every few milliseconds (``_run._CHECKPOINT``) so timeouts, perturbations, the consumer and
``stop()`` still run.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentflux import Flux, FluxConfig


async def never_awaits() -> AsyncIterator[int]:
    for i in itertools.count():
        yield i


def endless(kind: str) -> Any:
    return itertools.count() if kind == "sync" else never_awaits()


async def pure(x: int) -> int:
    return x + 1


async def always_fails(x: int) -> int:
    raise ValueError(x)


CASES = pytest.mark.parametrize(
    ("kind", "policy", "concurrency", "agent"),
    [
        ("sync", "drop_oldest", 1, pure),
        ("sync", "drop_newest", 1, pure),
        ("async", "drop_oldest", 1, pure),
        ("async", "drop_newest", 3, pure),
        ("sync", "drop_newest", 3, pure),
        ("async", "drop_oldest", 1, always_fails),
    ],
)


@CASES
async def test_a_timeout_a_perturbation_and_stop_still_run(
    kind: str, policy: str, concurrency: int, agent: Any
) -> None:
    flux = Flux.lift(agent, FluxConfig(drop_policy=policy, buffer_size=4, concurrency=concurrency))  # type: ignore[arg-type]
    stream = flux.start(endless(kind))
    began = time.perf_counter()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.Event().wait(), 1.0)
    assert time.perf_counter() - began < 1.5
    if agent is pure:
        assert await asyncio.wait_for(flux.invoke(-10), 1.0) == -9
        assert await asyncio.wait_for(anext(stream), 1.0) > 0  # the consumer gets outputs
    began = time.perf_counter()
    await asyncio.wait_for(flux.stop(), 1.0)
    assert time.perf_counter() - began < 1.0
    await stream.aclose()


async def test_other_tasks_run_while_such_a_flux_flows() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    flux = Flux.lift(pure, FluxConfig(drop_policy="drop_oldest", buffer_size=2))
    task = asyncio.create_task(ticker())
    stream = flux.start(itertools.count())
    await asyncio.sleep(0.5)
    await flux.stop()
    await stream.aclose()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ticks >= 10  # 50 possible; the flux let the loop run every few ms
