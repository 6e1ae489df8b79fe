"""Redis Streams as a source and a sink (redis-py's asyncio client, the ``redis`` extra).

``from_redis_stream`` reads a stream as one consumer of a consumer group. Delivery is
at-least-once: an entry is acknowledged (``ack``) only once its outcome is durable, so an
entry read by a consumer that dies stays pending and is claimed by a live consumer after
``claim_idle`` seconds (XAUTOCLAIM). After a restart a consumer first reads its own pending
entries again. An entry delivered more than ``max_deliveries`` times goes to a dead-letter
stream with the last error seen, instead of looping forever.

Blocking reads run on a connection of their own: a read cut short (the flux closing, a
drain) leaves that connection mid-reply, so it is dropped rather than returned to a pool.
``to_redis_stream`` writes each output with the id of the input entry it came from, so a
consumer downstream can deduplicate (effectively-once outputs).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .._core._errors import AgentfluxError

__all__ = ["RedisStreamSink", "RedisStreamSource", "StreamEntry", "from_redis_stream", "to_redis_stream"]

_ERRORS_KEPT = 10_000  # last errors remembered per source (for dead-lettered entries)
_RETRY_FIRST, _RETRY_MAX = 0.05, 2.0  # seconds between attempts while Redis is unreachable
_log = logging.getLogger("agentflux.sources")
T = TypeVar("T")


async def _retrying(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, retried with backoff while Redis cannot be reached (a restart, a failover):
    the stream waits for the server instead of failing. Every failure is logged."""
    import redis.exceptions

    delay = _RETRY_FIRST
    while True:
        try:
            return await call()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            _log.warning("redis %s failed (%s); retrying in %.2f s", what, exc, delay)
            await asyncio.sleep(delay)  # backoff before a retry, not a poll
            delay = min(delay * 2, _RETRY_MAX)


class RedisStreamError(AgentfluxError):
    """Redis refused or failed an operation of a stream source or sink."""


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One entry of a stream: its id, its fields (decoded as UTF-8), and how often it was delivered."""

    id: str
    fields: Mapping[str, str]
    deliveries: int = 1
    stream: str = ""

    def event(self) -> dict[str, Any]:
        """The entry as JSON data (kept with a parked token as its original event)."""
        return {"stream": self.stream, "id": self.id, "fields": dict(self.fields)}


def _client(url: str, **options: Any) -> Any:
    try:
        import redis.asyncio as redis
    except ImportError as exc:
        raise ImportError("Redis Streams need redis-py: pip install 'agentflux[redis]'") from exc
    return redis.Redis.from_url(url, decode_responses=True, **options)


def _entries(stream: str, raw: Sequence[Any]) -> list[StreamEntry]:
    # An entry deleted (XDEL, trimmed) while pending comes back without fields: nothing to deliver.
    return [StreamEntry(entry_id, dict(fields), 1, stream) for entry_id, fields in raw if fields is not None]


@dataclass
class RedisStreamSource:
    """An async iterable of ``StreamEntry`` for one consumer of a group (see ``from_redis_stream``)."""

    url: str
    stream: str
    group: str
    consumer: str
    batch: int = 16
    block: float = 5.0
    claim_idle: float = 30.0
    max_deliveries: int = 5
    dead_letter: str = ""
    start: str = "0"
    read: int = 0  # entries handed out
    acked: int = 0
    dead_lettered: int = 0
    claimed: int = 0
    _client: Any = field(default=None, repr=False)
    _reader: Any = field(default=None, repr=False)
    _errors: OrderedDict[str, str] = field(default_factory=OrderedDict, repr=False)
    # Entries handed out and not settled yet: kept from idling (so nobody claims them) while
    # they are processed, however long the agent takes.
    _in_flight: dict[str, None] = field(default_factory=dict, repr=False)
    _keeper: asyncio.Task[None] | None = field(default=None, repr=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _next_claim: float = 0.0

    def __post_init__(self) -> None:
        for name in ("batch", "max_deliveries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"from_redis_stream({name}) must be an int >= 1, got {value!r}")
        for name in ("block", "claim_idle"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"from_redis_stream({name}) must be a number of seconds > 0, got {value!r}")
        if not all(isinstance(v, str) and v for v in (self.stream, self.group, self.consumer)):
            raise ValueError("from_redis_stream needs non-empty stream, group and consumer names")
        self.dead_letter = self.dead_letter or f"{self.stream}:dead"
        self._client = _client(self.url)

    # ------------------------------------------------------------------ reading

    async def _ensure_group(self) -> None:
        import redis.exceptions

        try:
            await _retrying(
                "XGROUP CREATE",
                lambda: self._client.xgroup_create(self.stream, self.group, id=self.start, mkstream=True),
            )
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise RedisStreamError(
                    f"redis stream {self.stream}: creating group {self.group} failed: {exc}"
                ) from None

    async def _counted(self, entries: list[StreamEntry]) -> list[StreamEntry]:
        """``entries`` (pending with this consumer) with how often each was delivered."""
        if not entries:
            return entries
        ids = [e.id for e in entries]
        low, high = min(ids, key=_id_key), max(ids, key=_id_key)
        rows = await _retrying(
            "XPENDING",
            lambda: self._client.xpending_range(
                self.stream, self.group, min=low, max=high, count=len(ids) + 100, consumername=self.consumer
            ),
        )
        counts = {row["message_id"]: int(row["times_delivered"]) for row in rows}
        return [StreamEntry(e.id, e.fields, counts.get(e.id, e.deliveries), self.stream) for e in entries]

    async def _read(self, start: str, block: float | None) -> list[StreamEntry]:
        """One XREADGROUP on the reading connection (``start`` "0": this consumer's pending)."""
        import redis.exceptions

        try:
            while True:
                if self._reader is None:
                    self._reader = _client(
                        self.url, single_connection_client=True, client_name=f"agentflux-reader:{self.consumer}"
                    )
                try:
                    reply = await self._reader.xreadgroup(
                        self.group,
                        self.consumer,
                        {self.stream: start},
                        count=self.batch,
                        block=None if block is None else max(1, int(block * 1000)),
                    )
                    break
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                    await self._close_reader()  # a new connection for the next attempt
                    _log.warning("redis XREADGROUP on %s failed (%s); retrying", self.stream, exc)
                    await asyncio.sleep(_RETRY_FIRST * 4)  # backoff before a retry, not a poll
                except redis.exceptions.ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    # The server lost the group (restarted without persistence, or the stream
                    # was deleted): make it again and read on.
                    _log.warning("redis stream %s lost its group %s; creating it again", self.stream, self.group)
                    await self._ensure_group()
        except asyncio.CancelledError:
            # Cut short mid-reply: this connection must never be used again.
            reader, self._reader = self._reader, None
            with contextlib.suppress(Exception):
                await asyncio.shield(reader.aclose())
            raise
        raw = reply[0][1] if reply else []
        entries = _entries(self.stream, raw)
        # Pending entries were delivered before: know how often.
        return entries if start == ">" else await self._counted(entries)

    async def _claim(self) -> list[StreamEntry]:
        """Entries pending longer than ``claim_idle`` with any consumer (a dead one's) become ours."""
        reply = await _retrying("XAUTOCLAIM", lambda: self._client.xautoclaim(
            self.stream, self.group, self.consumer, min_idle_time=int(self.claim_idle * 1000), start_id="0-0",
            count=self.batch,
        ))  # fmt: skip
        raw = reply[1] if len(reply) > 1 else []
        # Our own entries still in process are not taken again (the keep-alive missed them).
        entries = [e for e in _entries(self.stream, raw) if e.id not in self._in_flight]
        self.claimed += len(entries)
        return await self._counted(entries)

    async def _deliverable(self, entries: list[StreamEntry]) -> list[StreamEntry]:
        """Move entries delivered too often to the dead-letter stream; return the others."""
        keep = []
        for entry in entries:
            if entry.deliveries > self.max_deliveries:
                await self.dead_letter_entry(entry, self._errors.pop(entry.id, None))
            else:
                keep.append(entry)
        return keep

    async def __aiter__(self) -> AsyncIterator[StreamEntry]:
        """Own pending entries first, then new ones, with a dead consumer's claimed as they idle."""
        await self._ensure_group()
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.get_running_loop().create_task(
                self._keep_alive(), name=f"redis-keepalive:{self.stream}"
            )
        try:
            cursor = "0"
            while not self._stopping.is_set():  # what this consumer had read before a restart
                pending = await self._read(cursor, None)
                if not pending:
                    break
                cursor = pending[-1].id
                for entry in await self._deliverable(pending):
                    yield self._hand(entry)
            self._next_claim = time.monotonic()
            while not self._stopping.is_set():
                if time.monotonic() >= self._next_claim:
                    claimed = await self._claim()
                    # Claim again at once while there is a backlog of idle entries, else later.
                    self._next_claim = time.monotonic() + (0 if len(claimed) >= self.batch else self.claim_idle / 2)
                    for entry in await self._deliverable(claimed):
                        yield self._hand(entry)
                    if claimed:
                        continue
                wait = max(0.001, min(self.block, self._next_claim - time.monotonic()))
                entries = await self._until_stopped(self._read(">", wait))
                if entries is None:
                    return
                for entry in entries:
                    yield self._hand(entry)
        finally:
            await self._stop_keeper()
            await self._close_reader()

    def _hand(self, entry: StreamEntry) -> StreamEntry:
        self.read += 1
        self._in_flight[entry.id] = None
        return entry

    def settled(self, entry_ids: Sequence[str]) -> None:
        """These entries' outcomes are durable and acknowledged (by ``ack`` or a sink's write)."""
        for entry_id in entry_ids:
            self._in_flight.pop(entry_id, None)
            self._errors.pop(entry_id, None)

    async def _keep_alive(self) -> None:
        """Every third of ``claim_idle``, reset the idle time of the entries being processed
        (XCLAIM ... JUSTID to this consumer, which does not count as a delivery)."""
        while True:
            await asyncio.sleep(self.claim_idle / 3)  # a lease's heartbeat, not a poll
            ids = list(self._in_flight)
            for start in range(0, len(ids), 500):
                try:
                    await _retrying("XCLAIM (keep-alive)", functools.partial(self._keep, ids[start : start + 500]))
                except Exception as exc:  # at worst another consumer delivers an entry twice
                    _log.warning("redis stream %s: keeping entries claimed failed: %s", self.stream, exc)

    async def _keep(self, ids: list[str]) -> Any:
        return await self._client.xclaim(
            self.stream, self.group, self.consumer, min_idle_time=0, message_ids=ids, justid=True
        )

    async def _stop_keeper(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _until_stopped(self, read: Any) -> list[StreamEntry] | None:
        """``read`` unless ``stop()`` comes first (then None, and the read is cancelled)."""
        reading = asyncio.ensure_future(read)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait((reading, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not reading.done():
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
        if reading in done and not reading.cancelled():
            entries: list[StreamEntry] = reading.result()
            return entries  # read before the stop: still handed out, then acknowledged as usual
        return None

    def stop(self) -> None:
        """Stop reading (a drain): the iteration ends after the entries already read."""
        self._stopping.set()

    # --------------------------------------------------------------- outcomes

    def failed(self, entry_id: str, error: BaseException | str) -> None:
        """Remember why processing ``entry_id`` failed (shown if it is dead-lettered); it is no
        longer kept claimed, so it idles and is delivered again."""
        self._in_flight.pop(entry_id, None)
        self._errors[entry_id] = str(error) if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self._errors.move_to_end(entry_id)
        while len(self._errors) > _ERRORS_KEPT:
            self._errors.popitem(last=False)

    async def ack(self, *entry_ids: str) -> None:
        """Acknowledge entries whose outcome is durable."""
        if entry_ids:
            await _retrying("XACK", lambda: self._client.xack(self.stream, self.group, *entry_ids))
            self.acked += len(entry_ids)
            self.settled(entry_ids)

    async def dead_letter_entry(self, entry: StreamEntry, error: str | None) -> None:
        """Write ``entry`` to the dead-letter stream with why, and acknowledge it, atomically."""
        fields = {
            "source_stream": self.stream,
            "source_id": entry.id,
            "fields": json.dumps(dict(entry.fields)),
            "deliveries": str(entry.deliveries),
            "error": error or f"delivered {entry.deliveries} times without an outcome",
        }

        async def move() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xadd(self.dead_letter, fields)
                pipe.xack(self.stream, self.group, entry.id)
                await pipe.execute()

        await _retrying("dead-lettering", move)
        self.dead_lettered += 1
        self.settled([entry.id])

    async def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(Exception):
                await reader.aclose()

    async def aclose(self) -> None:
        """Close both connections (idempotent)."""
        self.stop()
        await self._stop_keeper()
        await self._close_reader()
        with contextlib.suppress(Exception):
            await self._client.aclose()


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def from_redis_stream(
    url: str,
    stream: str,
    group: str,
    consumer: str,
    *,
    batch: int = 16,
    block: float = 5.0,
    claim_idle: float = 30.0,
    max_deliveries: int = 5,
    dead_letter: str | None = None,
    start: str = "0",
) -> RedisStreamSource:
    """Read ``stream`` as ``consumer`` of ``group`` (created from ``start`` if missing).

    Reads at most ``batch`` entries at a time (give it at most the flux's buffer), blocking
    up to ``block`` seconds per read; claims entries idle over ``claim_idle`` seconds with
    other consumers; dead-letters an entry delivered more than ``max_deliveries`` times to
    ``dead_letter`` (default ``<stream>:dead``).

    Raises:
        ValueError: a bad option.
        ImportError: redis-py is not installed.
    """
    return RedisStreamSource(
        url, stream, group, consumer, batch, block, claim_idle, max_deliveries, dead_letter or "", start
    )


@dataclass
class RedisStreamSink:
    """Writes outputs to a stream, each with the id of the entry it came from (see ``to_redis_stream``)."""

    url: str
    stream: str
    maxlen: int | None = None
    written: int = 0
    _client: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.stream, str) or not self.stream:
            raise ValueError("to_redis_stream needs a non-empty stream name")
        self._client = _client(self.url)

    @staticmethod
    def fields(source_id: str, value: Any) -> dict[str, str]:
        """The entry written for ``value``: ``source_id`` and ``data`` (JSON)."""
        return {"source_id": source_id, "data": json.dumps(value, default=str)}

    async def write(self, outputs: Sequence[tuple[str, Any]], *, ack: RedisStreamSource | None = None) -> None:
        """Write ``(source_id, value)`` outputs; with ``ack``, also acknowledge their source
        entries in the same MULTI/EXEC when both live on the same server (else right after)."""
        if not outputs:
            return
        same_server = ack is not None and ack.url == self.url

        async def write() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                for source_id, value in outputs:
                    pipe.xadd(self.stream, self.fields(source_id, value), maxlen=self.maxlen, approximate=True)
                if same_server:
                    assert ack is not None
                    pipe.xack(ack.stream, ack.group, *(source_id for source_id, _ in outputs))
                await pipe.execute()

        # A retry after a connection lost during EXEC may write twice: the same source ids,
        # which downstream deduplicates.
        await _retrying("XADD", write)
        self.written += len(outputs)
        if ack is not None:
            if same_server:
                ack.acked += len(outputs)
                ack.settled([source_id for source_id, _ in outputs])
            else:
                await ack.ack(*(source_id for source_id, _ in outputs))

    async def write_once(self, key: str, source_id: str, value: Any, *, keep: float = 7 * 86400) -> bool:
        """Write one output unless one was written under ``key`` before (kept ``keep``
        seconds), atomically: a step that may run twice (a resumption retaken after its
        worker died) writes its output once. True if this call wrote it."""
        fields = self.fields(source_id, value)
        written = await _retrying("XADD (once)", lambda: self._client.eval(
            _WRITE_ONCE, 2, self.stream, f"{self.stream}:written:{key}", fields["source_id"], fields["data"],
            str(max(1, int(keep))),
        ))  # fmt: skip
        if written:
            self.written += 1
        return bool(written)

    async def aclose(self) -> None:
        """Close the connection (idempotent)."""
        with contextlib.suppress(Exception):
            await self._client.aclose()


# SET NX and XADD in one script: Redis runs it atomically, so the output exists once.
_WRITE_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then
    return redis.call('XADD', KEYS[1], '*', 'source_id', ARGV[1], 'data', ARGV[2])
end
return false
"""


def to_redis_stream(url: str, stream: str, *, maxlen: int | None = None) -> RedisStreamSink:
    """A sink writing to ``stream`` (trimmed to about ``maxlen`` entries if given).

    Raises:
        ValueError: an empty stream name.
        ImportError: redis-py is not installed.
    """
    return RedisStreamSink(url, stream, maxlen)
