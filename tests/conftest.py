"""Shared fixtures and helper sources for the agentflux test suite.

Every test runs under an autouse check that no asyncio task outlives it: a flux that
leaks its processing task (the classic bug of the seed sketches) fails the test that
created it, not some later one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

from agentflux import Signal
from servers import drop_test_schemas


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    drop_test_schemas()  # the fresh schemas the postgres tests made


def other_tasks() -> list[asyncio.Task[Any]]:
    """Unfinished tasks of the running loop other than the current one."""
    current = asyncio.current_task()
    return [task for task in asyncio.all_tasks() if task is not current and not task.done()]


@pytest.fixture(autouse=True)
async def no_task_left_behind() -> AsyncIterator[None]:
    """After each test, fail if any asyncio task other than the current one still runs."""
    yield
    for _ in range(3):
        await asyncio.sleep(0)
    leftover = other_tasks()
    if leftover:
        # Cancel them so that one leak does not cascade into later tests, then fail.
        for task in leftover:
            task.cancel()
        await asyncio.wait(leftover, timeout=1)
    assert not leftover, f"tasks left running after the test: {leftover!r}"


class TrackedSource:
    """An async-generator source that records how far it was read and whether it was closed.

    Args:
        items: the items to yield, or None for 0, 1, 2, ... forever.
        delay: seconds to sleep before each item (a slow source), 0 for none.
        ticks: ``asyncio.sleep(0)`` calls before each item: a source that yields to the
            loop without involving the clock (deterministic interleavings).
        gate: if given, after the items the source waits on this event before ending
            (an idle source); with ``items=[]`` it is idle from the start.
        fail_with: raised by the source after its items (and gate), instead of ending.
    """

    def __init__(
        self,
        items: Iterable[Any] | None = None,
        *,
        delay: float = 0.0,
        ticks: int = 0,
        gate: asyncio.Event | None = None,
        fail_with: BaseException | None = None,
    ) -> None:
        self.items = None if items is None else list(items)
        self.delay = delay
        self.ticks = ticks
        self.gate = gate
        self.fail_with = fail_with
        self.read = 0
        self.started = False
        self.finalized = asyncio.Event()
        self._gen = self._generate()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._gen

    async def _generate(self) -> AsyncIterator[Any]:
        self.started = True
        try:
            index = 0
            while self.items is None or index < len(self.items):
                if self.delay:
                    await asyncio.sleep(self.delay)
                for _ in range(self.ticks):
                    await asyncio.sleep(0)
                item = index if self.items is None else self.items[index]
                index += 1
                self.read += 1
                yield item
            if self.gate is not None:
                await self.gate.wait()
            if self.fail_with is not None:
                raise self.fail_with
        finally:
            self.finalized.set()

    @property
    def closed(self) -> bool:
        """Whether the generator is finished: exhausted, closed, or never started and closed."""
        return self._gen.ag_frame is None

    async def wait_finalized(self, within: float = 1.0) -> None:
        """Wait (at most ``within`` seconds) until the generator's ``finally`` has run."""
        async with asyncio.timeout(within):
            await self.finalized.wait()

    async def aclose(self) -> None:
        """Close the generator directly (for sources a test ended up not using)."""
        await self._gen.aclose()


async def gapped(items: Iterable[Any], gap: float) -> AsyncIterator[Any]:
    """Yield ``items`` with ``gap`` seconds of silence before each one (a slow source)."""
    for item in items:
        await asyncio.sleep(gap)
        yield item


async def collect(stream: Any, within: float = 5.0) -> list[Any]:
    """Read a stream to its end (bounded), closing it afterwards."""
    async with asyncio.timeout(within), stream:
        return [item async for item in stream]


async def drain_into(stream: Any, received: list[Any], within: float = 2.0) -> None:
    """Append a stream's items to ``received`` until it ends or raises, then close it."""
    async with asyncio.timeout(within), stream:
        async for item in stream:
            received.append(item)


async def signals_until_stopped(observer: Any, within: float = 2.0) -> list[Signal]:
    """Read an observer until it ends (after the ``stopped`` signal), bounded."""
    async with asyncio.timeout(within):
        return [signal async for signal in observer]


@pytest.fixture
def tracked() -> type[TrackedSource]:
    """The ``TrackedSource`` class, for tests that prefer fixtures to imports."""
    return TrackedSource
