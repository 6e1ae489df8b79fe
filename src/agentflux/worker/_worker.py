"""A worker: one agent run as a flux over a Redis Streams consumer group, writing to a sink
stream, parking tokens in a shared purgatory. Many workers on many machines share the work.

Outcomes are made durable before their entry is acknowledged:

- an output is written to the sink and its entry acknowledged in one MULTI/EXEC (same
  server) or right after;
- a token is saved in the purgatory, then its entry acknowledged;
- an entry the agent fails on stays pending: it is delivered again (claimed after the
  source's ``claim_idle``) and dead-lettered after ``max_deliveries``.

A resumed token's output is written to the sink inside ``resume``, before the purgatory
records the resumption as done: a worker killed in between leaves a lapsing claim, and a
live worker resumes the token again. The output is written with a per-token guard (SET NX
and XADD in one Lua script), so that second resumption writes nothing: one output per token.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from dataclasses import dataclass
from typing import Any

from .._core._agent import Agent, agent
from .._core._errors import SemaphoreError, SemaphoreNotFound, SemaphoreStoreError
from ..flux._config import FluxConfig
from ..flux._flux import Flux, FluxAgent
from ..semaphores._purgatory import Purgatory
from ..semaphores._token import SemaphoreToken, resuming_token_id
from ..sources._redis import RedisStreamSink, RedisStreamSource, StreamEntry

__all__ = ["StreamWorker", "WorkerStats", "load_agent"]

_log = logging.getLogger("agentflux.worker")
_PARKED = object()  # the outcome of an entry whose token was saved (nothing to write)
_WRITE_BATCH = 256
_RETRY_FIRST, _RETRY_MAX = 0.05, 2.0  # seconds between attempts while the store is unreachable


def load_agent(spec: str) -> Any:
    """The agent named ``module:attr``: an object with ``invoke``, a class (instantiated with
    no arguments), a factory function returning such an object, or an async function.

    Raises:
        ValueError: not ``module:attr``, or the attribute is not an agent.
        ImportError: the module cannot be imported.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--agent must be module:attr (e.g. myapp.agents:triage), got {spec!r}")
    module = importlib.import_module(module_name)
    try:
        target: Any = module
        for part in attr.split("."):
            target = getattr(target, part)
    except AttributeError:
        raise ValueError(f"{module_name} has no attribute {attr!r}") from None
    if inspect.isclass(target):
        target = target()
    elif inspect.iscoroutinefunction(target):
        target = agent(target)
    elif callable(target) and not callable(getattr(target, "invoke", None)):
        target = target()
    if not callable(getattr(target, "invoke", None)):
        raise ValueError(f"{spec} is not an agent: it needs an async invoke(event) method")
    return target


class _StreamAgent:
    """Runs the user's agent on an entry's fields; parks a token durably before the ack."""

    def __init__(self, inner: Agent[Any, Any], worker: StreamWorker) -> None:
        self.inner = inner
        self.worker = worker
        self.name = getattr(inner, "name", type(inner).__name__)

    async def invoke(self, entry: StreamEntry) -> Any:
        worker = self.worker
        try:
            result = await self.inner.invoke(dict(entry.fields))
        except Exception as exc:
            worker.source.failed(entry.id, exc)  # stays pending: delivered again, dead-lettered at last
            raise
        if isinstance(result, SemaphoreToken):
            await self._park(result, entry)
            await worker.source.ack(entry.id)
            worker.stats.parked += 1
            return _PARKED
        return (entry.id, result)

    async def _park(self, token: SemaphoreToken, entry: StreamEntry) -> None:
        """Save the token (durable before the ack). While the store is unreachable this waits
        and retries: an outage holds the stream back instead of dead-lettering its entries."""
        flux = self.worker.flux
        delay, retried = _RETRY_FIRST, False
        while True:
            try:
                await flux._park(token, entry.event())
                return
            except SemaphoreError as exc:
                if not isinstance(exc, SemaphoreStoreError):
                    if retried and await self._saved(token.id):
                        return  # the earlier attempt committed; only its reply was lost
                    raise
                retried = True
                _log.warning("parking a token for entry %s failed (%s); retrying in %.2f s", entry.id, exc, delay)
                await asyncio.sleep(delay)  # backoff before a retry, not a poll
                delay = min(delay * 2, _RETRY_MAX)


    async def _saved(self, token_id: str) -> bool:
        try:
            await self.worker.purgatory.get(token_id)
        except SemaphoreNotFound:
            return False
        return True


class _ResumableStreamAgent(_StreamAgent):
    async def resume(self, frozen_state: bytes, human_input: Any) -> Any:
        worker = self.worker
        result = await self.inner.resume(frozen_state, human_input)  # type: ignore[attr-defined]
        if isinstance(result, SemaphoreToken):
            return result  # asks again: the flux parks it
        token_id = resuming_token_id.get()
        assert token_id is not None  # resume is only called by the flux, for a token
        token = await worker.purgatory.get(token_id)
        source = token.original_event if isinstance(token.original_event, dict) else {}
        source_id = str(source.get("id", token.id))
        # Written before resume returns, so before the resumption counts as done; once per
        # token, so a resumption retaken after its worker died does not write it again.
        if await worker.sink.write_once(f"token:{token_id}", source_id, result):
            worker.stats.resumed += 1
        return _PARKED


@dataclass
class WorkerStats:
    """What one worker did."""

    written: int = 0
    parked: int = 0
    resumed: int = 0
    failed: int = 0


class StreamWorker:
    """Runs ``agent`` over ``source`` into ``sink``, tokens parked in ``purgatory``.

    ``agent_id`` names the flux: every worker of one deployment uses the same, so that any
    of them resumes a token another parked.
    """

    def __init__(
        self,
        agent_: Agent[Any, Any],
        source: RedisStreamSource,
        sink: RedisStreamSink,
        purgatory: Purgatory,
        *,
        agent_id: str,
        concurrency: int = 8,
        buffer_size: int = 256,
    ) -> None:
        self.source, self.sink, self.purgatory = source, sink, purgatory
        self.stats = WorkerStats()
        kind = _ResumableStreamAgent if callable(getattr(agent_, "resume", None)) else _StreamAgent
        self.agent = kind(agent_, self)
        self.flux: FluxAgent[Any, Any] = Flux.lift(
            self.agent,
            FluxConfig(
                agent_id=agent_id,
                purgatory=purgatory,
                concurrency=concurrency,
                buffer_size=buffer_size,
                ordered=False,
                on_error="skip",
            ),
        )

    def drain(self) -> None:
        """Stop reading; ``run`` returns once what was read is written and acknowledged."""
        self.source.stop()

    async def run(self) -> WorkerStats:
        """Process until the source ends (``drain``) or the task is cancelled."""
        flux = self.flux
        errors_before = flux.metrics().errors
        async with flux.start(self.source) as outputs:
            async for first in outputs:
                batch = [first, *outputs.ready(_WRITE_BATCH - 1)]
                writes = [item for item in batch if item is not _PARKED and not isinstance(item, SemaphoreToken)]
                if writes:
                    await self.sink.write(writes, ack=self.source)
                    self.stats.written += len(writes)
        self.stats.failed = flux.metrics().errors - errors_before
        return self.stats


async def serve_until_signalled(worker: StreamWorker, stop: asyncio.Event) -> WorkerStats:
    """Run ``worker`` until ``stop`` is set, then drain it."""
    running = asyncio.ensure_future(worker.run())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((running, stopping), return_when=asyncio.FIRST_COMPLETED)
        if not running.done():
            _log.info("draining: no new entries are read; finishing what was read")
            worker.drain()
        return await running
    finally:
        stopping.cancel()
        if not running.done():  # cancelled from outside: stop the worker and wait for it
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
