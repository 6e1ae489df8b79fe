"""Event sources: async iterators that close what they opened when their consumer stops."""

from __future__ import annotations

import asyncio
import inspect
import math
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

from ._bus import EventBus, Overflow, Subscription

__all__ = [
    "countdown",
    "filtered",
    "from_events",
    "from_iterable",
    "from_stream",
    "mapped",
    "merged",
    "periodic",
    "take",
]

T = TypeVar("T")
U = TypeVar("U")


async def _aclose(iterator: object) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


def _check_interval(name: str, interval: float) -> None:
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not (
        interval > 0 and math.isfinite(interval)
    ):
        raise ValueError(f"{name}(interval) must be a finite number > 0, got {interval!r}")


def _as_async_iterator(source: AsyncIterable[T] | Iterable[T], name: str) -> AsyncIterator[T]:
    if hasattr(source, "__aiter__"):
        return source.__aiter__()
    if isinstance(source, Iterable):
        return from_iterable(source)
    raise TypeError(f"{name}() needs an async iterable or an iterable source, got {type(source).__name__}")


async def from_iterable(iterable: Iterable[T]) -> AsyncIterator[T]:
    """Yield the items of a sync iterable (closing it if it is a generator)."""
    iterator = iter(iterable)
    try:
        for item in iterator:
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def from_stream(stream: AsyncIterable[T]) -> AsyncIterator[T]:
    """Yield the items of an async iterable and close it when the consumer stops.

    Raises:
        TypeError: ``stream`` is not an async iterable.
    """
    if not hasattr(stream, "__aiter__"):
        raise TypeError(f"from_stream() needs an async iterable, got {type(stream).__name__}")
    return _forward(stream.__aiter__())


async def _forward(iterator: AsyncIterator[T]) -> AsyncIterator[T]:
    try:
        async for item in iterator:
            yield item
    finally:
        await _aclose(iterator)


def from_events(bus: EventBus[T], maxsize: int = 1000, overflow: Overflow = "drop_oldest") -> Subscription[T]:
    """Every event published on ``bus`` from now on (the subscription is taken at once).

    Raises:
        ClosedResourceError: the bus is closed.
    """
    return bus.subscribe(maxsize, overflow)


async def periodic(interval: float, *, count: int | None = None) -> AsyncIterator[int]:
    """Yield tick numbers 0, 1, 2, ... on a fixed grid of ``interval`` seconds.

    Deadlines are computed from the start, so the ticks never drift. A consumer that
    falls more than a tick behind skips the ticks it missed (the numbers jump).

    Raises:
        ValueError: ``interval`` is not a positive number or ``count`` is negative.
    """
    _check_interval("periodic", interval)
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise ValueError(f"periodic(count) must be None or an int >= 0, got {count!r}")
    loop = asyncio.get_running_loop()
    start = loop.time()
    tick = 0
    while count is None or tick < count:
        yield tick
        tick += 1
        if count is not None and tick >= count:
            return  # no wait after the last tick
        now = loop.time()
        missed = math.floor((now - start) / interval)
        if missed > tick:  # we are more than a whole tick late: skip to the current one
            tick = missed
        await asyncio.sleep(max(0.0, start + tick * interval - now))


async def countdown(n: int, interval: float = 1.0) -> AsyncIterator[int]:
    """Yield ``n, n-1, ..., 0``, one per ``interval`` seconds (the first at once).

    Raises:
        ValueError: ``n`` is negative or ``interval`` is not a positive number.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"countdown(n) must be an int >= 0, got {n!r}")
    _check_interval("countdown", interval)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for step in range(n + 1):
        if step:
            await asyncio.sleep(max(0.0, start + step * interval - loop.time()))
        yield n - step


async def mapped(
    source: AsyncIterable[T] | Iterable[T], fn: Callable[[T], U] | Callable[[T], Awaitable[U]]
) -> AsyncIterator[U]:
    """Yield ``fn(item)`` for each item (``fn`` sync or async)."""
    iterator = _as_async_iterator(source, "mapped")
    try:
        async for item in iterator:
            result = fn(item)
            yield await result if inspect.isawaitable(result) else result
    finally:
        await _aclose(iterator)


async def filtered(
    source: AsyncIterable[T] | Iterable[T],
    predicate: Callable[[T], object] | Callable[[T], Awaitable[object]],
) -> AsyncIterator[T]:
    """Yield the items for which ``predicate(item)`` is true (sync or async predicate)."""
    iterator = _as_async_iterator(source, "filtered")
    try:
        async for item in iterator:
            keep = predicate(item)
            if inspect.isawaitable(keep):
                keep = await keep
            if keep:
                yield item
    finally:
        await _aclose(iterator)


async def take(source: AsyncIterable[T] | Iterable[T], n: int) -> AsyncIterator[T]:
    """Yield the first ``n`` items, then close the source without waiting for more.

    Raises:
        ValueError: ``n`` is negative.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"take(n) must be an int >= 0, got {n!r}")
    iterator = _as_async_iterator(source, "take")
    try:
        remaining = n
        while remaining > 0:
            try:
                item = await iterator.__anext__()
            except StopAsyncIteration:
                return
            remaining -= 1
            yield item
    finally:
        await _aclose(iterator)


class _MergeState:
    """What the pumps share with the merge; the pumps never reference the merge itself,
    so an abandoned merge can be collected and its ``__del__`` can stop them."""

    def __init__(self, iterators: list[AsyncIterator[Any]], per_source: int) -> None:
        self.iterators = iterators
        self.per_source = per_source
        self.ready: deque[tuple[int, Any]] = deque()  # (pump index, item)
        self.queued = [0] * len(iterators)
        self.pump_waiters: list[asyncio.Future[None] | None] = [None] * len(iterators)
        self.waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.tasks: list[asyncio.Task[None]] | None = None
        self.running = 0

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(_pump(self, index, iterator), name=f"merged:pump-{index}")
            for index, iterator in enumerate(self.iterators)
        ]
        self.running = len(self.tasks)


async def _pump(state: _MergeState, index: int, iterator: AsyncIterator[Any]) -> None:
    loop = asyncio.get_running_loop()
    try:
        async for item in iterator:
            state.ready.append((index, item))
            state.queued[index] += 1
            state.wake()
            if state.queued[index] >= state.per_source:
                waiter = loop.create_future()
                state.pump_waiters[index] = waiter
                await waiter
    except Exception as exc:
        if state.error is None:
            state.error = exc
    finally:
        state.running -= 1
        state.wake()
        await _aclose(iterator)


class _Merged(AsyncIterator[Any]):
    """Items of several sources in arrival order, each source pumped by its own task.

    Each pump keeps at most ``per_source`` items waiting, so a fast source is never held
    back by a slow one and never floods the merge. Closing the merge (or an error in any
    source, delivered after the items that arrived before it) cancels the pumps, and each
    pump closes its own source. A merge abandoned after a bare ``break`` does the same
    when it is garbage-collected.
    """

    def __init__(self, sources: tuple[AsyncIterable[Any] | Iterable[Any], ...], per_source: int) -> None:
        self._closed = False
        self._state = _MergeState([_as_async_iterator(source, "merged") for source in sources], per_source)

    def __aiter__(self) -> _Merged:
        return self

    async def __anext__(self) -> Any:
        state = self._state
        if state.tasks is None:
            if self._closed:
                raise StopAsyncIteration
            state.start()
        ready = state.ready
        while not ready:
            if state.error is not None:
                error, state.error = state.error, None
                await self.aclose()
                raise error
            if not state.running or self._closed:
                await self.aclose()
                raise StopAsyncIteration
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            state.waiter = waiter
            try:
                await waiter
            finally:
                state.waiter = None
        index, item = ready.popleft()
        state.queued[index] -= 1
        pump_waiter = state.pump_waiters[index]
        if pump_waiter is not None:
            state.pump_waiters[index] = None
            if not pump_waiter.done():
                pump_waiter.set_result(None)
        return item

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        for task in (state.tasks or ()) if state is not None else ():
            if not task.done() and not task.get_loop().is_closed():
                task.cancel()

    async def aclose(self) -> None:
        """Stop every pump and close every source; idempotent."""
        self._closed = True
        state = self._state
        tasks = state.tasks or []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        elif state.tasks is None:
            for iterator in state.iterators:
                await _aclose(iterator)
            state.tasks = []
        state.ready.clear()


def merged(*sources: AsyncIterable[Any] | Iterable[Any], per_source: int = 16) -> AsyncIterator[Any]:
    """Merge sources into one stream in arrival order (no polling, no source held back).

    Raises:
        ValueError: ``per_source`` < 1.
        TypeError: a source is not iterable.
    """
    if isinstance(per_source, bool) or not isinstance(per_source, int) or per_source < 1:
        raise ValueError(f"merged(per_source) must be an int >= 1, got {per_source!r}")
    return _Merged(sources, per_source)
