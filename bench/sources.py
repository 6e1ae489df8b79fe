"""Sources: ``merged()`` against aiostream's merge, EventBus fan-out against one Queue per subscriber.

Both run designs interleaved within each repeat and report the median cost per event;
the ratio is agentflux over the baseline from the same run (target: at most 1.5x).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiostream import stream

from agentflux.sources import EventBus, merged


@dataclass
class SourcesResults:
    merged_us: float
    aiostream_merge_us: float
    bus_us: float
    queues_us: float

    @property
    def merge_ratio(self) -> float:
        return self.merged_us / self.aiostream_merge_us

    @property
    def bus_ratio(self) -> float:
        return self.bus_us / self.queues_us


async def _numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def _merge_agentflux(per_source: int) -> int:
    count = 0
    async with _closing(merged(*(_numbers(per_source) for _ in range(4)))) as items:
        async for _ in items:
            count += 1
    return count


async def _merge_aiostream(per_source: int) -> int:
    count = 0
    async with stream.merge(*(_numbers(per_source) for _ in range(4))).stream() as items:
        async for _ in items:
            count += 1
    return count


class _closing:
    def __init__(self, iterator: AsyncIterator[int]) -> None:
        self.iterator = iterator

    async def __aenter__(self) -> AsyncIterator[int]:
        return self.iterator

    async def __aexit__(self, *exc: object) -> None:
        await self.iterator.aclose()  # type: ignore[attr-defined]


SUBSCRIBERS = 10


async def _fanout_bus(events: int) -> int:
    bus: EventBus[int] = EventBus()
    subscriptions = [bus.subscribe(maxsize=events) for _ in range(SUBSCRIBERS)]

    async def drain(subscription: AsyncIterator[int]) -> int:
        count = 0
        async for _ in subscription:
            count += 1
        return count

    readers = [asyncio.create_task(drain(s)) for s in subscriptions]
    for i in range(events):
        bus.publish(i)
        if i % 64 == 63:
            await asyncio.sleep(0)  # let subscribers run, as a live producer would
    bus.close()
    return sum(await asyncio.gather(*readers))


async def _fanout_queues(events: int) -> int:
    queues: list[asyncio.Queue[int | None]] = [asyncio.Queue(maxsize=events) for _ in range(SUBSCRIBERS)]

    async def drain(queue: asyncio.Queue[int | None]) -> int:
        count = 0
        while (await queue.get()) is not None:
            count += 1
        return count

    readers = [asyncio.create_task(drain(q)) for q in queues]
    for i in range(events):
        for queue in queues:
            queue.put_nowait(i)
        if i % 64 == 63:
            await asyncio.sleep(0)
    for queue in queues:
        queue.put_nowait(None)
    return sum(await asyncio.gather(*readers))


def _time(fn: Callable[[int], Awaitable[int]], n: int, expected: int) -> float:
    started = time.perf_counter()
    got = asyncio.run(fn(n))  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    if got != expected:
        raise AssertionError(f"{fn.__name__} delivered {got} events, expected {expected}")
    return elapsed / expected * 1e6


def run(quick: bool = False) -> SourcesResults:
    """Run both workloads, designs interleaved, and return the medians."""
    per_source = 5_000 if quick else 25_000
    events = 5_000 if quick else 20_000
    repeats = 3 if quick else 7
    samples: dict[str, list[float]] = {"merged": [], "aiostream": [], "bus": [], "queues": []}
    for _ in range(repeats):
        samples["merged"].append(_time(_merge_agentflux, per_source, 4 * per_source))
        samples["aiostream"].append(_time(_merge_aiostream, per_source, 4 * per_source))
        samples["bus"].append(_time(_fanout_bus, events, SUBSCRIBERS * events))
        samples["queues"].append(_time(_fanout_queues, events, SUBSCRIBERS * events))
    return SourcesResults(*(statistics.median(samples[k]) for k in ("merged", "aiostream", "bus", "queues")))


def report(results: SourcesResults) -> list[str]:
    """Markdown lines with the figures and the targets of the sources issue."""
    r = results

    def verdict(ratio: float) -> str:
        return "PASS" if ratio <= 1.5 else "FAIL"

    return [
        "| workload | agentflux (µs/event) | baseline (µs/event) | ratio | target | result |",
        "|---|---|---|---|---|---|",
        f"| merged() of 4 sources | {r.merged_us:.3f} | aiostream merge {r.aiostream_merge_us:.3f} "
        f"| {r.merge_ratio:.2f}x | ≤ 1.5x | {verdict(r.merge_ratio)} |",
        f"| EventBus fan-out to {SUBSCRIBERS} subscribers | {r.bus_us:.3f} | Queue per subscriber "
        f"{r.queues_us:.3f} | {r.bus_ratio:.2f}x | ≤ 1.5x | {verdict(r.bus_ratio)} |",
    ]


if __name__ == "__main__":
    print("\n".join(report(run(quick="--quick" in sys.argv))))
