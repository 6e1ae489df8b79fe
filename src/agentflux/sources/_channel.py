"""A bounded in-memory channel: ``open_channel(max_buffer) -> (Sender, Receiver)``."""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

from .._core._errors import BrokenResourceError, ClosedResourceError, EndOfStream, WouldBlock

__all__ = ["ChannelStatistics", "Receiver", "Sender", "open_channel"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    """A snapshot of a channel's state."""

    buffered: int
    max_buffer: int
    open_senders: int
    open_receivers: int
    waiting_senders: int
    waiting_receivers: int


class _State(Generic[T]):
    __slots__ = ("buffer", "max_buffer", "open_receivers", "open_senders", "waiting_receivers",
                 "waiting_senders")

    def __init__(self, max_buffer: int) -> None:
        self.max_buffer = max_buffer
        self.buffer: deque[T] = deque()
        self.open_senders = 0
        self.open_receivers = 0
        # Futures of blocked receivers (their result is the item handed over) ...
        self.waiting_receivers: OrderedDict[asyncio.Future[T], None] = OrderedDict()
        # ... and of blocked senders, with the item each one wants to send.
        self.waiting_senders: OrderedDict[asyncio.Future[None], T] = OrderedDict()


class _Handle:
    __slots__ = ("_closed", "_state", "_waiters")

    _state: _State[Any]
    _closed: bool
    _waiters: set[asyncio.Future[Any]]  # this handle's blocked send/receive calls

    def _fail_own_waiters(self, pending: OrderedDict[Any, Any]) -> None:
        """Closing a handle ends its own blocked calls with ClosedResourceError."""
        for waiter in self._waiters:
            pending.pop(waiter, None)
            if not waiter.done():
                waiter.set_exception(ClosedResourceError(f"this {type(self).__name__.lower()} was closed"))
        self._waiters.clear()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def aclose(self) -> None:
        """Close this handle (idempotent)."""
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def statistics(self) -> ChannelStatistics:
        """A snapshot of the channel's buffer and handles."""
        state = self._state
        return ChannelStatistics(
            buffered=len(state.buffer),
            max_buffer=state.max_buffer,
            open_senders=state.open_senders,
            open_receivers=state.open_receivers,
            waiting_senders=len(state.waiting_senders),
            waiting_receivers=len(state.waiting_receivers),
        )


class Sender(_Handle, Generic[T]):
    """The sending side of a channel; ``clone()`` it to have several producers."""

    __slots__ = ()

    def __init__(self, state: _State[T]) -> None:
        self._state = state
        self._closed = False
        self._waiters = set()
        state.open_senders += 1

    def send_nowait(self, item: T) -> None:
        """Send without waiting.

        Raises:
            WouldBlock: the buffer is full and no receiver is waiting.
            BrokenResourceError: every receiver is closed.
            ClosedResourceError: this sender was closed.
        """
        if self._closed:
            raise ClosedResourceError("this sender is closed")
        state = self._state
        if not state.open_receivers:
            raise BrokenResourceError("every receiver of this channel is closed")
        while state.waiting_receivers:
            receiver, _ = state.waiting_receivers.popitem(last=False)
            if not receiver.done():
                receiver.set_result(item)
                return
        if len(state.buffer) < state.max_buffer:
            state.buffer.append(item)
            return
        raise WouldBlock

    async def send(self, item: T) -> None:
        """Send, waiting while the buffer is full.

        If the call is cancelled after a receiver took the item, the item stays delivered.

        Raises:
            BrokenResourceError: every receiver is closed (also while waiting).
            ClosedResourceError: this sender was closed.
        """
        try:
            self.send_nowait(item)
            return
        except WouldBlock:
            pass
        state = self._state
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        state.waiting_senders[waiter] = item
        self._waiters.add(waiter)
        try:
            await waiter
        finally:
            state.waiting_senders.pop(waiter, None)
            self._waiters.discard(waiter)

    def clone(self) -> Sender[T]:
        """Another sender on the same channel; the channel ends when all are closed.

        Raises:
            ClosedResourceError: this sender was closed.
        """
        if self._closed:
            raise ClosedResourceError("cannot clone a closed sender")
        return Sender(self._state)

    def close(self) -> None:
        """Close this sender; when the last one closes, receivers end after the buffer."""
        if self._closed:
            return
        self._closed = True
        state = self._state
        self._fail_own_waiters(state.waiting_senders)
        state.open_senders -= 1
        if not state.open_senders:
            for receiver in state.waiting_receivers:
                if not receiver.done():
                    receiver.set_exception(EndOfStream())
            state.waiting_receivers.clear()


class Receiver(_Handle, Generic[T]):
    """The receiving side of a channel: ``receive()`` or ``async for``."""

    __slots__ = ()

    def __init__(self, state: _State[T]) -> None:
        self._state = state
        self._closed = False
        self._waiters = set()
        state.open_receivers += 1

    def receive_nowait(self) -> T:
        """Receive without waiting.

        Raises:
            WouldBlock: nothing is buffered and no sender is waiting.
            EndOfStream: every sender is closed and the buffer is empty.
            ClosedResourceError: this receiver was closed.
        """
        if self._closed:
            raise ClosedResourceError("this receiver is closed")
        state = self._state
        # Move one blocked sender's item into the room we are about to make.
        while state.waiting_senders:
            sender, item = state.waiting_senders.popitem(last=False)
            if sender.done():
                continue
            sender.set_result(None)
            state.buffer.append(item)
            break
        if state.buffer:
            item_out: T = state.buffer.popleft()
            return item_out
        if not state.open_senders:
            raise EndOfStream
        raise WouldBlock

    async def receive(self) -> T:
        """Receive, waiting until an item arrives.

        Raises:
            EndOfStream: every sender is closed and the buffer is empty.
            ClosedResourceError: this receiver was closed.
        """
        try:
            return self.receive_nowait()
        except WouldBlock:
            pass
        state = self._state
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        state.waiting_receivers[waiter] = None
        self._waiters.add(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # A sender handed us an item just as we were cancelled: keep it for the next receive.
                state.buffer.appendleft(waiter.result())
            raise
        finally:
            state.waiting_receivers.pop(waiter, None)
            self._waiters.discard(waiter)

    def __aiter__(self) -> Receiver[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except EndOfStream:
            raise StopAsyncIteration from None

    def clone(self) -> Receiver[T]:
        """Another receiver on the same channel (items go to one receiver each).

        Raises:
            ClosedResourceError: this receiver was closed.
        """
        if self._closed:
            raise ClosedResourceError("cannot clone a closed receiver")
        return Receiver(self._state)

    def close(self) -> None:
        """Close this receiver; when the last one closes, senders get BrokenResourceError."""
        if self._closed:
            return
        self._closed = True
        state = self._state
        self._fail_own_waiters(state.waiting_receivers)
        state.open_receivers -= 1
        if not state.open_receivers:
            state.buffer.clear()
            for sender in state.waiting_senders:
                if not sender.done():
                    sender.set_exception(BrokenResourceError("every receiver of this channel is closed"))
            state.waiting_senders.clear()


def open_channel(max_buffer: int = 0) -> tuple[Sender[Any], Receiver[Any]]:
    """Open a channel holding at most ``max_buffer`` items (0: every send waits for a receiver).

    Raises:
        ValueError: ``max_buffer`` is negative or not an int.
    """
    if isinstance(max_buffer, bool) or not isinstance(max_buffer, int) or max_buffer < 0:
        raise ValueError(f"open_channel(max_buffer) must be an int >= 0, got {max_buffer!r}")
    state: _State[Any] = _State(max_buffer)
    return Sender(state), Receiver(state)
