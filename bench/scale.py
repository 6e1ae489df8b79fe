"""Scale-out: the Redis Streams source and sink, workers side by side, the Postgres purgatory.

Workloads (real servers: Redis at 127.0.0.1:6379, PostgreSQL at 127.0.0.1:5432/test):
- per-event cost of an identity agent through ``from_redis_stream`` -> flux ->
  ``to_redis_stream`` (a StreamWorker), against a bare redis-py loop doing the same Redis
  work with the same batch size: XREADGROUP of a batch, one MULTI with an XADD per entry
  and the XACK, until the stream is drained;
- events/s of 1, 2 and 4 ``agentflux worker`` processes over one stream, for an agent that
  waits 10 ms per call (concurrency 32 per worker);
- a Postgres park+resolve cycle through the public API against a bare psycopg cycle
  (INSERT, then a conditional UPDATE, each its own commit), and 64 cycles at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentflux import open_purgatory
from agentflux.sources._redis import RedisStreamSink, from_redis_stream
from agentflux.worker import StreamWorker

from .purgatory import STATE, _token

REDIS = os.environ.get("AGENTFLUX_TEST_REDIS", "redis://127.0.0.1:6379/0")
POSTGRES = os.environ.get("AGENTFLUX_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parent.parent
BATCH = 64


@dataclass
class ScaleResults:
    events: int
    bare_us: float
    worker_us: float
    rates: dict[int, float]
    scale_events: int
    pg_bare_us: float
    pg_api_us: float
    pg_concurrent_us: float
    skipped: str = ""


class _Identity:
    name = "identity"

    async def invoke(self, fields: dict[str, str]) -> dict[str, str]:
        return fields


async def _fill(client: Any, stream: str, n: int) -> None:
    for start in range(0, n, 1000):
        async with client.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + 1000)):
                pipe.xadd(stream, {"n": str(i), "payload": "x" * 64})
            await pipe.execute()


@contextlib.asynccontextmanager
async def _filled(n: int) -> AsyncIterator[tuple[Any, str, str]]:
    """A client and a fresh input stream of ``n`` entries with its output stream's name;
    both streams are deleted afterwards."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(REDIS, decode_responses=True)
    tag = uuid.uuid4().hex[:8]
    src, out = f"afbench:{tag}:in", f"afbench:{tag}:out"
    try:
        await _fill(client, src, n)
        yield client, src, out
    finally:
        await client.delete(src, out)
        await client.aclose()


async def _bare_redis(n: int) -> float:
    async with _filled(n) as (client, src, out):
        await client.xgroup_create(src, "g", id="0")
        started = time.perf_counter()
        done = 0
        while done < n:
            reply = await client.xreadgroup("g", "c", {src: ">"}, count=BATCH, block=1000)
            entries = reply[0][1] if reply else []
            async with client.pipeline(transaction=True) as pipe:
                for entry_id, fields in entries:
                    pipe.xadd(out, {"source_id": entry_id, "data": str(fields)})
                pipe.xack(src, "g", *(entry_id for entry_id, _ in entries))
                await pipe.execute()
            done += len(entries)
        return (time.perf_counter() - started) / n * 1e6


async def _worker_redis(n: int) -> float:
    async with _filled(n) as (_, src, out):
        async with open_purgatory("memory://") as purgatory:
            source = from_redis_stream(REDIS, src, "g", "c", batch=BATCH, block=0.05)
            sink = _CountingSink(REDIS, out)
            sink.target = n
            worker = StreamWorker(
                _Identity(), source, sink, purgatory, agent_id="id", concurrency=1, buffer_size=BATCH * 2
            )
            started = time.perf_counter()
            running = asyncio.ensure_future(worker.run())
            await sink.done.wait()
            elapsed = time.perf_counter() - started
            worker.drain()
            await running
            await source.aclose()
            await sink.aclose()
        return elapsed / n * 1e6


class _CountingSink(RedisStreamSink):
    """The sink, telling the harness when it has written ``target`` outputs."""

    target = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.done = asyncio.Event()

    async def write(self, outputs: Any, *, ack: Any = None) -> None:
        await super().write(outputs, ack=ack)
        if self.written >= self.target:
            self.done.set()


def _worker_command(count_index: int, src: str, out: str) -> list[str]:
    return [
        sys.executable, "-m", "agentflux", "worker", "--agent", "bench._scale_agents:Sleeper", "--source", REDIS,
        "--stream", src, "--group", "g", "--consumer", f"w{count_index}", "--sink", out, "--store", "memory://",
        "--concurrency", "32", "--batch", "32",
    ]  # fmt: skip


def _workers_rate(count: int, n: int) -> float:
    """Events/s of ``count`` worker processes draining a stream of ``n`` entries."""
    import redis

    client = redis.Redis.from_url(REDIS, decode_responses=True)
    tag = uuid.uuid4().hex[:8]
    src, out = f"afbench:{tag}:in", f"afbench:{tag}:out"
    client.xgroup_create(src, "g", id="0", mkstream=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLUX_")}
    processes = [
        subprocess.Popen(
            _worker_command(i, src, out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for i in range(count)
    ]
    try:
        time.sleep(1.0)  # the workers start (imports) before the clock does
        pipe = client.pipeline(transaction=False)
        for i in range(n):
            pipe.xadd(src, {"n": str(i)})
        started = time.perf_counter()
        pipe.execute()
        while client.xlen(out) < n:  # the harness watches from outside the worker processes
            time.sleep(0.005)
        return n / (time.perf_counter() - started)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
        client.delete(src, out)
        client.close()


def _schema_url() -> str:
    import psycopg

    schema = "afbench_" + uuid.uuid4().hex[:12]
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{POSTGRES}?options=-csearch_path%3D{schema}"


def _drop_schema(url: str) -> None:
    import psycopg

    schema = url.rsplit("%3D", 1)[1]
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


async def _pg_bare(url: str, n: int) -> float:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, status TEXT, state BYTEA, answer TEXT)")
        await conn.commit()
        started = time.perf_counter()
        for _ in range(n):
            token_id = uuid.uuid4().hex
            await conn.execute("INSERT INTO t VALUES (%s, 'pending', %s, NULL)", (token_id, STATE))
            await conn.commit()
            cur = await conn.execute(
                "UPDATE t SET status = 'resolved', answer = 'ok' WHERE id = %s AND status = 'pending' RETURNING id",
                (token_id,),
            )
            await cur.fetchone()
            await conn.commit()
        return (time.perf_counter() - started) / n * 1e6


async def _pg_api(url: str, n: int) -> float:
    async with open_purgatory(url) as purgatory:
        await purgatory.list_pending()
        started = time.perf_counter()
        for _ in range(n):
            token = await purgatory.save(_token())
            await purgatory.resolve(token.id, "ok")
        return (time.perf_counter() - started) / n * 1e6


async def _pg_concurrent(url: str, n: int, width: int = 64) -> float:
    async with open_purgatory(url) as purgatory:
        await purgatory.list_pending()

        async def lane(count: int) -> None:
            for _ in range(count):
                token = await purgatory.save(_token())
                await purgatory.resolve(token.id, "ok")

        started = time.perf_counter()
        await asyncio.gather(*(lane(n // width) for _ in range(width)))
        return (time.perf_counter() - started) / (n // width * width) * 1e6


def _reachable() -> str:
    try:
        import psycopg
        import redis

        redis.Redis.from_url(REDIS, socket_connect_timeout=2).ping()
        with psycopg.connect(POSTGRES, connect_timeout=2):
            pass
    except Exception as exc:
        return f"servers not reachable ({type(exc).__name__}: {exc})"
    return ""


def run(quick: bool = False) -> ScaleResults:
    skipped = _reachable()
    if skipped:
        return ScaleResults(0, 0, 0, {}, 0, 0, 0, 0, skipped)
    events = 5_000 if quick else 40_000
    repeats = 1 if quick else 3
    bare = [asyncio.run(_bare_redis(events)) for _ in range(repeats)]
    worker = [asyncio.run(_worker_redis(events)) for _ in range(repeats)]
    scale_events = 2_000 if quick else 8_000
    rates = {count: _workers_rate(count, scale_events * count) for count in (1, 2, 4)}
    cycles = 100 if quick else 400
    pg_bare, pg_api, pg_conc = [], [], []
    for _ in range(repeats):
        url = _schema_url()
        try:
            pg_bare.append(asyncio.run(_pg_bare(url, cycles)))
            pg_api.append(asyncio.run(_pg_api(url, cycles)))
            pg_conc.append(asyncio.run(_pg_concurrent(url, cycles * 4)))
        finally:
            _drop_schema(url)
    return ScaleResults(
        events=events,
        bare_us=statistics.median(bare),
        worker_us=statistics.median(worker),
        rates=rates,
        scale_events=scale_events,
        pg_bare_us=statistics.median(pg_bare),
        pg_api_us=statistics.median(pg_api),
        pg_concurrent_us=statistics.median(pg_conc),
    )


def report(r: ScaleResults) -> list[str]:
    """Markdown lines with the figures and the targets of the scale-out issue."""
    if r.skipped:
        return [f"Not run: {r.skipped}. **FAIL** (CI has both servers)."]

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    redis_ratio = r.worker_us / r.bare_us
    two = r.rates[2] / r.rates[1]
    four = r.rates[4] / r.rates[1]
    pg_ratio = r.pg_api_us / r.pg_bare_us
    pg_speedup = r.pg_bare_us / r.pg_concurrent_us
    return [
        "| workload | agentflux | baseline | ratio | target | result |",
        "|---|---|---|---|---|---|",
        f"| Redis source + sink, identity agent, batch {BATCH}, {r.events:,} events (µs/event) | {r.worker_us:.1f} "
        f"| bare redis-py XREADGROUP / MULTI XADD+XACK loop {r.bare_us:.1f} | {redis_ratio:.2f}x | ≤ 2x "
        f"| {verdict(redis_ratio <= 2)} |",
        f"| workers, 10 ms agent, concurrency 32 each: 1 / 2 / 4 processes (events/s, {r.scale_events:,} per worker) "
        f"| {r.rates[1]:,.0f} / {r.rates[2]:,.0f} / {r.rates[4]:,.0f} | one worker | 2 workers {two:.2f}x, "
        f"4 workers {four:.2f}x | 2 workers ≥ 1.8x | {verdict(two >= 1.8)} |",
        f"| Postgres park+resolve, sequential (µs/cycle) | {r.pg_api_us:.0f} | bare psycopg INSERT + conditional "
        f"UPDATE {r.pg_bare_us:.0f} | {pg_ratio:.2f}x | ≤ 1.5x | {verdict(pg_ratio <= 1.5)} |",
        f"| Postgres, 64 concurrent park+resolve (µs/cycle) | {r.pg_concurrent_us:.0f} | bare sequential "
        f"{r.pg_bare_us:.0f} | {pg_speedup:.1f}x throughput | ≥ 3x | {verdict(pg_speedup >= 3)} |",
    ]


if __name__ == "__main__":
    print("\n".join(report(run(quick="--quick" in sys.argv))))
