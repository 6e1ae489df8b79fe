"""``EventBus``: in-memory publish/subscribe with a bounded queue per subscriber."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, Literal, TypeVar

from .._core._errors import ClosedResourceError, EndOfStream, WouldBlock

__all__ = ["BusStatistics", "EventBus", "Overflow", "Subscription"]

T = TypeVar("T")
Overflow = Literal["drop_oldest", "drop_newest"]
_OVERFLOWS = ("drop_oldest", "drop_newest")


@dataclass(frozen=True, slots=True)
class BusStatistics:
    """A snapshot of an event bus."""

    published: int
    subscribers: int
    buffered: int
    dropped: int
    """Events dropped by every subscriber so far, including ones that left."""
    closed: bool


class Subscription(Generic[T]):
    """One subscriber's view of a bus: an async iterator and an async context manager.

    When the queue is full a new event replaces the oldest (``drop_oldest``) or is
    discarded (``drop_newest``); either way ``dropped`` counts it. Iteration ends after
    the bus closes (once the queued events are read) or the subscription is closed.
    """

    __slots__ = ("_bus", "_ended", "_overflow", "_queue", "_waiters", "dropped", "maxsize")

    def __init__(self, bus: EventBus[T], maxsize: int, overflow: Overflow) -> None:
        self._bus = bus
        self._queue: deque[T] = deque()
        self._waiters: list[asyncio.Future[None]] = []  # every task reading this subscription
        self._ended = False
        self._overflow = overflow
        self.maxsize = maxsize
        self.dropped = 0

    def _deliver(self, event: T) -> None:
        queue = self._queue
        if len(queue) >= self.maxsize:
            self.dropped += 1
            if self._overflow == "drop_newest":
                return
            queue.popleft()
        queue.append(event)
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _end(self) -> None:
        self._ended = True
        self._wake()

    @property
    def pending(self) -> int:
        """Events queued and not yet read."""
        return len(self._queue)

    def receive_nowait(self) -> T:
        """The next queued event without waiting.

        Raises:
            WouldBlock: nothing is queued (yet).
            EndOfStream: the subscription ended and nothing is queued.
        """
        if self._queue:
            return self._queue.popleft()
        if self._ended:
            raise EndOfStream
        raise WouldBlock

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        queue = self._queue
        while not queue:
            if self._ended:
                raise StopAsyncIteration
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return queue.popleft()

    def close(self) -> None:
        """Leave the bus; queued events are discarded and iteration ends."""
        self._queue.clear()
        if not self._ended:
            self._bus._leave(self)
            self._end()

    async def aclose(self) -> None:
        """Leave the bus (idempotent)."""
        self.close()

    async def __aenter__(self) -> Subscription[T]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class EventBus(Generic[T]):
    """Fan events out to every subscriber; publishing never blocks."""

    def __init__(self) -> None:
        self._subscribers: list[Subscription[T]] = []
        self._published = 0
        self._dropped_by_departed = 0
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    def subscribe(self, maxsize: int = 1000, overflow: Overflow = "drop_oldest") -> Subscription[T]:
        """Register a subscriber at once; it sees every event published from now on.

        Raises:
            ValueError: ``maxsize`` < 1 or an unknown ``overflow``.
            ClosedResourceError: the bus is closed.
        """
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"subscribe(maxsize) must be an int >= 1, got {maxsize!r}")
        if overflow not in _OVERFLOWS:
            raise ValueError(f"subscribe(overflow) must be one of {_OVERFLOWS}, got {overflow!r}")
        if self._closed:
            raise ClosedResourceError("cannot subscribe to a closed event bus")
        subscription = Subscription(self, maxsize, overflow)
        self._subscribers.append(subscription)
        return subscription

    @property
    def subscribers(self) -> int:
        """How many subscriptions receive what is published now (0 once closed)."""
        return len(self._subscribers)

    def publish(self, event: T) -> int:
        """Deliver ``event`` to every subscriber; returns how many received it.

        Raises:
            ClosedResourceError: the bus is closed.
        """
        if self._closed:
            raise ClosedResourceError("cannot publish to a closed event bus")
        self._published += 1
        for subscription in self._subscribers:
            subscription._deliver(event)
        return len(self._subscribers)

    def _leave(self, subscription: Subscription[T]) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)
            self._dropped_by_departed += subscription.dropped

    def close(self) -> None:
        """End every subscription (each still reads what it had queued); idempotent."""
        self._closed = True
        subscribers, self._subscribers = self._subscribers, []
        for subscription in subscribers:
            self._dropped_by_departed += subscription.dropped
            subscription._end()

    def statistics(self) -> BusStatistics:
        """Counts of published, queued and dropped events."""
        return BusStatistics(
            published=self._published,
            subscribers=len(self._subscribers),
            buffered=sum(s.pending for s in self._subscribers),
            dropped=self._dropped_by_departed + sum(s.dropped for s in self._subscribers),
            closed=self._closed,
        )
