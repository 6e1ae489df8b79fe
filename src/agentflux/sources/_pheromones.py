"""Stigmergy: a field of decaying signals that agents deposit and sense."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ._bus import EventBus, Overflow, Subscription

__all__ = ["Pheromone", "PheromoneField", "from_pheromones"]


@dataclass(frozen=True, slots=True)
class Pheromone:
    """A deposit (or a threshold crossing) of ``kind``; ``at`` is the field's clock."""

    kind: str
    intensity: float
    payload: Any
    at: float


@dataclass(frozen=True, slots=True)
class _Deposit:
    pheromone: Pheromone
    before: float  # sensed intensity just before the deposit
    after: float  # sensed intensity just after it


class PheromoneField:
    """Intensities per kind that decay exponentially with ``half_life`` seconds.

    ``clock`` (default ``time.monotonic``) can be replaced for deterministic tests.
    """

    def __init__(self, half_life: float = 60.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(half_life, bool) or not isinstance(half_life, (int, float)) or not (
            half_life > 0 and math.isfinite(half_life)
        ):
            raise ValueError(f"PheromoneField(half_life) must be a finite number > 0, got {half_life!r}")
        self.half_life = float(half_life)
        self._clock = clock
        self._levels: dict[str, tuple[float, float]] = {}  # kind -> (intensity, at)
        self._bus: EventBus[_Deposit] = EventBus()

    def _decayed(self, kind: str, now: float) -> float:
        level = self._levels.get(kind)
        if level is None:
            return 0.0
        intensity, at = level
        return float(intensity * 0.5 ** ((now - at) / self.half_life))

    def deposit(self, kind: str, intensity: float = 1.0, payload: Any = None) -> float:
        """Add ``intensity`` to ``kind``; returns the intensity sensed after the deposit.

        Raises:
            ValueError: ``intensity`` is negative or not finite.
        """
        if isinstance(intensity, bool) or not isinstance(intensity, (int, float)) or not (
            intensity >= 0 and math.isfinite(intensity)
        ):
            raise ValueError(f"deposit(intensity) must be a finite number >= 0, got {intensity!r}")
        now = self._clock()
        before = self._decayed(kind, now)
        after = before + intensity
        self._levels[kind] = (after, now)
        if not self._bus.closed:
            self._bus.publish(_Deposit(Pheromone(kind, float(intensity), payload, now), before, after))
        return after

    def sense(self, kind: str) -> float:
        """The current intensity of ``kind`` (0.0 if never deposited)."""
        return self._decayed(kind, self._clock())

    def kinds(self) -> dict[str, float]:
        """Every kind deposited so far with its current intensity."""
        now = self._clock()
        return {kind: self._decayed(kind, now) for kind in self._levels}

    def close(self) -> None:
        """End every ``from_pheromones`` source of this field."""
        self._bus.close()

    def _subscribe(self, maxsize: int, overflow: Overflow) -> Subscription[_Deposit]:
        return self._bus.subscribe(maxsize, overflow)


class _PheromoneSource:
    """Deposits (or crossings) of one kind, read from a subscription taken at creation."""

    def __init__(self, subscription: Subscription[_Deposit], kind: str, threshold: float | None) -> None:
        self._subscription = subscription
        self._kind = kind
        self._threshold = threshold

    def __aiter__(self) -> _PheromoneSource:
        return self

    async def __anext__(self) -> Pheromone:
        threshold = self._threshold
        async for deposit in self._subscription:
            pheromone = deposit.pheromone
            if pheromone.kind != self._kind:
                continue
            if threshold is None:
                return pheromone
            if deposit.before < threshold <= deposit.after:
                return Pheromone(pheromone.kind, deposit.after, pheromone.payload, pheromone.at)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop listening to the field."""
        self._subscription.close()


def from_pheromones(
    field: PheromoneField, kind: str, threshold: float | None = None, *, maxsize: int = 1000
) -> AsyncIterator[Pheromone]:
    """Every deposit of ``kind`` from now on, or with ``threshold`` every rise across it.

    The source listens from the moment it is created. A crossing yields a ``Pheromone``
    whose intensity is the sensed total just after the deposit. A slow consumer loses the
    oldest deposits beyond ``maxsize``.

    Raises:
        ClosedResourceError: the field was closed.
    """
    return _PheromoneSource(field._subscribe(maxsize, "drop_oldest"), kind, threshold)
