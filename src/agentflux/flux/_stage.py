"""What a pipeline needs of each of its stages, so that ``_pipeline`` never imports ``_flux``.

``FluxAgent`` is the one ``Stage``; ``FluxStream`` the one ``StageStream``. The arrows:
``_stage`` <- ``_pipeline`` <- ``_flux`` (which builds pipelines with ``|``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from ._config import FluxState
from ._metrics import FluxMetrics

__all__ = ["Stage", "StageStream"]

A = TypeVar("A")
B = TypeVar("B")
B_co = TypeVar("B_co", covariant=True)


class StageStream(Protocol[B_co]):
    """The outputs of a started stage, read by the next stage (or the consumer)."""

    def __aiter__(self) -> StageStream[B_co]: ...

    def __anext__(self) -> Any: ...

    async def aclose(self) -> None: ...


class Stage(ABC, Generic[A, B]):
    """A flux as one stage of a pipeline: started on the previous stage's outputs."""

    __slots__ = ()

    id: str

    @property
    @abstractmethod
    def state(self) -> FluxState:
        """The stage's current state."""

    @abstractmethod
    def start(self, source: AsyncIterable[A] | Iterable[A]) -> StageStream[B]:
        """Start processing ``source``; the outputs come out of the returned stream."""

    @abstractmethod
    def _abort(self, reason: str) -> None:
        """End the current run at once, without waiting (a pipeline that failed to start)."""

    @abstractmethod
    async def invoke(self, x: A) -> B:
        """Process one value now, outside the stream."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop the current run and wait for its end; idempotent."""

    @abstractmethod
    def metrics(self) -> FluxMetrics:
        """A snapshot of the stage's metrics."""
