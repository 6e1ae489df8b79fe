"""Signals a flux emits, and the bounded observers that receive them."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["SIGNAL_KINDS", "Signal", "SignalHub", "SignalObserver"]

SIGNAL_KINDS = frozenset(
    {"started", "state_changed", "error", "dropped", "semaphore_ejected", "semaphore_resumed", "stopped"}
)

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Signal:
    """Something that happened in a flux: ``kind`` is one of ``SIGNAL_KINDS``."""

    kind: str
    flux_id: str
    at: float
    """Wall-clock time (``time.time()``) of the emission."""
    data: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


class SignalObserver:
    """An async iterator of signals; ends after a ``stopped`` signal.

    A slow observer loses its oldest signals (counted in ``dropped``) rather than
    slowing the flux down.
    """

    def __init__(self, hub: SignalHub, maxsize: int) -> None:
        self._hub = hub
        self._queue: deque[Signal] = deque()
        self._maxsize = maxsize
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self.dropped = 0

    def _push(self, signal: Signal) -> None:
        if len(self._queue) >= self._maxsize:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(signal)
        if signal.kind == "stopped":
            self._ended = True
            self._hub._observers.discard(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> SignalObserver:
        return self

    async def __anext__(self) -> Signal:
        while not self._queue:
            if self._ended:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    def close(self) -> None:
        """Stop observing; iteration ends once what was received is read."""
        self._ended = True
        self._hub._observers.discard(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def aclose(self) -> None:
        """Stop observing."""
        self.close()

    async def __aenter__(self) -> SignalObserver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class SignalHub:
    """Fans signals out to observers and, optionally, a pheromone field."""

    def __init__(self, flux_id: str, enabled: bool, field: Any) -> None:
        self.flux_id = flux_id
        self.enabled = enabled
        self.field = field
        self._observers: set[SignalObserver] = set()

    @property
    def active(self) -> bool:
        """Whether emitting a signal would reach anybody."""
        return bool(self._observers) or (self.enabled and self.field is not None)

    def observe(self, maxsize: int = 1000) -> SignalObserver:
        """Register an observer for every signal emitted from now on."""
        if maxsize < 1:
            raise ValueError(f"observe(maxsize) must be >= 1, got {maxsize!r}")
        observer = SignalObserver(self, maxsize)
        self._observers.add(observer)
        return observer

    def emit(self, kind: str, at: float, data: Mapping[str, Any] | None = None) -> None:
        """Deliver a signal to every observer and the field; never blocks."""
        # With signals off, observers still get ``stopped``: it is what ends their iteration.
        if not self.enabled and (kind != "stopped" or not self._observers):
            return
        signal = Signal(kind, self.flux_id, at, MappingProxyType(dict(data)) if data else _EMPTY)
        for observer in tuple(self._observers):
            observer._push(signal)
        if self.enabled and self.field is not None:
            self.field.deposit(kind, 1.0, signal)
