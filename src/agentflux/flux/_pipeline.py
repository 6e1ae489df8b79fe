"""``FluxPipeline``: fluxes chained with ``|``."""

from __future__ import annotations

from collections.abc import AsyncIterable, Generator, Iterable
from types import TracebackType
from typing import Any, Generic, TypeVar

from .._core._errors import FluxStateError
from ._config import FluxState
from ._metrics import FluxMetrics
from ._stage import Stage, StageStream

__all__ = ["FluxPipeline", "PipelineStream"]

A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")


class PipelineStream(Generic[B]):
    """The outputs of the last stage; closing it stops every stage."""

    __slots__ = ("_last", "_pipeline")

    def __init__(self, pipeline: FluxPipeline[Any, B], last: StageStream[B]) -> None:
        self._pipeline = pipeline
        self._last = last

    def __aiter__(self) -> PipelineStream[B]:
        return self

    def __anext__(self) -> Any:
        return self._last.__anext__()

    async def aclose(self) -> None:
        """Stop every stage and close the source."""
        await self._last.aclose()
        await self._pipeline.stop()

    async def __aenter__(self) -> PipelineStream[B]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __await__(self) -> Generator[Any, None, PipelineStream[B]]:
        if False:  # pragma: no cover - makes this a generator
            yield
        return self


class FluxPipeline(Generic[A, B]):
    """Stages run concurrently; each stage's output stream is the next stage's source."""

    def __init__(self, stages: tuple[Stage[Any, Any], ...]) -> None:
        if not stages:
            raise ValueError("a FluxPipeline needs at least one stage")
        if len(set(map(id, stages))) != len(stages):
            raise ValueError("a flux can appear only once in a pipeline")
        self.stages = stages

    @classmethod
    def of(cls, *parts: Stage[Any, Any] | FluxPipeline[Any, Any]) -> FluxPipeline[Any, Any]:
        """Flatten fluxes and pipelines into one pipeline.

        Raises:
            TypeError: a part is neither a FluxAgent nor a FluxPipeline.
        """
        stages: list[Stage[Any, Any]] = []
        for part in parts:
            if isinstance(part, FluxPipeline):
                stages.extend(part.stages)
            elif isinstance(part, Stage):
                stages.append(part)
            else:
                raise TypeError(f"only fluxes and pipelines can be chained with |, got {part!r}")
        return cls(tuple(stages))

    def __or__(self, other: Stage[B, C] | FluxPipeline[B, C]) -> FluxPipeline[A, C]:
        """Append a flux or a pipeline."""
        return FluxPipeline.of(self, other)

    @property
    def name(self) -> str:
        """The stage ids joined with ``|``."""
        return " | ".join(stage.id for stage in self.stages)

    def start(self, source: AsyncIterable[A] | Iterable[A]) -> PipelineStream[B]:
        """Start every stage, each reading the previous one's output.

        Raises:
            FluxStateError: a stage is already running or has collapsed (nothing is started).
            TypeError: ``source`` is not an (async) iterable.
        """
        for stage in self.stages:
            if stage.state.is_running or stage.state is FluxState.COLLAPSED:
                hint = f"stage {stage.id} must be stopped (or reset) before the pipeline starts"
                raise FluxStateError(stage.state.name, "start", hint)
        stream: Any = source
        started: list[StageStream[Any]] = []
        try:
            for stage in self.stages:
                stream = stage.start(stream)
                started.append(stream)
        except BaseException:
            for stage in self.stages:
                stage._abort("the pipeline failed to start")
            raise
        return PipelineStream(self, stream)

    async def invoke(self, x: A) -> B:
        """Thread ``x`` through every stage (as perturbations of running stages)."""
        value: Any = x
        for stage in self.stages:
            value = await stage.invoke(value)
        return value  # type: ignore[no-any-return]

    async def stop(self) -> None:
        """Stop every stage, last first; idempotent."""
        for stage in reversed(self.stages):
            await stage.stop()

    def metrics(self) -> tuple[FluxMetrics, ...]:
        """The metrics of every stage, in order."""
        return tuple(stage.metrics() for stage in self.stages)

    def __repr__(self) -> str:
        return f"<FluxPipeline {self.name}>"
