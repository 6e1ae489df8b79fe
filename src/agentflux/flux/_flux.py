"""``Flux``: lift an agent into a stream processor."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable, Generator, Iterable
from types import TracebackType
from typing import Any, Generic, TypeVar

from .._core._agent import Agent, FunctionAgent, agent_name, is_async_callable, is_generator_callable
from .._core._errors import FluxEntropyError, FluxPerturbationError, FluxStateError, SemaphoreResumeError
from ..semaphores._purgatory import Purgatory, open_purgatory
from ..semaphores._token import ReentryContext, SemaphoreToken, resuming_token_id
from ._config import FluxConfig, FluxState
from ._metrics import DeadLetter, FluxMetrics, LatencyHistogram, MetricsRecorder
from ._pipeline import FluxPipeline
from ._run import REENTRY_PRIORITY, Run, spurious_cancel
from ._signals import SignalHub, SignalObserver
from ._stage import Stage

__all__ = ["Flux", "FluxAgent", "FluxStream"]

_log = logging.getLogger("agentflux.flux")

A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")

_perf_counter = time.perf_counter


class FluxStream(Generic[B]):
    """The outputs of one ``flux.start(source)``.

    An async iterator, an async context manager and an awaitable (awaiting it returns
    the stream). Leaving ``async with``, ``aclose()`` or cancelling the consumer stops the
    processing and closes the source; after a bare ``break`` that happens when the
    stream is garbage-collected.
    """

    __slots__ = ("__weakref__", "_closed", "_run")

    def __init__(self, run: Run) -> None:
        self._run = run
        self._closed = False

    @property
    def _flux_run(self) -> Run:
        # Lets a downstream flux take buffered outputs without a coroutine per item.
        return self._run

    def __aiter__(self) -> FluxStream[B]:
        return self

    async def __anext__(self) -> B:
        run = self._run
        outbuf = run.outbuf
        while True:
            if outbuf:
                item: B = outbuf.popleft()
                if run.space_wanted:
                    run.space_freed()
                return item
            if run.finished:
                await run.wait_closed()
                self._closed = True
                failure, run.failure = run.failure, None
                if failure is not None:
                    raise failure
                raise StopAsyncIteration
            if run.consumer_waiter is not None:
                raise RuntimeError("another task is already waiting on this flux stream")
            waiter = run.loop.create_future()
            run.consumer_waiter = waiter
            try:
                await waiter
            finally:
                if run.consumer_waiter is waiter:
                    run.consumer_waiter = None

    def ready(self, limit: int = 1 << 30) -> list[B]:
        """The outputs already buffered (at most ``limit``), without waiting: after one
        ``__anext__``, the rest of a burst, to write it in one batch."""
        run = self._run
        outbuf = run.outbuf
        items: list[B] = []
        while outbuf and len(items) < limit:
            items.append(outbuf.popleft())
        if items and run.space_wanted:
            run.space_freed()
        return items

    async def aclose(self) -> None:
        """Stop processing, close the source and wait until every task has finished.

        Raises:
            Exception: whatever closing the source raised.
        """
        await self._close(raise_close_error=True)

    async def _close(self, *, raise_close_error: bool) -> None:
        self._closed = True
        run = self._run
        run.close_error_wanted = raise_close_error
        try:
            await run.stop()
        finally:
            run.close_error_wanted = False
            run.outbuf.clear()  # nobody will read them: release the memory (and the pressure)
        error, run.close_error = run.close_error, None
        if error is not None:
            raise error

    async def __aenter__(self) -> FluxStream[B]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # With an exception on its way out, a close error must not replace it (it is logged).
        await self._close(raise_close_error=exc is None)

    def __await__(self) -> Generator[Any, None, FluxStream[B]]:
        if False:  # pragma: no cover - makes this a generator
            yield
        return self

    def __del__(self) -> None:
        run = self._run
        if not self._closed and not run.loop.is_closed():
            if not run.finished:
                run.abort("the flux stream was garbage-collected")
            run.outbuf.clear()  # the consumer is gone


class FluxAgent(Stage[A, B]):
    """An agent lifted into a stream processor; see ``Flux.lift``."""

    def __init__(self, inner: Agent[A, B], config: FluxConfig | None = None) -> None:
        if config is None:
            config = FluxConfig()
        elif not isinstance(config, FluxConfig):
            raise TypeError(f"config must be a FluxConfig, got {config!r}")
        self.agent = inner
        self.config = config
        self.id = config.agent_id or f"flux-{agent_name(inner)}"
        self.name = self.id
        self._state = FluxState.DORMANT
        self._run: Run | None = None
        self._metrics = MetricsRecorder()
        self._dead_letters: deque[DeadLetter] = deque(maxlen=config.dead_letter_size)
        self._signals = SignalHub(self.id, config.emit_pheromones, config.pheromone_field)
        self._purgatory: Purgatory | None = None
        self._ejects = callable(getattr(inner, "resume", None)) or config.purgatory is not None
        self._direct_invoke: Callable[[Any], Awaitable[Any]] = inner.invoke
        if config.trace_enabled:
            from ._tracing import traced

            self._direct_invoke = traced(inner.invoke, self.id)
        self._outbuf: deque[Any] = deque()

    # ------------------------------------------------------------- lifecycle

    @property
    def state(self) -> FluxState:
        """The current lifecycle state."""
        return self._state

    def start(self, source: AsyncIterable[A] | Iterable[A]) -> FluxStream[B]:
        """Begin processing ``source`` at once and return the stream of outputs.

        Raises:
            FluxStateError: the flux is already running or has collapsed.
            TypeError: ``source`` is not an (async) iterable.
        """
        if self._state.is_running or self._state is FluxState.COLLAPSED:
            hint = "call reset() first" if self._state is FluxState.COLLAPSED else "stop() it first"
            raise FluxStateError(self._state.name, "start", hint)
        asyncio.get_running_loop()  # RuntimeError outside a loop, before anything changes
        if hasattr(source, "__aiter__"):
            iterator: Any = source.__aiter__()
        elif isinstance(source, Iterable):
            iterator = iter(source)
        else:
            raise TypeError(
                f"Flux.start() needs an async iterable or an iterable source, got {type(source).__name__}"
            )
        self._set_state(FluxState.FLOWING)
        run = self._run = Run(self, iterator)
        self._outbuf = run.outbuf
        self._signal("started")
        return FluxStream(run)

    async def stop(self) -> None:
        """Stop processing: cancel the tasks, close the source, fail queued perturbations.

        Idempotent; waits until every task of the run has finished.
        """
        run = self._run
        if run is not None:
            await run.stop()

    def _abort(self, reason: str) -> None:
        """End the current run at once (its tasks finish shortly after), if there is one."""
        run = self._run
        if run is not None:
            run.abort(reason)

    def reset(self) -> None:
        """Forget counters, dead letters and the spent budget; back to DORMANT.

        Raises:
            FluxStateError: the flux is running.
        """
        if self._state.is_running:
            raise FluxStateError(self._state.name, "reset", "stop() it first")
        histogram = self._metrics.histogram
        self._metrics = MetricsRecorder()
        if histogram is not None:
            self._metrics.histogram = LatencyHistogram()
        self._dead_letters.clear()
        self._set_state(FluxState.DORMANT)

    def _run_ended(self, run: Run, state: FluxState) -> None:
        if self._run is run:
            self._run = None
        self._metrics.checkpoint(_perf_counter())
        self._set_state(state)
        self._signal("stopped", {"state": state.value})

    # ------------------------------------------------------------ invocation

    async def invoke(self, x: A, *, priority: int = 100) -> B:
        """Process one input.

        When the flux is not running this is a direct call of the agent. While it runs,
        ``x`` is a perturbation: it goes ahead of source and feedback events (higher
        ``priority`` first, ties in arrival order), flows through the same processing
        path, and its result is returned here rather than emitted on the stream.

        Called from inside this flux's own agent (directly, or through another flux the
        agent is waiting on), it runs at once in the calling agent's slot: that call waits
        for it, so waiting for a free slot could deadlock.

        Raises:
            FluxStateError: the flux has collapsed.
            FluxEntropyError: the flux collapsed before the perturbation ran.
            FluxPerturbationError: the flux stopped or failed before it ran.
            Exception: whatever the agent raised for this input.
        """
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"priority must be an int, got {priority!r}")
        run = self._run
        if run is not None and not run.finished:
            if run.holds_slot():  # called from inside this flux's own agent: serve it in that slot
                return await run.serve_nested(x)  # type: ignore[no-any-return]
            if run.can_serve_now():
                return await run.serve_now(x)  # type: ignore[no-any-return]
            return await run.perturb(x, priority)  # type: ignore[no-any-return]
        if self._state is FluxState.COLLAPSED:
            raise FluxStateError(self._state.name, "invoke", "the event budget is spent; call reset()")
        metrics = self._metrics
        metrics.direct += 1
        started = _perf_counter()
        try:
            result = await self._direct_invoke(x)
        except Exception as exc:
            self._record_error(x, exc, started, dead_letter=False)
            raise
        except asyncio.CancelledError as cancel:
            spurious = spurious_cancel(cancel)
            if spurious is None:
                raise
            self._record_error(x, spurious, started, dead_letter=False)
            raise spurious from cancel
        metrics.record(started, _perf_counter(), streamed=False)
        if isinstance(result, SemaphoreToken) and self._ejects:
            result = await self._park(result, x)  # a direct call parks its token too
        return result  # type: ignore[no-any-return]

    # -------------------------------------------------------- semaphores

    @property
    def purgatory(self) -> Purgatory:
        """Where tokens of this flux are parked: ``config.purgatory``, else an in-memory one."""
        if self._purgatory is None:
            self._purgatory = self.config.purgatory or open_purgatory("memory://")
        return self._purgatory

    async def resolve(self, token_id: str, human_input: Any, *, by: str | None = None) -> Any:
        """Answer a token this flux parked and resume the agent with the answer.

        ``by`` records who answered and from where (the token's ``resolved_by``).

        While the flux runs, the resumption is a perturbation at priority 200 and its
        result also joins the output stream; otherwise ``resume`` is called directly.
        Returns the result, or the new token when the resumption asks a human again.
        Cancelled before ``resume`` returned, the resolution stands and its claim is given
        back: the flux's next start resumes it.

        Raises:
            SemaphoreResumeError: the agent has no ``resume`` or the token belongs to
                another flux (checked before anything changes).
            SemaphoreNotFound: no such token.
            SemaphoreNotPending: the token was already resolved, cancelled or voided.
            Exception: whatever ``resume`` raised.
        """
        if not callable(getattr(self.agent, "resume", None)):
            raise SemaphoreResumeError(
                f"{agent_name(self.agent)} has no resume(frozen_state, human_input); cannot resume {token_id}"
            )
        purgatory = self.purgatory
        token = await purgatory.get(token_id)
        if token.flux_id is not None and token.flux_id != self.id:
            raise SemaphoreResumeError(f"token {token_id} belongs to flux {token.flux_id!r}, not {self.id!r}")
        resolving = asyncio.ensure_future(purgatory.resolve(token_id, human_input, claim=True, by=by))
        try:
            context = await asyncio.shield(resolving)
        except asyncio.CancelledError:
            # The store commits a submitted change anyway: a resolution this caller will not
            # resume is given back, for the flux's next start.
            await self._give_back(token_id, resolving)
            raise
        run = self._run
        if run is not None and not run.finished:
            try:
                # Cancelled while queued or running, the run gives the claim back itself.
                if run.holds_slot():  # from inside this flux's own agent: resume in that slot
                    return await run.reenter_nested(context)
                return await run.perturb(None, REENTRY_PRIORITY, context)
            except (FluxPerturbationError, FluxEntropyError):
                pass  # the run ended before the resumption ran: resume here instead
        started = _perf_counter()
        resumed = False

        def ran() -> None:
            nonlocal resumed
            resumed = True

        try:
            result = await self._resume(context, ran)
        except Exception as exc:
            self._record_error(context.original_event, exc, started, dead_letter=False)
            raise
        except asyncio.CancelledError:
            if not resumed:  # once resume() returned, its result (a new token being parked) stands
                await self._give_back(token_id, None)
            raise
        self._metrics.record(started, _perf_counter(), streamed=False)
        return result

    async def _give_back(self, token_id: str, resolving: asyncio.Future[Any] | None) -> None:
        """Release the claim of a resolution this caller was cancelled before resuming (cleanup:
        shielded, and only once ``resolving``, if given, has succeeded)."""
        if resolving is not None:
            try:
                await asyncio.shield(resolving)
            except Exception as exc:  # nothing committed, no claim to give back; its caller was cancelled
                _log.info("flux %s: resolving %s failed after its caller was cancelled: %r", self.id, token_id, exc)
                return
        try:
            await asyncio.shield(self.purgatory.release_claim(token_id))
        except Exception as exc:
            _log.warning(
                "flux %s: giving back the claim on %s failed (%r); it lapses after %.0f s and is resumed then",
                self.id, token_id, exc, self.purgatory.claim_lease,
            )  # fmt: skip

    async def _finish_claim(self, token_id: str) -> None:
        """Mark a resumption complete in the store, so that its claim never lapses."""
        try:
            await asyncio.shield(self.purgatory.finish_resume(token_id))
        except Exception as exc:
            _log.warning(
                "flux %s: recording that %s was resumed failed (%r); if this process dies within %.0f s it is "
                "resumed again",
                self.id, token_id, exc, self.purgatory.claim_lease,
            )  # fmt: skip

    async def _resume(self, context: ReentryContext, ran: Callable[[], None] | None = None) -> Any:
        """Call the agent's ``resume``; park the result if it is a new token.

        While ``resume`` runs, ``restore_state`` knows the token id (its state is bound to it).
        ``ran`` is called as soon as ``resume`` has returned, before the parking. Once
        ``resume`` returned or raised an ``Exception`` (and a new token is parked), the
        claim is marked complete. A crash before that mark is committed leaves the claim to
        lapse and the token is resumed again: at least once, never zero times.
        """
        resuming = resuming_token_id.set(context.token_id)
        try:
            result = await self.agent.resume(context.frozen_state, context.human_input)  # type: ignore[attr-defined]
        except asyncio.CancelledError as cancel:
            spurious = spurious_cancel(cancel)
            if spurious is None:
                raise
            await self._finish_claim(context.token_id)
            raise spurious from cancel  # the agent's error, for every caller of _resume
        except Exception:
            await self._finish_claim(context.token_id)
            raise
        finally:
            resuming_token_id.reset(resuming)
        if ran is not None:
            ran()
        self._metrics.semaphores_resumed += 1
        self._signal("semaphore_resumed", {"token_id": context.token_id})
        try:
            if isinstance(result, SemaphoreToken):
                result = await self._park(result, context.original_event)
        finally:
            await self._finish_claim(context.token_id)
        return result

    async def _park(self, token: SemaphoreToken, event: Any) -> SemaphoreToken:
        """Fill in the event and this flux's id, save the token, count and signal it."""
        if token.original_event is None or token.flux_id is None:
            token = dataclasses.replace(
                token,
                original_event=event if token.original_event is None else token.original_event,
                flux_id=token.flux_id or self.id,
            )
        saved = await self.purgatory.save(token)
        self._metrics.semaphores_ejected += 1
        self._signal(
            "semaphore_ejected", {"token_id": saved.id, "reason": saved.reason.value, "prompt": saved.prompt}
        )
        return saved

    # ------------------------------------------------------- observation

    def metrics(self) -> FluxMetrics:
        """A frozen snapshot of counters, pressure, flow, turbulence and latency."""
        run = self._run
        config = self.config
        # The last run's buffer still counts after the run ended, until the consumer reads it.
        pressure = min(1.0, len(self._outbuf) / config.buffer_size)
        spent = config.entropy_decay * self._metrics.processed
        entropy = max(0.0, config.entropy_budget - spent)
        in_flight = run.in_flight if run is not None else 0
        return self._metrics.snapshot(self._state, entropy, pressure, _perf_counter(), in_flight)

    @property
    def dead_letters(self) -> tuple[DeadLetter, ...]:
        """Events the agent failed on, oldest first (bounded by ``dead_letter_size``)."""
        return tuple(self._dead_letters)

    def observe(self, maxsize: int = 1000) -> SignalObserver:
        """An async iterator of the signals emitted from now on; ends after ``stopped``."""
        return self._signals.observe(maxsize)

    def _set_state(self, state: FluxState) -> None:
        previous = self._state
        if previous is state:
            return
        self._state = state
        if self._signals.active:  # build the signal only for someone who listens
            self._signals.emit("state_changed", time.time(), {"from": previous.value, "to": state.value})

    def _signal(self, kind: str, data: dict[str, Any] | None = None) -> None:
        hub = self._signals
        if hub.active:
            hub.emit(kind, time.time(), data)

    def _record_error(self, event: Any, exc: Exception, started: float, *, dead_letter: bool = True) -> None:
        metrics = self._metrics
        metrics.record_error(started, _perf_counter())
        if dead_letter and self._dead_letters.maxlen:
            self._dead_letters.append(DeadLetter(event, exc, time.time()))
        self._signal("error", {"event": event, "error": exc})

    # ------------------------------------------------------- composition

    def __or__(self, other: FluxAgent[B, C] | FluxPipeline[B, C]) -> FluxPipeline[A, C]:
        """Chain this flux's output into ``other`` as its source."""
        return FluxPipeline.of(self, other)

    def __repr__(self) -> str:
        return f"<FluxAgent {self.id} {self._state.name}>"


class Flux:
    """The functor from agents to stream processors."""

    @staticmethod
    def lift(inner: Agent[A, B] | Any, config: FluxConfig | None = None) -> FluxAgent[A, B]:
        """Lift an agent (or a plain function) into a ``FluxAgent``.

        Raises:
            TypeError: ``inner`` is neither an agent nor callable, or ``config`` is not a FluxConfig.
        """
        invoke = getattr(inner, "invoke", None)
        if callable(invoke):
            if not is_async_callable(invoke):
                what = "a generator function" if is_generator_callable(invoke) else "not a coroutine function"
                raise TypeError(
                    f"Flux.lift() needs invoke() to be a coroutine function (async def), "
                    f"but {type(inner).__name__}.invoke of {inner!r} is {what}"
                )
        elif not callable(inner):
            raise TypeError(f"Flux.lift() needs an Agent (with async invoke()) or a function, got {inner!r}")
        else:
            inner = FunctionAgent(inner)
        return FluxAgent(inner, config)

    @staticmethod
    def unlift(flux: FluxAgent[A, B]) -> Agent[A, B]:
        """The agent a flux was lifted from.

        Raises:
            TypeError: ``flux`` is not a FluxAgent.
        """
        if not isinstance(flux, FluxAgent):
            raise TypeError(f"Flux.unlift() needs a FluxAgent, got {flux!r}")
        return flux.agent

    @staticmethod
    def is_flux(obj: object) -> bool:
        """Whether ``obj`` is a FluxAgent or a FluxPipeline."""
        return isinstance(obj, (FluxAgent, FluxPipeline))
