"""The six workloads: sources, one trial per design, and the interleaved repeats.

Each ``run_*`` function runs every design of its workload, interleaved within each repeat
(the first design rotates from one repeat to the next), checks every trial's outputs and
returns the raw measurements; ``_report`` turns them into ratios and verdicts.
"""

from __future__ import annotations

import asyncio
import gc
import math
import statistics
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .._core._agent import Agent, Identity, agent
from ._designs import AgentfluxDesign, AiostreamDesign, Design, PerturbableDesign, QueueDesign, hand_loop

__all__ = [
    "CLEANUP_LABELS",
    "CLEANUP_VARIANTS",
    "DESIGNS",
    "FULL",
    "LABELS",
    "PERTURBABLE",
    "QUICK",
    "BenchError",
    "CleanupResult",
    "EndOfStream",
    "Memory",
    "Perturbation",
    "Results",
    "Settings",
    "Throughput",
    "log",
    "percentile",
    "run_cleanup",
    "run_end_of_stream",
    "run_memory",
    "run_perturbation",
    "run_throughput",
]

perf_counter = time.perf_counter

# (c) runs where aiostream is installed (the project's dev extra has it; a user's may not).
try:
    import aiostream  # noqa: F401 - only whether it imports
except ImportError:
    HAVE_AIOSTREAM = False
else:
    HAVE_AIOSTREAM = True
DESIGNS: tuple[str, ...] = ("a", "b", "c", "d") if HAVE_AIOSTREAM else ("a", "b", "d")
LABELS = {"a": "(a) hand loop", "b": "(b) asyncio.Queue", "c": "(c) aiostream", "d": "(d) agentflux"}
PERTURBABLE = ("b", "d")

T = TypeVar("T")


class BenchError(RuntimeError):
    """A design produced wrong outputs, or a measurement could not be taken."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Sizes and repeat counts of one run."""

    events: int
    repeats: int
    eos_runs: int
    eos_events: int
    perturb_calls: int
    perturb_warmup: int
    perturb_repeats: int
    mem_items: int
    mem_item_size: int
    mem_repeats: int
    settle_passes: int = 10


FULL = Settings(
    events=100_000,
    repeats=9,
    eos_runs=200,
    eos_events=10,
    perturb_calls=500,
    perturb_warmup=20,
    perturb_repeats=9,
    mem_items=5_000,
    mem_item_size=10 * 1024,
    mem_repeats=3,
)
QUICK = Settings(
    events=5_000,
    repeats=3,
    eos_runs=40,
    eos_events=10,
    perturb_calls=100,
    perturb_warmup=10,
    perturb_repeats=2,
    mem_items=1_000,
    mem_item_size=10 * 1024,
    mem_repeats=1,
)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def rotated(items: Sequence[T], repeat: int) -> list[T]:
    """``items`` starting at position ``repeat``: interleaved, without a fixed first design."""
    k = repeat % len(items)
    return [*items[k:], *items[:k]]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def check_outputs(workload: str, design: str, got: Sequence[Any], expected: Sequence[Any]) -> None:
    """Raise ``BenchError`` unless ``got`` equals ``expected`` (same count, same order)."""
    if len(got) == len(expected) and all(a == b for a, b in zip(got, expected, strict=True)):
        return
    first = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), None)
    where = f"first difference at index {first}" if first is not None else "one is a prefix of the other"
    raise BenchError(f"{workload}: {LABELS[design]} produced {len(got)} outputs, expected {len(expected)}; {where}")


def build(design: str, agents: Sequence[Agent[Any, Any]]) -> Design:
    if design == "b":
        return QueueDesign(agents)
    if design == "c":
        return AiostreamDesign(agents)
    if design == "d":
        return AgentfluxDesign(agents)
    raise ValueError(f"design {design!r} has no stream object")


def three_agents() -> tuple[Agent[Any, Any], ...]:
    """Three distinct cheap agents; their composition checks that every stage ran once, in order."""
    return (
        agent(lambda x: x + 1, name="inc"),
        agent(lambda x: x * 2, name="double"),
        agent(lambda x: x - 1, name="dec"),
    )


class PassCounter:
    """Counts event-loop iterations: a callback that reschedules itself runs once per iteration.

    Loop passes are what a design pays for in wake-ups; unlike times they do not depend on
    the machine's noise. Only used in separate, untimed trials (it keeps the loop busy).
    """

    def __init__(self) -> None:
        self.passes = 0
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.passes += 1
        self._handle = self._loop.call_soon(self._tick)

    def stop(self) -> int:
        """Stop counting; the number of iterations seen."""
        self._handle.cancel()
        return self.passes


# ------------------------------------------------------------------------- sources


async def count_source(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def stamped_source(n: int, stamp: list[float], counter: PassCounter | None) -> AsyncIterator[int]:
    """Yields ``0..n-1`` and records the time (and loop pass) just before it returns."""
    for i in range(n):
        yield i
    stamp.append(perf_counter())
    if counter is not None:
        stamp.append(counter.passes)


async def idle_source(release: asyncio.Event) -> AsyncIterator[int]:
    """Yields nothing; ends once ``release`` is set."""
    await release.wait()
    if release.is_set():
        return
    yield 0  # never reached: makes this an async generator


async def busy_source(stop: asyncio.Event, produced: list[int]) -> AsyncIterator[int]:
    """Yields ``0, 1, 2, ...`` with one loop pass between items until ``stop`` is set."""
    i = 0
    while not stop.is_set():
        produced[0] = i + 1
        yield i
        i += 1
        await asyncio.sleep(0)


async def payload_source(n: int, size: int) -> AsyncIterator[tuple[int, bytes]]:
    """``n`` items of ``size`` fresh bytes each, one loop pass between items."""
    for i in range(n):
        yield i, bytes(size)
        await asyncio.sleep(0)


async def endless_source(closed: list[bool]) -> AsyncIterator[int]:
    """Counts forever; records in ``closed`` that its ``finally`` ran."""
    try:
        i = 0
        while True:
            yield i
            i += 1
    finally:
        closed[0] = True


# ------------------------------------------------------------ 1 + 2. throughput


@dataclass
class Throughput:
    stages: int
    events: int
    per_event_us: dict[str, list[float]] = field(default_factory=dict)
    ratios: dict[str, list[float]] = field(default_factory=dict)  # vs (a), per repeat
    passes_per_1000: dict[str, float] = field(default_factory=dict)  # loop passes, untimed trial

    def median_us(self, design: str) -> float:
        return statistics.median(self.per_event_us[design])

    def median_ratio(self, design: str) -> float:
        return statistics.median(self.ratios[design])

    def min_us(self, design: str) -> float:
        return min(self.per_event_us[design])

    def best_ratio(self, design: str) -> float:
        """Ratio of the fastest repeats: the estimate least disturbed by the machine's slow phases."""
        return self.min_us(design) / self.min_us("a")


def expected_throughput(stages: int, n: int) -> list[int]:
    return list(range(n)) if stages == 1 else [(i + 1) * 2 - 1 for i in range(n)]


async def throughput_trial(design: str, stages: int, n: int) -> tuple[float, list[Any]]:
    agents = (Identity,) if stages == 1 else three_agents()
    source = count_source(n)
    out: list[Any] = []
    if design == "a":
        started = perf_counter()
        await hand_loop(source, agents, out)
        elapsed = perf_counter() - started
        return elapsed, out
    runner = build(design, agents)
    started = perf_counter()
    async with runner.open(source) as stream:
        async for y in stream:
            out.append(y)
    elapsed = perf_counter() - started
    return elapsed, out


async def counted_throughput_trial(design: str, stages: int, n: int) -> tuple[int, list[Any]]:
    """Loop passes one (untimed) run takes."""
    counter = PassCounter()
    _, out = await throughput_trial(design, stages, n)
    return counter.stop(), out


def run_throughput(stages: int, settings: Settings) -> Throughput:
    n = settings.events
    name = f"{stages}-stage throughput"
    result = Throughput(stages, n, {d: [] for d in DESIGNS}, {d: [] for d in DESIGNS})
    expected = expected_throughput(stages, n)
    warm = min(n, 2_000)
    for design in DESIGNS:  # warm-up, not recorded
        _, out = asyncio.run(throughput_trial(design, stages, warm))
        check_outputs(name, design, out, expected[:warm])
    for repeat in range(settings.repeats):
        seconds: dict[str, float] = {}
        for design in rotated(DESIGNS, repeat):
            gc.collect()
            elapsed, out = asyncio.run(throughput_trial(design, stages, n))
            check_outputs(name, design, out, expected)
            seconds[design] = elapsed
        for design in DESIGNS:
            result.per_event_us[design].append(seconds[design] / n * 1e6)
            result.ratios[design].append(seconds[design] / seconds["a"])
        log(
            f"{name} repeat {repeat + 1}/{settings.repeats}: "
            + ", ".join(f"{d} {seconds[d] / n * 1e6:.2f} µs" for d in DESIGNS)
        )
    for design in DESIGNS:
        passes, out = asyncio.run(counted_throughput_trial(design, stages, n))
        check_outputs(name, design, out, expected)
        result.passes_per_1000[design] = passes / n * 1000
    return result


# ------------------------------------------------------------ 3. end of stream


@dataclass
class EndOfStream:
    runs: int
    events: int
    latencies_s: dict[str, list[float]] = field(default_factory=dict)
    passes: dict[str, int] = field(default_factory=dict)  # source end -> loop end, untimed trial

    def median_ms(self, design: str) -> float:
        return statistics.median(self.latencies_s[design]) * 1e3


async def end_of_stream_trial(design: str, n: int, counter: PassCounter | None = None) -> float:
    """Seconds (or, with ``counter``, loop passes) from the source's return to the loop's end."""
    stamp: list[float] = []
    source = stamped_source(n, stamp, counter)
    out: list[Any] = []
    if design == "a":
        await hand_loop(source, (Identity,), out)
        ended, passes = perf_counter(), counter.passes if counter else 0
    else:
        async with build(design, (Identity,)).open(source) as stream:
            async for y in stream:
                out.append(y)
            ended, passes = perf_counter(), counter.passes if counter else 0
    check_outputs("end-of-stream latency", design, out, list(range(n)))
    if not stamp:
        raise BenchError(f"end-of-stream latency: {LABELS[design]} did not run the source to its end")
    return passes - stamp[1] if counter else ended - stamp[0]


async def _end_of_stream_runs(settings: Settings) -> EndOfStream:
    result = EndOfStream(settings.eos_runs, settings.eos_events, {d: [] for d in DESIGNS})
    for _ in range(5):  # warm-up, not recorded
        for design in DESIGNS:
            await end_of_stream_trial(design, settings.eos_events)
    for run in range(settings.eos_runs):
        for design in rotated(DESIGNS, run):
            result.latencies_s[design].append(await end_of_stream_trial(design, settings.eos_events))
    for design in DESIGNS:
        counter = PassCounter()
        result.passes[design] = int(await end_of_stream_trial(design, settings.eos_events, counter))
        counter.stop()
    return result


def run_end_of_stream(settings: Settings) -> EndOfStream:
    result = asyncio.run(_end_of_stream_runs(settings))
    log("end-of-stream latency: " + ", ".join(f"{d} {result.median_ms(d):.4f} ms" for d in DESIGNS))
    return result


# ------------------------------------------------------------ 4. perturbation latency


@dataclass
class Perturbation:
    """Latencies of every measured call, pooled over the interleaved repeats, and per-trial percentiles.

    The headline p50/p99 are taken over the pooled calls of a design (``pooled_us``): both
    designs were sampled in alternation over the same period, and the pooled p99 rests on
    many more slow calls than one trial's does. The per-trial percentiles show the spread.
    """

    calls: int
    repeats: int
    # [mode][design] -> values (seconds); mode is "idle" or "busy"
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    p50: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # per trial
    p99: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # per trial
    source_items: dict[str, list[int]] = field(default_factory=dict)  # per trial

    def pooled_us(self, stat: str, mode: str, design: str) -> float:
        return percentile(self.samples[mode][design], 0.50 if stat == "p50" else 0.99) * 1e6

    def pooled_ratio(self, stat: str, mode: str) -> float:
        """agentflux over the Queue design."""
        return self.pooled_us(stat, mode, "d") / self.pooled_us(stat, mode, "b")


async def perturbation_trial(design: str, busy: bool, settings: Settings) -> tuple[list[float], int]:
    """Latencies (s) of ``perturb_calls`` invokes while the design runs; and source items streamed."""
    stop = asyncio.Event()
    produced = [0]
    source = busy_source(stop, produced) if busy else idle_source(stop)
    runner = build(design, (Identity,))
    assert isinstance(runner, QueueDesign | AgentfluxDesign)
    perturbable: PerturbableDesign = runner
    outputs: list[Any] = []

    async def consume() -> None:
        async with runner.open(source) as stream:
            async for y in stream:
                outputs.append(y)

    async def perturb() -> list[float]:
        latencies: list[float] = []
        for k in range(settings.perturb_warmup + settings.perturb_calls):
            x = -1 - k  # never produced by the source
            started = perf_counter()
            y = await perturbable.invoke(x, priority=100)
            elapsed = perf_counter() - started
            if y != x:
                raise BenchError(f"perturbation: {LABELS[design]} answered {y!r} to {x!r}")
            if k >= settings.perturb_warmup:
                latencies.append(elapsed)
            await asyncio.sleep(0)
        return latencies

    consumer = asyncio.create_task(consume())
    try:
        for _ in range(100):
            if perturbable.running:
                break
            await asyncio.sleep(0)
        else:
            raise BenchError(f"perturbation: {LABELS[design]} did not start running")
        latencies = await asyncio.create_task(perturb())
        streamed_during = produced[0]
        stop.set()
        await consumer
    finally:
        if not consumer.done():
            consumer.cancel()
    mode = "busy" if busy else "idle"
    check_outputs(f"perturbation ({mode} source)", design, outputs, list(range(produced[0])))
    if busy and streamed_during < settings.perturb_calls:
        raise BenchError(f"perturbation: the busy source of {LABELS[design]} produced only {streamed_during}")
    return latencies, streamed_during


def run_perturbation(settings: Settings) -> Perturbation:
    result = Perturbation(settings.perturb_calls, settings.perturb_repeats)
    for mode in ("idle", "busy"):
        result.samples[mode] = {d: [] for d in PERTURBABLE}
        result.p50[mode] = {d: [] for d in PERTURBABLE}
        result.p99[mode] = {d: [] for d in PERTURBABLE}
        result.source_items[mode] = []
        for design in PERTURBABLE:  # warm-up, not recorded
            asyncio.run(perturbation_trial(design, mode == "busy", settings))
        for repeat in range(settings.perturb_repeats):
            for design in rotated(PERTURBABLE, repeat):
                gc.collect()
                latencies, items = asyncio.run(perturbation_trial(design, mode == "busy", settings))
                result.samples[mode][design].extend(latencies)
                result.p50[mode][design].append(percentile(latencies, 0.50))
                result.p99[mode][design].append(percentile(latencies, 0.99))
                result.source_items[mode].append(items)
        medians = {d: (result.pooled_us("p50", mode, d), result.pooled_us("p99", mode, d)) for d in PERTURBABLE}
        log(
            f"perturbation ({mode} source): "
            + ", ".join(f"{d} p50 {p50:.1f} µs p99 {p99:.1f} µs" for d, (p50, p99) in medians.items())
        )
    return result


# ------------------------------------------------------------ 5. peak memory


@dataclass
class Memory:
    items: int
    item_size: int
    peaks: dict[str, list[int]] = field(default_factory=dict)  # bytes, per repeat

    def median_kb(self, design: str) -> float:
        return statistics.median(self.peaks[design]) / 1024

    def median_items(self, design: str) -> float:
        return statistics.median(self.peaks[design]) / self.item_size


async def _slow_consumer_pause() -> None:
    for _ in range(10):  # ten loop passes per item; the source takes one
        await asyncio.sleep(0)


async def memory_trial(design: str, settings: Settings) -> int:
    """Peak traced bytes while a consumer ten times slower than the source drains it."""
    n, size = settings.mem_items, settings.mem_item_size
    expected = 0
    gc.collect()
    tracemalloc.start()
    try:
        source = payload_source(n, size)
        if design == "a":
            async for item in source:
                y = await Identity.invoke(item)
                if y[0] != expected:
                    raise BenchError(f"memory: {LABELS[design]} produced item {y[0]}, expected {expected}")
                expected += 1
                await _slow_consumer_pause()
        else:
            async with build(design, (Identity,)).open(source) as stream:
                async for y in stream:
                    if y[0] != expected:
                        raise BenchError(f"memory: {LABELS[design]} gave item {y[0]}, expected {expected}")
                    expected += 1
                    await _slow_consumer_pause()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    if expected != n:
        raise BenchError(f"memory: {LABELS[design]} produced {expected} items, expected {n}")
    return peak


def run_memory(settings: Settings) -> Memory:
    result = Memory(settings.mem_items, settings.mem_item_size, {d: [] for d in DESIGNS})
    for repeat in range(settings.mem_repeats):
        for design in rotated(DESIGNS, repeat):
            result.peaks[design].append(asyncio.run(memory_trial(design, settings)))
    log("peak memory: " + ", ".join(f"{d} {result.median_kb(d):,.0f} KB" for d in DESIGNS))
    return result


# ------------------------------------------------------------ 6. cleanup after break

CLEANUP_VARIANTS: tuple[str, ...] = tuple(v for v in ("a", "b", "c", "d", "d_with") if v != "c" or HAVE_AIOSTREAM)
CLEANUP_LABELS = {
    "a": "(a) hand loop, bare break",
    "b": "(b) asyncio.Queue, bare break",
    "c": "(c) aiostream, break inside `async with s.stream()`",
    "d": "(d) agentflux, bare break",
    "d_with": "(d) agentflux, break inside `async with`",
}


@dataclass(frozen=True)
class CleanupResult:
    tasks_left: int
    source_closed: bool
    clean_after: int | None  # loop passes until no task was left and the source was closed


async def cleanup_trial(variant: str, passes: int) -> CleanupResult:
    closed = [False]
    got: list[Any] = []
    me = asyncio.current_task()
    if variant == "a":
        source = endless_source(closed)
        async for x in source:
            got.append(await Identity.invoke(x))
            if len(got) == 10:
                break
        del source
    elif variant in ("c", "d_with"):
        runner = build(variant[0], (Identity,))
        async with runner.open(endless_source(closed)) as stream:
            async for y in stream:
                got.append(y)
                if len(got) == 10:
                    break
        del runner, stream
    else:
        runner = build(variant, (Identity,))
        async for y in runner.iterate(endless_source(closed)):
            got.append(y)
            if len(got) == 10:
                break
        del runner
    check_outputs("cleanup after break", variant[0], got, list(range(10)))
    gc.collect()
    snapshot: tuple[int, bool] | None = None
    clean_after: int | None = None
    for done in range(1, 101):
        await asyncio.sleep(0)
        left = len(asyncio.all_tasks() - {me})
        if done == passes:
            snapshot = (left, closed[0])
        if clean_after is None and left == 0 and closed[0]:
            clean_after = done
        if done >= passes and clean_after is not None:
            break
    assert snapshot is not None
    return CleanupResult(snapshot[0], snapshot[1], clean_after)


def run_cleanup(settings: Settings) -> dict[str, CleanupResult]:
    results = {v: asyncio.run(cleanup_trial(v, settings.settle_passes)) for v in CLEANUP_VARIANTS}
    log(
        "cleanup after break: "
        + ", ".join(f"{v} tasks {r.tasks_left} closed {r.source_closed}" for v, r in results.items())
    )
    return results


@dataclass
class Results:
    settings: Settings
    throughput1: Throughput | None = None
    throughput3: Throughput | None = None
    end_of_stream: EndOfStream | None = None
    perturbation: Perturbation | None = None
    memory: Memory | None = None
    cleanup: dict[str, CleanupResult] | None = None
