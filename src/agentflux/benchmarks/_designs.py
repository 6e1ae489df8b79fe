"""The designs the benchmark runs: three baselines and agentflux, behind one small interface.

(a) the hand-written loop is not a stream object; the harness writes it out literally
(``async for x in src: out.append(await f.invoke(x))``) so that nothing sits between the
source and the agent. The other designs are a :class:`Design` with ``open(source)``, which
returns an async context manager that is also the async iterator of outputs, and
``iterate(source)``, the bare async iterator (for the ``break`` test). The designs with a
perturbation lane, (b) and (d), also have ``invoke(x, priority=...)`` and ``running``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

from .._core._agent import Agent
from ..flux._flux import Flux, FluxAgent

__all__ = [
    "AgentfluxDesign",
    "AiostreamDesign",
    "Design",
    "PerturbableDesign",
    "QueueDesign",
    "QueueFlow",
    "hand_loop",
]

_END: Any = object()  # end-of-stream sentinel of the Queue design


class _Failure:
    """An exception travelling down the queues of the Queue design, raised to the consumer."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Design(Protocol):
    """A stream design the harness can run."""

    def open(self, source: AsyncIterable[Any]) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Any]]:
        """Start processing ``source``; the context manager yields the output iterator."""
        ...

    def iterate(self, source: AsyncIterable[Any]) -> AsyncIterator[Any]:
        """Start processing ``source`` and return the bare output iterator (no ``async with``)."""
        ...


class PerturbableDesign(Design, Protocol):
    """A design with a perturbation lane: ``invoke`` while a stream runs."""

    @property
    def running(self) -> bool:
        """Whether a stream is being processed (``invoke`` is then a perturbation)."""
        ...

    async def invoke(self, x: Any, *, priority: int = 100) -> Any:
        """Process ``x`` ahead of stream events and return its result."""
        ...


# --------------------------------------------------------------------- (a) hand loop


async def hand_loop(source: AsyncIterable[Any], agents: Sequence[Agent[Any, Any]], out: list[Any]) -> None:
    """Design (a), the floor: call the agents in the consumer's own loop."""
    if len(agents) == 1:
        (f,) = agents
        async for x in source:
            out.append(await f.invoke(x))
    elif len(agents) == 3:
        f, g, h = agents
        async for x in source:
            out.append(await h.invoke(await g.invoke(await f.invoke(x))))
    else:
        raise ValueError(f"hand_loop is written out for 1 or 3 agents, got {len(agents)}")


# ----------------------------------------------------------------- (b) asyncio.Queue


class _Worker:
    """One stage of the Queue design.

    Stream items arrive through a bounded ``asyncio.Queue``; perturbations through a
    separate unbounded lane (a heap: higher priority first, ties in arrival order). Both
    set the same ``asyncio.Event``, the only thing the worker waits on when it is idle, so
    a perturbation never waits behind a bounded put.
    """

    __slots__ = ("_order", "agent", "inbox", "lane", "wake")

    def __init__(self, agent: Agent[Any, Any], maxsize: int) -> None:
        self.agent = agent
        self.inbox: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self.lane: list[tuple[int, int, Any, asyncio.Future[Any]]] = []
        self.wake = asyncio.Event()
        self._order = itertools.count()

    async def put(self, item: Any) -> None:
        """Hand a stream item (or the end marker) to this stage; waits while the inbox is full."""
        await self.inbox.put(item)
        self.wake.set()

    def perturb(self, x: Any, priority: int) -> asyncio.Future[Any]:
        """Queue ``x`` in the perturbation lane; the future gets its result."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        heapq.heappush(self.lane, (-priority, next(self._order), x, future))
        self.wake.set()
        return future

    async def run(self, emit: Callable[[Any], Awaitable[None]]) -> None:
        """Serve perturbations first, then stream items, until the end marker passes."""
        inbox = self.inbox
        lane = self.lane
        wake = self.wake
        invoke = self.agent.invoke
        try:
            while True:
                if lane:
                    _, _, x, future = heapq.heappop(lane)
                    if future.done():  # the caller stopped waiting
                        continue
                    try:
                        result = await invoke(x)
                    except Exception as exc:
                        if not future.done():
                            future.set_exception(exc)
                    else:
                        if not future.done():
                            future.set_result(result)
                    # Let the caller run before the next burst of stream items.
                    await asyncio.sleep(0)
                elif not inbox.empty():
                    item = inbox.get_nowait()
                    if item is _END or type(item) is _Failure:
                        await emit(item)
                        return
                    try:
                        result = await invoke(item)
                    except Exception as exc:
                        await emit(_Failure(exc))
                        return
                    await emit(result)
                else:
                    wake.clear()
                    await wake.wait()
        finally:
            pending = self.lane[:]
            self.lane.clear()
            for _, _, _, future in pending:
                if not future.done():
                    future.set_exception(RuntimeError("the queue flow ended before this perturbation ran"))


async def _produce(source: AsyncIterable[Any], put: Callable[[Any], Awaitable[None]]) -> None:
    try:
        async for x in source:
            await put(x)
    except Exception as exc:
        await put(_Failure(exc))
    else:
        await put(_END)


class QueueFlow:
    """Design (b): producer task -> Queue(100) -> worker task(s) -> Queue(100) -> consumer.

    ``start(source)`` is an async generator that owns its tasks: when it ends, is closed,
    or is garbage-collected (asyncio's async-generator finalizer closes it), it cancels
    and awaits them and closes the source. Three agents make three chained workers.
    """

    def __init__(self, agents: Sequence[Agent[Any, Any]], maxsize: int = 100) -> None:
        self.agents = tuple(agents)
        self.maxsize = maxsize
        self._workers: list[_Worker] | None = None

    @property
    def running(self) -> bool:
        """Whether a stream is being processed."""
        return self._workers is not None

    async def invoke(self, x: Any, *, priority: int = 100) -> Any:
        """A direct call when idle; while running, a perturbation through every stage's lane."""
        value = x
        workers = self._workers
        if workers is None:
            for stage in self.agents:
                value = await stage.invoke(value)
            return value
        for worker in workers:
            value = await worker.perturb(value, priority)
        return value

    async def start(self, source: AsyncIterable[Any]) -> AsyncGenerator[Any, None]:
        """Process ``source`` through the workers and yield the outputs in order."""
        loop = asyncio.get_running_loop()
        workers = [_Worker(stage, self.maxsize) for stage in self.agents]
        outbox: asyncio.Queue[Any] = asyncio.Queue(self.maxsize)
        tasks = [loop.create_task(_produce(source, workers[0].put))]
        for index, worker in enumerate(workers):
            emit = workers[index + 1].put if index + 1 < len(workers) else outbox.put
            tasks.append(loop.create_task(worker.run(emit)))
        self._workers = workers
        try:
            while True:
                item = await outbox.get()
                if item is _END:
                    return
                if type(item) is _Failure:
                    raise item.error
                yield item
        finally:
            self._workers = None
            await _shutdown(tasks, source)


async def _shutdown(tasks: list[asyncio.Task[None]], source: AsyncIterable[Any]) -> None:
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()


class QueueDesign:
    """Design (b) behind the harness interface."""

    def __init__(self, agents: Sequence[Agent[Any, Any]]) -> None:
        self.flow = QueueFlow(agents)

    @property
    def running(self) -> bool:
        """Whether a stream is being processed."""
        return self.flow.running

    def open(self, source: AsyncIterable[Any]) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Any]]:
        """The output generator, closed on leaving ``async with``."""
        return contextlib.aclosing(self.flow.start(source))

    def iterate(self, source: AsyncIterable[Any]) -> AsyncIterator[Any]:
        """The bare output generator."""
        return self.flow.start(source)

    async def invoke(self, x: Any, *, priority: int = 100) -> Any:
        """See ``QueueFlow.invoke``."""
        return await self.flow.invoke(x, priority=priority)


# ---------------------------------------------------------------------- (c) aiostream


class AiostreamDesign:
    """Design (c): ``stream.map(source, agent.invoke, task_limit=1)`` per stage."""

    def __init__(self, agents: Sequence[Agent[Any, Any]]) -> None:
        self.agents = tuple(agents)

    def _pipeline(self, source: AsyncIterable[Any]) -> Any:
        from aiostream import stream  # optional: only this design needs it

        piped: Any = source
        for stage in self.agents:
            piped = stream.map(piped, stage.invoke, task_limit=1)
        return piped

    def open(self, source: AsyncIterable[Any]) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Any]]:
        """``pipeline.stream()``: aiostream's streaming context."""
        return self._pipeline(source).stream()  # type: ignore[no-any-return]

    def iterate(self, source: AsyncIterable[Any]) -> AsyncIterator[Any]:
        """Not offered: aiostream is iterated inside its ``stream()`` context."""
        raise NotImplementedError("aiostream streams are iterated inside `async with s.stream()`")


# ---------------------------------------------------------------------- (d) agentflux


class AgentfluxDesign:
    """Design (d): ``Flux.lift(agent)``, or ``Flux.lift(f) | Flux.lift(g) | Flux.lift(h)``."""

    def __init__(self, agents: Sequence[Agent[Any, Any]]) -> None:
        fluxes: list[FluxAgent[Any, Any]] = [Flux.lift(stage) for stage in agents]
        flux: Any = fluxes[0]
        for more in fluxes[1:]:
            flux = flux | more
        self.flux = flux
        self._stages = fluxes

    @property
    def running(self) -> bool:
        """Whether every stage is running."""
        return all(stage.state.is_running for stage in self._stages)

    def open(self, source: AsyncIterable[Any]) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Any]]:
        """``flux.start(source)``: a stream that is its own async context manager."""
        return self.flux.start(source)  # type: ignore[no-any-return]

    def iterate(self, source: AsyncIterable[Any]) -> AsyncIterator[Any]:
        """``flux.start(source)`` used bare."""
        return self.flux.start(source)  # type: ignore[no-any-return]

    async def invoke(self, x: Any, *, priority: int = 100) -> Any:
        """``flux.invoke(x, priority=...)`` (a pipeline threads ``x`` through every stage)."""
        if len(self._stages) == 1:
            return await self.flux.invoke(x, priority=priority)
        return await self.flux.invoke(x)
