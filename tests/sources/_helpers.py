"""Small helpers shared by the source tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


async def settle(rounds: int = 3) -> None:
    """Let every ready task run until it blocks (a few loop iterations, no waiting on time)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class Tracked:
    """An async-generator source that records what it yielded and whether its ``finally`` ran.

    Args:
        items: the items to yield.
        then_block: after the items, wait forever (on ``gate``) instead of ending.
        fail_with: raise this after the items instead of ending.
        delay: seconds to sleep before each item (a slow producer).
    """

    def __init__(
        self,
        items: Iterable[Any] = (),
        *,
        then_block: bool = False,
        fail_with: BaseException | None = None,
        delay: float = 0.0,
    ) -> None:
        self.items = list(items)
        self.then_block = then_block
        self.fail_with = fail_with
        self.delay = delay
        self.gate = asyncio.Event()
        self.yielded: list[Any] = []
        self.finalized = False
        self.gen = self._generate()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self.gen

    async def _generate(self) -> AsyncIterator[Any]:
        try:
            for item in self.items:
                if self.delay:
                    await asyncio.sleep(self.delay)
                self.yielded.append(item)
                yield item
            if self.then_block:
                await self.gate.wait()
            if self.fail_with is not None:
                raise self.fail_with
        finally:
            self.finalized = True

    async def aclose(self) -> None:
        """Close the generator (for a source a test ended up not handing over)."""
        await self.gen.aclose()


async def drain(stream: Any, limit: float = 5.0) -> list[Any]:
    """Read ``stream`` to its end within ``limit`` seconds, then close it."""
    try:
        async with asyncio.timeout(limit):
            return [item async for item in stream]
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock that jumps to the next timer whenever nothing is ready.

    Sleeping costs no real time and timing is exact, so tests of deadlines and drift are
    deterministic even on a loaded machine.
    """

    def __init__(self) -> None:
        super().__init__()
        self._virtual_now = 0.0
        select = self._selector.select

        def jump_to_next_timer(timeout: float | None = None) -> Any:
            if timeout is not None and timeout > 0:
                self._virtual_now += timeout
                timeout = 0
            return select(timeout)

        self._selector.select = jump_to_next_timer  # type: ignore[method-assign]

    def time(self) -> float:
        return self._virtual_now


def run_in_virtual_time(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` to completion on a fresh ``VirtualClockLoop`` (from a sync test)."""
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(main())
