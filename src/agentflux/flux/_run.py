"""One run of a flux over one source: its tasks, lanes and output buffer.

Layout of a run (each arrow is a deque plus a wake-up future; nothing polls)::

    source ------------> worker(s) --> agent --> outbuf --> FluxStream (consumer)
    feedback lane -----/     ^
    invoke() --> perturbation heap --> served by a free worker, or by the main task

Workers read the source themselves, one at a time (a read token keeps an async
generator from being entered twice), so a fast source costs no task switch per event
and the read-ahead is at most ``concurrency`` events. While every worker waits on an
idle source, or sits on a full output buffer, the run's main task serves perturbations:
they never wait for the source or behind a slow consumer, and at most ``concurrency``
agent calls run at once. The main task also owns the workers: when the run ends it
cancels and awaits them and then closes the source.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import heapq
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

from .._core._agent import Agent
from .._core._errors import FluxEntropyError, FluxError, FluxPerturbationError
from ..semaphores._purgatory import RETRY_FIRST, RETRY_MAX, Purgatory
from ..semaphores._token import ReentryContext, SemaphoreToken
from ._config import FluxConfig, FluxState
from ._metrics import MetricsRecorder

__all__ = ["REENTRY_PRIORITY", "Run", "RunOwner", "held_runs", "spurious_cancel"]


class RunOwner(Protocol):
    """What a run needs of the flux it runs for (``FluxAgent``), so that this module never
    imports ``_flux``: the agent and config, where to park tokens, and the calls by which
    it reports back (errors, signals, state, its own end)."""

    id: str
    agent: Agent[Any, Any]
    config: FluxConfig
    _metrics: MetricsRecorder

    @property
    def purgatory(self) -> Purgatory: ...

    async def _park(self, token: SemaphoreToken, event: Any) -> SemaphoreToken: ...

    async def _resume(self, context: ReentryContext, ran: Callable[[], None] | None = None) -> Any: ...

    def _record_error(self, event: Any, exc: Exception, started: float, *, dead_letter: bool = True) -> None: ...

    def _signal(self, kind: str, data: dict[str, Any] | None = None) -> None: ...

    def _set_state(self, state: FluxState) -> None: ...

    def _run_ended(self, run: Run, state: FluxState) -> None: ...

held_runs: contextvars.ContextVar[tuple[Run, ...]] = contextvars.ContextVar("agentflux_held_runs", default=())
"""The runs whose agent slot the current context is inside: set in a run's workers and
main task, around a perturbation served in its caller's task, and carried along with a
perturbation to whoever serves it. An agent that calls ``invoke`` (or ``resolve``) of a
flux whose slot it already holds is served in that slot instead of waiting for another,
which at ``concurrency`` nested calls would never come."""

REENTRY_PRIORITY = 200
"""Priority of resuming a resolved semaphore (above the default perturbation's 100)."""

LAPSE_MARGIN = 0.05
"""Seconds after a claim's lease ends before it is taken again (clocks differ a little)."""

READ_AHEAD = 16
"""Ordered output with several workers reads at most ``concurrency + READ_AHEAD`` ahead."""

R = TypeVar("R")

_log = logging.getLogger("agentflux.flux")

_SKIP: Any = object()  # marks an event that produced no output
_SLOW_CALL = 20e-6  # seconds; agent calls slower than this are timed every time
_CHECKPOINT = 0.005
"""Seconds a worker may run without yielding to the event loop. A source and an agent
that never suspend (``itertools.count()`` and a pure function, under a drop policy) would
otherwise keep the loop from running anything else: the consumer, timeouts, ``stop()``."""
_perf_counter = time.perf_counter


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def spurious_cancel(cancel: asyncio.CancelledError) -> Exception | None:
    """A ``CancelledError`` out of the agent while nobody cancels the task running it (an
    inner future the agent awaited was cancelled) is the agent's error, as a ``FluxError``;
    None when the task really is being cancelled (then it must propagate)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        return None
    error = FluxError(
        "the agent raised CancelledError although the flux was not cancelled "
        "(something it awaited was cancelled); it counts as the agent's error"
    )
    error.__cause__ = cancel
    return error


_FATAL = (KeyboardInterrupt, SystemExit)
"""Never handled: they end the run and then propagate out of the event loop."""


def _wake_all(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()


class _Perturbation:
    __slots__ = ("future", "held", "key", "reentry", "value")

    def __init__(
        self, priority: int, order: int, value: Any, future: asyncio.Future[Any], reentry: ReentryContext | None
    ) -> None:
        self.key = (-priority, order)
        self.value = value
        self.future = future
        self.reentry = reentry  # set for the resumption of a resolved semaphore
        self.held = held_runs.get()  # the slots its caller is inside (it waits on this)

    def __lt__(self, other: _Perturbation) -> bool:
        return self.key < other.key


class Run:
    """The processing side of one ``flux.start(source)``."""

    def __init__(self, flux: RunOwner, source: Any) -> None:
        self.flux = flux
        config = flux.config
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.metrics = flux._metrics
        self.limit = config.event_limit
        self.buffer_size = config.buffer_size
        self.concurrency = config.concurrency
        self.rng = random.Random(config.seed)
        self.invoke: Callable[[Any], Awaitable[Any]] = flux.agent.invoke
        if config.trace_enabled:
            from ._tracing import traced

            self.invoke = traced(self.invoke, flux.id)
        self.source = source
        self.is_async = hasattr(source, "__anext__")
        # A stage of a pipeline takes buffered outputs of the stage before it directly.
        self.upstream: Run | None = getattr(source, "_flux_run", None)

        self.feedback: deque[tuple[Any, int]] = deque()
        self.perturbations: list[_Perturbation] = []
        self.outbuf: deque[Any] = deque()
        # The worker's fast path (read, call, emit) applies to one worker on an async source
        # without an event budget; ``alert`` sends it to ``_attend`` whenever something else
        # waits: a perturbation, feedback, the end of the source, the end of the run.
        self.always_alert = not (self.is_async and config.concurrency == 1 and self.limit is None)
        self.alert = True
        self._order = itertools.count()

        self.busy = 0  # agent calls in progress (never above concurrency)
        self.pending = 0  # events out of a call but not finished (retrying, waiting for room)
        self.perturbing = 0
        self.reading = False  # a worker holds the read token
        self.source_done = False
        self.finished = False  # no more outputs will be produced
        self.failure: BaseException | None = None  # raised to the consumer after the buffer

        self.worker_waiters: list[asyncio.Future[None]] = []  # slot, read token, work, space
        self.space_wanted = False
        self.server_waiter: asyncio.Future[None] | None = None
        self.consumer_waiter: asyncio.Future[None] | None = None

        # Ordered output with several workers: results wait here for their turn.
        self._reorder: dict[int, tuple[Any, int]] | None = {} if config.concurrency > 1 and config.ordered else None
        self._next_seq = 0
        self._taken_seq = 0
        self.read_window = config.concurrency + READ_AHEAD
        self._flushing = False

        # Agents that can hand events to a human: tokens they return are parked, and
        # resolutions made elsewhere (another process, the CLI) are resumed here.
        resumable = callable(getattr(flux.agent, "resume", None))
        self.ejects = resumable or config.purgatory is not None
        self.orphans: set[asyncio.Future[Any]] = set()  # re-entries queued by the watcher
        self.unfinished_reentries: list[str] = []
        # Claims the watcher was still waiting for when it was cancelled: the store commits
        # them anyway, so the run gives back those that succeeded when it closes.
        self.claims_in_flight: dict[str, asyncio.Future[bool]] = {}
        # Set when a claim was lost to another holder: if that holder dies, its lease lapses.
        self.claim_lost = asyncio.Event()

        self._cancelled = False
        # An error from closing the source, for ``FluxStream.aclose()`` to raise.
        self.close_error_wanted = False
        self.close_error: Exception | None = None
        self.serving_now: set[asyncio.Task[Any]] = set()  # callers processing their own perturbation
        self.stopped_callers: set[asyncio.Task[Any]] = set()
        self._main_started = False
        self._closing = False
        self.workers = [
            self.loop.create_task(self._guarded(self._work), name=f"{flux.id}:worker-{index}")
            for index in range(config.concurrency)
        ]
        if resumable:
            resolutions = flux.purgatory.changes()
            self.workers.append(
                self.loop.create_task(
                    self._guarded(functools.partial(self._watch_resolutions, resolutions)),
                    name=f"{flux.id}:resolutions",
                )
            )
            self.workers.append(
                self.loop.create_task(self._guarded(self._retake_lapsed), name=f"{flux.id}:lapsed-claims")
            )
        self.main = self.loop.create_task(self._main(), name=f"{flux.id}:run")

    # ------------------------------------------------------------ main task

    async def _main(self) -> None:
        self._main_started = True
        held_runs.set((self,))  # this task's own context: what it runs holds this run's slot
        try:
            while not self.finished:
                if self.perturbations and self.busy < self.concurrency and not self._exhausted():
                    await self._serve_perturbation()
                    continue
                waiter = self.loop.create_future()
                self.server_waiter = waiter
                await waiter
        finally:
            # From here on the run closes itself; stopping it must not interrupt this.
            self._closing = True
            self.server_waiter = None
            running = [worker for worker in self.workers if not worker.done()]
            for worker in running:
                worker.cancel()
            if running:  # waiting on finished tasks would still cost a loop pass
                await asyncio.wait(running)
            await self._close_source()
            if self.unfinished_reentries or self.claims_in_flight:
                await self._release_reentries()

    async def _close_source(self) -> None:
        source = self.source
        try:
            if self.is_async:
                aclose = getattr(source, "aclose", None)
                if aclose is not None:
                    await aclose()
            else:
                close = getattr(source, "close", None)
                if close is not None:
                    close()
        except Exception as exc:
            self._source_close_failed(exc)

    def _read_failed(self, exc: Exception) -> Any:
        if self._cancelled:  # stopped mid-read: the source raised as it was being closed
            self._source_close_failed(exc)
            return _SKIP
        return self._fail(exc)

    def _source_close_failed(self, exc: Exception) -> None:
        """Report an error from closing the source: it is never dropped.

        It reaches whoever ends the stream: the consumer at the end of its ``async for``,
        or ``FluxStream.aclose()``. Where nobody will raise it (the run failed first,
        ``Flux.stop()``, a stream garbage-collected, an exception already leaving
        ``async with``), it is logged on ``agentflux.flux`` (and noted on the run's error).
        The run has ended by then, so it is not a signal: observers end at ``stopped``.
        """
        if self.failure is None and not self._cancelled:
            self.failure = exc  # the consumer reads to the end and gets it there
            return
        if self.close_error_wanted:
            self.close_error = exc
            return
        if self.failure is not None:
            self.failure.add_note(f"closing the source also failed: {exc!r}")
        _log.error("flux %s: closing its source failed", self.flux.id, exc_info=exc)

    def _wake_server(self) -> None:
        waiter = self.server_waiter
        if waiter is not None:
            self.server_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _guarded(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a task of the run; an unexpected error ends the run and reaches the consumer.

        Takes the coroutine function, not a coroutine: a task cancelled before it starts
        must not leave a coroutine that was never awaited.
        """
        try:
            await work()
        except Exception as exc:  # a user callback (feedback_transform, a field) or a store failed
            self._fail(exc)
        except asyncio.CancelledError as cancel:
            spurious = spurious_cancel(cancel)
            if spurious is None:
                raise
            self._fail(spurious)
        except BaseException as exc:  # the agent raised something that is not an Exception
            self._fail(exc)  # the run ends and the consumer's ``async for`` raises it
            if isinstance(exc, _FATAL):
                raise

    # --------------------------------------------------------------- workers

    def _exhausted(self) -> bool:
        return self.limit is not None and self.metrics.processed >= self.limit

    async def _wait_worker(self) -> None:
        waiter = self.loop.create_future()
        self.worker_waiters.append(waiter)
        await waiter

    async def _work(self) -> None:
        # The hot loop: attribute lookups are hoisted into locals on purpose.
        held_runs.set((self,))  # this task's own context: agent calls here hold a slot
        metrics = self.metrics
        latencies = metrics.latencies
        finishes = metrics.finishes
        invoke = self.invoke
        ejects = self.ejects
        reorder = self._reorder
        concurrency = self.concurrency
        outbuf = self.outbuf
        buffer_size = self.buffer_size
        # Outputs go straight into the buffer unless they must be reordered or fed back.
        direct_emit = reorder is None and not self.config.feedback_fraction
        # One worker on an async source reads it directly; otherwise reads take turns.
        next_async = self.source.__anext__ if self.is_async and concurrency == 1 else None
        upstream = self.upstream
        upstream_buf: deque[Any] | tuple[()] = upstream.outbuf if upstream is not None else ()
        # Clock reads cost about as much as a trivial agent call: time every call of a
        # slow agent, one in sixteen of a fast one.
        slow_agent = True
        checkpoint_at = _perf_counter() + _CHECKPOINT
        while True:
            if self.alert:
                taken = await self._attend(next_async, upstream, upstream_buf)
                if taken is None:
                    if self.finished:
                        return
                    continue
                value, hops = taken
            else:
                # The fast path: one worker, an async source, nothing else waiting.
                if upstream_buf:
                    value = upstream_buf.popleft()
                    if upstream.space_wanted:  # type: ignore[union-attr]
                        upstream.space_freed()  # type: ignore[union-attr]
                else:
                    try:
                        value = await next_async()  # type: ignore[misc]
                    except StopAsyncIteration:
                        self._source_ended()
                        continue
                    except Exception as exc:
                        self._read_failed(exc)
                        continue
                    # While we waited, a perturbation may have taken the slot, or the run ended.
                    if self.alert and not await self._may_process():
                        continue
                hops = 0
            if reorder is not None:
                seq = self._taken_seq
                self._taken_seq += 1
            processed = metrics.processed = metrics.processed + 1
            self.busy += 1
            timed = slow_agent or not processed & 15
            started = _perf_counter() if timed else 0.0
            try:
                result = await invoke(value)
            except Exception as exc:
                self._release_slot()
                failed = _perf_counter()
                if failed > checkpoint_at:  # an agent failing on every event must not starve the loop
                    await asyncio.sleep(0)
                    checkpoint_at = failed + _CHECKPOINT
                result = await self._recover(value, exc, started or failed)
            except asyncio.CancelledError as cancel:
                spurious = spurious_cancel(cancel)
                if spurious is None:
                    raise
                self._release_slot()
                result = await self._recover(value, spurious, started or _perf_counter())
            else:
                if timed:
                    finished = _perf_counter()
                    latency = finished - started
                    latencies.append(latency)
                    finishes.append((finished, processed))
                    histogram = metrics.histogram
                    if histogram is not None:  # an exporter wants every call counted
                        histogram.observe(latency)
                    slow_agent = latency > _SLOW_CALL or histogram is not None
                    if finished > checkpoint_at:
                        # Nothing may have suspended for a while: let the loop run once.
                        await asyncio.sleep(0)
                        checkpoint_at = _perf_counter() + _CHECKPOINT
                self.busy -= 1
                if ejects and isinstance(result, SemaphoreToken):
                    if self.alert:
                        self._slot_released()  # the save below awaits the store
                    result = await self._eject(result, value)
            if direct_emit and result is not _SKIP and len(outbuf) < buffer_size and not self.finished:
                outbuf.append(result)
                waiter = self.consumer_waiter
                if waiter is not None:
                    self.consumer_waiter = None
                    if not waiter.done():
                        waiter.set_result(None)
                if self.alert:  # something came in during the call: let it have the slot
                    self._slot_released()
                    self._check_done()
                continue
            if self.alert:
                self._slot_released()  # before any wait below: a perturbation may need the slot
            if reorder is not None:
                reorder[seq] = (result, hops)
                await self._flush_in_order()
            elif result is not _SKIP:
                await self._emit(result, hops)
            if self.alert:
                self._check_done()

    async def _attend(
        self, next_async: Any, upstream: Run | None, upstream_buf: deque[Any] | tuple[()]
    ) -> tuple[Any, int] | None:
        """Everything off the fast path: perturbations, the budget, feedback, the end of the
        source, several workers, sync sources. The next event to process, or None."""
        if self.finished:
            return None
        if self.perturbations or self._exhausted():
            await self._between_events()
            return None
        if self.feedback:
            return self.feedback.popleft()
        if self.source_done:
            self._check_done()
            if not self.finished:
                await self._wait_worker()
            return None
        self.alert = self.always_alert  # nothing waits any more: back to the fast path if it applies
        if upstream_buf:
            value = upstream_buf.popleft()
            if upstream is not None and upstream.space_wanted:
                upstream.space_freed()
        elif next_async is not None:
            try:
                value = await next_async()
            except StopAsyncIteration:
                self._source_ended()
                return None
            except Exception as exc:
                self._fail(exc)
                return None
        else:
            value = await self._read_slow()
        if value is _SKIP or self.finished:
            return None
        if (self.busy >= self.concurrency or self._exhausted()) and not await self._may_process():
            return None
        return value, 0

    async def _between_events(self) -> None:
        """Serve a perturbation, or wait (for a slot, or to wind down at a spent budget)."""
        if self._exhausted():
            self._check_done()
            if not self.finished:
                await self._wait_worker()
        elif self.busy < self.concurrency:
            await self._serve_perturbation()
        else:
            await self._wait_worker()

    async def _may_process(self) -> bool:
        """Wait for a free agent slot for an event just read; False if it must not run."""
        while self.busy >= self.concurrency and not self.finished:
            await self._wait_worker()  # the main task is serving a perturbation
        if self._exhausted():  # perturbations spent the budget while we read
            self._check_done()
            return False
        return not self.finished

    async def _read_slow(self) -> Any:
        """Read the source holding the read token (or wait for it); ``_SKIP`` if none."""
        reorder = self._reorder
        if self.reading or (reorder is not None and self._taken_seq - self._next_seq >= self.read_window):
            # Another worker is reading, or ordered results wait behind a slow one: reading
            # further ahead would let the reorder buffer grow without bound.
            await self._wait_worker()
            return _SKIP
        self.reading = True
        try:
            if self.is_async:
                return await self.source.__anext__()
            return next(self.source)
        except (StopIteration, StopAsyncIteration):
            return self._source_ended()
        except Exception as exc:
            return self._read_failed(exc)
        finally:
            self.reading = False
            if self.worker_waiters:
                _wake_all(self.worker_waiters)

    def _source_ended(self) -> Any:
        self.source_done = True
        self.alert = True
        if not self.perturbing and not self.finished:
            self.flux._set_state(FluxState.DRAINING)
        self._check_done()
        return _SKIP

    def _release_slot(self) -> None:
        self.busy -= 1
        self._slot_released()

    def _slot_released(self) -> None:
        if self.perturbations:
            self._wake_server()
        if self.worker_waiters:
            _wake_all(self.worker_waiters)

    async def _recover(self, value: Any, exc: Exception, started: float) -> Any:
        """Retry a failed call with backoff; on final failure apply ``on_error``."""
        config = self.config
        delay = config.retry_backoff
        self.pending += 1
        try:
            for _ in range(config.retries):
                await asyncio.sleep(delay)  # backoff before a retry, not a poll
                delay *= 2
                while self.busy >= self.concurrency:
                    await self._wait_worker()
                self.busy += 1
                try:
                    result = await self.invoke(value)
                except Exception as again:
                    exc = again
                except asyncio.CancelledError as cancel:
                    spurious = spurious_cancel(cancel)
                    if spurious is None:
                        raise
                    exc = spurious
                else:
                    self.metrics.record(started, _perf_counter())
                    return result
                finally:
                    self._release_slot()
        finally:
            self.pending -= 1
        self.flux._record_error(value, exc, started)
        if config.on_error == "raise":
            self._fail(exc)
        return _SKIP

    async def _flush_in_order(self) -> None:
        reorder = self._reorder
        assert reorder is not None
        if self._flushing:
            return  # the worker already flushing will reach our result too
        self._flushing = True
        try:
            while self._next_seq in reorder and not self.finished:
                result, hops = reorder.pop(self._next_seq)
                self._next_seq += 1
                if self.worker_waiters:
                    _wake_all(self.worker_waiters)
                if result is not _SKIP:
                    await self._emit(result, hops)
        finally:
            self._flushing = False

    async def _emit(self, result: Any, hops: int) -> None:
        if self.finished:
            return  # the run ended (stopped, failed): nothing more joins its output
        outbuf = self.outbuf
        if len(outbuf) >= self.buffer_size:
            policy = self.config.drop_policy
            if policy == "block":
                self.pending += 1
                try:
                    while len(outbuf) >= self.buffer_size and not self.finished:
                        self.space_wanted = True
                        await self._wait_worker()
                finally:
                    self.pending -= 1
                if self.finished:
                    return
            elif policy == "drop_oldest":
                self._dropped(outbuf.popleft(), "drop_oldest")
            else:
                self._dropped(result, "drop_newest")
                return
        outbuf.append(result)
        self._wake_consumer()
        fraction = self.config.feedback_fraction
        if (
            fraction
            and hops < self.config.max_feedback_hops
            and not self.finished
            and (fraction >= 1.0 or self.rng.random() < fraction)
        ):
            self._feed_back(result, hops + 1)

    def _feed_back(self, result: Any, hops: int) -> None:
        transform = self.config.feedback_transform
        value = transform(result) if transform is not None else result
        if len(self.feedback) >= self.buffer_size:
            self._dropped(value, "feedback_full")
            return
        self.metrics.feedback_events += 1
        self.feedback.append((value, hops))
        self.alert = True

    def _dropped(self, item: Any, reason: str) -> None:
        self.metrics.dropped += 1
        self.flux._signal("dropped", {"reason": reason, "item": item})

    # ---------------------------------------------------------- perturbations

    def perturb(self, value: Any, priority: int, reentry: ReentryContext | None = None) -> asyncio.Future[Any]:
        """Queue ``value`` (or a re-entry) ahead of stream events; the future gets its result."""
        future: asyncio.Future[Any] = self.loop.create_future()
        if self._exhausted():
            # The budget is spent: the run collapses once its last outputs are taken.
            future.set_exception(FluxEntropyError("the flux's event budget is exhausted"))
            return future
        heapq.heappush(self.perturbations, _Perturbation(priority, next(self._order), value, future, reentry))
        self.alert = True
        self._wake_server()
        return future

    def can_serve_now(self) -> bool:
        """Whether a new perturbation could run at once in its caller's task: a slot is
        free, nothing is queued ahead of it and the budget allows it."""
        return not self.finished and self.busy < self.concurrency and not self.perturbations and not self._exhausted()

    async def serve_now(self, value: Any) -> Any:
        """Process a perturbation in the caller's task (see ``can_serve_now``).

        It takes an agent slot like any other event, so the workers wait for it; running
        it here saves the two loop passes of handing it to the run and back.
        """
        self.alert = True  # a worker coming back from a read must check the slot
        task = asyncio.current_task()
        assert task is not None
        self.serving_now.add(task)
        holding = held_runs.set((*held_runs.get(), self))
        try:
            return await self._process_perturbation(value)
        except asyncio.CancelledError:
            if task in self.stopped_callers:  # we cancelled it: the flux stopped mid-call
                self.stopped_callers.discard(task)
                task.uncancel()
                raise FluxPerturbationError("the flux was stopped while processing this perturbation") from None
            raise
        finally:
            held_runs.reset(holding)
            self.serving_now.discard(task)

    def holds_slot(self) -> bool:
        """Whether the current context runs inside one of this run's agent calls."""
        return self in held_runs.get()

    async def serve_nested(self, value: Any) -> Any:
        """Process a perturbation from inside one of this run's own agent calls.

        It runs in its caller's slot: the caller waits for it, so taking another slot
        could deadlock (at concurrency 1, at once). It counts toward the budget.

        Raises:
            FluxEntropyError: the budget is spent.
        """
        if self._exhausted():
            raise FluxEntropyError("the flux's event budget is exhausted")
        return await self._process_perturbation(value, slot=False)

    async def reenter_nested(self, context: ReentryContext) -> Any:
        """Resume a resolved token from inside one of this run's agent calls, in its slot.

        Raises:
            FluxEntropyError: the budget is spent (the caller resumes it directly).
        """
        if self._exhausted():
            raise FluxEntropyError("the flux's event budget is exhausted")
        future: asyncio.Future[Any] = self.loop.create_future()
        await self._serve_reentry(context, future, slot=False)
        return await future

    async def _process_perturbation(self, value: Any, *, slot: bool = True) -> Any:
        """The processing path of a perturbation: slot, budget, state, metrics, parking.

        ``slot=False`` runs it in a slot its caller already holds (a nested call).
        """
        metrics = self.metrics
        metrics.perturbations += 1
        if slot:
            self._enter_perturbation()
        else:
            metrics.processed += 1
        started = _perf_counter()
        try:
            result = await self.invoke(value)
            metrics.record(started, _perf_counter())
            if self.ejects and isinstance(result, SemaphoreToken):
                result = await self.flux._park(result, value)
            return result
        except Exception as exc:
            self.flux._record_error(value, exc, started, dead_letter=False)
            raise
        except asyncio.CancelledError as cancel:
            spurious = spurious_cancel(cancel)
            if spurious is None:
                raise
            self.flux._record_error(value, spurious, started, dead_letter=False)
            raise spurious from cancel
        except BaseException as exc:  # not an Exception: it ends the run too
            self._fail(exc)
            raise
        finally:
            if slot:
                self._leave_perturbation()

    def _enter_perturbation(self) -> None:
        """Take an agent slot for a perturbation or a re-entry; it counts toward the budget."""
        self.metrics.processed += 1
        self.busy += 1
        self.perturbing += 1
        self.flux._set_state(FluxState.PERTURBED)

    def _leave_perturbation(self) -> None:
        self.perturbing -= 1
        self._release_slot()
        if not self.perturbing and not self.finished:
            self.flux._set_state(FluxState.DRAINING if self.source_done else FluxState.FLOWING)
        self._check_done()

    async def _serve_perturbation(self) -> None:
        item = heapq.heappop(self.perturbations)
        future = item.future
        if item.reentry is None and future.done():  # the caller stopped waiting
            return
        # What it runs is inside its caller's slots too: the caller waits on it.
        holding = held_runs.set((*item.held, self)) if item.held else None
        try:
            if item.reentry is not None:
                await self._serve_reentry(item.reentry, future)
                return
            result = await self._process_perturbation(item.value)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
        except asyncio.CancelledError:
            if not future.done():
                future.set_exception(FluxPerturbationError("the flux was stopped while processing this perturbation"))
            raise
        except BaseException as exc:  # the run has failed on it: the caller gets it too
            if not future.done():
                future.set_exception(exc)
            if isinstance(exc, _FATAL):
                raise
        else:
            if not future.done():
                future.set_result(result)
        finally:
            if holding is not None:
                held_runs.reset(holding)
        # Let the caller run before the next burst of stream events.
        await asyncio.sleep(0)

    # ------------------------------------------------------------- semaphores

    async def _eject(self, token: SemaphoreToken, event: Any) -> Any:
        """Park a token an agent returned for a stream event; no output for that event."""
        self.pending += 1
        started = _perf_counter()
        try:
            await self.flux._park(token, event)
        except Exception as exc:  # the store failed: the event must not vanish
            self.flux._record_error(event, exc, started)
            if self.config.on_error == "raise":
                self._fail(exc)
        finally:
            self.pending -= 1
        return _SKIP

    async def _serve_reentry(self, context: ReentryContext, future: asyncio.Future[Any], *, slot: bool = True) -> None:
        """Resume a resolved token; the result joins the stream and goes to the resolver.

        A re-entry runs even if its resolver stopped waiting: the resolution is claimed,
        so nobody else will resume it. ``slot=False``: in a slot its resolver holds.
        """
        if slot:
            self._enter_perturbation()
        else:
            self.metrics.processed += 1
        started = _perf_counter()
        resumed = False

        def ran() -> None:
            nonlocal resumed
            resumed = True

        try:
            result = await self.flux._resume(context, ran)
        except Exception as exc:
            self.flux._record_error(context.original_event, exc, started)
            if not future.done():
                future.set_exception(exc)
        except asyncio.CancelledError:
            # Stopped before ``resume`` returned, with nobody left to resume it: give the
            # claim back. Once it returned, its result (a new token being saved) stands.
            if not resumed and (not slot or self._nobody_resumes(future)):
                self.unfinished_reentries.append(context.token_id)
            if not slot:
                future.cancel()  # its resolver is this very task
            elif not future.done():
                future.set_exception(FluxPerturbationError("the flux was stopped while resuming this token"))
            raise
        except BaseException as exc:  # not an Exception: the run ends on it
            if not resumed and (not slot or self._nobody_resumes(future)):
                self.unfinished_reentries.append(context.token_id)
            self._fail(exc)
            if not future.done():
                future.set_exception(exc)
            if isinstance(exc, _FATAL):
                raise
        else:
            self.metrics.record(started, _perf_counter())
            if not isinstance(result, SemaphoreToken):
                self._emit_now(result)
            if not future.done():
                future.set_result(result)
        finally:
            if slot:
                self._leave_perturbation()
        if slot:
            await asyncio.sleep(0)  # let the resolver run first

    def _emit_now(self, result: Any) -> None:
        """Emit without waiting: a resolver never waits on the consumer.

        Under ``block`` the buffer may briefly hold one item per concurrent resumption
        beyond ``buffer_size``; the drop policies apply as usual.
        """
        outbuf = self.outbuf
        if len(outbuf) >= self.buffer_size:
            policy = self.config.drop_policy
            if policy == "drop_newest":
                self._dropped(result, "drop_newest")
                return
            if policy == "drop_oldest":
                self._dropped(outbuf.popleft(), "drop_oldest")
        outbuf.append(result)
        self._wake_consumer()

    async def _watch_resolutions(self, resolutions: Any) -> None:
        """Resume this flux's tokens resolved elsewhere, each exactly once (claimed first).

        A store call that fails (another process holding the write lock past the busy
        timeout, say) emits an ``error`` signal and is retried with backoff: the watcher
        keeps running until the run ends.
        """
        flux_id = self.flux.id
        try:
            await self._take_unclaimed(lapsed=True)
            async for change in resolutions:
                token = change.token
                if (
                    change.kind == "resolved"
                    and token.flux_id == flux_id
                    and await self._retrying(token.id, functools.partial(self._claim, token.id))
                ):
                    self._reenter(token)
        finally:
            resolutions.close()

    async def _take_unclaimed(self, *, lapsed: bool) -> None:
        """Claim and queue this flux's resolutions nobody resumes (``lapsed``: with those
        whose holder stopped renewing its claim), except claims this process holds."""
        purgatory = self.flux.purgatory
        scan = functools.partial(purgatory.resolved_unclaimed, self.flux.id, lapsed=lapsed)
        for token in await self._retrying(None, scan):
            if await self._retrying(token.id, functools.partial(self._claim, token.id)):
                self._reenter(token)

    async def _retake_lapsed(self) -> None:
        """Resume resolutions whose claim another process took and never completed.

        Such a claim is a lease its holder renews while resuming: this waits until the
        earliest lease would lapse (a deadline, not a poll), then takes those that did.
        With no lease held elsewhere, it waits until a claim is lost to another holder.
        """
        purgatory = self.flux.purgatory
        expiry_of = functools.partial(purgatory.next_claim_expiry, self.flux.id)
        while True:
            expiry = await self._retrying(None, expiry_of)
            if expiry is None:
                await self.claim_lost.wait()
                self.claim_lost.clear()
                continue
            await asyncio.sleep(max(expiry - time.time(), 0.0) + LAPSE_MARGIN)
            await self._take_unclaimed(lapsed=True)

    async def _retrying(self, token_id: str | None, call: Callable[[], Awaitable[R]]) -> R:
        """``call()``, retried with backoff while it fails; each failure is signalled."""
        delay = RETRY_FIRST
        while True:
            try:
                return await call()
            except Exception as exc:
                self.flux._signal("error", {"token_id": token_id, "error": exc, "retry_in": delay})
                await asyncio.sleep(delay)  # backoff before a retry, not a poll
                delay = min(delay * 2, RETRY_MAX)

    async def _claim(self, token_id: str) -> bool:
        """Claim a resolution for resuming here; a claim still in flight when the run stops
        is given back by the run once the store has answered. One this process holds
        already is being resumed here: it is not claimed again."""
        if self.flux.purgatory.holds(token_id):
            return False
        claiming = asyncio.ensure_future(self.flux.purgatory.claim_resume(token_id))
        self.claims_in_flight[token_id] = claiming
        try:
            claimed = await asyncio.shield(claiming)
        except asyncio.CancelledError:
            raise  # left in claims_in_flight: the run's closing sees to it
        except BaseException:
            del self.claims_in_flight[token_id]
            raise
        del self.claims_in_flight[token_id]
        if not claimed:
            self.claim_lost.set()
        return claimed

    def _reenter(self, token: SemaphoreToken) -> None:
        """Queue the resumption of a token this run claimed; nobody awaits its future.

        A run that has ended (or spent its budget) cannot resume it: the claim is given
        back when the run closes.
        """
        if self.finished or self._exhausted():
            self.unfinished_reentries.append(token.id)
            return
        context = ReentryContext(token.id, token.frozen_state, token.resolution, token.original_event)
        future = self.perturb(None, REENTRY_PRIORITY, context)
        # A failed resumption is counted and dead-lettered by the run; mark it retrieved.
        future.add_done_callback(_retrieve)
        future.add_done_callback(self.orphans.discard)
        self.orphans.add(future)

    async def _release_reentries(self) -> None:
        """Give back claims of resumptions this run could not perform, for the next start."""
        purgatory = self.flux.purgatory
        in_flight, self.claims_in_flight = self.claims_in_flight, {}
        for token_id, claiming in in_flight.items():
            with contextlib.suppress(Exception):  # a failed claim holds nothing
                if await claiming:
                    self.unfinished_reentries.append(token_id)
        ids, self.unfinished_reentries = self.unfinished_reentries, []
        for token_id in ids:
            await purgatory.release_claim(token_id)

    def _nobody_resumes(self, future: asyncio.Future[Any]) -> bool:
        """Whether a re-entry that did not run is nobody else's to resume: the watcher's
        own, or one whose resolver stopped waiting (it would have resumed it directly)."""
        return future in self.orphans or future.cancelled()

    # ---------------------------------------------------------------- endings

    def _check_done(self) -> None:
        if self.finished:
            return
        if self.perturbations and self._exhausted():
            # Nothing queued can run any more: fail it now, not when the consumer catches up.
            self._fail_perturbations(FluxEntropyError("the flux's event budget is exhausted"))
        if self.busy or self.pending or self._reorder:
            return
        if self._exhausted():
            self._end(FluxState.COLLAPSED, FluxEntropyError("the flux's event budget is exhausted"))
        elif self.source_done and not (self.feedback or self.perturbations):
            self._end(FluxState.STOPPED, None)

    def _fail(self, exc: BaseException) -> Any:
        if self.failure is None:
            self.failure = exc
        error = FluxPerturbationError(f"the flux stopped on an error before this perturbation ran: {exc!r}")
        error.__cause__ = exc
        self._end(FluxState.STOPPED, error)
        return _SKIP

    def _end(self, state: FluxState, pending_error: BaseException | None) -> None:
        """Stop producing: fail waiting perturbations, release every waiter, end the stream."""
        if self.finished:
            return
        self.finished = True
        self.alert = True
        self._fail_perturbations(pending_error or FluxPerturbationError("the flux ended before this perturbation ran"))
        _wake_all(self.worker_waiters)
        self._wake_server()
        self._wake_consumer()
        self.flux._run_ended(self, state)

    @property
    def in_flight(self) -> int:
        """Events taken for processing and not finished yet."""
        return self.busy + self.pending + len(self._reorder or ())

    def space_freed(self) -> None:
        """The consumer took an output from a full buffer: let blocked workers go on."""
        self.space_wanted = False
        _wake_all(self.worker_waiters)

    def _fail_perturbations(self, error: BaseException) -> None:
        pending, self.perturbations = self.perturbations, []
        for item in pending:
            if item.reentry is not None and self._nobody_resumes(item.future):
                # Claimed by this run but never resumed: give the claim back on the way out.
                self.unfinished_reentries.append(item.reentry.token_id)
            if not item.future.done():
                item.future.set_exception(error)

    def _wake_consumer(self) -> None:
        waiter = self.consumer_waiter
        if waiter is not None:
            self.consumer_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def abort(self, reason: str = "the flux was stopped") -> None:
        """End the run now; its tasks finish (and close the source) shortly after."""
        self._end(FluxState.STOPPED, FluxPerturbationError(f"{reason} before this perturbation ran"))
        if not self._cancelled:
            self._cancelled = True
            for worker in self.workers:
                worker.cancel()
            current = asyncio.current_task()
            for caller in self.serving_now:
                if caller is not current:
                    self.stopped_callers.add(caller)
                    caller.cancel()
            # A main task that has not started yet must run, not be cancelled: its
            # ``finally`` is what closes the source. Once started, it is cancelled so that
            # a perturbation it is serving stops too.
            if self._main_started and not self._closing and asyncio.current_task() is not self.main:
                self.main.cancel()

    async def wait_closed(self) -> None:
        """Wait until every task of the run has finished and the source is closed."""
        main = self.main
        if main.done():
            return  # the usual case at the end of a stream: no loop pass spent here
        if asyncio.current_task() in (main, *self.workers):
            return  # called from inside the agent: the run closes once the call returns
        await asyncio.wait((main,))

    async def stop(self) -> None:
        """End the run, cancel its tasks and wait for them (closing the source)."""
        self.abort()
        await self.wait_closed()
